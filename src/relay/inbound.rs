//! What comes back from carriers: delivery receipts (and, with the return
//! path, MO messages) handed over by the SMPP sessions.
//!
//! A receipt is correlated through the (carrier, carrier message id) index
//! (hex and decimal forms), its segment's state recorded, and the message's
//! status recomputed: `delivered` when every segment is, or the first final
//! failure (`undeliverable`, `expired`, `rejected`, `failed`). A status change,
//! its audit record and its webhook event commit in one transaction. The
//! receipt's `text:` snippet is dropped by the parser and never seen here.
//!
//! A receipt can overtake our own bookkeeping of the submit_sm_resp (the
//! carrier answers the submit and sends the receipt before the metadata
//! commit lands); such a receipt is looked up again for a short while before
//! it counts as unknown. Unknown ids are answered OK (the carrier would
//! otherwise redeliver forever), counted and audited.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use super::record;
use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;
use crate::smpp::{dlr, CommandStatus, InboundHandler, InboundMessage};
use crate::store::shared::SharedState;
use crate::store::StoreError;

/// How long a receipt for an id not (yet) in the index is retried.
const EARLY_RECEIPT_WAIT: [Duration; 4] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1500),
];

/// Hook run inside the status-change transaction (the webhook outbox).
pub type StatusHook = Arc<
    dyn Fn(&redb::WriteTransaction, &record::MessageRecord, u64) -> Result<(), StoreError>
        + Send
        + Sync,
>;

/// The relay's [`InboundHandler`].
pub struct Inbound {
    shared: Arc<dyn SharedState>,
    audit: Audit,
    metrics: Arc<Metrics>,
    on_status: Option<StatusHook>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The overall status of a message from its segments' receipts.
pub fn overall(parts: &[Option<String>]) -> Option<&'static str> {
    const FAIL: [&str; 4] = ["undeliverable", "expired", "rejected", "failed"];
    for p in parts.iter().flatten() {
        if let Some(f) = FAIL.iter().find(|f| **f == p.as_str()) {
            return Some(f);
        }
    }
    if !parts.is_empty() && parts.iter().all(|p| p.as_deref() == Some("delivered")) {
        return Some("delivered");
    }
    None
}

impl Inbound {
    pub fn new(
        shared: Arc<dyn SharedState>,
        audit: Audit,
        metrics: Arc<Metrics>,
        on_status: Option<StatusHook>,
    ) -> Self {
        Inbound {
            shared,
            audit,
            metrics,
            on_status,
        }
    }

    async fn lookup(&self, link: &str, carrier_id: &str) -> Result<Option<String>, StoreError> {
        for key in dlr::id_keys(carrier_id) {
            if let Some(id) = self.shared.lookup_carrier_id(link, &key).await? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    async fn receipt(&self, link: &str, msg: &InboundMessage) -> CommandStatus {
        let tlvs = dlr::ReceiptTlvs {
            receipted_message_id: msg.receipt.receipted_message_id.as_deref(),
            message_state: msg.receipt.message_state,
            network_error_code: None,
        };
        let receipt = match dlr::parse(msg.body_bytes(), &tlvs) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(link, "undecodable delivery receipt: {e}");
                self.metrics
                    .messages
                    .with_label_values(&["dlr", "malformed", ""])
                    .inc();
                // A receipt we cannot read will not get better on redelivery.
                return CommandStatus::EsmeRok;
            }
        };
        let mut found = None;
        for wait in std::iter::once(Duration::ZERO).chain(EARLY_RECEIPT_WAIT) {
            tokio::time::sleep(wait).await;
            match self.lookup(link, &receipt.message_id).await {
                Ok(Some(id)) => {
                    found = Some(id);
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("receipt look-up: {e}");
                    return CommandStatus::EsmeRxTAppn;
                }
            }
        }
        let Some(message_id) = found else {
            tracing::warn!(link, carrier_id = %receipt.message_id, "delivery receipt for an unknown message id");
            self.metrics
                .messages
                .with_label_values(&["dlr", "unknown_id", ""])
                .inc();
            let ev = AuditEvent::MessageStatus {
                message_id: String::new(),
                status: "unknown_receipt",
                carrier: Some(link.to_owned()),
                error: Some(receipt.message_id.clone()),
            };
            if let Err(e) = self.audit.record(ev, link).await {
                tracing::error!("audit record of an unknown receipt: {e}");
            }
            return CommandStatus::EsmeRok;
        };
        let state = receipt.state.as_status();
        let is_final = receipt.state.is_final();
        let error = receipt.error_code.clone();
        let carrier_id = receipt.message_id.clone();
        let hook = self.on_status.clone();
        let link_owned = link.to_owned();
        let result = self
            .audit
            .write(move |atx| {
                let Some(mut rec) = record::get_message_in(atx.txn(), &message_id)? else {
                    return Ok(None);
                };
                if !is_final {
                    return Ok(None);
                }
                let idx = rec
                    .carrier_ids
                    .iter()
                    .position(|c| dlr::ids_match(c, &carrier_id))
                    .unwrap_or(0);
                if rec.part_states.len() < rec.carrier_ids.len() {
                    rec.part_states.resize(rec.carrier_ids.len(), None);
                }
                if let Some(slot) = rec.part_states.get_mut(idx) {
                    *slot = Some(state.to_owned());
                }
                let new = overall(&rec.part_states);
                let changed = new.is_some_and(|n| n != rec.status);
                let now = now_ms();
                rec.updated_ms = now;
                if let Some(n) = new.filter(|_| changed) {
                    rec.status = n.to_owned();
                    if n != "delivered" {
                        rec.error_code = error.clone().or(rec.error_code.take());
                    }
                }
                record::put_message(atx.txn(), &rec)?;
                if changed {
                    atx.append(
                        AuditEvent::MessageStatus {
                            message_id: rec.id.clone(),
                            status: new.unwrap_or("unknown"),
                            carrier: Some(link_owned.clone()),
                            error: rec.error_code.clone(),
                        },
                        &link_owned,
                    )?;
                    if let Some(h) = &hook {
                        h(atx.txn(), &rec, now)?;
                    }
                }
                Ok(changed.then(|| rec.status.clone()))
            })
            .await;
        match result {
            Ok(Some(status)) => {
                self.metrics
                    .messages
                    .with_label_values(&["dlr", &status, link])
                    .inc();
                CommandStatus::EsmeRok
            }
            Ok(None) => CommandStatus::EsmeRok,
            Err(e) => {
                tracing::error!("recording a receipt: {e}");
                CommandStatus::EsmeRxTAppn
            }
        }
    }
}

impl InboundHandler for Inbound {
    fn deliver<'a>(&'a self, link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        Box::pin(async move {
            if msg.is_receipt() {
                self.receipt(link, &msg).await
            } else {
                // MO messages are relayed once the return path lands; until
                // then the carrier keeps them and retries.
                CommandStatus::EsmeRxTAppn
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::overall;

    fn p(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn delivered_only_when_every_part_is() {
        assert_eq!(overall(&p(&[Some("delivered"), None])), None);
        assert_eq!(
            overall(&p(&[Some("delivered"), Some("delivered")])),
            Some("delivered")
        );
        assert_eq!(
            overall(&p(&[Some("delivered"), Some("undeliverable")])),
            Some("undeliverable")
        );
        assert_eq!(overall(&p(&[None, Some("expired")])), Some("expired"));
    }
}
