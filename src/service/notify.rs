//! systemd notifications (`Type=notify`) and the watchdog (SPEC §2).
//!
//! Owns: every message to `$NOTIFY_SOCKET`. All functions are no-ops (and
//! return `Ok`) when the variable is unset, i.e. when not run by systemd.
//!
//! The watchdog is tied to the main loop's liveness, not just to the runtime
//! being alive: the main loop calls [`Heartbeat::beat`] on every turn (at
//! least every [`Watchdog::beat_every`]); the watchdog task sends
//! `WATCHDOG=1` every half interval only if the heartbeat moved since its
//! last check. A stalled main loop therefore stops the pings and systemd
//! restarts the service after `WatchdogSec`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServiceError;

fn send(states: &[NotifyState<'_>]) -> Result<(), ServiceError> {
    sd_notify::notify(false, states).map_err(ServiceError::Notify)
}

/// `READY=1`: listeners are up and binds were attempted (also sent after a
/// reload finished).
pub fn ready() -> Result<(), ServiceError> {
    send(&[NotifyState::Ready])
}

/// `RELOADING=1` with `MONOTONIC_USEC=…` (systemd ≥ 253 matches the reload
/// to the `ExecReload=` request by it; older versions ignore it). Send
/// [`ready`] when the reload is done.
pub fn reloading() -> Result<(), ServiceError> {
    let now = NotifyState::monotonic_usec_now().map_err(ServiceError::Notify)?;
    send(&[NotifyState::Reloading, now])
}

/// `STOPPING=1`: the drain started.
pub fn stopping() -> Result<(), ServiceError> {
    send(&[NotifyState::Stopping])
}

/// `STATUS=…`, shown by `systemctl status`. Must not contain a number or a
/// body — it is metadata for operators.
pub fn status(text: &str) -> Result<(), ServiceError> {
    // A newline would start another assignment in the datagram.
    let line = text.replace(['\n', '\r'], " ");
    send(&[NotifyState::Status(&line)])
}

/// Liveness counter the main loop bumps; cheap to clone and to beat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// A new heartbeat at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one turn of the main loop.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The systemd watchdog, when `WatchdogSec=` is set for this process.
#[derive(Debug, Clone)]
pub struct Watchdog {
    interval: Duration,
    heartbeat: Heartbeat,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC`/`WATCHDOG_PID`; `None` when systemd expects no
    /// pings from this process.
    pub fn from_env() -> Option<Watchdog> {
        let mut usec = 0u64;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            Some(Watchdog::with_interval(Duration::from_micros(usec)))
        } else {
            None
        }
    }

    /// A watchdog with a given interval (tests, or a non-systemd supervisor).
    pub fn with_interval(interval: Duration) -> Watchdog {
        Watchdog {
            interval,
            heartbeat: Heartbeat::new(),
        }
    }

    /// systemd's `WatchdogSec`.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How often the main loop must beat at the least (a quarter interval,
    /// so every half-interval check sees a beat).
    pub fn beat_every(&self) -> Duration {
        self.interval / 4
    }

    /// The heartbeat for the main loop.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Spawns the task that pings every half interval while the heartbeat
    /// moves, until `stop` is cancelled, on `tasks` (whose owner waits for it).
    pub fn spawn(self, stop: CancellationToken, tasks: &TaskTracker) -> JoinHandle<()> {
        tasks.spawn(async move {
            let half = self.interval / 2;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = self.heartbeat.value();
            let mut stalled = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = self.heartbeat.value();
                if now == last {
                    if !stalled {
                        tracing::warn!("main loop has not beaten; withholding WATCHDOG=1");
                        stalled = true;
                    }
                    continue;
                }
                last = now;
                stalled = false;
                if let Err(e) = send(&[NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "sending WATCHDOG=1 failed");
                }
            }
        })
    }
}
