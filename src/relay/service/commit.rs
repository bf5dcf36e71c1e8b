//! Commit: the message record, the idempotency outcome, the audit record
//! and the carrier-id index in one store op (retried in the background when
//! it fails after a carrier accepted), and fleet projection.

use super::*;

/// Everything a sent message's record commits, kept so that a commit that
/// failed can be retried later ([`Relay::record_later`]).
pub(super) struct Outcome {
    rec: MessageRecord,
    /// The carrier-id index keys of the accepted segments.
    keys: Arc<[String]>,
    /// (key, client, the outcome a retry with the key replays).
    idem: Option<(String, String, serde_json::Value)>,
    /// The accepted message's audit record, serialised off the writer.
    accepted: Option<crate::audit::Prepared>,
}

impl Outcome {
    pub(super) fn new(
        rec: MessageRecord,
        key: Option<IdempotencyKey>,
        error: Option<&SendError>,
        accepted: Option<AuditEvent>,
        actor: &str,
    ) -> Self {
        let keys: Vec<String> = rec
            .carrier_ids
            .iter()
            .filter_map(|s| dlr::index_key(s))
            .collect();
        let idem = key.map(|k| {
            let outcome = match error {
                // What a retry at another node of a fleet replays (it
                // has no record of the message).
                None => serde_json::json!({
                    "message_id": rec.id,
                    "segments": rec.segments,
                    "encoding": rec.encoding,
                    "carrier": rec.carrier,
                    "campaign_id": rec.campaign,
                    "created_ms": rec.created_ms,
                }),
                Some(e) => serde_json::json!({ "message_id": rec.id, "error": e.code() }),
            };
            (k.0, rec.client.clone(), outcome)
        });
        // Serialised here, not in the op: the store's writer thread, which
        // every op waits on, then only links and hashes it.
        let accepted = match accepted.map(|ev| Audit::prepare(ev, actor)).transpose() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(message = %rec.id, "audit record of a sent message: {e}");
                None
            }
        };
        Outcome {
            rec,
            keys: keys.into(),
            idem,
            accepted,
        }
    }
}

/// First wait before a failed record is written again; doubles to
/// [`RECORD_RETRY_MAX`]. The store reopens itself with a similar back-off.
pub(super) const RECORD_RETRY_FIRST: Duration = Duration::from_millis(200);

/// Longest wait between tries of a failed record.
pub(super) const RECORD_RETRY_MAX: Duration = Duration::from_secs(10);

impl Relay {
    /// The audit record of a message every segment of which a carrier
    /// accepted, committed with its record.
    pub(super) fn accepted_event(
        &self,
        view: &View,
        rec: &MessageRecord,
        from: &E164,
        to: Pseudonym,
    ) -> AuditEvent {
        AuditEvent::MessageAccepted {
            message_id: rec.id.clone(),
            client: rec.client.clone(),
            campaign: rec.campaign.clone(),
            from: AuditNumber::of(from, &self.inner.pseudonym_key, &view.own),
            to: AuditNumber::from(to),
            carrier: rec.carrier.clone().unwrap_or_default(),
            segments: rec.segments,
        }
    }

    /// Phase 5: the metadata, the idempotency outcome and the audit record
    /// commit in one transaction (no state change without its record); a
    /// local carrier-id index rides in it too (one op, one wake-up).
    pub(super) async fn commit(&self, o: &Arc<Outcome>) -> Result<(), crate::store::StoreError> {
        let local_index = self.inner.shared.index_is_local();
        let carrier = o.rec.carrier.clone().unwrap_or_default();
        let op = {
            let o = o.clone();
            move |atx: &mut crate::audit::AuditTxn<'_, '_>| {
                record::put_message(atx.txn(), &o.rec)?;
                if local_index {
                    put_carrier_ids(
                        atx.txn(),
                        o.rec.carrier.as_deref().unwrap_or(""),
                        &o.keys,
                        &o.rec.id,
                    )?;
                }
                if let Some((k, c, outcome)) = &o.idem {
                    record::finish_idempotent(atx.txn(), c, k, &o.rec.id, outcome.clone())?;
                }
                if let Some(p) = &o.accepted {
                    atx.append_prepared(p)?;
                }
                Ok(())
            }
        };
        let write = self.inner.audit.write(op);
        if local_index {
            write.await?;
        } else {
            let index = self
                .inner
                .shared
                .index_carrier_ids(&carrier, &o.keys, &o.rec.id);
            let (w, x) = futures::join!(write, index);
            w.and(x)?;
        }
        // Only now, the index committed: a hit there is a hit in the store.
        self.inner.sent.recent.insert(&carrier, &o.keys, &o.rec.id);
        self.project(&o.rec).await;
        if let (true, Some((k, c, outcome))) = (self.inner.shared.idempotency_is_shared(), &o.idem)
        {
            // The message is recorded whatever happens here: a key left
            // pending makes a retry answer 409, never send again.
            let shared = &self.inner.shared;
            if let Err(e) = shared.finish_idempotency(c, k, &o.rec.id, outcome).await {
                tracing::error!(message = %o.rec.id, "idempotency outcome: {e}");
            }
        }
        Ok(())
    }

    /// Retries the record of a message a carrier accepted until the store
    /// takes it; the message's receipts wait for it meanwhile.
    pub(super) fn record_later(&self, outcome: Arc<Outcome>, registration: Option<Registration>) {
        let relay = self.clone();
        self.inner.background.spawn(async move {
            let mut wait = RECORD_RETRY_FIRST;
            loop {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_RETRY_MAX);
                if !relay.inner.store.is_healthy() {
                    continue;
                }
                match relay.commit(&outcome).await {
                    Ok(()) => {
                        tracing::info!(message = %outcome.rec.id, "sent message recorded after the store recovered");
                        if let Some(r) = &registration {
                            r.pending.finish(true);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(message = %outcome.rec.id, "recording a sent message again: {e}"),
                }
            }
        });
    }

    /// Fleet mode: projects a record's status for the other nodes' `GET`
    /// ([`record::project`]).
    pub(super) async fn project(&self, rec: &MessageRecord) {
        record::project(&*self.inner.shared, rec).await;
    }
}
