//! Deliver: the routes for a recipient, every segment submitted through a
//! carrier's pool (failing over only while nothing can have reached a
//! carrier), and the one mapping from an SMPP client error to a
//! [`SendError`].

use super::*;

/// The one mapping from an SMPP client error to the send path's error.
pub(super) fn send_error(e: &SmppError) -> SendError {
    match e {
        SmppError::Status(_) => SendError::CarrierRejected {
            status_name: e.status_name().map(|s| s.into_owned()).unwrap_or_default(),
        },
        // The carrier may have the message: a session lost with it in the
        // window, no answer, or an answer we cannot read. Outcome unknown
        // (SPEC §4's 504), never a failover or a refund that invites a
        // resend.
        SmppError::Timeout | SmppError::LostInFlight | SmppError::Protocol(_) => {
            SendError::CarrierTimeout
        }
        // Nothing was written: the pool could not start the submit in the
        // request's time (paced, throttled, or no session).
        _ => SendError::CarrierUnavailable {
            retry_after: CARRIER_RETRY_AFTER,
        },
    }
}

/// How long a client is asked to wait when no route's carrier is bound:
/// about what a pool's reconnect takes after a dropped session.
pub(super) const CARRIER_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Relay {
    /// Deliver: encodes the text and submits every segment (see
    /// [`Relay::send_segments`]); a multi-segment message's in-flight
    /// registration comes back with the result. `Err`: the text cannot be
    /// encoded, nothing was sent.
    #[allow(clippy::type_complexity)]
    pub(super) async fn deliver(
        &self,
        view: &View,
        candidates: &[usize],
        req: &SendRequest,
        id: &str,
        segments: u32,
        t0: Instant,
    ) -> Result<
        (
            Result<Sent, (SendError, Option<Sent>)>,
            Option<Registration>,
        ),
        SendError,
    > {
        let reference = self.inner.reference.fetch_add(1, Ordering::Relaxed);
        let Ok(enc) = encoding::encode(req.text.expose(), reference) else {
            return Err(SendError::InvalidRequest("`text` cannot be encoded".into()));
        };
        let mut registration =
            (segments > 1).then(|| InFlight::register(&self.inner.sent.inflight, id));
        let start_by = t0 + self.inner.start_budget;
        let sent = Self::send_segments(
            &view.pools,
            candidates,
            req,
            &enc,
            start_by,
            registration.as_mut(),
        )
        .await;
        drop(enc);
        Ok((sent, registration))
    }

    /// The carriers that can take `to` now, best first: none configured is
    /// permanent (`no_route`), none bound is temporary
    /// (`carrier_unavailable`).
    pub(super) fn route(view: &View, to: &E164) -> Result<Vec<usize>, SendError> {
        let pools = &view.pools;
        let candidates = view.routes.candidates(to, |i| {
            pools.get(i).is_some_and(|p| p.bound_transmitters() > 0)
        });
        if !candidates.is_empty() {
            return Ok(candidates);
        }
        if view.routes.candidates(to, |_| true).is_empty() {
            Err(SendError::NoRoute)
        } else {
            Err(SendError::CarrierUnavailable {
                retry_after: CARRIER_RETRY_AFTER,
            })
        }
    }

    /// Submits every segment on `pool`; the first error wins, with how
    /// many segments were accepted and their carrier ids (empty where not
    /// accepted; a carrier may also answer an empty id). No segment's
    /// submit_sm is written after `start_by`. Accepted segments are entered
    /// in `registration` as they are answered, so their receipts find the
    /// message before it commits.
    pub(super) async fn submit_all(
        pool: &Pool,
        req: &SendRequest,
        enc: &encoding::Encoded,
        start_by: Instant,
        registration: Option<&mut Registration>,
    ) -> Result<Vec<String>, (SmppError, usize, Vec<String>)> {
        let esm_class = enc.esm_class_bits();
        let request = |part: &[u8]| SubmitRequest {
            source: req.from.clone(),
            dest: req.to.clone(),
            short_message: Zeroizing::new(part.to_vec()),
            data_coding: enc.data_coding(),
            esm_class,
            registered_delivery: 1,
            validity: req.validity,
        };
        // Most messages are one segment: awaited directly, without a set
        // of futures or a vector of results.
        let Some(registration) = registration.filter(|_| enc.segments() > 1) else {
            let Some(only) = enc.parts().next() else {
                return Ok(Vec::new());
            };
            return match pool.submit_by(request(only), start_by).await {
                Ok(resp) => Ok(vec![resp.message_id]),
                Err(e) => Err((e, 0, Vec::new())),
            };
        };
        // Segments go out in order on one session (Pool::submit_in_order);
        // each is entered as soon as it is answered, in whatever order the
        // answers come.
        let reqs: Vec<SubmitRequest> = enc.parts().map(request).collect();
        let mut pending: FuturesUnordered<_> = pool
            .submit_in_order(reqs, start_by)
            .into_iter()
            .enumerate()
            .map(|(i, f)| async move { (i, f.await) })
            .collect();
        let mut ids = vec![String::new(); enc.segments()];
        let (mut accepted, mut first_err) = (0, None);
        while let Some((i, r)) = pending.next().await {
            match r {
                Ok(resp) => {
                    registration.add(pool.name(), &resp.message_id);
                    accepted += 1;
                    if let Some(slot) = ids.get_mut(i) {
                        *slot = resp.message_id;
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(ids),
            Some(e) => Err((e, accepted, ids)),
        }
    }

    /// Sends on the best bound carrier, failing over while nothing was
    /// accepted and the error says another carrier may take it.
    pub(super) async fn send_segments(
        pools: &[Pool],
        candidates: &[usize],
        req: &SendRequest,
        enc: &encoding::Encoded,
        start_by: Instant,
        mut registration: Option<&mut Registration>,
    ) -> Result<Sent, (SendError, Option<Sent>)> {
        let mut last = SendError::CarrierUnavailable {
            retry_after: CARRIER_RETRY_AFTER,
        };
        for &i in candidates {
            let Some(pool) = pools.get(i) else { continue };
            match Self::submit_all(pool, req, enc, start_by, registration.as_deref_mut()).await {
                Ok(ids) => return Ok(Sent { carrier: i, ids }),
                Err((e, accepted, ids)) => {
                    let mapped = send_error(&e);
                    if accepted > 0 || !e.is_retryable() {
                        // Some segment reached the carrier, or the carrier
                        // gave a final answer: no failover (no duplicates).
                        // The accepted segments' ids stay in the record, so
                        // their receipts still find it.
                        let partial = (accepted > 0).then_some(Sent { carrier: i, ids });
                        return Err((mapped, partial));
                    }
                    tracing::warn!(carrier = %pool.name(), "carrier failed before accepting; failing over: {e}");
                    last = mapped;
                }
            }
        }
        Err((last, None))
    }
}
