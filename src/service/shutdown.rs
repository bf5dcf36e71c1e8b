//! Graceful drain (SPEC §2): one cancellation token every task watches, one
//! tracker that knows which tasks are still running.
//!
//! Owns: the shutdown signal passed down to tasks (the "shutdown is a value"
//! habit of STYLE.md) and the bounded wait for them. Tasks spawned through
//! [`Shutdown::spawn`] carry a name, so a drain that runs out of time can say
//! which ones were still busy.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancellation token + task tracker + names of running tasks. Cheap clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

/// Removes a task's name when it finishes, panics or is aborted.
struct NameGuard {
    id: u64,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

impl Shutdown {
    /// A fresh, not-cancelled shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token to hand to tasks; they stop when it is cancelled.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tracker, for code that spawns with it directly (unnamed).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Whether the drain started.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a tracked task under `name` (e.g. `"smpp:carrier-a#1"`; from
    /// config, never from a request).
    pub fn spawn<F>(&self, name: impl Into<String>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.running.lock().insert(id, name.into());
        let guard = NameGuard {
            id,
            running: self.running.clone(),
        };
        self.tracker.spawn(async move {
            let _guard = guard;
            fut.await
        })
    }

    /// Names of the named tasks still running.
    pub fn pending(&self) -> Vec<String> {
        self.running.lock().values().cloned().collect()
    }

    /// Cancels the token, closes the tracker and waits up to `deadline` for
    /// every tracked task. Returns `true` when all finished in time; else
    /// logs the named tasks still running and returns `false` (they keep
    /// running; the caller decides whether to exit anyway).
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let pending = self.pending();
        tracing::warn!(
            tasks = self.tracker.len(),
            named = ?pending,
            deadline_secs = deadline.as_secs_f64(),
            "drain deadline passed with tasks still running"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_honour_the_token() {
        let sd = Shutdown::new();
        let done = Arc::new(AtomicU64::new(0));
        for i in 0..5 {
            let (token, done) = (sd.token(), done.clone());
            sd.spawn(format!("worker-{i}"), async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(sd.pending().len(), 5);
        assert!(sd.drain(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), 5);
        assert!(sd.pending().is_empty());
        assert!(sd.is_cancelled());
    }

    #[tokio::test]
    async fn drain_reports_stragglers_by_name() {
        let sd = Shutdown::new();
        sd.spawn("polite", {
            let t = sd.token();
            async move { t.cancelled().await }
        });
        let stubborn = sd.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        assert!(!sd.drain(Duration::from_millis(100)).await);
        assert_eq!(sd.pending(), vec!["stubborn".to_string()]);
        stubborn.abort();
        let _ = stubborn.await;
        assert!(sd.pending().is_empty());
    }
}
