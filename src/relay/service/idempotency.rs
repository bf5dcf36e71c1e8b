//! Claim: idempotency keys (validated once into [`IdempotencyKey`]), the
//! keyed request hash, the claim made just before the first submit_sm, and
//! the replay of a first attempt's outcome.

use super::*;

/// A validated `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub struct IdempotencyKey(pub(super) String);

impl IdempotencyKey {
    /// Checks a header value; the error names the header, never the value.
    pub fn parse(k: String) -> Result<Self, SendError> {
        if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SendError::InvalidRequest(
                "`Idempotency-Key` must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(IdempotencyKey(k))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// What claiming an idempotency key found.
pub(super) enum Claimed {
    /// The key is new: this request sends.
    Fresh,
    /// The key's first attempt was accepted: its answer, replayed.
    Replay(SendAccepted),
}

/// What a finished idempotency key's first outcome replays as.
pub(super) enum Replay {
    Accepted(SendAccepted),
    /// The carrier may have had it (a timeout).
    Unknown,
    /// Anything else: a conflict, as before.
    Other,
}

impl Relay {
    /// Keyed hash of everything that makes a request what it is, text
    /// included, so an idempotent retry can be told from a different request
    /// without storing anything that discloses the text.
    pub(super) fn request_hash(&self, req: &SendRequest) -> String {
        use hmac::{Mac, SimpleHmac};
        let mut mac =
            <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(self.inner.pseudonym_key.expose())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [
            req.from.as_str().as_bytes(),
            req.to.as_str().as_bytes(),
            req.campaign_id.as_bytes(),
            req.validity
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string()
                .as_bytes(),
            req.client_ref.as_deref().unwrap_or("").as_bytes(),
            req.text.expose().as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Phase 3 (with an `Idempotency-Key`): claims the key durably before
    /// anything is sent, with the message id and this process's boot id, so
    /// that a retry (here or after a crash) can tell "in flight", "outcome
    /// known" and "may have reached the carrier" apart.
    pub(super) async fn claim(
        &self,
        cid: &str,
        key: &IdempotencyKey,
        req: &SendRequest,
        id: &str,
        reservation: &mut Reservation<'_>,
    ) -> Result<Claimed, SendError> {
        let hash = self.request_hash(req);
        let found = if self.inner.shared.idempotency_is_shared() {
            // Fleet mode: one claim for every node (a retry may land on
            // another one); an unverifiable key fails closed.
            let claim = record::IdempotencyRecord::pending(
                &hash,
                id,
                &self.inner.boot,
                Some(&self.inner.node),
                now_ms(),
            );
            let claim = claim.to_json().map_err(|_| SendError::Internal)?;
            let shared = &self.inner.shared;
            match shared.claim_idempotency(cid, key.as_str(), &claim).await {
                Ok(None) => Idem::Fresh,
                Ok(Some(v)) => {
                    Idem::Existing(record::IdempotencyRecord::from_json(&v).map_err(|e| {
                        tracing::error!("shared idempotency record: {e}");
                        SendError::IdempotencyConflict
                    })?)
                }
                Err(e) => {
                    tracing::error!("idempotency claim: {e}");
                    return Err(unavailable(&e));
                }
            }
        } else {
            let (c, k, h, i, b) = (
                cid.to_owned(),
                key.as_str().to_owned(),
                hash.clone(),
                id.to_owned(),
                self.inner.boot.clone(),
            );
            self.inner
                .store
                .write(move |t| record::begin_idempotent(t, &c, &k, &h, &i, &b, now_ms()))
                .await
                .map_err(|e| {
                    tracing::error!("idempotency record: {e}");
                    SendError::StoreUnavailable
                })?
        };
        let r = match found {
            Idem::Fresh => {
                reservation.key = Some(key.as_str().to_owned());
                return Ok(Claimed::Fresh);
            }
            Idem::Existing(r) => r,
        };
        if r.request_hash != hash {
            return Err(SendError::IdempotencyConflict);
        }
        match r.phase_at(&self.inner.node, &self.inner.boot) {
            record::IdemPhase::InFlight => Err(SendError::IdempotencyConflict),
            record::IdemPhase::Interrupted => Err(SendError::IdempotencyOutcomeUnknown),
            record::IdemPhase::Done => match self.replay(cid, &r) {
                Replay::Accepted(a) => Ok(Claimed::Replay(a)),
                Replay::Unknown => Err(SendError::IdempotencyOutcomeUnknown),
                Replay::Other => Err(SendError::IdempotencyConflict),
            },
        }
    }

    /// The first outcome of an idempotency key, replayed.
    pub(super) fn replay(&self, client: &str, r: &record::IdempotencyRecord) -> Replay {
        let Some(outcome) = r.outcome.as_ref() else {
            return Replay::Other;
        };
        match outcome.get("error").and_then(|e| e.as_str()) {
            Some("carrier_timeout") => return Replay::Unknown,
            Some(_) => return Replay::Other,
            None => {}
        }
        let Some(id) = r.message_id.as_deref() else {
            return Replay::Other;
        };
        let rec = match record::get_message(&self.inner.store, id) {
            Ok(Some(rec)) => rec,
            // Fleet mode: the first attempt was another node's.
            Ok(None) => return Self::replay_outcome(id, outcome),
            Err(_) => return Replay::Other,
        };
        if rec.client != client {
            return Replay::Other;
        }
        Replay::Accepted(SendAccepted {
            id: rec.id,
            status: MessageStatus::Accepted,
            segments: rec.segments,
            encoding: rec.encoding,
            carrier: rec.carrier.unwrap_or_default(),
            campaign_id: rec.campaign,
            created_at: to_time(rec.created_ms),
        })
    }

    /// The 201 of a first attempt made at another node of the fleet, from
    /// its recorded outcome (see `Outcome::new`).
    pub(super) fn replay_outcome(id: &str, o: &serde_json::Value) -> Replay {
        let (Some(segments), Some(encoding), Some(campaign), Some(created)) = (
            o.get("segments").and_then(|v| v.as_u64()),
            o.get("encoding").and_then(|v| v.as_str()),
            o.get("campaign_id").and_then(|v| v.as_str()),
            o.get("created_ms").and_then(|v| v.as_u64()),
        ) else {
            return Replay::Other;
        };
        Replay::Accepted(SendAccepted {
            id: id.to_owned(),
            status: MessageStatus::Accepted,
            segments: u32::try_from(segments).unwrap_or(u32::MAX),
            encoding: Encoding::parse(encoding),
            carrier: o
                .get("carrier")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            campaign_id: campaign.to_owned(),
            created_at: to_time(created),
        })
    }

    /// Marks a claimed key's outcome unknown (no answer from the carrier).
    pub(super) async fn finish_unknown(&self, cid: &str, key: &Option<IdempotencyKey>, id: &str) {
        let Some(k) = key else { return };
        let (c, k, i) = (cid.to_owned(), k.as_str().to_owned(), id.to_owned());
        let outcome = serde_json::json!({ "message_id": i, "error": "carrier_timeout" });
        let finished = if self.inner.shared.idempotency_is_shared() {
            let shared = &self.inner.shared;
            shared.finish_idempotency(&c, &k, &i, &outcome).await
        } else {
            self.inner
                .store
                .write(move |t| record::finish_idempotent(t, &c, &k, &i, outcome.clone()))
                .await
        };
        if let Err(e) = finished {
            // The claim stays in flight, which a retry also refuses.
            tracing::error!("recording an unknown outcome: {e}");
        }
    }
}
