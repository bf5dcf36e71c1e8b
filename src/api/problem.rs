//! The one mapping of the send path's errors to HTTP problem documents
//! (RFC 9457, SPEC §4).
//!
//! Owns: [`SendError::problem`] and [`SendError::code`] (the error enum
//! itself is the relay's, `relay::error`), the *only* place a `SendError` becomes a status
//! code, a `code`, a title and a `Retry-After` header. HTTP-level failures that
//! never reach the service (bad JSON, unknown route, wrong method, oversized
//! body) are built as [`Problem`]s directly by the routes.
//!
//! Conduit rule: nothing here may carry message text or a clear phone number.
//! Details are written by our code from field names and fixed phrases, never
//! copied from request bytes.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::relay::SendError;

/// Base of the `type` URI of every problem document.
pub const PROBLEM_TYPE_BASE: &str = "https://sms-conduit.dev/problems/";

/// `Retry-After` of `store_unavailable`: the store retries its reopen with
/// a back-off of up to 5 s, so a client asked back after that finds it
/// recovered if the fault (a full disk) has gone.
pub const STORE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// `Retry-After` of `shared_state_unavailable`: Redis's connection manager
/// reconnects within about a second of Redis being back, so a client asked
/// back after 2 s finds it recovered if Redis has restarted.
pub const SHARED_STATE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Media type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

impl SendError {
    /// The machine-readable `code` (SPEC §4).
    pub fn code(&self) -> &'static str {
        match self {
            SendError::InvalidRequest(_) => "invalid_request",
            SendError::Unauthorized
            | SendError::KeyExpired { .. }
            | SendError::ClientCertRequired => "unauthorized",
            SendError::CampaignNotAllowed => "campaign_not_allowed",
            SendError::SenderNotInCampaign => "sender_not_in_campaign",
            SendError::IdempotencyConflict => "idempotency_conflict",
            SendError::RecipientOptedOut => "recipient_opted_out",
            SendError::ConsentMissing => "consent_missing",
            SendError::RateLimited { .. } => "rate_limited",
            SendError::AuthLockedOut { .. } => "auth_locked_out",
            SendError::DailyCapReached { .. } => "daily_cap_reached",
            SendError::CarrierRejected { .. } => "carrier_rejected",
            SendError::NoRoute => "no_route",
            SendError::CarrierUnavailable { .. } => "carrier_unavailable",
            SendError::StoreUnavailable => "store_unavailable",
            SendError::SharedStateUnavailable => "shared_state_unavailable",
            SendError::IdempotencyOutcomeUnknown => "idempotency_conflict",
            SendError::CarrierTimeout => "carrier_timeout",
            SendError::NotFound | SendError::Absent(_) => "not_found",
            SendError::Internal => "internal_error",
        }
    }

    // Over 120 lines on purpose: the one table from each `SendError`
    // variant to its status, code, title and `Retry-After` (STYLE: each
    // error is mapped to the wire in exactly one place).
    /// The one mapping from a send-path error to its problem document.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        let (status, title, detail) = match self {
            SendError::InvalidRequest(d) => (S::BAD_REQUEST, "Invalid request", d.clone()),
            SendError::Unauthorized => (
                S::UNAUTHORIZED,
                "Unauthorized",
                "a valid API key is required: Authorization: Bearer <key>".into(),
            ),
            SendError::KeyExpired { not_after } => (
                S::UNAUTHORIZED,
                "Unauthorized",
                format!("the key expired at {not_after}; use its replacement (sms-conduit keys new)"),
            ),
            SendError::ClientCertRequired => (
                S::UNAUTHORIZED,
                "Unauthorized",
                "this key is accepted only with the client's TLS certificate; connect with it".into(),
            ),
            SendError::CampaignNotAllowed => (
                S::FORBIDDEN,
                "Campaign not allowed",
                "this API key may not send on the requested campaign".into(),
            ),
            SendError::SenderNotInCampaign => (
                S::FORBIDDEN,
                "Sender not in campaign",
                "`from` is not one of the campaign's numbers".into(),
            ),
            SendError::IdempotencyConflict => (
                S::CONFLICT,
                "Idempotency conflict",
                "this Idempotency-Key was used for a different request, or its first attempt has no known outcome".into(),
            ),
            SendError::RecipientOptedOut => (
                S::UNPROCESSABLE_ENTITY,
                "Recipient opted out",
                "the recipient opted out of this campaign's messages".into(),
            ),
            SendError::RateLimited { retry_after } => (
                S::TOO_MANY_REQUESTS,
                "Rate limited",
                format!("rate limit reached; retry after {} s", retry_secs(*retry_after)),
            ),
            SendError::AuthLockedOut { retry_after } => (
                S::TOO_MANY_REQUESTS,
                "Authentication locked out",
                format!(
                    "too many failed authentications from this address; a valid key is still accepted; retry after {} s",
                    retry_secs(*retry_after)
                ),
            ),
            SendError::DailyCapReached { retry_after } => (
                S::TOO_MANY_REQUESTS,
                "Daily cap reached",
                format!("the brand's daily segment cap is used up; retry after {} s", retry_secs(*retry_after)),
            ),
            SendError::CarrierRejected { status_name } => (
                S::BAD_GATEWAY,
                "Carrier rejected",
                format!("the carrier refused the message: {status_name}"),
            ),
            SendError::ConsentMissing => (
                S::UNPROCESSABLE_ENTITY,
                "Consent missing",
                "this campaign sends only to recipients whose consent is recorded (PUT /v1/campaigns/{id}/consents/{number}, or the campaign's opt-in keyword); it was not sent".into(),
            ),
            SendError::NoRoute => (
                S::UNPROCESSABLE_ENTITY,
                "No route",
                "no configured carrier covers this destination".into(),
            ),
            SendError::CarrierUnavailable { retry_after } => (
                S::SERVICE_UNAVAILABLE,
                "Carrier unavailable",
                format!(
                    "no carrier for this destination can take the message now; it was not sent; retry after {} s",
                    retry_secs(*retry_after)
                ),
            ),
            SendError::StoreUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "Store unavailable",
                format!(
                    "this node cannot record messages now; it was not sent; retry after {} s",
                    retry_secs(STORE_RETRY_AFTER)
                ),
            ),
            SendError::SharedStateUnavailable => (
                S::SERVICE_UNAVAILABLE,
                "Shared state unavailable",
                format!(
                    "the fleet's shared state cannot be reached, so opt-outs and limits cannot be checked; it was not sent; retry after {} s",
                    retry_secs(SHARED_STATE_RETRY_AFTER)
                ),
            ),
            SendError::IdempotencyOutcomeUnknown => (
                S::CONFLICT,
                "Idempotency conflict",
                "the first attempt with this Idempotency-Key may have reached the carrier and its outcome is unknown; it is not sent again".into(),
            ),
            SendError::CarrierTimeout => (
                S::GATEWAY_TIMEOUT,
                "Carrier timeout",
                "the carrier did not answer in time; the outcome is unknown".into(),
            ),
            SendError::NotFound => (S::NOT_FOUND, "Not found", "no such message".into()),
            SendError::Absent(what) => (S::NOT_FOUND, "Not found", (*what).into()),
            SendError::Internal => (
                S::INTERNAL_SERVER_ERROR,
                "Internal error",
                "the request could not be processed; it was not sent".into(),
            ),
        };
        let mut p = Problem::new(status, self.code(), title, detail);
        match self {
            SendError::RateLimited { retry_after }
            | SendError::AuthLockedOut { retry_after }
            | SendError::DailyCapReached { retry_after }
            | SendError::CarrierUnavailable { retry_after } => {
                p.retry_after = Some(*retry_after);
            }
            SendError::StoreUnavailable => p.retry_after = Some(STORE_RETRY_AFTER),
            SendError::SharedStateUnavailable => p.retry_after = Some(SHARED_STATE_RETRY_AFTER),
            SendError::Unauthorized
            | SendError::KeyExpired { .. }
            | SendError::ClientCertRequired => p.www_authenticate = true,
            _ => {}
        }
        p
    }
}

impl IntoResponse for SendError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// An `application/problem+json` response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    #[serde(serialize_with = "ser_status")]
    pub status: StatusCode,
    pub detail: String,
    pub code: &'static str,
    /// Sent as a `Retry-After` header (seconds).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Adds `WWW-Authenticate: Bearer`.
    #[serde(skip)]
    pub www_authenticate: bool,
}

fn ser_status<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    /// A problem with `type` derived from `code`.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            type_uri: format!("{PROBLEM_TYPE_BASE}{code}"),
            title,
            status,
            detail: detail.into(),
            code,
            retry_after: None,
            www_authenticate: false,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
            detail,
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("request bodies are limited to {limit} bytes"),
        )
    }

    /// 404 `not_found` for an unknown route.
    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "no such endpoint",
        )
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this endpoint does not accept that method",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // Serialising a struct of strings and a number cannot fail; the
        // fallback keeps the response well-formed regardless.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| {
            br#"{"type":"about:blank","title":"Internal error","status":500,"code":"internal_error"}"#
                .to_vec()
        });
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(d) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(d)));
        }
        if self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        let cases = [
            (SendError::InvalidRequest("x".into()), 400),
            (SendError::Unauthorized, 401),
            (SendError::CampaignNotAllowed, 403),
            (SendError::SenderNotInCampaign, 403),
            (SendError::IdempotencyConflict, 409),
            (SendError::RecipientOptedOut, 422),
            (
                SendError::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                429,
            ),
            (
                SendError::DailyCapReached {
                    retry_after: Duration::from_secs(60),
                },
                429,
            ),
            (
                SendError::CarrierRejected {
                    status_name: "ESME_RINVDSTADR".into(),
                },
                502,
            ),
            (SendError::NoRoute, 422),
            (
                SendError::CarrierUnavailable {
                    retry_after: Duration::from_secs(2),
                },
                503,
            ),
            (SendError::StoreUnavailable, 503),
            (SendError::SharedStateUnavailable, 503),
            (SendError::IdempotencyOutcomeUnknown, 409),
            (SendError::CarrierTimeout, 504),
            (SendError::NotFound, 404),
            (SendError::Absent("this number is not opted out"), 404),
            (SendError::Internal, 500),
        ];
        for (e, status) in cases {
            let p = e.problem();
            assert_eq!(p.status.as_u16(), status, "{e:?}");
            assert_eq!(p.type_uri, format!("{PROBLEM_TYPE_BASE}{}", e.code()));
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = SendError::RateLimited {
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        let r = SendError::Unauthorized.into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
