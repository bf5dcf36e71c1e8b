//! Service lifecycle: signals, systemd notify and watchdog, drain, process
//! hardening (SPEC §1.3, §2).
//!
//! Owns: the pieces `run` wires together — it does not own `run` itself.
//! - [`hardening`]: `PR_SET_DUMPABLE=0`, `RLIMIT_CORE=0`, optional `mlockall`;
//! - [`notify`]: `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`, and a
//!   watchdog that pings only while the main loop beats;
//! - [`signals`]: SIGHUP → [`Event::Reload`], SIGTERM/SIGINT →
//!   [`Event::Shutdown`];
//! - [`shutdown`]: a cancellation token and a task tracker with a bounded,
//!   reporting [`Shutdown::drain`].
//!
//! Must not know: config parsing, listeners, SMPP, the store's tables.
//!
//! Usage (the shape of `run`):
//!
//! ```no_run
//! use sms_conduit::service::{self, notify, Event, Shutdown, Signals};
//! # async fn run(lock_memory: bool, drain: std::time::Duration) -> Result<(), Box<dyn std::error::Error>> {
//! service::harden_process(lock_memory)?;          // first, before any body exists
//! let mut signals = Signals::new()?;             // before listeners: no SIGTERM lost
//! let shutdown = Shutdown::new();
//! // ... open the store, start listeners with `shutdown.spawn("api", ...)`,
//! //     each task watching `shutdown.token()` ...
//! let watchdog = notify::Watchdog::from_env();
//! let heartbeat = watchdog.as_ref().map(|w| w.heartbeat());
//! let beat_every = watchdog.as_ref().map_or(std::time::Duration::from_secs(5), |w| w.beat_every());
//! if let Some(w) = watchdog {
//!     w.spawn(shutdown.token(), shutdown.tracker());
//! }
//! notify::ready()?;
//! let mut tick = tokio::time::interval(beat_every);
//! loop {
//!     tokio::select! {
//!         ev = signals.recv() => match ev {
//!             Event::Reload => {
//!                 notify::reloading()?;
//!                 // ... reload config and certificates ...
//!                 notify::ready()?;
//!             }
//!             Event::Shutdown => break,
//!         },
//!         _ = tick.tick() => {
//!             if let Some(h) = &heartbeat { h.beat(); }
//!         }
//!     }
//! }
//! notify::stopping()?;
//! let clean = shutdown.drain(drain).await;
//! // ... store.close().await ...
//! # let _ = clean; Ok(()) }
//! ```

pub(crate) mod hardening;
pub mod notify;
pub(crate) mod shutdown;
pub(crate) mod signals;
pub mod zero_alloc;

pub use hardening::harden_process;
pub use shutdown::Shutdown;
pub use signals::{Event, Signals};

/// Errors of the lifecycle pieces.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A hardening call failed.
    #[error("process hardening: {what} failed: {source}")]
    Harden {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `mlockall` failed for `[node] lock_memory = true`.
    #[error(
        "[node] lock_memory: mlockall(MCL_CURRENT|MCL_FUTURE) failed: {0}; \
         the process needs LimitMEMLOCK=infinity in its systemd unit (or \
         CAP_IPC_LOCK), or set lock_memory = false"
    )]
    LockMemory(#[source] std::io::Error),
    /// A signal handler could not be installed.
    #[error("installing the {name} handler: {source}")]
    Signal {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Writing to `$NOTIFY_SOCKET` failed.
    #[error("systemd notify: {0}")]
    Notify(#[source] std::io::Error),
}
