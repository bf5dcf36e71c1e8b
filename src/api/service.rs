//! The API's side of the seam to the relay.
//!
//! Owns: parsing `POST /v1/messages` bodies into the relay's
//! [`SendRequest`] ([`SendRequest::from_json`]), and the placeholder
//! [`NoRouteService`] (an `ApiState`'s opt-outs until the relay is
//! attached; tests use it as a relay that routes nothing). The
//! request and answer types and the seam traits are the relay's
//! (`relay::domain`), re-exported here.
//!
//! Parsing is strict and body-safe: unknown fields are refused, numbers are
//! checked as E.164, and the text goes straight into a [`Body`] (zeroized on
//! drop). No error built here quotes a value from the request: details name
//! the field only.

use std::borrow::Cow;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Deserializer};

use super::problem::SendError;
pub use crate::relay::domain::{
    CarrierState, ClientId, Encoding, MessageService, MessageStatus, MessageView, OptOutChange,
    OptOutService, OptOutView, Readiness, SendAccepted, SendRequest, MAX_REF_LEN, MAX_VALIDITY,
};
use crate::types::{Body, E164};

/// The JSON as sent. `text` is wrapped into a [`Body`] as it is read; the
/// other strings borrow from the request bytes unless they hold escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSendRequest<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(deserialize_with = "body_from_json")]
    text: Body,
    #[serde(borrow)]
    campaign_id: Cow<'a, str>,
    #[serde(default)]
    validity_secs: Option<u64>,
    #[serde(default, borrow)]
    client_ref: Option<Cow<'a, str>>,
}

fn body_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
    String::deserialize(d).map(Body::new)
}

/// Fields a send request may carry, for error details.
pub const SEND_FIELDS: &[&str] = &[
    "from",
    "to",
    "text",
    "campaign_id",
    "validity_secs",
    "client_ref",
];

impl SendRequest {
    /// Parses and validates a JSON body. Errors name the field, never echo a
    /// value or input bytes.
    pub fn from_json(bytes: &[u8]) -> Result<SendRequest, SendError> {
        // serde_path_to_error, which names the field in an error, allocates
        // for every field it walks (~11 allocations a request, counted with
        // benches/allocs.sh). So a body is parsed plainly first, and only one
        // that fails is parsed again with it, for the error.
        match serde_json::from_slice::<WireSendRequest<'_>>(bytes) {
            Ok(wire) => wire.validate(),
            Err(_) => Err(SendError::InvalidRequest(json_error(bytes))),
        }
    }
}

/// What is wrong with a body plain serde_json refused, by field.
fn json_error(bytes: &[u8]) -> String {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, WireSendRequest<'_>>(&mut de) {
        Err(e) => describe_json_error(&e),
        Ok(_) => match de.end() {
            Err(e) => format!(
                "trailing characters after the JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
            // Not reached: both parsers take the same input the same way.
            Ok(()) => "request body is not valid JSON".into(),
        },
    }
}

impl WireSendRequest<'_> {
    fn validate(self) -> Result<SendRequest, SendError> {
        let bad = |m: &str| SendError::InvalidRequest(m.to_owned());
        let from = E164::parse(&self.from).map_err(|_| {
            bad("`from` is not an E.164 number (+ and 7 to 15 digits, no leading zero)")
        })?;
        let to = E164::parse(&self.to).map_err(|_| {
            bad("`to` is not an E.164 number (+ and 7 to 15 digits, no leading zero)")
        })?;
        if self.text.is_empty() {
            return Err(bad("`text` must not be empty"));
        }
        if self.campaign_id.is_empty() || self.campaign_id.len() > MAX_REF_LEN {
            return Err(bad("`campaign_id` must be 1 to 128 characters"));
        }
        let validity = match self.validity_secs {
            None => None,
            Some(s) if s >= 1 && s <= MAX_VALIDITY.as_secs() => Some(Duration::from_secs(s)),
            Some(_) => return Err(bad("`validity_secs` must be between 1 and 259200")),
        };
        if let Some(r) = &self.client_ref {
            if r.len() > MAX_REF_LEN || r.chars().any(char::is_control) {
                return Err(bad(
                    "`client_ref` must be at most 128 bytes without control characters",
                ));
            }
        }
        Ok(SendRequest {
            from,
            to,
            text: self.text,
            campaign_id: self.campaign_id.into_owned(),
            validity,
            client_ref: self.client_ref.map(Cow::into_owned),
        })
    }
}

/// Describes a JSON error by kind, field and position only. serde_json's own
/// messages can quote the input (`invalid type: string "…"`), which may be
/// the message text, so they are never passed through.
fn describe_json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_json::error::Category;
    let inner = e.inner();
    let at = format!("line {}, column {}", inner.line(), inner.column());
    match inner.classify() {
        Category::Syntax => format!("request body is not valid JSON ({at})"),
        Category::Eof => format!("request body ends before the JSON is complete ({at})"),
        Category::Io => "request body could not be read".into(),
        Category::Data => {
            let msg = inner.to_string();
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let name = rest.split('`').next().unwrap_or("");
                if SEND_FIELDS.contains(&name) {
                    return format!("missing field `{name}`");
                }
            }
            if msg.starts_with("unknown field") {
                return format!(
                    "unknown field in request body (allowed: {})",
                    SEND_FIELDS.join(", ")
                );
            }
            let path = e.path().to_string();
            if SEND_FIELDS.contains(&path.as_str()) {
                format!("field `{path}` has the wrong type or value ({at})")
            } else {
                format!(
                    "request body must be a JSON object with the fields {} ({at})",
                    SEND_FIELDS.join(", ")
                )
            }
        }
    }
}

impl OptOutService for NoRouteService {
    fn opt_out_status<'a>(
        &'a self,
        _: &'a ClientId,
        _: &'a str,
        _: &'a E164,
    ) -> BoxFuture<'a, Result<OptOutView, SendError>> {
        Box::pin(async { Err(SendError::NotFound) })
    }
    fn opt_out_change<'a>(
        &'a self,
        _: &'a ClientId,
        _: &'a str,
        _: &'a E164,
        _: OptOutChange,
    ) -> BoxFuture<'a, Result<OptOutView, SendError>> {
        Box::pin(async { Err(SendError::NotFound) })
    }
}

/// The placeholder until the relay exists: nothing can be routed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRouteService;

impl MessageService for NoRouteService {
    fn send<'a>(
        &'a self,
        _client: &'a ClientId,
        _req: SendRequest,
        _idempotency_key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>> {
        Box::pin(async { Err(SendError::NoRoute) })
    }

    fn get<'a>(
        &'a self,
        _client: &'a ClientId,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>> {
        Box::pin(async { Err(SendError::NotFound) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"from":"+15551230001","to":"+15557654321","text":"hello","campaign_id":"CX4K2M9","validity_secs":3600,"client_ref":"r1"}"#;

    fn detail(e: SendError) -> String {
        match e {
            SendError::InvalidRequest(d) => d,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_a_valid_request() {
        let r = SendRequest::from_json(OK.as_bytes()).unwrap();
        assert_eq!(r.to.as_str(), "+15557654321");
        assert_eq!(r.text.expose(), "hello");
        assert_eq!(r.validity, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn errors_never_echo_values() {
        let canary = "CANARY-patient-text";
        let cases = [
            format!(
                r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}","campaign_id":"C","bogus":1}}"#
            ),
            format!(
                r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}","campaign_id":"C","validity_secs":"{canary}"}}"#
            ),
            format!(
                r#"{{"from":"+15551230001","to":"+15557654321","text":"{canary}" "campaign_id":"C"}}"#
            ),
            format!(r#"{{"from":"+15551230001","to":"{canary}","text":"x","campaign_id":"C"}}"#),
            format!(r#"["{canary}"]"#),
            format!(r#"{{"{canary}":1}}"#),
        ];
        for c in cases {
            let d = detail(SendRequest::from_json(c.as_bytes()).unwrap_err());
            assert!(!d.contains("CANARY"), "{d}");
            assert!(!d.contains("+1555"), "{d}");
        }
    }

    #[test]
    fn names_the_bad_field() {
        let c = r#"{"from":"+15551230001","to":"5557654321","text":"x","campaign_id":"C"}"#;
        assert!(detail(SendRequest::from_json(c.as_bytes()).unwrap_err()).contains("`to`"));
        let c = r#"{"from":"+15551230001","to":"+15557654321","campaign_id":"C"}"#;
        assert!(detail(SendRequest::from_json(c.as_bytes()).unwrap_err()).contains("`text`"));
        let c = r#"{"from":"+15551230001","to":"+15557654321","text":"","campaign_id":"C"}"#;
        assert!(detail(SendRequest::from_json(c.as_bytes()).unwrap_err()).contains("`text`"));
    }
}
