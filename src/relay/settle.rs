//! Messages whose receipts stopped coming get a final status (issue 16
//! item 4): never a silent forever-`accepted`.
//!
//! The rules (README "Receipts"):
//! 1. **One receipt for a concatenated message.** Many carriers send a
//!    single receipt (for the first or the last segment). When a final
//!    receipt decided some segments and no receipt for the others comes
//!    within `node.receipt_window_secs` of it, the segments that have a
//!    state decide the message (all `delivered` → `delivered`; a failure
//!    state wins as it always does).
//! 2. **No final receipt at all.** A message still `accepted`
//!    `node.receipt_deadline_secs` after it was sent (default 73 h: the
//!    longest validity a carrier keeps, 72 h, plus an hour) becomes
//!    `unknown`, or is decided by rule 1 if some segment has a state.
//!
//! Either change is a status change like a receipt's: audited and sent as
//! a `message.status` webhook in the same transaction, and in fleet mode
//! projected to the shared state after the commit (like a receipt's), so
//! `GET` on every node agrees.
//!
//! Owns: the queue of messages waiting for rule 1, and the sweep that
//! applies both rules.
//!
//! Must not know: SMPP, HTTP.
//!
//! Invariants: a message is settled at most once (the op re-reads it and
//! does nothing unless it is still `accepted`); rule 1's queue is bounded
//! ([`WINDOW_QUEUE_MAX`]) and in memory — after a restart, or past the
//! bound, rule 2 catches the message; rule 2's sweep walks the time-ordered
//! `messages` table from a cursor, so each record is read once at its
//! deadline, starting at most [`FIRST_SWEEP_BACK`] behind it after a start.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;

use std::sync::Arc;

use super::record::{self, MessageRecord};
use super::status::MessageStatus;
use crate::audit::{Audit, AuditEvent};
use crate::store::shared::SharedState;
use crate::store::StoreError;
use crate::webhook::{StatusEvent, Webhooks};

/// Most messages waiting for rule 1 at once; past it rule 2 settles them.
pub const WINDOW_QUEUE_MAX: usize = 100_000;
/// How far behind its deadline the first sweep after a start begins: a
/// node down longer than this leaves older messages as they were.
pub const FIRST_SWEEP_BACK: Duration = Duration::from_secs(24 * 3600);
/// Records settled per store op, so a sweep never holds the writer long.
const SWEEP_BATCH: usize = 1000;
/// Projections of settled statuses in flight at once (fleet mode).
const PROJECT_CONCURRENCY: usize = 16;

/// A settlement's commit may wait this long for company: nobody waits on
/// it, and a sweep can settle many messages at once.
const SETTLE_COMMIT_WAIT: Duration = Duration::from_millis(50);
/// The actor of settled status changes in the audit log.
pub const SETTLE_ACTOR: &str = "sms-conduit:receipt-rules";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// See the module docs.
pub struct Settler {
    audit: Audit,
    webhooks: Option<Webhooks>,
    /// Fleet mode: where settled statuses are projected for other nodes.
    shared: Option<Arc<dyn SharedState>>,
    window: Duration,
    deadline: Duration,
    /// (due unix ms, message id), in due order (one window for all).
    queue: Mutex<VecDeque<(u64, String)>>,
    /// The sweep's next `created_ms`.
    cursor: Mutex<u64>,
}

impl Settler {
    /// `shared` is the node's shared state: in fleet mode
    /// ([`SharedState::messages_are_shared`]) every settled status is
    /// projected there.
    pub fn new(
        audit: Audit,
        webhooks: Option<Webhooks>,
        shared: Arc<dyn SharedState>,
        window: Duration,
        deadline: Duration,
    ) -> Self {
        let start = now_ms().saturating_sub((deadline + FIRST_SWEEP_BACK).as_millis() as u64);
        Settler {
            audit,
            webhooks,
            shared: shared.messages_are_shared().then_some(shared),
            window,
            deadline,
            queue: Mutex::new(VecDeque::new()),
            cursor: Mutex::new(start),
        }
    }

    /// A final receipt left `id` undecided (rule 1): settle it after the
    /// window unless its other receipts come.
    pub fn undecided(&self, id: &str) {
        let mut q = self.queue.lock();
        if q.len() < WINDOW_QUEUE_MAX {
            q.push_back((now_ms() + self.window.as_millis() as u64, id.to_owned()));
        }
    }

    /// How often [`Settler::run`] looks: a tenth of the window, 1 to 30 s.
    fn tick(&self) -> Duration {
        (self.window / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Applies both rules until `stop`.
    pub async fn run(&self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.settle_due().await {
                tracing::error!("settling messages after their receipt window: {e}");
            }
            if let Err(e) = self.sweep().await {
                tracing::error!("settling messages past their receipt deadline: {e}");
            }
        }
    }

    /// Rule 1: the messages whose window ended.
    async fn settle_due(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let due: Vec<String> = {
            let mut q = self.queue.lock();
            let n = q.iter().take_while(|(at, _)| *at <= now).count();
            q.drain(..n).map(|(_, id)| id).collect()
        };
        let project = self.shared.is_some();
        for chunk in due.chunks(SWEEP_BATCH) {
            let ids = chunk.to_vec();
            let hooks = self.webhooks.clone();
            let settled = self
                .audit
                .write_within(SETTLE_COMMIT_WAIT, move |atx| {
                    let mut settled = Settled::default();
                    for id in &ids {
                        settle_one(atx, id, hooks.as_ref(), now, project, &mut settled)?;
                    }
                    Ok(settled)
                })
                .await?;
            self.after_commit(settled).await;
        }
        Ok(())
    }

    /// Rule 2: the messages sent before `now - deadline`, from the cursor.
    async fn sweep(&self) -> Result<(), StoreError> {
        let until = now_ms().saturating_sub(self.deadline.as_millis() as u64);
        let project = self.shared.is_some();
        loop {
            let from = *self.cursor.lock();
            if from >= until {
                return Ok(());
            }
            let hooks = self.webhooks.clone();
            let (next, settled) = self
                .audit
                .write_within(SETTLE_COMMIT_WAIT, move |atx| {
                    let recs = record::accepted_between(atx.txn(), from, until, SWEEP_BATCH)?;
                    let next = recs.next_ms;
                    let now = now_ms();
                    let mut settled = Settled::default();
                    for id in &recs.ids {
                        settle_one(atx, id, hooks.as_ref(), now, project, &mut settled)?;
                    }
                    Ok((next, settled))
                })
                .await?;
            *self.cursor.lock() = next;
            self.after_commit(settled).await;
        }
    }

    /// Once a batch committed: wakes the webhook workers of its clients
    /// and, in fleet mode, projects its new statuses (best effort, as the
    /// send path and the receipts do: the owner's store stays the truth; a
    /// projection that fails is logged and counted in the shared state's
    /// error metric, and the next status change writes it again).
    async fn after_commit(&self, settled: Settled) {
        if let Some(h) = &self.webhooks {
            for c in settled.woken {
                h.notify(&c);
            }
        }
        let Some(shared) = &self.shared else {
            return;
        };
        // A sweep after a long receipt outage settles up to a batch at
        // once: a few projections in flight on the multiplexed connection.
        futures::stream::iter(&settled.records)
            .for_each_concurrent(PROJECT_CONCURRENCY, |rec| {
                record::project(shared.as_ref(), rec)
            })
            .await;
    }
}

/// What one store op settled.
#[derive(Default)]
struct Settled {
    /// Clients whose webhook worker is to be woken.
    woken: Vec<String>,
    /// The settled records, to project (fleet mode only).
    records: Vec<MessageRecord>,
}

/// Settles message `id` if it is still `accepted`: its new status, its
/// audit record and its webhook event in this transaction. Adds to `out`
/// the client whose webhook worker is to be woken and, when `project`, the
/// settled record.
fn settle_one(
    atx: &mut crate::audit::AuditTxn<'_, '_>,
    id: &str,
    hooks: Option<&Webhooks>,
    now: u64,
    project: bool,
    out: &mut Settled,
) -> Result<(), StoreError> {
    let updated = record::update_message(atx.txn(), id, |rec: &mut MessageRecord| {
        if rec.status.is_final() {
            return false;
        }
        rec.status = MessageStatus::settled(&rec.part_states);
        rec.updated_ms = now;
        true
    })?;
    let Some((rec, true)) = updated else {
        return Ok(());
    };
    let ev = AuditEvent::MessageStatus {
        message_id: rec.id.clone(),
        status: rec.status.as_str(),
        carrier: rec.carrier.clone(),
        error: rec.error_code.clone(),
    };
    atx.append(ev, SETTLE_ACTOR)?;
    if hooks.is_some_and(|h| h.has_webhook(&rec.client)) {
        crate::webhook::enqueue(atx.txn(), &rec.client, StatusEvent::from_record(&rec), now)?;
        out.woken.push(rec.client.clone());
    }
    if project {
        out.records.push(rec);
    }
    Ok(())
}
