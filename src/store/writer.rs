//! The group-commit writer: one thread, one durable commit per batch.
//!
//! Owns: the only redb write transactions of the process.
//!
//! How a batch runs: the thread blocks for the first queued message, then
//! takes whatever else is queued (up to [`MAX_BATCH`] ops) without waiting.
//! Each op runs in its own write transaction committed with
//! [`redb::Durability::None`] — in memory, no fsync — so an op that returns
//! `Err` or panics is aborted alone and cannot poison its neighbours (redb's
//! ephemeral savepoints cannot serve here: they must be taken before any table
//! of the transaction is opened). Then one empty transaction is committed with
//! [`redb::Durability::Immediate`], which makes every op of the batch durable
//! with a single fsync, and only then is each caller answered.
//!
//! Invariants:
//! - a caller gets `Ok` only after its writes are durable;
//! - at most one fsync per batch; ops never fsync;
//! - a failed or panicking op leaves no trace and does not fail the batch;
//! - readers may see an op's writes slightly before they are durable (between
//!   its in-memory commit and the batch's fsync). A crash in that window loses
//!   them — and their callers were never told `Ok`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::metrics::Metrics;

/// Most ops carried by one durable commit.
pub(crate) const MAX_BATCH: usize = 1024;

/// Capacity of the queue in front of the writer; a full queue makes
/// `Store::write` wait (backpressure) instead of growing memory.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// What the writer tells an op's caller once the batch's commit is over.
pub(crate) type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A type-erased op with its caller's answer channel.
pub(crate) trait Job: Send {
    /// Runs against its own transaction; says whether its writes are to be
    /// kept, and returns the closure that answers its caller after the commit.
    fn run(self: Box<Self>, txn: &WriteTransaction) -> (bool, Reply);
    /// Answers the caller without running (no transaction could be started).
    fn fail(self: Box<Self>, err: StoreError);
}

/// The one implementation of [`Job`]: a caller's op and its oneshot.
pub(crate) struct OpJob<F, T> {
    pub(crate) op: F,
    pub(crate) tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for OpJob<F, T>
where
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, txn: &WriteTransaction) -> (bool, Reply) {
        let OpJob { op, tx } = *self;
        let result = op(txn);
        let ok = result.is_ok();
        let reply: Reply = Box::new(move |commit: Option<&StoreError>| {
            let out = match (result, commit) {
                (Ok(_), Some(e)) => Err(e.clone()),
                (r, _) => r,
            };
            // The caller may have stopped waiting; the write stands anyway.
            let _ = tx.send(out);
        });
        (ok, reply)
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.tx.send(Err(err));
    }
}

/// Messages to the writer thread.
pub(crate) enum Msg {
    Op(Box<dyn Job>),
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
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Msg>,
    metrics: Option<Arc<Metrics>>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    let mut close_acks: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        let mut ops = usize::from(matches!(batch[0], Msg::Op(_)));
        while ops < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    ops += usize::from(matches!(m, Msg::Op(_)));
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        if run_batch(
            &db,
            &mut batch,
            &mut close_acks,
            metrics.as_deref(),
            &counters,
        ) {
            // Refuse new messages; the loop drains what is already queued and
            // ends when `blocking_recv` returns `None`.
            rx.close();
        }
    }
    drop(db);
    for ack in close_acks {
        let _ = ack.send(());
    }
}

/// Runs one batch; returns true when a `Close` was seen.
fn run_batch(
    db: &Database,
    batch: &mut Vec<Msg>,
    close_acks: &mut Vec<oneshot::Sender<()>>,
    metrics: Option<&Metrics>,
    counters: &Counters,
) -> bool {
    let started = Instant::now();
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut flushes = Vec::new();
    let mut closing = false;
    let mut kept = 0usize;
    for msg in batch.drain(..) {
        match msg {
            Msg::Op(job) => {
                let (ok, reply) = run_op(db, job);
                kept += usize::from(ok);
                replies.push(reply);
            }
            Msg::Flush(ack) => flushes.push(ack),
            Msg::Close(ack) => {
                closing = true;
                close_acks.push(ack);
            }
        }
    }
    let outcome = if kept > 0 { durable_commit(db) } else { Ok(()) };
    if !replies.is_empty() {
        counters
            .ops
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        if kept > 0 {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        // `store_commit` is the batch's wall time (ops + fsync): what the
        // first caller of the batch waited for, once the writer picked it up.
        if let Some(m) = metrics {
            m.store_commit.observe(started.elapsed().as_secs_f64());
            m.store_batch.observe(replies.len() as f64);
        }
    }
    if let Err(e) = &outcome {
        tracing::error!(error = %e, ops = replies.len(), "store commit failed");
    }
    for reply in replies {
        reply(outcome.as_ref().err());
    }
    for ack in flushes {
        let _ = ack.send(());
    }
    closing
}

/// Runs one op in its own non-durable transaction. Returns whether it was
/// kept, and its reply.
fn run_op(db: &Database, job: Box<dyn Job>) -> (bool, Reply) {
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            // Answer right away: nothing of this op was attempted.
            job.fail(StoreError::from(e));
            return (false, Box::new(|_| {}));
        }
    };
    txn.set_durability(Durability::None);
    match catch_unwind(AssertUnwindSafe(|| job.run(&txn))) {
        Ok((true, reply)) => match txn.commit() {
            Ok(()) => (true, reply),
            Err(e) => {
                let err = StoreError::from(e);
                (false, Box::new(move |_| reply(Some(&err))))
            }
        },
        Ok((false, reply)) => {
            abort(txn);
            (false, reply)
        }
        Err(_) => {
            abort(txn);
            tracing::error!("store op panicked; rolled back");
            // The job's reply sender was dropped during the unwind; its caller
            // sees `StoreError::OpPanicked`.
            (false, Box::new(|_| {}))
        }
    }
}

fn abort(txn: WriteTransaction) {
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
