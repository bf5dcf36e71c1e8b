//! Unix signals as service events (SPEC §2): SIGHUP → reload, SIGTERM and
//! SIGINT → graceful drain.
//!
//! Owns: the tokio signal handlers. Create [`Signals`] once, early (before
//! the first listener is up), so a SIGTERM during start-up is not lost to
//! the default action.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::ServiceError;

/// What a signal asks the appliance to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP: reload config and TLS certificates.
    Reload,
    /// SIGTERM or SIGINT: drain and exit.
    Shutdown,
}

/// The stream of [`Event`]s. Also a [`futures::Stream`].
#[derive(Debug)]
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers. Needs a tokio runtime.
    pub fn new() -> Result<Signals, ServiceError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| ServiceError::Signal { name, source })
        };
        Ok(Signals {
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// The next event. Shutdown wins when both are pending.
    pub async fn recv(&mut self) -> Event {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // A handler stream only ends when the runtime shuts down; treat that
        // as a shutdown request too.
        if self.term.poll_recv(cx).is_ready() || self.int.poll_recv(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
        match self.hup.poll_recv(cx) {
            Poll::Ready(Some(())) => Poll::Ready(Event::Reload),
            Poll::Ready(None) => Poll::Ready(Event::Shutdown),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures::Stream for Signals {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signals are process-wide; this is the only test in the lib that raises
    // any, and tokio keeps the handlers installed (default action replaced)
    // for the rest of the process, so no other test is affected.
    #[tokio::test]
    async fn hup_reloads_term_and_int_shut_down() {
        let mut s = Signals::new().unwrap();
        for (sig, want) in [
            (libc::SIGHUP, Event::Reload),
            (libc::SIGTERM, Event::Shutdown),
            (libc::SIGINT, Event::Shutdown),
        ] {
            // SAFETY: raising a signal whose handler tokio installed above.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv())
                .await
                .unwrap();
            assert_eq!(got, want);
        }
    }
}
