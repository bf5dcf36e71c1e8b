//! Receipts: parsed, correlated through the send path's carrier ids and
//! the (carrier, carrier id) index (waiting a little for a message whose
//! record has not committed yet), forwarded to their owner in fleet mode,
//! and applied: the segment's state, the message's status, its audit
//! record and its webhook event in one transaction.

use super::*;
use crate::relay::record::MessageRecord;

/// How long a receipt's commit may wait to share its fsync with other
/// writes (see `Store::write_within`): the carrier waits this much longer
/// for the deliver_sm_resp at most, and at a steady moderate rate the
/// receipt rides along with the next send's commit instead of costing a
/// commit of its own. Small against a carrier's window: at 3,000 receipts/s
/// it keeps ~15 more deliver_sm outstanding over all binds.
pub(crate) const RECEIPT_COMMIT_WAIT: Duration = Duration::from_millis(5);

/// How long a receipt for an id not (yet) in the index is retried.
pub(super) const EARLY_RECEIPT_WAIT: [Duration; 4] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1500),
];

/// Receipts of one link that may wait for their message at once (see
/// [`EARLY_RECEIPT_WAIT`]); each holds a slot of the session's window for
/// up to two seconds, and a session's window is 64 by default.
pub(super) const MAX_EARLY_WAITING: usize = 8;

/// Receipts for unknown ids are reported (a WARN line, an audit record)
/// once per link per this period; the rest are counted.
pub(super) const UNKNOWN_RECEIPT_REPORT: Duration = Duration::from_secs(60);

/// A link's unknown receipts since its last report.
pub(super) struct UnknownReport {
    reported_at: std::time::Instant,
    /// Unknown receipts since then, not reported each.
    since: u64,
}

/// Takes one of a link's early-wait slots; gives it back on drop.
pub(super) struct EarlySlot<'a> {
    waiting: &'a parking_lot::Mutex<HashMap<String, usize>>,
    link: &'a str,
}

impl<'a> EarlySlot<'a> {
    fn take(
        waiting: &'a parking_lot::Mutex<HashMap<String, usize>>,
        link: &'a str,
    ) -> Option<Self> {
        let mut w = waiting.lock();
        let n = w.entry(link.to_owned()).or_insert(0);
        if *n >= MAX_EARLY_WAITING {
            return None;
        }
        *n += 1;
        Some(EarlySlot { waiting, link })
    }
}

impl Drop for EarlySlot<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.waiting.lock().get_mut(self.link) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Inbound {
    pub(super) async fn lookup(
        &self,
        link: &str,
        carrier_id: &str,
    ) -> Result<Option<Located>, StoreError> {
        let keys = dlr::lookup_keys(carrier_id);
        if keys.is_empty() {
            return Ok(None);
        }
        if let Some(id) = self.sent.recent_carrier_id(link, &keys) {
            return Ok(Some(Located::Here(id)));
        }
        // A segment of a message whose other segments are still with
        // the carrier: wait for its record rather than drop the receipt.
        match self.sent.in_flight_message(link, &keys).await {
            Some(Found::Recorded(id)) => return Ok(Some(Located::Here(id))),
            Some(Found::NotRecorded) => {
                return Err(StoreError::Refused(
                    "the receipt's message is not recorded yet".into(),
                ))
            }
            None => {}
        }
        self.shared.locate_carrier_id(link, &keys).await
    }

    /// A receipt from `link`: parsed, located, and applied here or
    /// forwarded to the node that owns its message.
    pub(super) async fn receipt(&self, link: &str, msg: &InboundMessage) -> InboundOutcome {
        let Some(receipt) = self.parse_receipt(link, msg) else {
            // A receipt we cannot read will not get better on redelivery.
            return InboundOutcome::Taken;
        };
        let located = match self.locate(link, &receipt.message_id).await {
            Ok(Some(located)) => located,
            Ok(None) => return self.unknown_receipt(link, &receipt.message_id).await,
            Err(outcome) => return outcome,
        };
        let state = MessageStatus::parse(receipt.state.as_status());
        let is_final = receipt.state.is_final();
        let message_id = match located {
            Located::Here(id) => id,
            // Fleet mode: another node sent it and owns its record; hand
            // the receipt to it before the carrier hears OK. A non-final
            // receipt changes nothing there.
            Located::Elsewhere { .. } if !is_final => return InboundOutcome::Taken,
            Located::Elsewhere { node, message_id } => {
                let fwd = ForwardedReceipt {
                    carrier: link.to_owned(),
                    carrier_id: receipt.message_id.clone(),
                    message_id,
                    state: state.as_str().to_owned(),
                    error: receipt.error_code.clone(),
                };
                return self.forward(link, &node, &fwd).await;
            }
        };
        let carrier_id = receipt.message_id.clone();
        match self
            .apply_receipt(
                link,
                message_id,
                state,
                is_final,
                receipt.error_code,
                carrier_id,
            )
            .await
        {
            Ok(()) => InboundOutcome::Taken,
            Err(e) => {
                tracing::error!("recording a receipt: {e}");
                InboundOutcome::RetryLater
            }
        }
    }

    /// The receipt in `msg`, or `None` (counted) when it cannot be read.
    fn parse_receipt(&self, link: &str, msg: &InboundMessage) -> Option<dlr::Receipt> {
        // The TLV's raw form (type, code big-endian), which `dlr::parse`
        // prefers to the text's `err:` field.
        let network_error = msg.receipt.network_error_code.map(|(net, code)| {
            let [hi, lo] = code.to_be_bytes();
            [net, hi, lo]
        });
        let tlvs = dlr::ReceiptTlvs {
            receipted_message_id: msg.receipt.receipted_message_id.as_deref(),
            message_state: msg.receipt.message_state,
            network_error_code: network_error.as_ref().map(|b| &b[..]),
        };
        match dlr::parse(msg.body_bytes(), &tlvs) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(link, "undecodable delivery receipt: {e}");
                self.metrics
                    .messages
                    .with_label_values(&["dlr", "malformed", ""])
                    .inc();
                None
            }
        }
    }

    /// Where a receipt's message is: looked up at once, then again after
    /// each of [`EARLY_RECEIPT_WAIT`] while it may not be recorded yet
    /// (holding one of the link's early-wait slots). `Ok(None)`: unknown;
    /// `Err`: the outcome to answer now.
    async fn locate(
        &self,
        link: &str,
        carrier_id: &str,
    ) -> Result<Option<Located>, InboundOutcome> {
        let mut slot = None;
        for wait in std::iter::once(Duration::ZERO).chain(EARLY_RECEIPT_WAIT) {
            if !wait.is_zero() {
                if slot.is_none() {
                    slot = EarlySlot::take(&self.early_waiting, link);
                    if slot.is_none() {
                        // Enough of this link's receipts wait already: a
                        // temporary error, so the carrier redelivers it once
                        // its message may be recorded (never acknowledged and
                        // dropped: under load a real receipt can be early).
                        self.metrics
                            .messages
                            .with_label_values(&["dlr", "busy", ""])
                            .inc();
                        return Err(InboundOutcome::RetryLater);
                    }
                }
                tokio::time::sleep(wait).await;
            }
            match self.lookup(link, carrier_id).await {
                Ok(Some(id)) => return Ok(Some(id)),
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("receipt look-up: {e}");
                    return Err(InboundOutcome::RetryLater);
                }
            }
        }
        Ok(None)
    }

    /// A receipt for an id no message has: counted, and reported (a WARN
    /// line, an audit record) once per link per
    /// [`UNKNOWN_RECEIPT_REPORT`]; acknowledged (the carrier would
    /// otherwise redeliver it forever).
    async fn unknown_receipt(&self, link: &str, carrier_id: &str) -> InboundOutcome {
        self.metrics
            .messages
            .with_label_values(&["dlr", "unknown_id", ""])
            .inc();
        let suppressed = {
            let now = std::time::Instant::now();
            let mut u = self.unknown.lock();
            match u.get_mut(link) {
                Some(r) if now.duration_since(r.reported_at) < UNKNOWN_RECEIPT_REPORT => {
                    r.since += 1;
                    None
                }
                Some(r) => {
                    r.reported_at = now;
                    Some(std::mem::take(&mut r.since))
                }
                None => {
                    u.insert(
                        link.to_owned(),
                        UnknownReport {
                            reported_at: now,
                            since: 0,
                        },
                    );
                    Some(0)
                }
            }
        };
        let Some(suppressed) = suppressed else {
            return InboundOutcome::Taken;
        };
        tracing::warn!(
            link,
            carrier_id = %carrier_id,
            unreported_before = suppressed,
            "delivery receipt for an unknown message id (reported once a minute per link; every one is counted in sms_conduit_messages_total{{outcome=\"unknown_id\"}})"
        );
        let ev = AuditEvent::MessageStatus {
            message_id: String::new(),
            status: "unknown_receipt",
            carrier: Some(link.to_owned()),
            error: Some(carrier_id.to_owned()),
        };
        if let Err(e) = self.audit.record(ev, link).await {
            tracing::error!("audit record of an unknown receipt: {e}");
        }
        InboundOutcome::Taken
    }

    /// Fleet mode: hands a final receipt to the node that owns its message.
    async fn forward(&self, link: &str, node: &str, fwd: &ForwardedReceipt) -> InboundOutcome {
        match self.shared.forward_receipt(node, fwd).await {
            Ok(()) => {
                self.metrics
                    .messages
                    .with_label_values(&["dlr", "forwarded", link])
                    .inc();
                InboundOutcome::Taken
            }
            Err(e) => {
                tracing::error!(owner = %node, "forwarding a receipt: {e}");
                InboundOutcome::RetryLater
            }
        }
    }

    /// Applies a receipt another node of the fleet took for a message this
    /// node sent (see [`SharedState::forward_receipt`]). `Ok` once the
    /// status change, its audit record and its webhook event committed (or
    /// there was nothing to change).
    pub async fn apply_forwarded(&self, r: ForwardedReceipt) -> Result<(), StoreError> {
        let state = MessageStatus::parse(&r.state);
        self.apply_receipt(&r.carrier, r.message_id, state, true, r.error, r.carrier_id)
            .await
    }

    // Over 120 lines on purpose: a receipt's one transaction (status,
    // audit record, webhook event) read top to bottom; not split while the
    // receipt path's performance work is under way.
    /// Records one segment's receipt for our message `message_id`: the
    /// status change, its audit record and its webhook event in one
    /// transaction. Both the carrier's own receipts and forwarded ones.
    pub(super) async fn apply_receipt(
        &self,
        link: &str,
        message_id: String,
        state: MessageStatus,
        is_final: bool,
        error: Option<String>,
        carrier_id: String,
    ) -> Result<(), StoreError> {
        // Fleet mode: a status change is projected for the other nodes.
        let project_id = self
            .shared
            .messages_are_shared()
            .then(|| message_id.clone());
        let hooks = self.webhooks.clone();
        let link_owned = link.to_owned();
        // The usual outcome's audit record, serialised here rather than on
        // the store's writer thread: the message's only receipt, with no
        // earlier error. The op checks it matches, else builds its own.
        let likely = (is_final && state == MessageStatus::Delivered)
            .then(|| {
                let ev = AuditEvent::MessageStatus {
                    message_id: message_id.clone(),
                    status: state.as_str(),
                    carrier: Some(link_owned.clone()),
                    error: None,
                };
                Audit::prepare(ev, &link_owned).ok()
            })
            .flatten();
        let result = self
            .audit
            .write_within(RECEIPT_COMMIT_WAIT, move |atx| {
                let mut applied = None;
                let mut undecided = None;
                let updated = record::update_message(atx.txn(), &message_id, |rec| {
                    if !is_final {
                        return false;
                    }
                    applied = Some(record_segment(rec, &carrier_id, state, &error));
                    true
                })?;
                let (Some((rec, true)), Some(Applied { new, changed, now })) = (updated, applied)
                else {
                    return Ok((None, None));
                };
                if new.is_none() && rec.segments > 1 {
                    // A final receipt that left the message undecided:
                    // its other segments' receipts may never come.
                    undecided = Some(rec.id.clone());
                }
                if changed {
                    let status = new.unwrap_or(MessageStatus::Unknown);
                    match &likely {
                        Some(p) if status == state && rec.error_code.is_none() => {
                            atx.append_prepared(p)?;
                        }
                        _ => {
                            let ev = AuditEvent::MessageStatus {
                                message_id: rec.id.clone(),
                                status: status.as_str(),
                                carrier: Some(link_owned.clone()),
                                error: rec.error_code.clone(),
                            };
                            atx.append(ev, &link_owned)?;
                        }
                    }
                    if hooks.as_ref().is_some_and(|h| h.has_webhook(&rec.client)) {
                        crate::webhook::enqueue(
                            atx.txn(),
                            &rec.client,
                            StatusEvent::from_record(&rec),
                            now,
                        )?;
                    }
                }
                // The new status (`rec.status` now), and the client only
                // when a webhook worker is to be woken.
                let wake = hooks.as_ref().map(|_| rec.client.clone());
                Ok((
                    new.filter(|_| changed).map(|status| Decided {
                        status,
                        wake,
                        age_ms: now.saturating_sub(rec.created_ms),
                        error: rec.error_code.clone(),
                    }),
                    undecided,
                ))
            })
            .await;
        if let Ok((_, Some(id))) = &result {
            self.settler.undecided(id);
        }
        if let Some(Decided {
            status,
            wake,
            age_ms,
            error,
        }) = result?.0
        {
            self.metrics
                .messages
                .with_label_values(&["dlr", status.as_str(), link])
                .inc();
            self.metrics
                .receipt_latency
                .with_label_values(&[link])
                .observe(age_ms as f64 / 1000.0);
            if let Some(code) = &error {
                self.metrics
                    .receipt_errors
                    .with_label_values(&[link, crate::metrics::error_label(code)])
                    .inc();
            }
            if let (Some(h), Some(client)) = (&self.webhooks, wake) {
                // The event is committed: wake the client's worker.
                h.notify(&client);
            }
            if let Some(id) = project_id {
                record::project_stored(self.audit.store(), &*self.shared, &id).await;
            }
        }
        Ok(())
    }
}

/// A message a receipt decided: its new status, the client whose webhook
/// worker to wake, and what the receipt metrics need.
struct Decided {
    status: MessageStatus,
    wake: Option<String>,
    /// From the message's record to this receipt's commit.
    age_ms: u64,
    error: Option<String>,
}

/// What a final receipt did to its message's record.
struct Applied {
    /// The status the segments now decide, if they decide one.
    new: Option<MessageStatus>,
    /// Whether that is a change.
    changed: bool,
    /// The record's new `updated_ms`.
    now: u64,
}

/// Records a final receipt's state for its segment of `rec` and
/// recomputes the message's status ([`MessageStatus::overall`]); a failure
/// keeps the receipt's error code.
fn record_segment(
    rec: &mut MessageRecord,
    carrier_id: &str,
    state: MessageStatus,
    error: &Option<String>,
) -> Applied {
    // Which segment: only a multi-part message needs the (allocating) id
    // match.
    let idx = if rec.carrier_ids.len() > 1 {
        rec.carrier_ids
            .iter()
            .position(|c| dlr::ids_match(c, carrier_id))
            .unwrap_or(0)
    } else {
        0
    };
    if rec.part_states.len() < rec.carrier_ids.len() {
        rec.part_states.resize(rec.carrier_ids.len(), None);
    }
    if let Some(slot) = rec.part_states.get_mut(idx) {
        *slot = Some(state);
    }
    let new = MessageStatus::overall(&rec.part_states);
    let changed = new.is_some_and(|n| n != rec.status);
    let now = now_ms();
    rec.updated_ms = now;
    if let Some(n) = new.filter(|_| changed) {
        rec.status = n;
        if n != MessageStatus::Delivered {
            rec.error_code = error.clone().or(rec.error_code.take());
        }
    }
    Applied { new, changed, now }
}
