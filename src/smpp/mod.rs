//! SMPP 3.4 over TLS: carrier sessions out, carrier binds in (SPEC §5).
//!
//! The flow through this module:
//!
//! * [`codec`] — framing only: rusmpp's PDU types behind a wrapper that keeps
//!   the stream usable after an undecodable PDU and refuses PDUs over 64 KiB.
//! * [`session`] — the engine. One task owns one connection; callers talk to
//!   it through a bounded channel and get each response on a oneshot. It owns
//!   sequence numbers, the window, response timeouts, enquire_link, idle
//!   timeout, generic_nack and unbind.
//! * [`pool`] — outbound binds to one `[[carriers]]` entry: reconnect loops,
//!   least-loaded choice, retrying throttled submits.
//! * [`pacer`] — a pool's submit rate: `max_tps`, and AIMD after the carrier
//!   throttles (issue 16 item 6).
//! * [`server`] — `[smpp_server]`: TLS accept, bind authentication against
//!   `[[peers]]`, and sending deliver_sm to bound peers.
//! * [`handler`] — what the relay implements to receive MO, receipts and
//!   submit_sm from peers ([`InboundHandler`]).
//!
//! Must not know: HTTP, the store, campaigns, text encodings (the caller
//! hands over encoded bytes; decoding receipts is `dlr`'s job).
//!
//! Invariants: no message text in any log line, error or `Debug` output;
//! numbers are masked in logs; no lock is held across an `.await`.

pub mod bind;
pub mod codec;
pub mod dlr;
pub mod handler;
pub(crate) mod pacer;
pub mod pdu;
pub(crate) mod pool;
pub(crate) mod server;
pub mod session;
pub(crate) mod status;

use std::time::Duration;

pub use handler::{
    BindEvent, InboundHandler, InboundKind, InboundMessage, InboundOutcome, ReceiptTlvs, Refusal,
};
pub use pdu::{DeliverRequest, SubmitRequest, SubmitResponse};
pub use pool::Pool;
pub use rusmpp::CommandStatus;
pub use server::{start_server, start_server_in, BoundPeer, ServerHandle};
pub use session::{BindKind, SessionConfig, SessionHandle};
pub use status::{status_label, status_name};

/// Everything that can go wrong talking SMPP. Mapped once to retryable or
/// permanent by [`SmppError::is_retryable`]. No variant carries message text.
#[derive(Debug, thiserror::Error)]
pub enum SmppError {
    /// The session died (socket closed, keep-alive failed, peer unbound)
    /// before this request was written to it. Retryable on another session.
    #[error("SMPP session lost before the request was sent")]
    SessionLost,
    /// The session died after this request was handed to it and before its
    /// response: the peer may have accepted it, so, like [`Self::Timeout`],
    /// the outcome is unknown and sending it again could duplicate it.
    #[error("SMPP session lost before the response")]
    LostInFlight,
    /// No response within the response timeout. The outcome is unknown: the
    /// peer may have accepted it.
    #[error("no SMPP response within the response timeout")]
    Timeout,
    /// The peer answered with an error status.
    #[error("peer answered {}", status_name(*.0))]
    Status(CommandStatus),
    /// No bound session can take the request right now.
    #[error("no bound SMPP session")]
    NotBound,
    /// The bind was refused with this status.
    #[error("bind refused: {}", status_name(*.0))]
    BindRefused(CommandStatus),
    /// TCP connect, TLS handshake or socket I/O failed.
    #[error("SMPP I/O: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration problem (certificate files, server name).
    #[error("SMPP TLS: {0}")]
    Tls(String),
    /// The peer broke the protocol (bad framing, unexpected response).
    #[error("SMPP protocol violation: {0}")]
    Protocol(&'static str),
    /// A field does not fit its SMPP limits (address too long, …). Never
    /// carries the value itself.
    #[error("SMPP field {field} invalid: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    /// The request's deadline to start passed before its submit_sm could be
    /// written (pool pacing or a carrier's throttling); nothing was sent.
    #[error("SMPP submit not started before the request's deadline")]
    NotStarted,
    /// The appliance is shutting down; the request was not sent.
    #[error("SMPP shutting down")]
    Shutdown,
    /// A phase took longer than allowed (connect, TLS, bind).
    #[error("SMPP {0} timed out")]
    PhaseTimeout(&'static str),
}

impl SmppError {
    /// True when sending the same message again (here or via another route)
    /// cannot duplicate it and may succeed: the carrier never accepted it.
    pub fn is_retryable(&self) -> bool {
        match self {
            SmppError::SessionLost
            | SmppError::NotStarted
            | SmppError::NotBound
            | SmppError::Io(_)
            | SmppError::PhaseTimeout(_)
            | SmppError::BindRefused(_) => true,
            SmppError::Status(s) => status::is_temporary(*s),
            SmppError::Timeout
            | SmppError::LostInFlight
            | SmppError::Tls(_)
            | SmppError::Protocol(_)
            | SmppError::InvalidField { .. }
            | SmppError::Shutdown => false,
        }
    }

    /// The SMPP status behind this error, if the peer answered one.
    pub fn status(&self) -> Option<CommandStatus> {
        match self {
            SmppError::Status(s) | SmppError::BindRefused(s) => Some(*s),
            _ => None,
        }
    }

    /// The SMPP name of [`Self::status`], e.g. `ESME_RINVDSTADR`.
    pub fn status_name(&self) -> Option<std::borrow::Cow<'static, str>> {
        self.status().map(status_name)
    }
}

/// Exponential back-off with full jitter: attempt 0 waits about `base`, each
/// later attempt doubles, never above `cap`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    // Jitter between 50 % and 100 % of the step keeps binds of many
    // appliances from reconnecting in lock-step after a carrier restart.
    let millis = exp.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(SmppError::SessionLost.is_retryable());
        assert!(!SmppError::Timeout.is_retryable());
        assert!(!SmppError::LostInFlight.is_retryable());
        assert!(SmppError::Status(CommandStatus::EsmeRthrottled).is_retryable());
        assert!(!SmppError::Status(CommandStatus::EsmeRinvdstadr).is_retryable());
        assert_eq!(
            SmppError::Status(CommandStatus::EsmeRinvdstadr)
                .status_name()
                .as_deref(),
            Some("ESME_RINVDSTADR")
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let cap = Duration::from_secs(300);
        let b0 = backoff(0, Duration::from_secs(1), cap);
        assert!(b0 >= Duration::from_millis(500) && b0 <= Duration::from_secs(1));
        let b20 = backoff(20, Duration::from_secs(1), cap);
        assert!(b20 <= cap && b20 >= cap / 2);
    }
}
