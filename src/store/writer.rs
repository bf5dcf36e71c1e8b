//! The group-commit writer: one thread, one transaction and one fsync per
//! batch.
//!
//! Owns: the only redb write transactions of the process.
//!
//! How a batch runs: the thread blocks for the first queued message, then
//! takes whatever else is queued (up to [`MAX_BATCH`] ops). It then waits
//! for company until the batch's earliest op is due (an op that may wait —
//! a receipt, an outbox removal — is due a few ms after it was queued; see
//! [`Wake`]), and, while ops keep coming (the previous batch had
//! [`LINGER_AFTER`] ops or more, or at least [`BUSY_OPS`] ops arrived in
//! the last [`BUSY_WINDOW`]), until about [`COMPANY`] ops may have come at
//! the recent rate, within [`LINGER`] and [`LINGER_MAX`] after the first
//! op: fewer,
//! larger commits (measured: ~36 ops per commit without the linger at
//! 11,000 msg/s, each commit writing ~36 pages; and at a steady 1,000
//! msg/s about one commit per op without it, see BENCHMARKS.md). An idle
//! appliance never makes an op wait past its due time.
//!
//! - Fast path: every op of the batch runs in ONE write transaction, which is
//!   committed durably (one fsync), and only then is each caller answered.
//!   A redb commit costs far more than a small op (page copies, checksums,
//!   allocator state), so per-op commits would make the writer thread the
//!   bottleneck of the relay; measured, they did.
//! - Slow path, when any op of the batch returns `Err` or panics: that
//!   transaction is aborted (nothing of the batch is kept) and every op is run
//!   again, each in its own transaction committed with
//!   [`redb::Durability::None`], then one empty transaction with
//!   [`redb::Durability::Immediate`] makes the kept ones durable with a single
//!   fsync. So an op that fails is rolled back alone and cannot poison its
//!   neighbours. This is why ops are `FnMut`: an op may run twice, and must
//!   not depend on side effects outside its transaction (redb's ephemeral
//!   savepoints cannot isolate ops instead: they must be taken before any
//!   table of the transaction is written).
//!
//! - Recovery, when a batch failed and the database refuses to start a
//!   write transaction (redb's state after any I/O error): see [`recover`].
//!   The store is marked unhealthy and readers are cut off before anyone is
//!   answered; the writer drops the database, answers whatever is queued
//!   with [`StoreError::Unavailable`] while it reopens the file with a
//!   back-off, and takes ops again once a durable probe commit succeeded.
//!
//! Invariants:
//! - a caller gets `Ok` only after its writes are durable;
//! - while the store is unhealthy no op runs: each is answered
//!   [`StoreError::Unavailable`] within [`REFUSE_TICK`] (or at once by
//!   [`super::Store::write`]);
//! - at most one fsync per batch; ops never fsync;
//! - a failed or panicking op leaves no trace and does not fail the batch;
//! - on the slow path, readers may see an op's writes slightly before they
//!   are durable. A crash in that window loses them — and their callers were
//!   never told `Ok`.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

mod linger;

use linger::linger;
pub(crate) use linger::Wake;

use super::tables::Tx;
use super::{Live, StoreError};
use crate::metrics::Metrics;

thread_local! {
    /// The write transaction this thread runs ops in (see [`current_txn`]).
    static CURRENT_TXN: Cell<u64> = const { Cell::new(0) };
    static NEXT_TXN: Cell<u64> = const { Cell::new(1) };
    /// What ops of the current transaction asked to run before its commit
    /// (see [`before_commit`]).
    static BEFORE_COMMIT: RefCell<Vec<CommitHook>> = const { RefCell::new(Vec::new()) };
}

/// Work an op leaves for the end of its transaction (see [`before_commit`]).
pub(crate) type CommitHook = fn(&Tx<'_>) -> Result<(), StoreError>;

/// Asks the writer to run `hook` in the current transaction after its last
/// op and before its commit: an op may buffer writes that many ops of one
/// transaction share (the audit log writes a batch's records as one value)
/// and have them written once. A hook that fails fails the transaction like
/// a failed op (the slow path then runs each op alone, with its hooks).
/// Register once per transaction; outside the writer (`current_txn() == 0`)
/// it does nothing, and the caller must write directly.
pub(crate) fn before_commit(hook: CommitHook) {
    if current_txn() != 0 {
        BEFORE_COMMIT.with(|h| h.borrow_mut().push(hook));
    }
}

/// Runs and forgets the hooks of the current transaction.
fn run_hooks(tx: &Tx<'_>) -> Result<(), StoreError> {
    let hooks = BEFORE_COMMIT.with(|h| std::mem::take(&mut *h.borrow_mut()));
    for hook in hooks {
        match catch_unwind(AssertUnwindSafe(|| hook(tx))) {
            Ok(r) => r?,
            Err(_) => {
                tracing::error!("store commit hook panicked; rolled back");
                return Err(StoreError::OpPanicked);
            }
        }
    }
    Ok(())
}

/// Identifies the write transaction the writer thread is running ops in,
/// `0` outside one (another thread, or between transactions). A new
/// transaction — including each retry of the slow path — gets a new id, so
/// an op may cache what it read or wrote in the current transaction (the
/// audit chain head) keyed by this id, and a rolled-back transaction's
/// cache can never be used again.
pub(crate) fn current_txn() -> u64 {
    CURRENT_TXN.with(Cell::get)
}

/// `db.begin_write()` that gives the transaction a fresh [`current_txn`] id.
fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let txn = db.begin_write()?;
    let id = NEXT_TXN.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    CURRENT_TXN.with(|c| c.set(id));
    Ok(txn)
}

/// Marks the end of the writer's current transaction (committed or not).
fn end_txn() {
    CURRENT_TXN.with(|c| c.set(0));
    BEFORE_COMMIT.with(|h| h.borrow_mut().clear());
}

/// Most ops carried by one durable commit.
pub(crate) const MAX_BATCH: usize = 1024;

/// The shortest wait for company of a busy batch, from its first op: the
/// wait flat out, where company comes soonest (see [`linger_for`]).
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// The writer counts as busy, and lingers, when at least this many ops
/// arrived within the last [`BUSY_WINDOW`] (500 ops/s): then a batch that
/// waits at least [`LINGER`] can expect company. Below it ops arrive too seldom for a
/// wait to pay, and an op is committed as soon as it is due.
pub(crate) const BUSY_OPS: usize = 25;

/// See [`BUSY_OPS`].
pub(crate) const BUSY_WINDOW: Duration = Duration::from_millis(50);

/// The longest a busy batch waits for company, from its first op, unless
/// `store.commit_wait_max_ms` says otherwise: the share of the API's
/// latency a commit may spend to save CPU. At a steady
/// 1,000 msg/s, 5 ms instead of 2 took the relay's CPU per message to 0.72
/// and its p99 from 5.9 to 8.0 ms; at 3,000 msg/s, 3.5 ms instead of 1 took
/// it to 0.78, p99 4.7 → 7.9 ms (BENCHMARKS.md, session 11). Past 5 ms the
/// p99 grows faster than the CPU falls.
pub(crate) const LINGER_MAX: Duration =
    Duration::from_millis(crate::config::COMMIT_WAIT_MAX_MS_DEFAULT as u64);

/// The company a busy batch waits for: as many ops as arrive, at the rate
/// of the last [`BUSY_WINDOW`], in the time it waits. So the wait shrinks
/// as the rate grows and a commit carries about this many ops at any
/// moderate rate: the cost per message falls with load instead of rising
/// as load falls. A message is about two ops (its send, its receipt with
/// the webhook's outbox row): 1,000 msg/s is ~100 ops per window (a wait
/// of 10 ms, capped at [`LINGER_MAX`]), 3,000 msg/s ~300 (3.3 ms), flat
/// out, ~10,500 msg/s, ~1,050 ([`LINGER`]). 20 rather than more: flat out,
/// the time a closed-loop client waits is its throughput (32 took 9% of it).
pub(crate) const COMPANY: u32 = 20;

/// How long a busy batch waits for company, from its first op, given the
/// ops that arrived in the last [`BUSY_WINDOW`]: the time [`COMPANY`] ops
/// take to arrive at that rate, within [`LINGER`] and `max`
/// (`store.commit_wait_max_ms`, [`LINGER_MAX`] by default).
fn linger_for(rate: usize, max: Duration) -> Duration {
    let rate = u32::try_from(rate).unwrap_or(u32::MAX).max(1);
    (BUSY_WINDOW * COMPANY / rate).clamp(LINGER, max.max(LINGER))
}

/// Until when a batch whose first op came at `first_at` waits for company
/// (`None`: only until its ops are due), given the previous batch's size,
/// the ops of the last [`BUSY_WINDOW`] and `store.commit_wait_max_ms`.
///
/// Busy (the previous batch had [`LINGER_AFTER`] ops, or [`BUSY_OPS`] came
/// in the last window): [`linger_for`]. With a maximum of 0, latency
/// first: a batch waits ([`LINGER`]) only after a batch of
/// [`LINGER_AFTER`] or more, which a steady moderate rate seldom makes, so
/// nearly every send commits at once. That is the policy of the issue-21
/// baseline (`ad3dd5e`): its p99 at 1,000 msg/s, at ~0.7 of its CPU
/// (BENCHMARKS.md, session 13), where the default's 5 ms costs ~0.4 of it
/// and twice the p99.
fn floor_for(first_at: Instant, previous: usize, rate: usize, max: Duration) -> Option<Instant> {
    if max.is_zero() {
        return (previous >= LINGER_AFTER).then(|| first_at + LINGER);
    }
    let busy = previous >= LINGER_AFTER || rate >= BUSY_OPS;
    busy.then(|| first_at + linger_for(rate, max))
}

/// The previous batch size from which the writer lingers (below it, ops
/// arrive one by one and waiting would only add latency).
pub(crate) const LINGER_AFTER: usize = 8;

/// A batch this large is committed without lingering.
pub(crate) const LINGER_UNTIL: usize = 256;

/// Capacity of the queue in front of the writer; a full queue makes
/// `Store::write` wait (backpressure) instead of growing memory.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// First wait before reopening a database that failed to commit, after the
/// immediate attempt failed; doubled per failed attempt. Short, so a
/// transient fault costs the relay a fraction of a second of refusals.
pub(crate) const REOPEN_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between two reopen attempts: a disk that stays full is
/// probed every 5 s, so the node is back within 5 s of space being freed,
/// without a repair attempt (which reads the file) in a tight loop.
pub(crate) const REOPEN_MAX: Duration = Duration::from_secs(5);

/// While recovering, how often the writer answers what was queued
/// meanwhile with [`StoreError::Unavailable`]: bounds how long an op that
/// raced the health flag waits for its refusal.
const REFUSE_TICK: Duration = Duration::from_millis(10);

/// A type-erased op with its caller's answer channel.
pub(crate) trait Job: Send {
    /// Runs the op in `tx` and keeps its result; says whether it
    /// succeeded. May be called again (slow path) after a failed batch.
    fn attempt(&mut self, tx: &Tx<'_>) -> bool;
    /// Replaces a successful result with `e`: the op's transaction failed
    /// after it (a commit hook) and was rolled back.
    fn fail(&mut self, e: StoreError);
    /// Answers the caller with the kept result, or `commit`'s error when
    /// the op succeeded but its commit did not.
    fn answer(self: Box<Self>, commit: Option<&StoreError>);
}

/// The one implementation of [`Job`]: a caller's op and its oneshot.
pub(crate) struct OpJob<F, T> {
    pub(crate) op: F,
    pub(crate) tx: oneshot::Sender<Result<T, StoreError>>,
    pub(crate) result: Option<Result<T, StoreError>>,
}

impl<F, T> Job for OpJob<F, T>
where
    F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    fn attempt(&mut self, tx: &Tx<'_>) -> bool {
        let op = &mut self.op;
        let r = match catch_unwind(AssertUnwindSafe(|| op(tx))) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("store op panicked; rolled back");
                Err(StoreError::OpPanicked)
            }
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn fail(&mut self, e: StoreError) {
        self.result = Some(Err(e));
    }

    fn answer(self: Box<Self>, commit: Option<&StoreError>) {
        let out = match (self.result, commit) {
            (Some(Ok(_)), Some(e)) => Err(e.clone()),
            (Some(r), _) => r,
            // Never run: its transaction could not start, or the store
            // refused it while recovering.
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(StoreError::OpPanicked),
        };
        // The caller may have stopped waiting; the write stands anyway.
        let _ = self.tx.send(out);
    }
}

/// Messages to the writer thread.
pub(crate) enum Msg {
    /// An op, and the latest moment its commit may start: the writer may
    /// hold a batch until its earliest op is due, for company (see
    /// [`Wake`]).
    Op(Box<dyn Job>, Instant),
    /// Answered after everything queued before it is durable.
    Flush(oneshot::Sender<()>),
    /// Stop taking new messages, drain the queue, commit, exit.
    Close(oneshot::Sender<()>),
}

/// Counters for tests and diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) ops: AtomicU64,
}

/// Body of the writer thread. Returns when the queue is closed and empty.
pub(crate) fn run(
    live: Arc<Live>,
    mut db: Arc<Database>,
    mut rx: mpsc::Receiver<Msg>,
    metrics: Option<Arc<Metrics>>,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
    answers: Answerer,
) {
    wake.set_thread(std::thread::current());
    // The writer's ops carry metadata only (SPEC §1): the page buffers it
    // frees by the thousand need no wipe (see service::zero_alloc).
    crate::service::zero_alloc::no_bodies_on_this_thread();
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    let mut close_acks: Vec<oneshot::Sender<()>> = Vec::new();
    let mut previous = 0usize;
    // Ops that arrived in the current and the previous BUSY_WINDOW.
    let (mut window_start, mut window_ops, mut last_window_ops) = (Instant::now(), 0usize, 0usize);
    while let Some(first) = rx.blocking_recv() {
        let first_at = Instant::now();
        batch.push(first);
        let mut ops = usize::from(matches!(batch[0], Msg::Op(..)));
        drain(&mut rx, &mut batch, &mut ops);
        // Wait for company, bounded by the batch's earliest due op. A commit
        // costs far more CPU than an op (every touched table's root-to-leaf
        // path copied, the allocator state, one fsync's writeback), so fewer,
        // larger commits are what keeps the writer cheap per message, at a
        // steady moderate rate as much as flat out. Two reasons to wait:
        // - an op that nobody is waiting on at once (a receipt whose
        //   deliver_sm_resp may wait a few ms, an outbox removal) is queued
        //   with a due time in the future; it rides along with the next
        //   commit that must happen anyway (a send's), or commits alone
        //   when it falls due;
        // - while ops keep coming (the previous batch was not tiny, or
        //   [`BUSY_OPS`] arrived within [`BUSY_WINDOW`]) every batch waits
        //   until about [`COMPANY`] ops may have come at the recent rate
        //   ([`linger_for`]), within [`LINGER`] and [`LINGER_MAX`] after its
        //   first op.
        // An idle appliance never makes an op wait past its due time: a
        // send's op is due at once.
        if first_at.duration_since(window_start) >= BUSY_WINDOW {
            let stale = first_at.duration_since(window_start) >= 2 * BUSY_WINDOW;
            last_window_ops = if stale { 0 } else { window_ops };
            window_start = first_at;
            window_ops = 0;
        }
        let rate = last_window_ops.max(window_ops + ops);
        let max = Duration::from_micros(live.commit_wait_max_us.load(Ordering::Relaxed));
        let floor = floor_for(first_at, previous, rate, max);
        linger(&mut rx, &mut batch, &mut ops, floor, &wake);
        previous = ops;
        window_ops += ops;
        let end = run_batch(
            &db,
            &live,
            &mut batch,
            &mut close_acks,
            metrics.as_deref(),
            &counters,
            &answers,
        );
        if end.closing {
            // Refuse new messages; the loop drains what is already queued and
            // ends when `blocking_recv` returns `None`.
            rx.close();
        }
        if end.poisoned {
            match recover(db, &live, &mut rx, &mut close_acks, end.closing) {
                Some(reopened) => db = reopened,
                None => {
                    finish(close_acks);
                    return;
                }
            }
        }
    }
    drop(db);
    finish(close_acks);
}

fn finish(close_acks: Vec<oneshot::Sender<()>>) {
    for ack in close_acks {
        let _ = ack.send(());
    }
}

/// After a failed commit: gives up the poisoned database (`run_batch` has
/// already marked the store unhealthy and taken it from the readers), then
/// reopens the file with a back-off from [`REOPEN_FIRST`] to [`REOPEN_MAX`],
/// answering everything queued meanwhile with [`StoreError::Unavailable`].
/// Returns the reopened database once a durable probe commit on it
/// succeeded (the store is healthy again), or `None` when the store was
/// closed meanwhile (every message is then answered, the queue closed).
fn recover(
    poisoned: Arc<Database>,
    live: &Live,
    rx: &mut mpsc::Receiver<Msg>,
    close_acks: &mut Vec<oneshot::Sender<()>>,
    mut closing: bool,
) -> Option<Arc<Database>> {
    // redb refuses every write after an I/O error ("Previous I/O error"),
    // until the database is closed and opened again. Readers may still hold
    // it for a moment; a reopen before they let go fails (the file lock) and
    // is tried again.
    drop(poisoned);
    let mut delay = REOPEN_FIRST;
    let mut attempts = 0u32;
    loop {
        closing |= refuse_queued(rx, close_acks);
        if closing {
            rx.close();
            while let Some(m) = rx.blocking_recv() {
                refuse(m, close_acks);
            }
            return None;
        }
        attempts += 1;
        match reopen(live) {
            Ok(db) => {
                let db = Arc::new(db);
                *live.db.write() = Some(db.clone());
                live.healthy.store(true, Ordering::Release);
                tracing::warn!(attempts, "store reopened; it commits again");
                return Some(db);
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "store still cannot commit; refusing writes"
                );
            }
        }
        let until = Instant::now() + delay;
        loop {
            if refuse_queued(rx, close_acks) {
                closing = true;
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(REFUSE_TICK));
        }
        delay = (delay * 2).min(REOPEN_MAX);
    }
}

/// Opens the database file again (the same backend, the schema checked) and
/// proves it commits with an empty durable transaction.
fn reopen(live: &Live) -> Result<Database, StoreError> {
    super::precreate_file(&live.path)?;
    let db = super::open_db(&live.path, live.faults.as_ref())?;
    durable_commit(&db)?;
    Ok(db)
}

/// Answers what is queued now, without waiting: ops with
/// [`StoreError::Unavailable`], flushes at once (nothing is pending). Says
/// whether a `Close` was among them.
fn refuse_queued(rx: &mut mpsc::Receiver<Msg>, close_acks: &mut Vec<oneshot::Sender<()>>) -> bool {
    let mut closing = false;
    while let Ok(m) = rx.try_recv() {
        closing |= refuse(m, close_acks);
    }
    closing
}

/// Answers one message while the store cannot commit; true for a `Close`.
fn refuse(m: Msg, close_acks: &mut Vec<oneshot::Sender<()>>) -> bool {
    match m {
        Msg::Op(job, _) => {
            job.answer(Some(&StoreError::Unavailable));
            false
        }
        Msg::Flush(ack) => {
            let _ = ack.send(());
            false
        }
        Msg::Close(ack) => {
            close_acks.push(ack);
            true
        }
    }
}

/// Takes what is queued, without waiting, until the batch holds
/// [`MAX_BATCH`] ops.
fn drain(rx: &mut mpsc::Receiver<Msg>, batch: &mut Vec<Msg>, ops: &mut usize) {
    while *ops < MAX_BATCH {
        match rx.try_recv() {
            Ok(m) => {
                *ops += usize::from(matches!(m, Msg::Op(..)));
                batch.push(m);
            }
            Err(_) => break,
        }
    }
}

/// Whether the batch holds a `Flush` or `Close`, which should not wait.
fn closing(batch: &[Msg]) -> bool {
    batch.iter().any(|m| !matches!(m, Msg::Op(..)))
}

/// How a batch ended.
struct BatchEnd {
    /// A `Close` was in the batch.
    closing: bool,
    /// The database can no longer commit; the store is marked unhealthy and
    /// readers were cut off from it (see [`recover`]).
    poisoned: bool,
}

/// Runs one batch.
fn run_batch(
    db: &Database,
    live: &Live,
    batch: &mut Vec<Msg>,
    close_acks: &mut Vec<oneshot::Sender<()>>,
    metrics: Option<&Metrics>,
    counters: &Counters,
    answers: &Answerer,
) -> BatchEnd {
    let mut poisoned = false;
    let started = Instant::now();
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(batch.len());
    let mut flushes = Vec::new();
    let mut closing = false;
    for msg in batch.drain(..) {
        match msg {
            Msg::Op(job, _) => jobs.push(job),
            Msg::Flush(ack) => flushes.push(ack),
            Msg::Close(ack) => {
                closing = true;
                close_acks.push(ack);
            }
        }
    }
    let mut commit = None;
    if !jobs.is_empty() {
        let n = jobs.len();
        let (outcome, committed) = match fast_path(db, &mut jobs) {
            Some(outcome) => (outcome, true),
            None => slow_path(db, &mut jobs),
        };
        counters.ops.fetch_add(n as u64, Ordering::Relaxed);
        if committed {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        // `store_commit` is the batch's wall time (ops + fsync): what the
        // first caller of the batch waited for, once the writer picked it up.
        if let Some(m) = metrics {
            m.store_commit.observe(started.elapsed().as_secs_f64());
            m.store_batch.observe(n as f64);
        }
        if let Err(e) = &outcome {
            if let Some(m) = metrics {
                m.store_commit_failures.inc();
            }
            tracing::error!(error = %e, ops = n, "store commit failed");
            // Mark the store before anyone hears of the failure, so a caller
            // that got the error sees `is_healthy() == false`.
            poisoned = cannot_commit(db);
            if poisoned {
                live.healthy.store(false, Ordering::Release);
                live.db.write().take();
                tracing::error!("store cannot commit; refusing writes and reopening the database");
            }
        }
        commit = outcome.err();
    }
    if !jobs.is_empty() || !flushes.is_empty() {
        answers.send(Answers {
            jobs,
            commit,
            flushes,
        });
    }
    BatchEnd { closing, poisoned }
}

/// What one batch owes its callers: each op's answer (with the commit's
/// error, if it failed), then the flushes'.
pub(crate) struct Answers {
    jobs: Vec<Box<dyn Job>>,
    commit: Option<StoreError>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Answers {
    fn deliver(self) {
        for job in self.jobs {
            job.answer(self.commit.as_ref());
        }
        for ack in self.flushes {
            let _ = ack.send(());
        }
    }
}

/// How the writer hands a batch's answers to its callers.
///
/// A caller's task woken from another thread costs a wake-up of the
/// runtime each time (an `eventfd` write, an `epoll_wait` return, often a
/// context switch): answered one by one, a batch of a dozen ops woke the
/// runtime ~8 times (measured at a steady 1,000 msg/s: 1.4 `eventfd`
/// writes per message). So when the store was opened on a runtime, the
/// writer sends the whole batch's answers to one task on it,
/// one wake-up per commit, and that task answers them all; its wakes of
/// the callers are local. Without a runtime, or once that task is gone (its
/// runtime shut down), the writer answers directly.
pub(crate) struct Answerer(Option<mpsc::UnboundedSender<Answers>>);

impl Answerer {
    /// Spawns the answering task on the current runtime, if there is one.
    pub(crate) fn on_current_runtime() -> Answerer {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Answerer(None);
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Answers>();
        rt.spawn(async move {
            while let Some(a) = rx.recv().await {
                a.deliver();
            }
        });
        Answerer(Some(tx))
    }

    fn send(&self, a: Answers) {
        match &self.0 {
            Some(tx) => {
                if let Err(mpsc::error::SendError(a)) = tx.send(a) {
                    a.deliver();
                }
            }
            None => a.deliver(),
        }
    }
}

/// Whether `db` refuses to start a write transaction: after an I/O error
/// redb refuses every write until the database is reopened. Called only
/// after a failed batch; a commit that failed for another reason leaves the
/// database usable.
fn cannot_commit(db: &Database) -> bool {
    match db.begin_write() {
        Ok(txn) => {
            if let Err(e) = txn.abort() {
                tracing::error!(error = %e, "store abort failed");
            }
            false
        }
        Err(_) => true,
    }
}

/// Every op in one durable transaction. `None` when an op failed (the
/// transaction is aborted and nothing is kept); else the commit's outcome.
fn fast_path(db: &Database, jobs: &mut [Box<dyn Job>]) -> Option<Result<(), StoreError>> {
    let mut txn = match begin(db) {
        Ok(t) => t,
        Err(e) => return Some(Err(e)),
    };
    txn.set_durability(Durability::Immediate);
    // The tables the ops open stay open for the whole batch (see `Tx`), and
    // close when `tx` is dropped, before the commit.
    let ok = {
        let tx = Tx::new(&txn);
        // On a hook's failure the slow path finds out which op's writes it
        // failed on.
        jobs.iter_mut().all(|job| job.attempt(&tx)) && run_hooks(&tx).is_ok()
    };
    if !ok {
        abort(txn);
        return None;
    }
    let committed = txn.commit().map_err(StoreError::from);
    end_txn();
    Some(committed)
}

/// Each op in its own non-durable transaction, then one fsync for the kept
/// ones. Returns the outcome of that fsync and whether it was done.
fn slow_path(db: &Database, jobs: &mut [Box<dyn Job>]) -> (Result<(), StoreError>, bool) {
    let mut kept = 0usize;
    for job in jobs.iter_mut() {
        let mut txn = match begin(db) {
            Ok(t) => t,
            Err(e) => return (Err(e), false),
        };
        txn.set_durability(Durability::None);
        let ok = {
            let tx = Tx::new(&txn);
            job.attempt(&tx)
                && match run_hooks(&tx) {
                    Ok(()) => true,
                    Err(e) => {
                        job.fail(e);
                        false
                    }
                }
        };
        if ok {
            let committed = txn.commit();
            end_txn();
            match committed {
                Ok(()) => kept += 1,
                Err(e) => return (Err(StoreError::from(e)), false),
            }
        } else {
            abort(txn);
        }
    }
    if kept > 0 {
        (durable_commit(db), true)
    } else {
        (Ok(()), false)
    }
}

fn abort(txn: WriteTransaction) {
    end_txn();
    if let Err(e) = txn.abort() {
        tracing::error!(error = %e, "store abort failed");
    }
}

/// One empty transaction with immediate durability: persists every
/// non-durable commit before it with a single fsync.
fn durable_commit(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{tables, Store, StoreError, Tx};
    use super::{
        floor_for, linger_for, BUSY_OPS, BUSY_WINDOW, COMPANY, LINGER, LINGER_AFTER, LINGER_MAX,
    };
    use redb::ReadableTable;
    use std::time::{Duration, Instant};

    /// The wait is the time [`COMPANY`] ops take at the recent rate: it
    /// falls as the rate rises, never past [`LINGER_MAX`] (the latency it
    /// may cost) nor under [`LINGER`] (flat out).
    #[test]
    fn a_busy_batch_waits_for_the_same_company_at_any_moderate_rate() {
        // 1,000 msg/s is ~2,000 ops/s: 100 per 50 ms window; 20 ops take
        // 10 ms, capped.
        assert_eq!(linger_for(100, LINGER_MAX), LINGER_MAX);
        assert_eq!(linger_for(BUSY_OPS, LINGER_MAX), LINGER_MAX);
        // 3,000 msg/s: 300 ops per window, 20 of them in 3.33 ms.
        let at_3k = linger_for(300, LINGER_MAX);
        assert!(
            at_3k > Duration::from_micros(3300) && at_3k < Duration::from_micros(3400),
            "{at_3k:?}"
        );
        // The same company: waits times rates agree.
        let company = |rate: usize| {
            linger_for(rate, LINGER_MAX).as_secs_f64() * rate as f64 / BUSY_WINDOW.as_secs_f64()
        };
        for rate in [250, 400, 600, 800, 900] {
            assert!(
                (company(rate) - f64::from(COMPANY)).abs() < 0.01,
                "{rate}: {}",
                company(rate)
            );
        }
        // Flat out (10,500 msg/s, ~1,050 ops per window) and beyond.
        assert_eq!(linger_for(1050, LINGER_MAX), LINGER);
        assert_eq!(linger_for(usize::MAX, LINGER_MAX), LINGER);
        assert_eq!(linger_for(0, LINGER_MAX), LINGER_MAX);
        // store.commit_wait_max_ms caps it, never under LINGER.
        let two = Duration::from_millis(2);
        assert_eq!(linger_for(100, two), two);
        assert_eq!(linger_for(300, Duration::from_millis(10)), at_3k);
        assert_eq!(
            linger_for(100, Duration::from_millis(20)),
            Duration::from_millis(10)
        );
        assert_eq!(linger_for(100, Duration::ZERO), LINGER);
    }

    fn failing_hook(_: &Tx<'_>) -> Result<(), StoreError> {
        Err(StoreError::Refused("hook refused".into()))
    }

    /// The `hooks` counter in a `KV` table.
    fn hooks_in(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
        Ok(t.get("hooks")?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    fn counting_hook(txn: &Tx<'_>) -> Result<(), StoreError> {
        let mut t = tables::open(txn, tables::KV)?;
        let n = hooks_in(&*t)?;
        t.insert("hooks", (n + 1).to_le_bytes().as_slice())?;
        Ok(())
    }

    #[test]
    fn the_wait_for_company_follows_the_load_and_the_maximum() {
        let t = Instant::now();
        let five = Duration::from_millis(5);
        // Idle: a lone op waits for nothing past its due time.
        assert_eq!(floor_for(t, 1, 3, five), None);
        // Busy by rate: the rate-scaled wait (50 ms · 20 / 100), capped.
        assert_eq!(floor_for(t, 1, 100, five), Some(t + five));
        assert_eq!(
            floor_for(t, 1, 1_000, five),
            Some(t + Duration::from_millis(1))
        );
        // Busy by the last batch's size.
        assert_eq!(floor_for(t, LINGER_AFTER, 3, five), Some(t + five));
        // A maximum of 0: the rate alone makes no wait; a large batch, LINGER.
        assert_eq!(floor_for(t, 1, 10_000, Duration::ZERO), None);
        assert_eq!(
            floor_for(t, LINGER_AFTER, 3, Duration::ZERO),
            Some(t + LINGER)
        );
    }

    /// A burst of 30 ops, then one more: how long the one waits for its
    /// commit. 30 is past [`BUSY_OPS`], so the writer is busy after it
    /// however the burst's ops were batched (20, busy only when a batch
    /// took 8 or more, once met a loaded CI runner that batched them a
    /// few at a time, and the op did not wait).
    async fn one_after_a_burst(store: &Store, round: u32) -> Duration {
        let put = |key: String| {
            let store = store.clone();
            async move {
                store
                    .write(move |txn| {
                        tables::open(txn, tables::KV)?.insert(key.as_str(), b"x".as_slice())?;
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        };
        let burst: Vec<_> = (0..30)
            .map(|n| tokio::spawn(put(format!("b{round}-{n}"))))
            .collect();
        for b in burst {
            b.await.unwrap();
        }
        let start = std::time::Instant::now();
        put(format!("one{round}")).await;
        start.elapsed()
    }

    /// `Store::set_commit_wait_max` (`store.commit_wait_max_ms`) reaches the
    /// writer: after a burst the writer is busy, and at that low a rate the
    /// next op waits for company as long as the maximum allows (20 ops at
    /// ~31 per window take ~32 ms), with 50 ms allowed; about 1 ms at 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_batch_waits_no_longer_than_the_commit_wait_max() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store.set_commit_wait_max(Duration::from_millis(50));
        let long = one_after_a_burst(&store, 0).await;
        assert!(long >= Duration::from_millis(20), "{long:?}");
        // A window later, the rate forgotten.
        tokio::time::sleep(2 * super::BUSY_WINDOW).await;
        store.set_commit_wait_max(Duration::from_millis(1));
        let short = one_after_a_burst(&store, 1).await;
        assert!(short < Duration::from_millis(20), "{short:?}");
    }

    /// Ops that share batches: every 5th registers a hook that fails, the
    /// others one that counts. The failing hook fails only its own op (the
    /// slow path runs each op with its hooks), every other op and its hook
    /// commit, and a hook's writes share its transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_commit_hook_fails_only_its_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let mut handles = Vec::new();
        for n in 0..200u64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let key = format!("k{n}");
                let r = store
                    .write(move |txn| {
                        tables::open(txn, tables::KV)?.insert(key.as_str(), b"x".as_slice())?;
                        super::before_commit(if n % 5 == 0 {
                            failing_hook
                        } else {
                            counting_hook
                        });
                        Ok(())
                    })
                    .await;
                (n, r)
            }));
        }
        for h in handles {
            let (n, r) = h.await.unwrap();
            assert_eq!(r.is_ok(), n % 5 != 0, "op {n}: {r:?}");
        }
        let (present, hooks) = store
            .read(|r| {
                let t = tables::open_read(r, tables::KV)?.expect("kv");
                let present: Vec<u64> = (0..200)
                    .filter(|n| t.get(format!("k{n}").as_str()).ok().flatten().is_some())
                    .collect();
                Ok((present, hooks_in(&t)?))
            })
            .unwrap();
        assert_eq!(present, (0..200).filter(|n| n % 5 != 0).collect::<Vec<_>>());
        // Each kept op's hook ran once in the transaction that committed it
        // (the aborted fast-path attempts left nothing).
        assert_eq!(hooks, 160);
        assert!(store.stats().commits < 200, "ops shared batches");
        store.close().await.unwrap();
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn writes_are_answered_after_the_runtime_that_opened_the_store_is_gone() {
        // Opened on a runtime, the store answers through a task on it; once
        // that runtime is gone the writer must answer directly, or every
        // later write would end unanswered (OpPanicked).
        let dir = tempfile::tempdir().unwrap();
        let first = runtime();
        let store = first.block_on(async { Store::open(dir.path(), None).unwrap() });
        assert_eq!(first.block_on(store.write(|_| Ok(1u8))).unwrap(), 1);
        drop(first);
        let second = runtime();
        for n in 2..5u8 {
            let answer = second.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), store.write(move |_| Ok(n))).await
            });
            assert_eq!(answer.expect("answered").unwrap(), n);
        }
        second.block_on(store.close()).unwrap();
    }

    #[test]
    fn a_store_opened_without_a_runtime_answers_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let rt = runtime();
        let answer = rt.block_on(async {
            let w = store.write(|_| Ok(7u8));
            tokio::time::timeout(Duration::from_secs(10), w).await
        });
        assert_eq!(answer.expect("answered").unwrap(), 7);
        rt.block_on(store.close()).unwrap();
    }

    #[test]
    fn hooks_outside_the_writer_are_ignored() {
        super::before_commit(failing_hook);
        assert!(super::BEFORE_COMMIT.with(|h| h.borrow().is_empty()));
    }
}
