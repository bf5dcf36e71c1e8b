//! Reserve: the campaign and number rate cells and the brand's daily
//! segments taken in one admission on the shared-state seam, held by a
//! [`Reservation`] guard that gives them back on drop unless kept.

use super::*;

/// What a send holds of the limits and of its idempotency key until it is
/// known whether a carrier may have the message. [`Reservation::release`]
/// gives it all back (a definite refusal consumes nothing);
/// [`Reservation::keep`] keeps it (a carrier may have the message). Dropped
/// with neither (a panic), it is given back from a background task.
pub(super) struct Reservation<'a> {
    relay: &'a Relay,
    /// The node's own cells (the local shared state refunds them).
    limits: Arc<Limits>,
    client: &'a str,
    /// What the admission took; `None` once given back.
    admission: Option<Admission>,
    /// The idempotency key this request claimed.
    pub(super) key: Option<String>,
    done: bool,
}

impl Reservation<'_> {
    pub(super) fn keep(&mut self) {
        self.done = true;
    }

    /// Gives back the cells, the daily segments and the key, awaited, so a
    /// retry right after the refusal finds them free.
    pub(super) async fn release(mut self) {
        self.done = true;
        let (admission, key) = (self.admission.take(), self.key.take());
        self.relay
            .give_back(self.client.to_owned(), admission, self.limits.clone(), key)
            .await;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (relay, client) = (self.relay.clone(), self.client.to_owned());
        let (admission, key, limits) =
            (self.admission.take(), self.key.take(), self.limits.clone());
        self.relay.inner.background.spawn(async move {
            relay.give_back(client, admission, limits, key).await;
        });
    }
}

impl Relay {
    /// Phase 2: takes the campaign and number cells and the brand's daily
    /// segments, all or none, in one call to the shared state (which also
    /// checks `recipient`'s opt-out when it does so atomically, see
    /// [`SharedState::admission_checks_opt_out`]).
    pub(super) async fn reserve<'a>(
        &'a self,
        cid: &'a str,
        campaign: &'a Campaign,
        view: &View,
        from: &'a E164,
        segments: u32,
        recipient: Option<[u8; 32]>,
    ) -> Result<Reservation<'a>, SendError> {
        let limits = view.limits.clone();
        let shared = &self.inner.shared;
        let (daily, left) = match view.brands.get(&campaign.brand).filter(|b| b.daily_cap > 0) {
            Some(b) => {
                let (day, left) = local_day(b.daily_reset_tz, chrono::Utc::now());
                (Some((day, b.daily_cap)), left)
            }
            None => (None, Duration::ZERO),
        };
        let nspm = campaign.number_segments_per_minute;
        let admission = Admission {
            campaign: campaign.id.clone(),
            brand: campaign.brand.clone(),
            campaign_rate: Rate {
                per_minute: campaign.segments_per_minute,
                burst: campaign.burst,
            },
            from: from.clone(),
            // A number's burst is at most the campaign burst (as `Limits`).
            number_rate: (nspm > 0).then(|| Rate {
                per_minute: nspm,
                burst: campaign.burst.min(nspm).max(1),
            }),
            daily,
            recipient: recipient.filter(|_| shared.admission_checks_opt_out()),
            segments,
        };
        match shared.admit(&admission, &*limits).await {
            Ok(Verdict::Admitted) => {}
            Ok(Verdict::OptedOut) => return Err(SendError::RecipientOptedOut),
            Ok(Verdict::RateLimited(retry_after)) => {
                return Err(SendError::RateLimited { retry_after })
            }
            Ok(Verdict::DailyCapReached) => {
                return Err(SendError::DailyCapReached { retry_after: left })
            }
            Err(e) => {
                tracing::error!("admission (opt-out, rate, daily cap): {e}");
                return Err(unavailable(&e));
            }
        }
        Ok(Reservation {
            relay: self,
            limits,
            client: cid,
            admission: Some(admission),
            key: None,
            done: false,
        })
    }

    /// Gives back what the admission took and forgets the claimed key of a
    /// send that reached no carrier.
    pub(super) async fn give_back(
        &self,
        client: String,
        admission: Option<Admission>,
        limits: Arc<Limits>,
        key: Option<String>,
    ) {
        if let Some(a) = admission {
            if let Err(e) = self.inner.shared.refund(&a, &*limits).await {
                tracing::error!("giving back an admission: {e}");
            }
        }
        if let Some(k) = key {
            let forgot = if self.inner.shared.idempotency_is_shared() {
                self.inner.shared.forget_idempotency(&client, &k).await
            } else {
                self.inner
                    .store
                    .write(move |t| record::forget_idempotent(t, &client, &k))
                    .await
            };
            if let Err(e) = forgot {
                tracing::error!("forgetting an idempotency key: {e}");
            }
        }
    }
}
