//! What comes back from carriers: delivery receipts and MO messages handed
//! over by the SMPP sessions.
//!
//! An MO is decoded in memory (concatenated parts are held, zeroized, by
//! [`super::reassembly`] until the last one arrives or they expire, under
//! the bounds and rules documented there), its campaign found by the number
//! it was sent to, STOP/START/HELP keywords acted on (opt-out recorded first, so
//! a STOP is honoured even while the client's webhook is down), and then it
//! is POSTed to the client's webhook while the carrier waits: a 2xx gets
//! ESME_ROK, anything else ESME_RX_T_APPN so the carrier redelivers. The text
//! is never stored.
//!
//! A receipt is correlated through the (carrier, carrier message id) index
//! (hex and decimal forms), its segment's state recorded, and the message's
//! status recomputed: `delivered` when every segment is, or the first final
//! failure (`undeliverable`, `expired`, `rejected`, `failed`). A status change,
//! its audit record and its webhook event commit in one transaction. The
//! receipt's `text:` snippet is dropped by the parser and never seen here.
//!
//! Fleet mode: a final receipt for a message another node sent (the index
//! names its owner) is forwarded to that node through the shared state
//! before the carrier gets ESME_ROK (ESME_RX_T_APPN when it cannot be), and
//! the owner applies it with the same code ([`Inbound::apply_forwarded`]).
//!
//! A receipt can overtake our own bookkeeping of the submit_sm_resp (the
//! carrier answers the submit and sends the receipt before the metadata
//! commit lands); such a receipt is looked up again for a short while before
//! it counts as unknown (a message being sent is found at once through
//! `relay::inflight`, which waits for its record without polling). At most
//! [`MAX_EARLY_WAITING`] receipts per link wait so at once; beyond that a
//! receipt not found at once gets ESME_RX_T_APPN (the carrier redelivers
//! it later; counted as `dlr`/`busy`), so a flood of receipts for unknown
//! ids cannot fill the session's window and hold up its real receipts and
//! MO, and no receipt that may yet match is acknowledged and dropped. Unknown ids are
//! answered OK (the carrier would otherwise redeliver forever), counted in
//! `messages_total{outcome="unknown_id"}`, and logged and audited in
//! aggregate: the first of a link in each [`UNKNOWN_RECEIPT_REPORT`]
//! period, with the count of those not reported since.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use super::inflight::Found;
use super::reassembly::{self, Assembly, Reassembly};
use super::recent::SentIds;
use super::record;
use super::service::KeywordReply;
use super::status::MessageStatus;
use crate::audit::{Audit, AuditEvent, AuditNumber, KeywordClass, OwnNumbers};
use crate::config::{Campaign, Config};
use crate::metrics::Metrics;
use crate::smpp::{
    dlr, BindEvent, CommandStatus, InboundHandler, InboundMessage, InboundOutcome, Refusal,
};
use crate::store::shared::{ForwardedReceipt, Located, SharedState};
use crate::store::StoreError;
use crate::text::{self as encoding, keyword};
use crate::types::{Pseudonym, Secret, E164};
use crate::webhook::{ReceivedEvent, StatusEvent, Webhooks};

/// How long the carrier may wait for the client's webhook on an MO.
const MO_WEBHOOK_DEADLINE: Duration = Duration::from_secs(5);

/// How long a receipt for an id not (yet) in the index is retried.
const EARLY_RECEIPT_WAIT: [Duration; 4] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1500),
];

/// Receipts of one link that may wait for their message at once (see
/// [`EARLY_RECEIPT_WAIT`]); each holds a slot of the session's window for
/// up to two seconds, and a session's window is 64 by default.
const MAX_EARLY_WAITING: usize = 8;

/// Receipts for unknown ids are reported (a WARN line, an audit record)
/// once per link per this period; the rest are counted.
const UNKNOWN_RECEIPT_REPORT: Duration = Duration::from_secs(60);

/// A link's unknown receipts since its last report.
struct UnknownReport {
    reported_at: std::time::Instant,
    /// Unknown receipts since then, not reported each.
    since: u64,
}

/// Takes one of a link's early-wait slots; gives it back on drop.
struct EarlySlot<'a> {
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

/// The config the return path reads, swapped whole on reload.
struct MoView {
    /// Our sender numbers → their campaign.
    numbers: HashMap<E164, String>,
    campaigns: HashMap<String, Campaign>,
    /// Campaign → the client whose webhook receives its MO.
    receivers: HashMap<String, String>,
    own: OwnNumbers,
}

impl MoView {
    fn new(cfg: &Config) -> Self {
        let mut receivers = HashMap::new();
        for c in cfg.clients.iter().filter(|c| c.webhook.is_some()) {
            for campaign in &c.campaigns {
                receivers
                    .entry(campaign.clone())
                    .or_insert_with(|| c.id.clone());
            }
        }
        MoView {
            numbers: cfg.number_index(),
            campaigns: cfg
                .campaigns
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            receivers,
            own: OwnNumbers::from_config(cfg),
        }
    }
}

/// What the handler shares with the rest of the relay, built before it:
/// the settler, the send path's carrier ids, and the queue of keyword
/// answers the relay sends ([`super::Relay::answer_keywords`]).
pub struct InboundLinks {
    pub settler: Arc<super::settle::Settler>,
    pub sent: SentIds,
    pub replies: mpsc::Sender<KeywordReply>,
}

/// The relay's [`InboundHandler`].
pub struct Inbound {
    shared: Arc<dyn SharedState>,
    audit: Audit,
    metrics: Arc<Metrics>,
    webhooks: Option<Webhooks>,
    /// Settles messages whose receipts stopped coming.
    settler: Arc<super::settle::Settler>,
    /// The carrier ids of this process's sends (shared with the relay).
    sent: SentIds,
    /// Keyword answers to send, to the relay ([`super::Relay::answer_keywords`]).
    replies: mpsc::Sender<KeywordReply>,
    view: RwLock<Arc<MoView>>,
    pseudonym_key: Secret,
    /// Background work (audit records of bind changes, keyword answers),
    /// waited for by the app's drain before the store closes.
    background: tokio_util::task::TaskTracker,
    /// Parts of concatenated MOs so far.
    parts: Reassembly,
    /// Receipts waiting for their message, per link.
    early_waiting: parking_lot::Mutex<HashMap<String, usize>>,
    /// Unknown receipts' last report, per link.
    unknown: parking_lot::Mutex<HashMap<String, UnknownReport>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Inbound {
    pub fn new(
        cfg: &Config,
        shared: Arc<dyn SharedState>,
        audit: Audit,
        metrics: Arc<Metrics>,
        webhooks: Option<Webhooks>,
        background: tokio_util::task::TaskTracker,
        links: InboundLinks,
    ) -> Self {
        Inbound {
            background,
            shared,
            audit,
            webhooks,
            settler: links.settler,
            sent: links.sent,
            replies: links.replies,
            view: RwLock::new(Arc::new(MoView::new(cfg))),
            pseudonym_key: cfg.node.pseudonym_key.clone(),
            parts: Reassembly::new(metrics.clone()),
            metrics,
            early_waiting: parking_lot::Mutex::new(HashMap::new()),
            unknown: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Applies a reloaded config (numbers, campaigns, webhook receivers).
    pub fn reload(&self, cfg: &Config) {
        let v = Arc::new(MoView::new(cfg));
        *self.view.write() = v;
    }

    fn view(&self) -> Arc<MoView> {
        self.view.read().clone()
    }

    fn mo_outcome(&self, link: &str, outcome: &str) {
        self.metrics
            .messages
            .with_label_values(&["mo", outcome, link])
            .inc();
    }

    /// Records a STOP/START state change once; returns the confirmation
    /// text to send when the state changed.
    async fn opt_change(
        &self,
        link: &str,
        campaign: &Campaign,
        pseudonym: Pseudonym,
        stop: bool,
    ) -> Result<Option<String>, StoreError> {
        let was = self.shared.is_opted_out(&campaign.id, &pseudonym.0).await?;
        if was == stop {
            return Ok(None);
        }
        if stop {
            self.shared.opt_out(&campaign.id, &pseudonym.0).await?;
        } else {
            self.shared.opt_in(&campaign.id, &pseudonym.0).await?;
        }
        let number = AuditNumber::from(pseudonym);
        let ev = if stop {
            AuditEvent::OptOutAdded {
                campaign: campaign.id.clone(),
                number,
                via: "mo",
            }
        } else {
            AuditEvent::OptOutRemoved {
                campaign: campaign.id.clone(),
                number,
                via: "mo",
            }
        };
        if let Err(e) = self.audit.record(ev, link).await {
            tracing::error!("audit record of an opt-out change: {e}");
        }
        Ok(Some(if stop {
            campaign.stop_text.clone()
        } else {
            campaign.start_text.clone()
        }))
    }

    async fn mo(&self, link: &str, msg: &InboundMessage) -> InboundOutcome {
        let view = self.view();
        let Ok(from) = E164::from_smpp(&msg.source_addr) else {
            self.mo_outcome(link, "bad_source");
            return InboundOutcome::Refused(Refusal::BadSource);
        };
        let found = E164::from_smpp(&msg.dest_addr).ok().and_then(|to| {
            view.numbers
                .get(&to)
                .and_then(|c| view.campaigns.get(c))
                .map(|c| (to, c.clone()))
        });
        let Some((to, campaign)) = found else {
            tracing::warn!(link, to = %crate::types::masked(&msg.dest_addr), "MO to a number of no campaign");
            self.mo_outcome(link, "unknown_destination");
            return InboundOutcome::Refused(Refusal::UnknownDestination);
        };
        let Ok((concat, data)) = encoding::split_udh(msg.esm_class, msg.body_bytes()) else {
            self.mo_outcome(link, "undecodable");
            return InboundOutcome::Refused(Refusal::Undecodable);
        };
        let Some(c) = concat else {
            return self
                .mo_whole(link, &view, from, to, campaign, msg.data_coding, data)
                .await;
        };
        let key = reassembly::Key {
            link: link.to_owned(),
            from: from.as_str().to_owned(),
            to: to.as_str().to_owned(),
            reference: c.reference,
            total: c.total,
        };
        let (ticket, data_coding, whole) = match self.parts.add(key, c.seq, msg.data_coding, data) {
            Assembly::Whole(ticket, dc, w) => (ticket, dc, w),
            // Earlier parts are acknowledged and held in memory.
            Assembly::Held => return InboundOutcome::Held,
            // Its message was relayed already: the carrier re-sent it.
            Assembly::Duplicate => {
                self.mo_outcome(link, "duplicate_part");
                return InboundOutcome::Held;
            }
            // Not kept, so not acknowledged: the carrier retries it.
            Assembly::Busy => {
                self.mo_outcome(link, "busy");
                return InboundOutcome::RetryLater;
            }
            Assembly::NoRoom => {
                tracing::warn!(
                    link,
                    "MO part not held (held parts at their bound); the carrier will retry"
                );
                self.mo_outcome(link, "parts_full");
                return InboundOutcome::RetryLater;
            }
            Assembly::TooLong => {
                tracing::warn!(link, "MO part refused: longer than one SMS can carry");
                self.mo_outcome(link, "part_too_long");
                return InboundOutcome::Refused(Refusal::TooLong);
            }
        };
        let status = self
            .mo_whole(link, &view, from, to, campaign, data_coding, &whole)
            .await;
        // Parts stay held only while the carrier is to retry (temporary
        // error); a delivered whole is remembered so its redelivered parts
        // are not relayed again.
        ticket.close(match status {
            InboundOutcome::Taken | InboundOutcome::Held => reassembly::Outcome::Delivered,
            InboundOutcome::RetryLater => reassembly::Outcome::Retry,
            InboundOutcome::Refused(_) => reassembly::Outcome::Refused,
        });
        status
    }

    /// The rest of [`Inbound::mo`], once the text is whole.
    #[allow(clippy::too_many_arguments)]
    async fn mo_whole(
        &self,
        link: &str,
        view: &MoView,
        from: E164,
        to: E164,
        campaign: Campaign,
        data_coding: u8,
        bytes: &[u8],
    ) -> InboundOutcome {
        let Ok(text) = encoding::decode_text(data_coding, bytes) else {
            self.mo_outcome(link, "undecodable");
            return InboundOutcome::Refused(Refusal::Undecodable);
        };
        let class = keyword(text.expose());
        let pseudonym = Pseudonym::of(&self.pseudonym_key, &from);
        // Opt-out state first: a STOP is honoured even if the webhook fails.
        let mut reply = match class {
            KeywordClass::Stop | KeywordClass::Start => {
                match self
                    .opt_change(link, &campaign, pseudonym, class == KeywordClass::Stop)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("recording an opt-out change: {e}");
                        return InboundOutcome::RetryLater;
                    }
                }
            }
            KeywordClass::Help => Some(campaign.help_text.clone()),
            KeywordClass::Other => None,
        };
        if class == KeywordClass::Other && !campaign.opt_in_keywords.is_empty() {
            let r = super::consent::on_mo(
                &self.shared,
                &self.audit,
                &campaign,
                pseudonym,
                text.expose(),
                link,
            );
            match r.await {
                Ok(answer) => reply = answer,
                Err(e) => {
                    tracing::error!("recording a consent: {e}");
                    return InboundOutcome::RetryLater;
                }
            }
        }
        let ev = AuditEvent::MoReceived {
            link: link.to_owned(),
            from: AuditNumber::from(pseudonym),
            to: AuditNumber::of(&to, &self.pseudonym_key, &view.own),
            campaign: Some(campaign.id.clone()),
            keyword: class,
        };
        if let Err(e) = self.audit.record(ev, link).await {
            tracing::error!("audit record of an MO: {e}");
        }
        let status = match (view.receivers.get(&campaign.id), &self.webhooks) {
            (Some(client), Some(hooks)) => {
                let event = ReceivedEvent {
                    from: from.clone(),
                    to: to.clone(),
                    text,
                    campaign_id: campaign.id.clone(),
                    keyword: (class != KeywordClass::Other)
                        .then(|| class.as_str().to_ascii_uppercase()),
                    received_ms: now_ms(),
                };
                match hooks.deliver_now(client, event, MO_WEBHOOK_DEADLINE).await {
                    Ok(()) => InboundOutcome::Taken,
                    Err(e) => {
                        tracing::warn!(link, client = %client, "MO webhook failed; the carrier will retry: {e}");
                        self.mo_outcome(link, "webhook_failed");
                        // A HELP answer waits for the delivery that succeeds.
                        if class == KeywordClass::Help {
                            reply = None;
                        }
                        InboundOutcome::RetryLater
                    }
                }
            }
            // No client takes this campaign's MO. A keyword was handled
            // here (the opt-out state recorded, the answer sent); any other
            // text has nobody to go to yet, and SPEC §1.4 acknowledges an
            // MO only once a client has it: a temporary error, so the
            // carrier retries (and delivers once a client's webhook is
            // configured), not taken and dropped.
            _ if class != KeywordClass::Other => InboundOutcome::Taken,
            _ => {
                tracing::warn!(link, campaign = %campaign.id, "MO refused for now, the carrier will retry: no client with a webhook receives this campaign's messages");
                self.mo_outcome(link, "no_client");
                InboundOutcome::RetryLater
            }
        };
        if status == InboundOutcome::Taken {
            self.mo_outcome(link, "delivered");
        }
        if let Some(answer) = reply.filter(|t| !t.is_empty()) {
            // The answer goes out through the normal send path, off the
            // carrier's wait.
            let r = KeywordReply {
                campaign: campaign.id.clone(),
                from: to,
                to: from,
                text: answer,
            };
            if let Err(e) = self.replies.try_send(r) {
                let campaign = &campaign.id;
                tracing::warn!(%campaign, "keyword answer not sent: the relay's queue is {}", match e {
                    mpsc::error::TrySendError::Full(_) => "full",
                    mpsc::error::TrySendError::Closed(_) => "closed",
                });
            }
        }
        status
    }

    async fn lookup(&self, link: &str, carrier_id: &str) -> Result<Option<Located>, StoreError> {
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

    async fn receipt(&self, link: &str, msg: &InboundMessage) -> InboundOutcome {
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
        let receipt = match dlr::parse(msg.body_bytes(), &tlvs) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(link, "undecodable delivery receipt: {e}");
                self.metrics
                    .messages
                    .with_label_values(&["dlr", "malformed", ""])
                    .inc();
                // A receipt we cannot read will not get better on redelivery.
                return InboundOutcome::Taken;
            }
        };
        let mut found = None;
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
                        return InboundOutcome::RetryLater;
                    }
                }
                tokio::time::sleep(wait).await;
            }
            match self.lookup(link, &receipt.message_id).await {
                Ok(Some(id)) => {
                    found = Some(id);
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("receipt look-up: {e}");
                    return InboundOutcome::RetryLater;
                }
            }
        }
        drop(slot);
        let Some(located) = found else {
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
                carrier_id = %receipt.message_id,
                unreported_before = suppressed,
                "delivery receipt for an unknown message id (reported once a minute per link; every one is counted in sms_conduit_messages_total{{outcome=\"unknown_id\"}})"
            );
            let ev = AuditEvent::MessageStatus {
                message_id: String::new(),
                status: "unknown_receipt",
                carrier: Some(link.to_owned()),
                error: Some(receipt.message_id.clone()),
            };
            if let Err(e) = self.audit.record(ev, link).await {
                tracing::error!("audit record of an unknown receipt: {e}");
            }
            return InboundOutcome::Taken;
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
                return match self.shared.forward_receipt(&node, &fwd).await {
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
                };
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

    /// Applies a receipt another node of the fleet took for a message this
    /// node sent (see [`SharedState::forward_receipt`]). `Ok` once the
    /// status change, its audit record and its webhook event committed (or
    /// there was nothing to change).
    pub async fn apply_forwarded(&self, r: ForwardedReceipt) -> Result<(), StoreError> {
        let state = MessageStatus::parse(&r.state);
        self.apply_receipt(&r.carrier, r.message_id, state, true, r.error, r.carrier_id)
            .await
    }

    /// Records one segment's receipt for our message `message_id`: the
    /// status change, its audit record and its webhook event in one
    /// transaction. Both the carrier's own receipts and forwarded ones.
    async fn apply_receipt(
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
            .write(move |atx| {
                let (mut new, mut changed, mut now) = (None, false, 0);
                let mut undecided = None;
                let updated = record::update_message(atx.txn(), &message_id, |rec| {
                    if !is_final {
                        return false;
                    }
                    // Which segment: only a multi-part message needs the
                    // (allocating) id match.
                    let idx = if rec.carrier_ids.len() > 1 {
                        rec.carrier_ids
                            .iter()
                            .position(|c| dlr::ids_match(c, &carrier_id))
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
                    new = MessageStatus::overall(&rec.part_states);
                    changed = new.is_some_and(|n| n != rec.status);
                    now = now_ms();
                    rec.updated_ms = now;
                    if let Some(n) = new.filter(|_| changed) {
                        rec.status = n;
                        if n != MessageStatus::Delivered {
                            rec.error_code = error.clone().or(rec.error_code.take());
                        }
                    }
                    true
                })?;
                let Some((rec, true)) = updated else {
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
                    new.filter(|_| changed).map(|status| (status, wake)),
                    undecided,
                ))
            })
            .await;
        if let Ok((_, Some(id))) = &result {
            self.settler.undecided(id);
        }
        if let Some((status, wake)) = result?.0 {
            self.metrics
                .messages
                .with_label_values(&["dlr", status.as_str(), link])
                .inc();
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

impl InboundHandler for Inbound {
    fn bind_event(&self, event: BindEvent) {
        let ev = match event {
            BindEvent::Up {
                link,
                peer,
                direction,
                mode,
            } => AuditEvent::BindUp {
                link,
                peer,
                direction,
                mode,
            },
            BindEvent::Down { link, peer, reason } => AuditEvent::BindDown {
                link,
                peer,
                reason: reason.to_owned(),
            },
            BindEvent::Failed { link, peer, reason } => AuditEvent::BindFailed {
                link,
                peer,
                reason: reason.to_owned(),
            },
        };
        // Off the session's task: the record waits for a group commit.
        let audit = self.audit.clone();
        self.background.spawn(async move {
            if let Err(e) = audit.record(ev, crate::audit::SYSTEM).await {
                tracing::error!("audit record of a bind change: {e}");
            }
        });
    }

    fn deliver<'a>(&'a self, link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        Box::pin(async move {
            let outcome = if msg.is_receipt() {
                self.receipt(link, &msg).await
            } else {
                self.mo(link, &msg).await
            };
            outcome.command_status()
        })
    }
}
