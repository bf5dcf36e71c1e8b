//! Delivery: one worker task per client with a webhook, plus the
//! synchronous MO path.
//!
//! Owns, per client: the HTTP client (rustls, the client's CA, ALPN h2 and
//! http/1.1, no proxy from the environment, no redirects), the current URL
//! and secret (swapped by [`Webhooks::reload`]), a [`Notify`] that wakes the
//! worker, and the worker's [`Schedule`].
//!
//! A worker loop: read new outbox rows (past the last seq it saw, up to its
//! window; while events keep coming, at most every [`INGEST_EVERY`], so the
//! events of a few ms start together), start every due event while fewer
//! than `concurrency` are in flight, then sleep until something finishes, a
//! wake-up, the next due time or the poll interval. Each attempt is a task that reads its record and
//! POSTs it. A failure is recorded in the attempt's own store op (new
//! `attempt`/`next_attempt_ms`). A 2xx frees the attempt's slot at once; the
//! worker removes the events answered 2xx in batches, one store op per
//! batch with one batch in flight, and that op's commit may wait a few ms
//! to share the next send's or receipt's fsync ([`REMOVAL_COMMIT_WAIT`]):
//! at a steady rate, webhooks add no commits of their own. An event stays
//! taken in the [`Schedule`] (its message's next event waits) until its
//! removal committed.
//!
//! When the store cannot record an outcome (a full disk: [`Store::is_healthy`]
//! is false) the worker starts no attempt until it can: an attempt it cannot
//! record would only be made again. An event the client already took (2xx)
//! whose delete failed is remembered in memory and only deleted later, not
//! POSTed again.
//!
//! Invariants:
//! - one event per message in flight, a message's events in seq order (see
//!   [`Schedule`]);
//! - an event leaves the outbox only after a 2xx or after its maximum age;
//!   delivery is at least once (a crash between the 2xx and the delete sends
//!   it again, with the same event id), but a live worker POSTs an event
//!   that got a 2xx only once, however long its delete keeps failing;
//! - an event is POSTed again no sooner than its back-off: while the store
//!   is unhealthy no attempt starts at all;
//! - one [`Webhooks`] per store: two would send the same events;
//! - no lock is held across an `.await` (the std locks below are held only
//!   to clone an `Arc`);
//! - logs carry the client id, event id, attempt and outcome — never the
//!   payload, the URL or a number;
//! - a failing endpoint is logged once per failure series (when it starts,
//!   with outcome, status and back-off) and once when it answers 2xx again;
//!   single attempts are debug lines and the `webhook_attempts` counter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod http;
mod targets;

use http::{post, EndpointHealth, Failure, Target};
pub use targets::PreparedWebhooks;

use super::event::{new_event_id, status_body, ReceivedEvent, StatusEvent};
use super::outbox::{Outbox, OutboxRecord};
use super::schedule::Schedule;
use super::{Options, WebhookError};
use crate::config;
use crate::live::Part;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How often a worker refreshes the outbox gauges (depth, oldest age) while
/// it runs: at most this stale, and at most four read transactions a second
/// whatever the rate of events.
const GAUGES_EVERY: Duration = Duration::from_millis(250);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Delay before retry number `attempt` (1 = after the first failure):
/// `base · 2^(attempt-1)`, ±20 % jitter, never above `cap`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let raw = ms(base).saturating_mul(1u64 << exp).min(ms(cap));
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    let jittered = (raw as f64 * jitter) as u64;
    Duration::from_millis(jittered.min(ms(cap)))
}

/// A client's worker state shared with [`Webhooks`].
struct Slot {
    id: String,
    /// Kept across reloads: a failure series outlives a new URL or secret.
    health: Arc<EndpointHealth>,
    target: RwLock<Arc<Target>>,
    notify: Notify,
    stop: CancellationToken,
}

impl Slot {
    fn target(&self) -> Arc<Target> {
        self.target.read().clone()
    }

    fn set_target(&self, t: Arc<Target>) {
        *self.target.write() = t;
    }
}

struct Shared {
    outbox: Outbox,
    metrics: Arc<Metrics>,
    options: Options,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Every client's target: its part of the live configuration. A slot's
    /// own target is the fallback for a client the current one no longer
    /// has (its worker is being stopped).
    targets: Part<PreparedWebhooks>,
    /// Held only to look up, insert or remove a slot; never across an await.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// Webhook delivery for every client with a webhook. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// What an attempt task tells its worker.
enum Attempted {
    /// The event left the outbox (delivered, expired, or gone).
    Done,
    /// Still pending; due again at this unix ms.
    Retry(u64),
    /// The client took it (2xx): remove it from the outbox (in the
    /// worker's next removal batch); never POST it again.
    Delivered(String),
}

/// While events keep coming, the longest a new event waits for the worker
/// to take it: a worker woken within this of the last scan a wake-up
/// started waits until it is up, so the events of a few milliseconds start
/// together and their requests leave in one write on the client's HTTP/2
/// connection (see `http::Chunks`), their answers come back together. One
/// by one, each cost the relay a write, a read and a wake-up of its own.
/// After a quiet spell the first event is taken at once; the poll
/// interval's scan never waits; MO webhooks (`deliver_now`) never wait.
const INGEST_EVERY: Duration = Duration::from_millis(5);

/// How long an outbox removal's commit may wait for company. Removals are
/// batched per worker (one store op for every event answered 2xx since the
/// last one), and the batch's commit rides along with the next send or
/// receipt commit, so a steady stream of webhooks adds no commits of its
/// own. A crash before the commit sends those events again (at least once;
/// clients de-duplicate by event id).
const REMOVAL_COMMIT_WAIT: Duration = Duration::from_millis(20);

impl Webhooks {
    /// Starts a worker for every client with a webhook, with the SPEC
    /// defaults. Workers are spawned on `tracker` and stop when `shutdown`
    /// fires, after their in-flight attempts finished (bounded by the
    /// request timeout).
    pub fn start(
        clients: &[config::Client],
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Webhooks, WebhookError> {
        Self::start_with(
            clients,
            store,
            metrics,
            shutdown,
            tracker,
            Options::default(),
        )
    }

    /// As [`Webhooks::start`] with explicit timeouts and backoff.
    pub fn start_with(
        clients: &[config::Client],
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        options: Options,
    ) -> Result<Webhooks, WebhookError> {
        let targets = PreparedWebhooks::build(clients, &options, &metrics)?;
        let part = Part::own(Arc::new(targets));
        Ok(Self::start_in(
            part, store, metrics, shutdown, tracker, options,
        ))
    }

    /// As [`Webhooks::start_with`], the targets read from `targets` (the
    /// app: its part of the live snapshot); starts a worker for each.
    pub fn start_in(
        targets: Part<PreparedWebhooks>,
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        options: Options,
    ) -> Webhooks {
        let first = targets.load();
        let hooks = Webhooks {
            shared: Arc::new(Shared {
                outbox: Outbox::new(store),
                metrics,
                options,
                shutdown,
                tracker,
                targets,
                slots: Mutex::new(HashMap::new()),
            }),
        };
        hooks.apply(&first);
        hooks
    }

    /// Wakes `client`'s worker: call after the store op that enqueued an
    /// event for it returned `Ok`.
    pub fn notify(&self, client: &str) {
        if let Some(slot) = self.slot(client) {
            slot.notify.notify_one();
        }
    }

    /// Whether `client` has a webhook (and so wants status events).
    pub fn has_webhook(&self, client: &str) -> bool {
        self.shared.targets.load().built.contains_key(client)
    }

    /// Enqueues a status event in its own store op and wakes the worker —
    /// for callers that have no status change to commit with it.
    pub async fn enqueue(&self, client: &str, event: StatusEvent) -> Result<(), StoreError> {
        let owned = client.to_owned();
        self.shared
            .outbox
            .store()
            .write(move |txn| super::outbox::enqueue(txn, &owned, event.clone(), now_ms()))
            .await?;
        self.notify(client);
        Ok(())
    }

    /// The outbox these workers drain.
    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    /// Sends an MO to `client` now: one signed POST, `Ok` only on a 2xx
    /// within `deadline` (and the request timeout). Not retried and never
    /// stored: on `Err` the caller answers the carrier with a temporary error
    /// so the carrier retries. The event (and its text) is dropped as soon as
    /// the request body is built; the body buffer is zeroized once sent.
    pub async fn deliver_now(
        &self,
        client: &str,
        event: ReceivedEvent,
        deadline: Duration,
    ) -> Result<(), WebhookError> {
        let slot = self
            .slot(client)
            .ok_or_else(|| WebhookError::NoWebhook(client.to_owned()))?;
        let target = self.shared.target_of(&slot);
        let event_id = new_event_id();
        let body = event.to_body(&event_id, now_ms())?;
        drop(event);
        let timeout = deadline.min(self.shared.options.request_timeout);
        let result = post(&target, body, timeout).await;
        let outcome = result.as_ref().err().map_or("ok", Failure::outcome);
        match &result {
            Ok(()) => slot.health.succeeded(client),
            // Not retried here: the carrier retries the MO.
            Err(f) => slot.health.failed(client, f, None),
        }
        self.shared
            .metrics
            .webhook_attempts
            .with_label_values(&[client, outcome])
            .inc();
        result.map_err(|f| {
            tracing::debug!(client, event_id = %event_id, outcome, "MO webhook failed");
            f.into_error(client, timeout)
        })
    }

    fn slot(&self, client: &str) -> Option<Arc<Slot>> {
        self.shared.slots.lock().get(client).cloned()
    }
}

/// The worker loop of one client (see the module doc).
async fn run_worker(shared: Arc<Shared>, slot: Arc<Slot>) {
    tracing::info!(client = %slot.id, "webhook worker started");
    let poll = shared.options.poll_interval;
    let mut sched = Schedule::default();
    let mut inflight: JoinSet<Attempted> = JoinSet::new();
    let mut seq_of: HashMap<tokio::task::Id, u64> = HashMap::new();
    // Seqs the client took (2xx) whose delete failed; held in `sched` too,
    // so bounded by the window.
    let mut delivered: HashSet<u64> = HashSet::new();
    // The records a scan read, until their first attempt takes them: that
    // attempt needs no read transaction of its own. A retry reads the
    // record again (its attempt count changed). Holds a subset of `sched`.
    let mut fresh: HashMap<u64, OutboxRecord> = HashMap::new();
    // Events answered 2xx, waiting for the next removal batch; and the one
    // batch in flight (its seqs come back with whether it committed).
    let mut removals: Vec<(u64, String)> = Vec::new();
    let mut removing: JoinSet<(Vec<u64>, bool)> = JoinSet::new();
    let mut paused = false;
    // Whether the outbox may hold rows past the schedule's last seen seq:
    // set by a wake-up (an enqueue notifies), cleared by a scan that found
    // fewer rows than it had room for; and a poll interval after the last
    // scan the worker scans anyway (the sleeps for a retry's due time or
    // the gauges do not scan). Scanning only then
    // keeps the store's read transactions off the paths that add no rows
    // (an attempt's answer, a removal's commit).
    let mut unread = true;
    let mut scanned_at = std::time::Instant::now();
    // When a wake-up last made the worker scan (see INGEST_EVERY).
    let mut woken_scan_at = scanned_at.checked_sub(INGEST_EVERY).unwrap_or(scanned_at);
    // The gauges are refreshed at most every GAUGES_EVERY, and within it
    // after anything happened (so the last event's removal shows).
    let (mut gauges_due, mut gauges_stale) = (std::time::Instant::now(), true);
    // One timer for the whole loop, moved only when its deadline moves
    // (see `rearm`): a new sleep per turn registered a timer entry each
    // time, and one due sooner than the runtime's next wake-up makes tokio
    // wake its driver (an eventfd write and one more epoll_wait): ~0.3 per
    // message at 1,000 msg/s.
    let sleep = tokio::time::sleep(poll);
    tokio::pin!(sleep);
    loop {
        // A store that cannot commit cannot record an attempt's outcome:
        // start none until it recovers (it does so by itself).
        let healthy = shared.outbox.store().is_healthy();
        match (paused, healthy) {
            (true, true) => {
                tracing::info!(client = %slot.id, "store commits again; webhook deliveries resume");
            }
            (false, false) => {
                tracing::warn!(client = %slot.id, "store cannot commit; webhook deliveries wait for it");
            }
            _ => {}
        }
        paused = !healthy;
        let target = shared.target_of(&slot);
        let now = now_ms();
        // A wake-up's scan comes at most every INGEST_EVERY (see there);
        // the poll interval's scan never waits.
        let woken_scan_in = INGEST_EVERY.saturating_sub(woken_scan_at.elapsed());
        let scan = (unread && woken_scan_in.is_zero()) || scanned_at.elapsed() >= poll;
        if healthy {
            if scan {
                if unread {
                    woken_scan_at = std::time::Instant::now();
                }
                unread = shared.ingest(&slot.id, &mut sched, &mut fresh);
                scanned_at = std::time::Instant::now();
            }
            let now_i = std::time::Instant::now();
            if gauges_stale && now_i >= gauges_due {
                shared.refresh_gauges(&slot.id);
                gauges_due = now_i + GAUGES_EVERY;
                gauges_stale = false;
            }
            while inflight.len() < target.concurrency {
                let Some(seq) = sched.take_due(now) else {
                    break;
                };
                let task = attempt(
                    shared.clone(),
                    slot.id.clone(),
                    slot.health.clone(),
                    target.clone(),
                    seq,
                    fresh.remove(&seq),
                    delivered.contains(&seq),
                );
                let handle = inflight.spawn(task);
                seq_of.insert(handle.id(), seq);
            }
            if removing.is_empty() && !removals.is_empty() {
                removing.spawn(
                    shared
                        .clone()
                        .remove_batch(slot.id.clone(), std::mem::take(&mut removals)),
                );
            }
        }
        let mut wait = match sched.next_due() {
            Some(at) if healthy && inflight.len() < target.concurrency => {
                Duration::from_millis(at.saturating_sub(now)).min(poll)
            }
            _ => poll,
        };
        if healthy && gauges_stale {
            wait = wait.min(gauges_due.saturating_duration_since(std::time::Instant::now()));
        }
        // Until INGEST_EVERY after the last scan a wake-up started, the
        // timer stays at that instant, whether a wake-up came since or not:
        // a wake-up too soon after that scan is taken then, and while events
        // keep coming each finds the timer already there (moving it sooner
        // would wake tokio's driver: an eventfd write, one more
        // epoll_wait). After the last event it fires once for nothing.
        let next_scan_in = INGEST_EVERY.saturating_sub(woken_scan_at.elapsed());
        if healthy && !next_scan_in.is_zero() {
            wait = wait.min(next_scan_in);
        }
        rearm(sleep.as_mut(), wait);
        tokio::select! {
            _ = slot.stop.cancelled() => break,
            Some(joined) = inflight.join_next_with_id() => {
                apply(&mut sched, &mut seq_of, &mut delivered, &mut removals, joined, poll);
            }
            Some(joined) = removing.join_next() => {
                removed(&mut sched, &mut delivered, joined, poll);
            }
            _ = slot.notify.notified() => unread = true,
            () = &mut sleep => {}
        }
        gauges_stale = true;
    }
    // Let attempts in flight record their outcome, so a restart does not
    // resend what was just delivered.
    while let Some(joined) = inflight.join_next_with_id().await {
        apply(
            &mut sched,
            &mut seq_of,
            &mut delivered,
            &mut removals,
            joined,
            poll,
        );
    }
    while let Some(joined) = removing.join_next().await {
        removed(&mut sched, &mut delivered, joined, poll);
    }
    if !removals.is_empty() {
        let _ = shared.clone().remove_batch(slot.id.clone(), removals).await;
    }
    tracing::info!(client = %slot.id, "webhook worker stopped");
}

/// How far a worker's timer may be from the deadline a turn computed and
/// still be kept: tokio's timer counts whole milliseconds, and the
/// deadlines of consecutive turns (now + the time left) differ by less.
const REARM_SLACK: Duration = Duration::from_millis(1);

/// Points the worker's timer `wait` from now, unless it already fires
/// within [`REARM_SLACK`] of that (so a deadline that did not move, such
/// as the next scan's, is not registered again) or has fired.
fn rearm(sleep: std::pin::Pin<&mut tokio::time::Sleep>, wait: Duration) {
    let at = tokio::time::Instant::now() + wait;
    let current = sleep.deadline();
    if sleep.is_elapsed() || at.max(current) - at.min(current) > REARM_SLACK {
        sleep.reset(at);
    }
}

fn apply(
    sched: &mut Schedule,
    seq_of: &mut HashMap<tokio::task::Id, u64>,
    delivered: &mut HashSet<u64>,
    removals: &mut Vec<(u64, String)>,
    joined: Result<(tokio::task::Id, Attempted), tokio::task::JoinError>,
    poll: Duration,
) {
    let (id, result) = match joined {
        Ok((id, r)) => (id, Some(r)),
        Err(e) => (e.id(), None),
    };
    let Some(seq) = seq_of.remove(&id) else {
        return;
    };
    match result {
        Some(Attempted::Done) => {
            delivered.remove(&seq);
            sched.done(seq);
        }
        Some(Attempted::Retry(at)) => sched.retry(seq, at),
        Some(Attempted::Delivered(event_id)) => {
            // Stays taken in the schedule (the message's next event waits)
            // until its removal committed.
            delivered.insert(seq);
            removals.push((seq, event_id));
        }
        None => {
            tracing::error!(seq, "webhook attempt task failed; retrying later");
            sched.retry(seq, now_ms().saturating_add(ms(poll)));
        }
    }
}

/// Books a removal batch's outcome: committed events leave the schedule;
/// if the commit failed they are due again for their removal only (never
/// POSTed again by this worker).
fn removed(
    sched: &mut Schedule,
    delivered: &mut HashSet<u64>,
    joined: Result<(Vec<u64>, bool), tokio::task::JoinError>,
    poll: Duration,
) {
    let Ok((seqs, ok)) = joined else {
        // The task panicked: its seqs are lost to us, but they are still in
        // `delivered`; a restart sends them again (at least once).
        tracing::error!("webhook removal task failed");
        return;
    };
    let retry_at = now_ms().saturating_add(ms(poll));
    for seq in seqs {
        if ok {
            delivered.remove(&seq);
            sched.done(seq);
        } else {
            sched.retry(seq, retry_at);
        }
    }
}

impl Shared {
    /// Removes a batch of delivered events in one store op; returns their
    /// seqs and whether the removal committed.
    async fn remove_batch(
        self: Arc<Self>,
        client: String,
        batch: Vec<(u64, String)>,
    ) -> (Vec<u64>, bool) {
        let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
        match self
            .outbox
            .remove_many(&client, batch, REMOVAL_COMMIT_WAIT)
            .await
        {
            Ok(_) => (seqs, true),
            Err(e) => {
                tracing::warn!(
                    client,
                    events = seqs.len(),
                    error = %e,
                    "delivered, but removing the events failed; retrying the removal"
                );
                (seqs, false)
            }
        }
    }

    /// Reads outbox rows past the last seen seq into the schedule, up to the
    /// window, and their records into `fresh` (for their first attempt).
    /// Returns whether rows may still wait unread: the window was full or
    /// the read failed.
    fn ingest(
        &self,
        client: &str,
        sched: &mut Schedule,
        fresh: &mut HashMap<u64, OutboxRecord>,
    ) -> bool {
        let room = self.options.window.saturating_sub(sched.len());
        if room == 0 {
            return true;
        }
        match self
            .outbox
            .scan::<OutboxRecord>(client, sched.last_seen(), room)
        {
            Ok(rows) => {
                let full = rows.len() >= room;
                for row in rows {
                    match row.record {
                        Some(rec) => {
                            sched.add(row.seq, &rec.message_id, rec.next_attempt_ms);
                            fresh.insert(row.seq, rec);
                        }
                        None => {
                            tracing::error!(
                                client,
                                seq = row.seq,
                                "unreadable outbox record skipped"
                            );
                            sched.skip(row.seq);
                        }
                    }
                }
                full
            }
            Err(e) => {
                tracing::warn!(client, error = %e, "reading the webhook outbox failed");
                true
            }
        }
    }

    /// The outbox gauges: the age of `client`'s oldest event, the depth.
    /// Refreshed every [`GAUGES_EVERY`], not per event: each is a read
    /// transaction, and a scrape comes every few seconds at most.
    fn refresh_gauges(&self, client: &str) {
        if let Ok(oldest) = self.outbox.oldest_created_ms(client) {
            let age_ms = oldest.map_or(0, |t| now_ms().saturating_sub(t));
            self.metrics
                .outbox_oldest_age
                .with_label_values(&[client])
                .set(i64::try_from(age_ms / 1000).unwrap_or(i64::MAX));
        }
        if let Ok(depth) = self.outbox.depth() {
            self.metrics
                .outbox_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    fn count(&self, client: &str, outcome: &str) {
        self.metrics
            .webhook_attempts
            .with_label_values(&[client, outcome])
            .inc();
    }

    fn retry_soon(&self) -> Attempted {
        Attempted::Retry(now_ms().saturating_add(ms(self.options.poll_interval)))
    }

    /// Drops an event past its maximum age.
    async fn expire(&self, client: &str, seq: u64, rec: &OutboxRecord) -> Attempted {
        self.count(client, "expired");
        tracing::warn!(
            client,
            event_id = %rec.event_id,
            attempts = rec.attempt,
            max_age_secs = self.options.max_age.as_secs(),
            "status event not delivered within its maximum age; dropped"
        );
        match self.outbox.remove(client, seq, &rec.event_id).await {
            Ok(_) => Attempted::Done,
            Err(e) => {
                tracing::warn!(client, event_id = %rec.event_id, error = %e, "removing an expired event failed");
                self.retry_soon()
            }
        }
    }
}

/// One delivery attempt of the event at `(client, seq)`; when the client
/// already took it (`delivered`), only its delete. `read` is its record as
/// the worker's scan read it (a first attempt); without it the attempt
/// reads the record.
async fn attempt(
    shared: Arc<Shared>,
    client: String,
    health: Arc<EndpointHealth>,
    target: Arc<Target>,
    seq: u64,
    read: Option<OutboxRecord>,
    delivered: bool,
) -> Attempted {
    let stored = match read {
        Some(r) => Ok(Some(r)),
        None => shared.outbox.get(&client, seq),
    };
    let rec = match stored {
        Ok(Some(r)) => r,
        Ok(None) => return Attempted::Done,
        Err(e) => {
            tracing::warn!(client, seq, error = %e, "reading an outbox record failed");
            return shared.retry_soon();
        }
    };
    if delivered {
        return Attempted::Delivered(rec.event_id);
    }
    let deadline = rec.created_ms.saturating_add(ms(shared.options.max_age));
    if now_ms() >= deadline {
        return shared.expire(&client, seq, &rec).await;
    }
    let body = match status_body(&rec.event_id, rec.created_ms, &rec.payload) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(client, event_id = %rec.event_id, error = %e, "status event cannot be encoded");
            return shared.retry_soon();
        }
    };
    let result = post(&target, body, shared.options.request_timeout).await;
    let outcome = result.as_ref().err().map_or("ok", Failure::outcome);
    shared.count(&client, outcome);
    let failure = match result {
        Ok(()) => {
            health.succeeded(&client);
            return Attempted::Delivered(rec.event_id);
        }
        Err(f) => f,
    };
    let attempt = rec.attempt.saturating_add(1);
    let now = now_ms();
    if now >= deadline {
        return shared.expire(&client, seq, &rec).await;
    }
    let delay = backoff(
        attempt,
        shared.options.backoff_base,
        shared.options.backoff_cap,
    );
    let next = now.saturating_add(ms(delay)).min(deadline);
    health.failed(&client, &failure, Some(Duration::from_millis(next - now)));
    let status = match &failure {
        Failure::Status(s) => Some(*s),
        _ => None,
    };
    tracing::debug!(
        client,
        event_id = %rec.event_id,
        attempt,
        outcome,
        status,
        retry_in_ms = next - now,
        "status event not delivered; will retry"
    );
    if let Failure::Transport(reason) = &failure {
        tracing::debug!(client, event_id = %rec.event_id, reason = %reason, "webhook transport error");
    }
    match shared
        .outbox
        .reschedule(&client, seq, &rec.event_id, attempt, next)
        .await
    {
        Ok(true) => Attempted::Retry(next),
        Ok(false) => Attempted::Done,
        Err(e) => {
            tracing::warn!(client, event_id = %rec.event_id, error = %e, "recording a failed attempt failed");
            Attempted::Retry(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_moves_only_when_its_deadline_does() {
        let sleep = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(sleep);
        let first = sleep.deadline();
        // A turn a moment later that wants the same instant keeps the entry.
        tokio::time::advance(Duration::from_micros(300)).await;
        rearm(
            sleep.as_mut(),
            Duration::from_secs(1) - Duration::from_micros(300),
        );
        assert_eq!(sleep.deadline(), first);
        // A deadline that moved (sooner or later) is taken.
        rearm(sleep.as_mut(), Duration::from_millis(5));
        let soon = sleep.deadline();
        assert!(soon < first);
        rearm(sleep.as_mut(), Duration::from_secs(2));
        assert!(sleep.deadline() > first);
        // A timer that fired is armed again, even for the same instant.
        rearm(sleep.as_mut(), Duration::from_millis(5));
        (&mut sleep).await;
        assert!(sleep.is_elapsed());
        let fired = sleep.deadline();
        rearm(sleep.as_mut(), Duration::ZERO);
        assert!(!sleep.is_elapsed() || sleep.deadline() > fired);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(600);
        for _ in 0..100 {
            let d1 = backoff(1, base, cap).as_millis();
            assert!((800..1200).contains(&d1), "{d1}");
            let d4 = backoff(4, base, cap).as_millis();
            assert!((6400..9600).contains(&d4), "{d4}");
            let d30 = backoff(30, base, cap);
            assert!(d30 <= cap && d30 >= Duration::from_secs(480), "{d30:?}");
            assert!(backoff(u32::MAX, base, cap) <= cap);
        }
    }
}
