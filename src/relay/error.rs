//! Why a send (or a look-up) did not succeed: the one error enum every
//! layer of the send path returns (the relay, the limits, the SMPP client
//! all end here).
//!
//! Must not know: HTTP. `api::problem` is the one place a [`SendError`]
//! becomes a status code, a `code`, a title and a `Retry-After` header.
//!
//! Conduit rule: nothing here may carry message text or a clear phone
//! number.

use std::time::Duration;

/// Why a send (or a look-up) did not succeed. One variant per SPEC §4 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The request is malformed; the detail names the field, never its value.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Missing or unknown API key.
    #[error("unauthorized")]
    Unauthorized,
    /// A known key past its `not_after` (RFC 3339, UTC): 401 `unauthorized`
    /// with a detail that says so, so the client knows to rotate.
    #[error("API key expired")]
    KeyExpired { not_after: String },
    /// A valid key of a client that requires a TLS client certificate, on a
    /// connection without one of its certificates: 401 `unauthorized`.
    #[error("client certificate required")]
    ClientCertRequired,
    /// The key's client may not use this campaign.
    #[error("campaign not allowed for this client")]
    CampaignNotAllowed,
    /// `from` is not one of the campaign's numbers.
    #[error("sender number not in campaign")]
    SenderNotInCampaign,
    /// Same idempotency key, different request; or the first attempt's
    /// outcome is unknown.
    #[error("idempotency conflict")]
    IdempotencyConflict,
    /// The recipient opted out of this campaign's numbers.
    #[error("recipient opted out")]
    RecipientOptedOut,
    /// The campaign has `require_opt_in` and the recipient's consent is not
    /// recorded: nothing was sent (422).
    #[error("recipient consent missing")]
    ConsentMissing,
    /// Too many failed authentications from this address: refused until
    /// `retry_after` unless the request carries a valid key.
    #[error("authentication locked out, retry after {retry_after:?}")]
    AuthLockedOut { retry_after: Duration },
    /// A campaign rate limit.
    #[error("rate limited, retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// The brand's daily segment cap is used up.
    #[error("daily cap reached, retry after {retry_after:?}")]
    DailyCapReached { retry_after: Duration },
    /// The carrier answered an SMPP error; `status_name` is e.g. `ESME_RINVDSTADR`.
    #[error("carrier rejected the message: {status_name}")]
    CarrierRejected { status_name: String },
    /// No configured carrier covers the destination: permanent (422).
    #[error("no route")]
    NoRoute,
    /// Routes exist for the destination but none has a bound session now,
    /// or the carrier's pacing could not start the submit within the
    /// request's deadline: nothing was sent, retry later (503).
    #[error("carrier unavailable, retry after {retry_after:?}")]
    CarrierUnavailable { retry_after: Duration },
    /// This node's store cannot commit now: nothing was sent (503).
    #[error("store unavailable")]
    StoreUnavailable,
    /// Fleet mode: the shared state (Redis) did not answer, so opt-out,
    /// rate and daily cap could not be checked: nothing was sent (503).
    #[error("shared state unavailable")]
    SharedStateUnavailable,
    /// Same idempotency key, and the first attempt's outcome is unknown
    /// (it may have reached a carrier: a timeout, or a crash while it was
    /// in flight): never sent again.
    #[error("idempotency key's first outcome is unknown")]
    IdempotencyOutcomeUnknown,
    /// No carrier answer within the window timeout; outcome unknown.
    #[error("carrier timeout")]
    CarrierTimeout,
    /// `GET /v1/messages/{id}`: no such message for this client.
    #[error("not found")]
    NotFound,
    /// Another resource than a message is absent (code `not_found` too);
    /// the detail says which, so a client does not read "no such message"
    /// for, e.g., a number that is not opted out.
    #[error("not found: {0}")]
    Absent(&'static str),
    /// A bug or an unavailable dependency (the store); details go to the log.
    #[error("internal error")]
    Internal,
}
