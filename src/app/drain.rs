//! The drain on SIGTERM: one shutdown tree whose named phases
//! [`App::stop`](super::App::stop) walks in order, each waiting — within
//! the one deadline — for the tasks it owns. Every task of the appliance is
//! spawned on one of these trackers (no untracked `tokio::spawn`).

use super::*;

/// The shutdown tree's phases, in the order the drain walks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The shutdown token is cancelled: the listeners stop accepting and
    /// their connections finish the requests they read; the webhook
    /// workers, the receipt rules, the fleet's tasks, retention and the
    /// gauges end (`Shutdown`'s tracker).
    Listeners,
    /// Sends whose client went away run in their own tasks: they end
    /// (answered, recorded) while their carriers are still bound (the
    /// relay's send tracker).
    Sends,
    /// The carriers are unbound (their windows answered first) and the
    /// peers' sessions end (each pool's and the SMPP server's tracker:
    /// bind loops, connections, session engines).
    Sessions,
    /// No MO after the sessions: the keyword answers queued so far are
    /// sent, and the audit records of the last refusals and of the binds
    /// going down, opt-out changes and authentication failures are
    /// written (the background tracker).
    Background,
    /// The store's writer commits what is queued and closes the file.
    Store,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Listeners => "listeners",
            Phase::Sends => "sends",
            Phase::Sessions => "sessions",
            Phase::Background => "background",
            Phase::Store => "store",
        }
    }
}

/// One drain: a deadline shared by every phase.
pub(super) struct Drain {
    deadline: Duration,
    end: tokio::time::Instant,
}

impl Drain {
    pub(super) fn new(deadline: Duration) -> Drain {
        Drain {
            deadline,
            end: tokio::time::Instant::now() + deadline,
        }
    }

    /// Waits for `phase`'s tasks until the drain's deadline; whether they
    /// ended in time.
    async fn within(&self, phase: Phase, tasks: impl std::future::Future<Output = ()>) -> bool {
        let done = tokio::time::timeout_at(self.end, tasks).await.is_ok();
        tracing::debug!(phase = phase.name(), done, "drain phase");
        done
    }

    /// Walks every phase (each one runs, whatever the previous one did);
    /// whether all of them ended in time.
    pub(super) async fn run(self, app: &App) -> bool {
        let listeners = app.shutdown.drain(self.deadline).await;
        tracing::debug!(
            phase = Phase::Listeners.name(),
            done = listeners,
            "drain phase"
        );
        let sends = self.within(Phase::Sends, app.relay.sends_done()).await;
        for t in &app.pool_tokens {
            t.cancel();
        }
        let sessions = self
            .within(Phase::Sessions, async {
                for p in app.relay.pools() {
                    p.wait().await;
                }
                if let Some(s) = &app.smpp_server {
                    s.wait().await;
                }
            })
            .await;
        app.replies_stop.cancel();
        app.background.close();
        let background = self.within(Phase::Background, app.background.wait()).await;
        log_head("audit log head at stop", &app.audit);
        tracing::debug!(phase = Phase::Store.name(), "drain phase");
        if let Err(e) = app.store.close().await {
            tracing::error!("closing the store: {e}");
        }
        listeners && sends && sessions && background
    }
}
