//! The relay's domain types and the seams its callers use.
//!
//! Owns: the request and answer of a send ([`SendRequest`],
//! [`SendAccepted`], [`MessageView`]), [`ClientId`], [`MessageStatus`] and
//! [`Encoding`], the opt-out and consent values, and the seam traits the
//! relay implements for the HTTPS API ([`MessageService`],
//! [`OptOutService`], [`ConsentService`], [`Readiness`]).
//!
//! Must not know: HTTP. The API parses requests into these types
//! (`api::service`) and maps [`super::SendError`] to problem documents
//! (`api::problem`); the serde `Serialize` impls here are the answers'
//! JSON bodies, field for field.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde::{Serialize, Serializer};

use super::error::SendError;
pub use super::status::MessageStatus;
pub use crate::text::Encoding;
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

/// What the API needs from the relay. Object-safe, like every seam trait
/// here: methods return a [`BoxFuture`] (the API holds it as `dyn`; the one
/// box per request is the one an `async fn` behind `dyn` would need anyway).
pub trait MessageService: Send + Sync + 'static {
    /// Sends one MT; returns after the carrier answered every segment.
    fn send<'a>(
        &'a self,
        client: &'a ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>>;

    /// Metadata of one of the client's messages.
    fn get<'a>(
        &'a self,
        client: &'a ClientId,
        id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>>;
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

/// How consent was obtained (the evidence's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMethod {
    WebForm,
    Keyword,
    Paper,
    Verbal,
}

impl ConsentMethod {
    /// The record form (`web_form`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentMethod::WebForm => "web_form",
            ConsentMethod::Keyword => "keyword",
            ConsentMethod::Paper => "paper",
            ConsentMethod::Verbal => "verbal",
        }
    }
}

/// A consent's evidence metadata, as `PUT` takes it and the store keeps it:
/// never PHI, never the number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentEvidence {
    pub method: ConsentMethod,
    /// When consent was given (RFC 3339).
    pub at: String,
    /// The client's reference to its record of the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
}

/// Consent administration for clients, on their own campaigns only.
pub trait ConsentService: Send + Sync + 'static {
    /// The recorded consent of `number` to `campaign`, if any.
    fn consent<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> BoxFuture<'a, Result<Option<ConsentEvidence>, SendError>>;
    /// Records (`Some`) or withdraws a consent, audited with it.
    fn change_consent<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
        evidence: Option<ConsentEvidence>,
    ) -> BoxFuture<'a, Result<(), SendError>>;
}
