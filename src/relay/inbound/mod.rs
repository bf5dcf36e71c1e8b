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
//! [`receipt::MAX_EARLY_WAITING`] receipts per link wait so at once; beyond that a
//! receipt not found at once gets ESME_RX_T_APPN (the carrier redelivers
//! it later; counted as `dlr`/`busy`), so a flood of receipts for unknown
//! ids cannot fill the session's window and hold up its real receipts and
//! MO, and no receipt that may yet match is acknowledged and dropped. Unknown ids are
//! answered OK (the carrier would otherwise redeliver forever), counted in
//! `messages_total{outcome="unknown_id"}`, and logged and audited in
//! aggregate: the first of a link in each [`receipt::UNKNOWN_RECEIPT_REPORT`]
//! period, with the count of those not reported since.
//!
//! Code map: this file holds the [`Inbound`] handler, its config view and
//! the one place its outcome becomes a command status
//! ([`InboundOutcome::command_status`]); [`mo`] the MO path; [`receipt`] the
//! receipt path and [`Inbound::apply_forwarded`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::inflight::Found;
use super::reassembly::{self, Assembly, Reassembly};
use super::recent::SentIds;
use super::record;
use super::service::KeywordReply;
use super::status::MessageStatus;
use crate::audit::{Audit, AuditEvent, AuditNumber, KeywordClass, OwnNumbers};
use crate::config::{Campaign, Config};
use crate::live::Part;
use crate::metrics::Metrics;
use crate::smpp::{
    dlr, BindEvent, CommandStatus, InboundHandler, InboundMessage, InboundOutcome, Refusal,
};
use crate::store::shared::{ForwardedReceipt, Located, SharedState};
use crate::store::StoreError;
use crate::text::{self as encoding, keyword};
use crate::types::{Pseudonym, Secret, E164};
use crate::webhook::{ReceivedEvent, StatusEvent, Webhooks};

mod mo;
mod receipt;

use receipt::UnknownReport;

/// The config the return path reads: the inbound handler's part of the
/// live configuration, swapped with the whole snapshot on reload.
pub struct MoView {
    /// Our sender numbers → their campaign.
    numbers: HashMap<E164, String>,
    campaigns: HashMap<String, Campaign>,
    /// Campaign → the client whose webhook receives its MO.
    receivers: HashMap<String, String>,
    own: OwnNumbers,
}

impl MoView {
    pub fn new(cfg: &Config) -> Self {
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
    /// The handler's part of the live configuration.
    pub view: Part<MoView>,
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
    view: Part<MoView>,
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
            view: links.view,
            pseudonym_key: cfg.node.pseudonym_key.clone(),
            parts: Reassembly::new(metrics.clone()),
            metrics,
            early_waiting: parking_lot::Mutex::new(HashMap::new()),
            unknown: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    fn view(&self) -> Arc<MoView> {
        self.view.load()
    }

    fn mo_outcome(&self, link: &str, outcome: &str) {
        self.metrics
            .messages
            .with_label_values(&["mo", outcome, link])
            .inc();
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
