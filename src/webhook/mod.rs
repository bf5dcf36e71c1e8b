//! Signed webhooks to client applications: the way back from the relay to
//! the clients (SPEC §4 "Webhooks", §1 rule 4).
//!
//! Two kinds of event, two delivery rules:
//! * `message.status` — metadata. Written to the durable [`outbox`] in the
//!   same store transaction as the status change ([`outbox::enqueue`]), then
//!   sent by a per-client [`worker`] until the client answers 2xx, with
//!   exponential backoff, for at most 72 hours. Survives restarts; sent at
//!   least once, and in order per message.
//! * `message.received` — an MO, text included. Never stored: one signed POST
//!   while the carrier waits ([`Webhooks::deliver_now`]); the relay turns a
//!   failure into ESME_RX_T_APPN so the carrier retries.
//!
//! Every request carries `Conduit-Signature` ([`sign`]). The receiving end
//! for tests and the demo is `tools::sink`.
//!
//! Must not know: SMPP, the API, how statuses are decided. Must never put a
//! text or a clear phone number in a log line, an error, a metric label or
//! the store: [`ReceivedEvent`] can only be serialised into a request body
//! buffer that is zeroized after sending, and [`StatusEvent`] has no field
//! for either.

pub(crate) mod event;
pub(crate) mod outbox;
mod schedule;
pub mod sign;
pub(crate) mod worker;

use std::time::Duration;

pub use event::{ReceivedEvent, StatusEvent};
pub use outbox::{enqueue, Outbox, OutboxRecord};
pub use sign::{SignatureError, HEADER as SIGNATURE_HEADER};
pub use worker::{PreparedWebhooks, Webhooks};

use crate::tls::TlsError;

/// Timeouts, backoff and limits of webhook delivery. [`Default`] is what
/// SPEC §4 promises; tests shorten them.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP + TLS connect timeout (5 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout, connect included (10 s).
    pub request_timeout: Duration,
    /// First retry delay (1 s); doubled per attempt, with ±20 % jitter.
    pub backoff_base: Duration,
    /// Longest retry delay (10 min).
    pub backoff_cap: Duration,
    /// A status event older than this is dropped as `expired` (72 h).
    pub max_age: Duration,
    /// How often a worker re-reads the outbox when nothing woke it (1 s):
    /// picks up events enqueued without [`Webhooks::notify`].
    pub poll_interval: Duration,
    /// Status events a worker holds in memory at most; the rest wait in the
    /// outbox (bounded memory under a large backlog).
    pub window: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            max_age: Duration::from_secs(72 * 3600),
            poll_interval: Duration::from_secs(1),
            window: 50_000,
        }
    }
}

/// Why a webhook could not be set up or a delivery failed.
///
/// Carries client ids (from config), HTTP statuses and transport reasons;
/// never a body, a number or the webhook URL (which may hold a token).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The client has no webhook configured (or is unknown).
    #[error("client {0} has no webhook configured")]
    NoWebhook(String),
    /// The webhook URL does not parse.
    #[error("client {client}: webhook_url is not a valid URL")]
    Url { client: String },
    /// The webhook's CA file could not be used.
    #[error("client {client}: webhook TLS: {source}")]
    Tls {
        client: String,
        #[source]
        source: TlsError,
    },
    /// The event could not be serialised.
    #[error("encoding webhook event: {0}")]
    Encode(String),
    /// The webhook answered, but not 2xx.
    #[error("client {client}: webhook answered HTTP {status}")]
    Status { client: String, status: u16 },
    /// No answer within the deadline.
    #[error("client {client}: webhook did not answer within {after:?}")]
    Timeout { client: String, after: Duration },
    /// Connecting, TLS or the exchange failed.
    #[error("client {client}: webhook unreachable: {reason}")]
    Unreachable { client: String, reason: String },
}
