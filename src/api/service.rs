//! The seam between the HTTPS API and the relay.
//!
//! Owns: the request and answer types of `POST /v1/messages` and
//! `GET /v1/messages/{id}` ([`SendRequest`], [`SendAccepted`],
//! [`MessageView`]), the [`MessageService`] trait the relay implements, the
//! [`Readiness`] trait behind `/readyz`, and the placeholders used until the
//! relay exists ([`NoRouteService`], [`AlwaysReady`]).
//!
//! Parsing is strict and body-safe: unknown fields are refused, numbers are
//! checked as E.164, and the text goes straight into a [`Body`] (zeroized on
//! drop). No error built here quotes a value from the request: details name
//! the field only.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::problem::SendError;
use crate::types::{Body, E164};

/// The id of an authenticated client (`[[clients]].id`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps a configured client id.
    pub fn new(id: &str) -> Self {
        ClientId(Arc::from(id))
    }

    /// The id as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest accepted validity period (72 h, what carriers keep at most).
pub const MAX_VALIDITY: Duration = Duration::from_secs(72 * 3600);
/// Longest `client_ref` and `campaign_id`, in bytes.
pub const MAX_REF_LEN: usize = 128;

/// One MT to send (SPEC §4 request body), validated.
#[derive(Debug)]
pub struct SendRequest {
    /// One of the campaign's sender numbers.
    pub from: E164,
    /// The recipient.
    pub to: E164,
    /// The text; non-empty. Segment limits are the relay's (it encodes).
    pub text: Body,
    /// The 10DLC campaign the message is sent under.
    pub campaign_id: String,
    /// How long the carrier may keep trying; `None` = carrier default.
    pub validity: Option<Duration>,
    /// The client's own reference, stored as metadata.
    pub client_ref: Option<String>,
}

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

/// Text encoding chosen for an MT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// GSM 03.38 default alphabet (with the extension table).
    Gsm7,
    /// UCS-2.
    Ucs2,
}

/// Lifecycle state of a message (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Accepted,
    Delivered,
    Undeliverable,
    Expired,
    Rejected,
    Failed,
    Unknown,
}

/// The 201 answer to `POST /v1/messages`.
#[derive(Debug, Clone, Serialize)]
pub struct SendAccepted {
    /// `msg_…`.
    pub id: String,
    /// Always [`MessageStatus::Accepted`].
    pub status: MessageStatus,
    pub segments: u32,
    pub encoding: Encoding,
    /// The carrier that accepted every segment.
    pub carrier: String,
    pub campaign_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: SystemTime,
}

/// Metadata of a message for `GET /v1/messages/{id}`: never the text, never
/// the recipient in clear.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: String,
    pub status: MessageStatus,
    pub campaign_id: String,
    /// Our own sender number (not PHI; SPEC §1.2).
    #[serde(serialize_with = "e164_str")]
    pub from: E164,
    pub segments: u32,
    pub encoding: Encoding,
    pub carrier: Option<String>,
    /// SMPP status name or DLR error code of a failure.
    pub error_code: Option<String>,
    pub client_ref: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: SystemTime,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let dt: chrono::DateTime<chrono::Utc> = (*t).into();
    s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn e164_str<S: Serializer>(n: &E164, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// What the API needs from the relay. Implementations may write
/// `async fn send(..)`; the future must be `Send`.
pub trait MessageService: Send + Sync + 'static {
    /// Sends one MT; returns after the carrier answered every segment.
    fn send(
        &self,
        client: &ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = Result<SendAccepted, SendError>> + Send;

    /// Metadata of one of the client's messages.
    fn get(
        &self,
        client: &ClientId,
        id: &str,
    ) -> impl Future<Output = Result<MessageView, SendError>> + Send;
}

/// An opt-out as `GET/PUT /v1/campaigns/{id}/opt-outs/{e164}` show it.
#[derive(Debug, Clone, Serialize)]
pub struct OptOutView {
    pub campaign_id: String,
    /// The number the client asked about (it sent it; not stored in clear).
    #[serde(serialize_with = "e164_str")]
    pub number: E164,
    pub opted_out: bool,
}

/// What `PUT`/`DELETE` on an opt-out does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutChange {
    Add,
    Remove,
}

/// Opt-out administration for clients, on their own campaigns only.
pub trait OptOutService: Send + Sync + 'static {
    /// Whether `number` is opted out of `campaign`.
    fn opt_out_status<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> BoxFuture<'a, Result<OptOutView, SendError>>;
    /// Adds or removes an opt-out (idempotent).
    fn opt_out_change<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
        change: OptOutChange,
    ) -> BoxFuture<'a, Result<OptOutView, SendError>>;
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

/// Object-safe form of [`MessageService`], so [`super::ApiState`] can hold
/// any implementation. Implemented for every `MessageService`.
pub trait DynMessageService: Send + Sync + 'static {
    fn send_boxed<'a>(
        &'a self,
        client: &'a ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>>;

    fn get_boxed<'a>(
        &'a self,
        client: &'a ClientId,
        id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>>;
}

impl<T: MessageService> DynMessageService for T {
    fn send_boxed<'a>(
        &'a self,
        client: &'a ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>> {
        Box::pin(self.send(client, req, idempotency_key))
    }

    fn get_boxed<'a>(
        &'a self,
        client: &'a ClientId,
        id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>> {
        Box::pin(self.get(client, id))
    }
}

/// The placeholder until the relay exists: nothing can be routed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRouteService;

impl MessageService for NoRouteService {
    async fn send(
        &self,
        _client: &ClientId,
        _req: SendRequest,
        _idempotency_key: Option<String>,
    ) -> Result<SendAccepted, SendError> {
        Err(SendError::NoRoute)
    }

    async fn get(&self, _client: &ClientId, _id: &str) -> Result<MessageView, SendError> {
        Err(SendError::NotFound)
    }
}

/// Whether the appliance can take traffic (`/readyz`): the store is open and
/// every priority-1 carrier has at least one bound session.
pub trait Readiness: Send + Sync + 'static {
    /// `Err(reason)` when not ready; the reason is shown to the prober, so it
    /// must hold config names only.
    fn ready(&self) -> Result<(), String>;

    /// Each carrier's state, shown in `/readyz`'s body whatever the status.
    fn carriers(&self) -> Vec<CarrierState> {
        Vec::new()
    }
}

/// One carrier in `/readyz`'s body: its config name and bound sessions.
#[derive(Debug, Clone, Serialize)]
pub struct CarrierState {
    pub name: String,
    pub bound_sessions: usize,
}

/// Always ready; for tests and the metrics-only listener.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn ready(&self) -> Result<(), String> {
        Ok(())
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
