//! The writer's wait for company: how long a batch is held before its
//! commit, and how a newly queued op that is due sooner ends the wait.
//!
//! Owns: [`Wake`] (the writer thread's handle and the moment it will commit
//! unless woken) and [`linger`].
//!
//! Invariants: no op waits past its due time for a wake-up nobody sends
//! (see [`Wake`]); an op that can wait costs its sender no wake-up; a batch
//! holding a `Flush` or `Close`, or [`LINGER_UNTIL`] ops, does not wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{closing, drain, Msg, LINGER_UNTIL};

/// Lets a queued op cut the writer's wait for company short.
///
/// The writer, while it holds a batch waiting for company, publishes the
/// moment it will commit unless woken (`lingering_until`, nanoseconds past
/// [`epoch`]; 0 when it is not waiting — blocked on the queue, which wakes
/// it by itself, or busy, when it drains the queue next anyway). A sender
/// whose op is due before that moment unparks the writer after queueing the
/// op. The writer publishes before its last look at the queue and the
/// sender reads after queueing (both `SeqCst`), so one of them always sees
/// the other: an op is never left waiting past its due time for a wake-up
/// that nobody sends, and an op that can wait costs no wake-up at all.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    thread: std::sync::OnceLock<std::thread::Thread>,
    lingering_until: AtomicU64,
}

impl Wake {
    pub(super) fn set_thread(&self, t: std::thread::Thread) {
        let _ = self.thread.set(t);
    }

    /// Called by a sender after queueing an op due at `due`.
    pub(crate) fn queued(&self, due: Instant) {
        let until = self.lingering_until.load(Ordering::SeqCst);
        if until != 0 && nanos(due) < until {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    fn publish(&self, until: u64) {
        self.lingering_until.store(until, Ordering::SeqCst);
    }
}

/// The process's reference instant for [`Wake`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `t` (at least 1: 0 means "not waiting").
fn nanos(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The earliest due time of the batch's messages; `Flush` and `Close` are
/// due at once.
fn earliest_due(batch: &[Msg], now: Instant) -> Instant {
    batch
        .iter()
        .map(|m| match m {
            Msg::Op(_, due) => *due,
            _ => now,
        })
        .min()
        .unwrap_or(now)
}

/// Holds the batch until its commit is due: the earliest op's due time, but
/// not before `floor` (under load), taking what is queued meanwhile; ends
/// early when the batch is full ([`LINGER_UNTIL`]) or holds a `Flush` or
/// `Close`. See [`Wake`] for how a newly queued op that is due sooner ends
/// the wait.
pub(super) fn linger(
    rx: &mut mpsc::Receiver<Msg>,
    batch: &mut Vec<Msg>,
    ops: &mut usize,
    floor: Option<Instant>,
    wake: &Wake,
) {
    loop {
        if *ops >= LINGER_UNTIL || closing(batch) {
            break;
        }
        let now = Instant::now();
        let due = earliest_due(batch, now);
        let commit_at = floor.map_or(due, |f| f.max(due));
        if commit_at <= now {
            break;
        }
        // A newly queued op can move the commit earlier only if it is due
        // before `due` and `due` is past the floor.
        let wake_before = if floor.is_some_and(|f| f >= due) {
            0
        } else {
            nanos(due)
        };
        wake.publish(wake_before);
        let before = batch.len();
        drain(rx, batch, ops);
        if batch.len() != before {
            continue;
        }
        std::thread::park_timeout(commit_at - now);
        drain(rx, batch, ops);
    }
    wake.publish(0);
    drain(rx, batch, ops);
}
