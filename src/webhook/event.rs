//! The events we send to clients, and their wire form.
//!
//! Owns the envelope `{"id":"evt_…","type":…,"created_at":RFC3339,"data":{…}}`
//! (SPEC §4) and the two kinds of `data`:
//! * [`StatusEvent`] (`message.status`): metadata of an MT's status change.
//!   It has no field that could hold a text or a recipient number, so what
//!   the outbox stores is PHI-free by construction.
//! * [`ReceivedEvent`] (`message.received`): an MO, with its text and both
//!   numbers. It is serialised only by [`ReceivedEvent::to_body`], straight
//!   into a fixed-capacity buffer that is zeroized when dropped; it never
//!   grows (a reallocation would leave a copy of the text in freed memory),
//!   and it has no `Serialize`, `Display` or clear `Debug`.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use zeroize::Zeroize;

use super::WebhookError;
use crate::types::{Body, E164};

/// `type` of a status event.
pub const STATUS_TYPE: &str = "message.status";
/// `type` of an MO event.
pub const RECEIVED_TYPE: &str = "message.received";

/// A new event id: `evt_` and 128 random bits in hex.
pub fn new_event_id() -> String {
    format!("evt_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A status change of an MT, the `data` of a `message.status` event.
///
/// Metadata only (SPEC §1): ids, config names, counts, times. Build it from
/// the message record inside the store op that changes the status and hand
/// it to [`super::outbox::enqueue`] in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// Our message id (`msg_…`).
    pub message_id: String,
    /// The API status reached (`accepted`, `delivered`, `undeliverable`, …).
    pub status: String,
    /// Carrier or SMPP error code, when the status is a failure.
    pub error_code: Option<String>,
    /// Carrier name from config.
    pub carrier: Option<String>,
    /// Campaign id from config.
    pub campaign_id: Option<String>,
    /// The client's own reference, as it sent it.
    pub client_ref: Option<String>,
    /// Segments of the message.
    pub segments: u32,
    /// When the message was accepted, unix ms.
    pub created_ms: u64,
    /// When this status was reached, unix ms.
    pub updated_ms: u64,
}

/// Wire form of [`StatusEvent`] (`id` is the message id, like the API's).
/// Fields in alphabetical order: the order the JSON has carried them in
/// since it was built through a `serde_json::Value` (a sorted map).
#[derive(Serialize)]
struct StatusData<'a> {
    campaign_id: Option<&'a str>,
    carrier: Option<&'a str>,
    client_ref: Option<&'a str>,
    created_at: String,
    error_code: Option<&'a str>,
    id: &'a str,
    segments: u32,
    status: &'a str,
    updated_at: String,
}

impl StatusEvent {
    /// The event's `data` object as sent, as JSON text: it is stored in
    /// the outbox and copied into the request body as it is, never built
    /// into a `serde_json::Value` (a map and a string per field, on the
    /// store's writer thread for every receipt).
    pub fn data(&self) -> Box<RawValue> {
        let d = StatusData {
            id: &self.message_id,
            status: &self.status,
            error_code: self.error_code.as_deref(),
            carrier: self.carrier.as_deref(),
            campaign_id: self.campaign_id.as_deref(),
            client_ref: self.client_ref.as_deref(),
            segments: self.segments,
            created_at: rfc3339_ms(self.created_ms),
            updated_at: rfc3339_ms(self.updated_ms),
        };
        // Serialising a struct of strings and integers cannot fail; were it
        // to, `null` (as the Value it was built through before).
        serde_json::value::to_raw_value(&d).unwrap_or_else(|_| null())
    }
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: String,
    data: D,
}

/// JSON `null`, as raw JSON text.
fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// The body of a `message.status` request. Metadata only, so a plain buffer.
pub(crate) fn status_body(
    event_id: &str,
    created_ms: u64,
    data: &RawValue,
) -> Result<Bytes, WebhookError> {
    let env = Envelope {
        id: event_id,
        kind: STATUS_TYPE,
        created_at: rfc3339_ms(created_ms),
        data,
    };
    serde_json::to_vec(&env)
        .map(Bytes::from)
        .map_err(|e| WebhookError::Encode(e.to_string()))
}

/// An MO for the client, the `data` of a `message.received` event.
///
/// Holds the text and both numbers: it lives only while the carrier waits
/// for our answer. `Debug` masks the numbers and redacts the text.
#[derive(Debug)]
pub struct ReceivedEvent {
    /// The sender (the patient).
    pub from: E164,
    /// Our number it was sent to.
    pub to: E164,
    /// The text. Zeroized when the event drops.
    pub text: Body,
    /// The campaign `to` belongs to.
    pub campaign_id: String,
    /// The keyword class (`STOP`, `HELP`, `START`), when the text was one.
    pub keyword: Option<String>,
    /// When the carrier handed it to us, unix ms.
    pub received_ms: u64,
}

/// Serialises a [`Body`] as a JSON string without copying it elsewhere.
struct Text<'a>(&'a Body);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

#[derive(Serialize)]
struct ReceivedData<'a> {
    from: &'a str,
    to: &'a str,
    text: Text<'a>,
    campaign_id: &'a str,
    keyword: Option<&'a str>,
    received_at: String,
}

impl ReceivedEvent {
    /// The request body, in a buffer zeroized when the last reference to it
    /// drops (that is, once the HTTP client is done with it).
    pub(crate) fn to_body(&self, event_id: &str, created_ms: u64) -> Result<Bytes, WebhookError> {
        let env = Envelope {
            id: event_id,
            kind: RECEIVED_TYPE,
            created_at: rfc3339_ms(created_ms),
            data: ReceivedData {
                from: self.from.as_str(),
                to: self.to.as_str(),
                text: Text(&self.text),
                campaign_id: &self.campaign_id,
                keyword: self.keyword.as_deref(),
                received_at: rfc3339_ms(self.received_ms),
            },
        };
        // JSON escaping turns one byte into at most six (`\u001f`); the rest
        // of the envelope is ids, numbers, config names and times.
        let other = self.campaign_id.len() + self.keyword.as_deref().map_or(0, str::len);
        let cap = self.text.expose().len() * 6 + other * 6 + 512;
        let mut w = FixedBuf(WipeOnDrop(Vec::with_capacity(cap)));
        serde_json::to_writer(&mut w, &env)
            .map_err(|_| WebhookError::Encode("MO event does not fit its buffer".into()))?;
        Ok(Bytes::from_owner(w.0))
    }
}

/// A byte buffer zeroized on drop.
pub(crate) struct WipeOnDrop(Vec<u8>);

impl AsRef<[u8]> for WipeOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for WipeOnDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WipeOnDrop(<{} bytes>)", self.0.len())
    }
}

/// A writer that refuses to grow its buffer past the capacity it started
/// with, so no reallocation ever leaves a partial copy behind.
struct FixedBuf(WipeOnDrop);

impl std::io::Write for FixedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let v = &mut (self.0).0;
        if v.capacity() - v.len() < buf.len() {
            return Err(std::io::Error::other("buffer full"));
        }
        v.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mo(text: &str) -> ReceivedEvent {
        ReceivedEvent {
            from: E164::parse("+15557654321").unwrap(),
            to: E164::parse("+15551230001").unwrap(),
            text: Body::new(text.into()),
            campaign_id: "CX4K2M9".into(),
            keyword: None,
            received_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn received_body_is_the_envelope_and_escapes_within_capacity() {
        let nasty = "\u{1}\u{1f}\"\\\n".repeat(200);
        let ev = mo(&nasty);
        let body = ev.to_body("evt_x", 1_700_000_000_000).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "evt_x");
        assert_eq!(v["type"], RECEIVED_TYPE);
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["data"]["text"], nasty);
        assert_eq!(v["data"]["from"], "+15557654321");
        assert_eq!(v["data"]["received_at"], "2023-11-14T22:13:20.123Z");
        assert!(v["data"]["keyword"].is_null());
    }

    #[test]
    fn received_event_debug_hides_text_and_sender() {
        let dbg = format!("{:?}", mo("canary-mo-text"));
        assert!(!dbg.contains("canary"), "{dbg}");
        assert!(!dbg.contains("+15557654321"), "{dbg}");
    }

    #[test]
    fn status_data_has_metadata_fields_only() {
        let ev = StatusEvent {
            message_id: "msg_1".into(),
            status: "delivered".into(),
            error_code: None,
            carrier: Some("carrier-a".into()),
            campaign_id: Some("CX4K2M9".into()),
            client_ref: None,
            segments: 2,
            created_ms: 0,
            updated_ms: 1000,
        };
        let raw = ev.data();
        let d: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        let expected = [
            "campaign_id",
            "carrier",
            "client_ref",
            "created_at",
            "error_code",
            "id",
            "segments",
            "status",
            "updated_at",
        ];
        assert_eq!(keys, expected);
        // In that order in the text too, as when the JSON was built through
        // a sorted map: stored events and bodies keep their bytes.
        let at: Vec<usize> = expected
            .iter()
            .map(|k| raw.get().find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", raw.get());
        assert_eq!(d["updated_at"], "1970-01-01T00:00:01.000Z");
        let body = status_body("evt_1", 5, &raw).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], STATUS_TYPE);
        assert_eq!(v["data"], d);
    }
}
