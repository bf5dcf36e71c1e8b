//! What an audit record may say: the typed events and the one field type
//! that may carry a phone number.
//!
//! Owns: the event names (`message.accepted`, …) and their subject fields.
//! Callers build an [`AuditEvent`]; they never hand the log a free-form map,
//! so a record can only hold the fields listed here.
//!
//! Invariants:
//! - there is no body or text field in any event, and no subject field is
//!   called `text` or `body` (unit-tested);
//! - a number reaches a record only as an [`AuditNumber`], which is either a
//!   keyed [`Pseudonym`] or one of our own sender numbers from the campaign
//!   config ([`OwnNumbers`]); a clear recipient number cannot be put in a
//!   record by mistake;
//! - codes, statuses and reasons that come from our own code are
//!   `&'static str`, so request data cannot flow into them;
//! - subject values are strings or unsigned integers only (the canonical form
//!   in [`super`] relies on it), and never use the reserved names
//!   [`RESERVED`].

pub use crate::text::KeywordClass;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Campaign, Config};
use crate::types::{Pseudonym, Secret, E164};

/// Field names every record has; subject fields never use them.
pub const RESERVED: [&str; 6] = ["seq", "at", "event", "actor", "prev_hash", "hash"];

/// Our own sender numbers (every campaign's `numbers`), the only numbers an
/// audit record may carry in clear (SPEC §1.2, §6).
///
/// Built from the validated config only, so the set cannot be "any number
/// the caller had at hand". Cheap to clone.
#[derive(Clone, Default)]
pub struct OwnNumbers(Arc<HashSet<E164>>);

impl OwnNumbers {
    /// Every campaign's sender numbers.
    pub fn from_config(config: &Config) -> Self {
        Self::from_campaigns(&config.campaigns)
    }

    /// The sender numbers of these campaigns.
    pub fn from_campaigns(campaigns: &[Campaign]) -> Self {
        OwnNumbers(Arc::new(
            campaigns
                .iter()
                .flat_map(|c| c.numbers.iter().cloned())
                .collect(),
        ))
    }

    /// Whether `number` is one of our senders.
    pub fn contains(&self, number: &E164) -> bool {
        self.0.contains(number)
    }
}

impl fmt::Debug for OwnNumbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnNumbers({} numbers)", self.0.len())
    }
}

/// A phone number as an audit record may hold it: the keyed pseudonym (64
/// lower-case hex characters), or one of our own sender numbers in E.164
/// (starts with `+`). Nothing else converts into it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditNumber(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Pseudonym(Pseudonym),
    Own(E164),
}

impl AuditNumber {
    /// `number` in clear, if it is one of our own senders.
    pub fn own(number: &E164, own: &OwnNumbers) -> Option<Self> {
        own.contains(number)
            .then(|| AuditNumber(Repr::Own(number.clone())))
    }

    /// The usual way in: our own sender in clear, anybody else as the keyed
    /// pseudonym under the deployment key.
    pub fn of(number: &E164, key: &Secret, own: &OwnNumbers) -> Self {
        Self::own(number, own).unwrap_or_else(|| Pseudonym::of(key, number).into())
    }

    /// The record form: hex pseudonym or `+E.164`.
    pub fn to_field(&self) -> String {
        match &self.0 {
            Repr::Pseudonym(p) => p.to_hex(),
            Repr::Own(n) => n.as_str().to_owned(),
        }
    }

    /// The record form as a field value, borrowed: what [`Self::to_field`]
    /// gives, without allocating it.
    pub(crate) fn field(&self) -> FieldValue<'_> {
        match &self.0 {
            Repr::Pseudonym(p) => FieldValue::Hex(&p.0),
            Repr::Own(n) => FieldValue::Str(Cow::Borrowed(n.as_str())),
        }
    }
}

impl From<Pseudonym> for AuditNumber {
    fn from(p: Pseudonym) -> Self {
        AuditNumber(Repr::Pseudonym(p))
    }
}

impl fmt::Debug for AuditNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Pseudonym(p) => write!(f, "AuditNumber({p:?})"),
            Repr::Own(n) => write!(f, "AuditNumber(own {n:?})"),
        }
    }
}

/// An auditable event with its subject. The `event` name of each variant is
/// given in its doc; the fields become top-level record fields of the same
/// name (optional ones are left out when `None`).
///
/// `api.key_used`, `audit.genesis` and `audit.pruned` are not here: the log
/// writes them itself (see [`super::Audit::key_used`], [`super::Audit::open`],
/// [`super::Audit::prune`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditEvent {
    /// `api.auth_failed`: a request without a valid key. `reason` is one of
    /// our own words (`missing`, `unknown_key`, `malformed`).
    AuthFailed {
        source: IpAddr,
        reason: &'static str,
    },
    /// `message.accepted`: every segment accepted by `carrier`.
    MessageAccepted {
        message_id: String,
        client: String,
        campaign: String,
        from: AuditNumber,
        to: AuditNumber,
        carrier: String,
        segments: u32,
    },
    /// `message.refused`: an MT refused with an API `code` (SPEC §4).
    /// `detail` is a status name (e.g. the SMPP status), never request text.
    MessageRefused {
        client: String,
        campaign: Option<String>,
        to: Option<AuditNumber>,
        code: &'static str,
        detail: Option<String>,
    },
    /// `message.status`: a status change (`delivered`, `expired`, …);
    /// `error` is the carrier's error code, if any.
    MessageStatus {
        message_id: String,
        status: &'static str,
        carrier: Option<String>,
        error: Option<String>,
    },
    /// `mo.received`: an MO on `link` (carrier or peer name); keyword class
    /// only, never the text.
    MoReceived {
        link: String,
        from: AuditNumber,
        to: AuditNumber,
        campaign: Option<String>,
        keyword: KeywordClass,
    },
    /// `optout.added`: `number` opted out of `campaign`; `via` says how
    /// (`mo`, `api`, `operator`).
    OptOutAdded {
        campaign: String,
        number: AuditNumber,
        via: &'static str,
    },
    /// `consent.recorded`: `number` consented to `campaign`'s messages;
    /// `method` is the evidence's kind (`web_form`, `keyword`, `paper`,
    /// `verbal`), `via` how it was recorded (`api`, `mo`).
    ConsentRecorded {
        campaign: String,
        number: AuditNumber,
        method: &'static str,
        via: &'static str,
    },
    /// `consent.withdrawn`: the consent of `number` was removed.
    ConsentWithdrawn {
        campaign: String,
        number: AuditNumber,
        via: &'static str,
    },
    /// `optout.removed`: `number` opted back in.
    OptOutRemoved {
        campaign: String,
        number: AuditNumber,
        via: &'static str,
    },
    /// `smpp.bind_up`: a session bound on `link` with `peer` (address);
    /// `direction` is `outbound`/`inbound`, `mode` the bind type.
    BindUp {
        link: String,
        peer: String,
        direction: &'static str,
        mode: &'static str,
    },
    /// `smpp.bind_down`: a bound session ended.
    BindDown {
        link: String,
        peer: String,
        reason: String,
    },
    /// `smpp.bind_failed`: a bind attempt failed (refused, TLS, timeout…).
    BindFailed {
        link: String,
        peer: String,
        reason: String,
    },
    /// `config.reloaded`: SHA-256 (lower-case hex, as
    /// [`Config::file_sha256`] holds it) of the config file now in force.
    ConfigReloaded { sha256: String },
    /// `key.created`: a new API key for `client` (its SHA-256, as in the
    /// config; never the key).
    KeyCreated {
        client: String,
        key_sha256: [u8; 32],
    },
}

/// A field's value: records hold only strings and unsigned integers.
/// Strings are borrowed from the event where they can be (a record is
/// built for every message; see `chain::Prepared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldValue<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    /// A pseudonym, written as a lower-case hex string without a temporary
    /// `String`.
    Hex(&'a [u8; 32]),
}

/// A subject field: name and value.
pub(crate) type Field<'a> = (&'static str, FieldValue<'a>);

fn s<'a>(v: impl Into<Cow<'a, str>>) -> FieldValue<'a> {
    FieldValue::Str(v.into())
}

fn n<'a>(v: impl Into<u64>) -> FieldValue<'a> {
    FieldValue::U64(v.into())
}

fn opt<'a>(fields: &mut Vec<Field<'a>>, name: &'static str, v: Option<impl Into<Cow<'a, str>>>) {
    if let Some(v) = v {
        fields.push((name, s(v)));
    }
}

impl AuditEvent {
    /// The record's `event` name.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::AuthFailed { .. } => "api.auth_failed",
            AuditEvent::MessageAccepted { .. } => "message.accepted",
            AuditEvent::MessageRefused { .. } => "message.refused",
            AuditEvent::MessageStatus { .. } => "message.status",
            AuditEvent::MoReceived { .. } => "mo.received",
            AuditEvent::OptOutAdded { .. } => "optout.added",
            AuditEvent::OptOutRemoved { .. } => "optout.removed",
            AuditEvent::ConsentRecorded { .. } => "consent.recorded",
            AuditEvent::ConsentWithdrawn { .. } => "consent.withdrawn",
            AuditEvent::BindUp { .. } => "smpp.bind_up",
            AuditEvent::BindDown { .. } => "smpp.bind_down",
            AuditEvent::BindFailed { .. } => "smpp.bind_failed",
            AuditEvent::ConfigReloaded { .. } => "config.reloaded",
            AuditEvent::KeyCreated { .. } => "key.created",
        }
    }

    // Over 120 lines on purpose: one arm per event, the table of which
    // fields each record carries.
    /// The subject fields, in no particular order (records sort them).
    pub(crate) fn fields(&self) -> Vec<Field<'_>> {
        // Room for the most fields an event has (7) and the three every
        // record adds (`at`, `event`, `actor`): one allocation.
        let mut f: Vec<Field> = Vec::with_capacity(10);
        match self {
            AuditEvent::AuthFailed { source, reason } => {
                f.push(("source", s(source.to_string())));
                f.push(("reason", s(*reason)));
            }
            AuditEvent::MessageAccepted {
                message_id,
                client,
                campaign,
                from,
                to,
                carrier,
                segments,
            } => {
                f.push(("message_id", s(message_id)));
                f.push(("client", s(client)));
                f.push(("campaign", s(campaign)));
                f.push(("from", from.field()));
                f.push(("to", to.field()));
                f.push(("carrier", s(carrier)));
                f.push(("segments", n(*segments)));
            }
            AuditEvent::MessageRefused {
                client,
                campaign,
                to,
                code,
                detail,
            } => {
                f.push(("client", s(client)));
                opt(&mut f, "campaign", campaign.as_deref());
                if let Some(to) = to {
                    f.push(("to", to.field()));
                }
                f.push(("code", s(*code)));
                opt(&mut f, "detail", detail.as_deref());
            }
            AuditEvent::MessageStatus {
                message_id,
                status,
                carrier,
                error,
            } => {
                f.push(("message_id", s(message_id)));
                f.push(("status", s(*status)));
                opt(&mut f, "carrier", carrier.as_deref());
                opt(&mut f, "error", error.as_deref());
            }
            AuditEvent::MoReceived {
                link,
                from,
                to,
                campaign,
                keyword,
            } => {
                f.push(("link", s(link)));
                f.push(("from", from.field()));
                f.push(("to", to.field()));
                opt(&mut f, "campaign", campaign.as_deref());
                f.push(("keyword", s(keyword.as_str())));
            }
            AuditEvent::ConsentRecorded {
                campaign,
                number,
                method,
                via,
            } => {
                f.push(("campaign", s(campaign)));
                f.push(("number", number.field()));
                f.push(("method", s(*method)));
                f.push(("via", s(*via)));
            }
            AuditEvent::OptOutAdded {
                campaign,
                number,
                via,
            }
            | AuditEvent::OptOutRemoved {
                campaign,
                number,
                via,
            }
            | AuditEvent::ConsentWithdrawn {
                campaign,
                number,
                via,
            } => {
                f.push(("campaign", s(campaign)));
                f.push(("number", number.field()));
                f.push(("via", s(*via)));
            }
            AuditEvent::BindUp {
                link,
                peer,
                direction,
                mode,
            } => {
                f.push(("link", s(link)));
                f.push(("peer", s(peer)));
                f.push(("direction", s(*direction)));
                f.push(("mode", s(*mode)));
            }
            AuditEvent::BindDown { link, peer, reason }
            | AuditEvent::BindFailed { link, peer, reason } => {
                f.push(("link", s(link)));
                f.push(("peer", s(peer)));
                f.push(("reason", s(reason)));
            }
            AuditEvent::ConfigReloaded { sha256 } => {
                f.push(("sha256", s(sha256)));
            }
            AuditEvent::KeyCreated { client, key_sha256 } => {
                f.push(("client", s(client)));
                f.push(("key_sha256", s(hex::encode(key_sha256))));
            }
        }
        f
    }
}

/// What the log writes: a caller's event, or one of the log's own.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// Record 0 of a chain.
    Genesis {
        node: String,
    },
    /// Aggregated key use of one client in one minute (`minute` is RFC 3339).
    KeyUsed {
        client: String,
        count: u64,
        minute: String,
    },
    /// Records up to `last_seq` were deleted by retention.
    Pruned {
        count: u64,
        last_seq: u64,
        last_hash: String,
    },
    Event(AuditEvent),
}

/// Event name of the genesis record.
pub const GENESIS: &str = "audit.genesis";
/// Event name of the retention record.
pub const PRUNED: &str = "audit.pruned";
/// Event name of aggregated key use.
pub const KEY_USED: &str = "api.key_used";

impl Entry {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Entry::Genesis { .. } => GENESIS,
            Entry::KeyUsed { .. } => KEY_USED,
            Entry::Pruned { .. } => PRUNED,
            Entry::Event(e) => e.name(),
        }
    }

    pub(crate) fn fields(&self) -> Vec<Field<'_>> {
        match self {
            Entry::Genesis { node } => vec![("node", s(node))],
            Entry::KeyUsed {
                client,
                count,
                minute,
            } => vec![
                ("client", s(client)),
                ("count", n(*count)),
                ("minute", s(minute)),
            ],
            Entry::Pruned {
                count,
                last_seq,
                last_hash,
            } => vec![
                ("count", n(*count)),
                ("last_seq", n(*last_seq)),
                ("last_hash", s(last_hash)),
            ],
            Entry::Event(e) => e.fields(),
        }
    }
}

#[cfg(test)]
pub(crate) fn every_event() -> Vec<AuditEvent> {
    let p = AuditNumber::from(Pseudonym([7; 32]));
    vec![
        AuditEvent::AuthFailed {
            source: IpAddr::from([192, 0, 2, 1]),
            reason: "unknown_key",
        },
        AuditEvent::MessageAccepted {
            message_id: "msg_1".into(),
            client: "c".into(),
            campaign: "k".into(),
            from: p.clone(),
            to: p.clone(),
            carrier: "a".into(),
            segments: 2,
        },
        AuditEvent::MessageRefused {
            client: "c".into(),
            campaign: Some("k".into()),
            to: Some(p.clone()),
            code: "rate_limited",
            detail: Some("ESME_RTHROTTLED".into()),
        },
        AuditEvent::MessageStatus {
            message_id: "msg_1".into(),
            status: "delivered",
            carrier: Some("a".into()),
            error: Some("000".into()),
        },
        AuditEvent::MoReceived {
            link: "a".into(),
            from: p.clone(),
            to: p.clone(),
            campaign: Some("k".into()),
            keyword: KeywordClass::Stop,
        },
        AuditEvent::OptOutAdded {
            campaign: "k".into(),
            number: p.clone(),
            via: "mo",
        },
        AuditEvent::OptOutRemoved {
            campaign: "k".into(),
            number: p,
            via: "mo",
        },
        AuditEvent::BindUp {
            link: "a".into(),
            peer: "192.0.2.1:3550".into(),
            direction: "outbound",
            mode: "transceiver",
        },
        AuditEvent::BindDown {
            link: "a".into(),
            peer: "192.0.2.1:3550".into(),
            reason: "unbind".into(),
        },
        AuditEvent::BindFailed {
            link: "a".into(),
            peer: "192.0.2.1:3550".into(),
            reason: "ESME_RINVPASWD".into(),
        },
        AuditEvent::ConfigReloaded {
            sha256: "ab".repeat(32),
        },
        AuditEvent::KeyCreated {
            client: "c".into(),
            key_sha256: [2; 32],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_event_uses_a_reserved_or_body_field() {
        let own = vec![
            Entry::Genesis { node: "n".into() },
            Entry::KeyUsed {
                client: "c".into(),
                count: 1,
                minute: "m".into(),
            },
            Entry::Pruned {
                count: 1,
                last_seq: 1,
                last_hash: "h".into(),
            },
        ];
        let all = own
            .into_iter()
            .chain(every_event().into_iter().map(Entry::Event));
        let mut names = HashSet::new();
        for e in all {
            assert!(names.insert(e.name()), "duplicate event name {}", e.name());
            // Flat by type: a field is a string or an unsigned integer.
            for (k, _) in e.fields() {
                assert!(!RESERVED.contains(&k), "{}: reserved field {k}", e.name());
                assert!(!["text", "body", "message"].contains(&k), "{k}");
            }
        }
    }

    #[test]
    fn numbers_are_pseudonymous_unless_ours() {
        let ours = E164::parse("+15551230001").unwrap();
        let theirs = E164::parse("+15557654321").unwrap();
        let own = OwnNumbers::from_campaigns(&[Campaign {
            id: "k".into(),
            brand: "b".into(),
            numbers: vec![ours.clone()],
            segments_per_minute: 1,
            burst: 1,
            number_segments_per_minute: 0,
            help_text: String::new(),
            stop_text: String::new(),
            start_text: String::new(),
            ..Default::default()
        }]);
        let key = Secret::new(vec![1; 32]);
        assert_eq!(AuditNumber::of(&ours, &key, &own).to_field(), ours.as_str());
        let p = AuditNumber::of(&theirs, &key, &own).to_field();
        assert_eq!(p, Pseudonym::of(&key, &theirs).to_hex());
        // The borrowed field form writes the same string into a record.
        let ev = AuditEvent::OptOutAdded {
            campaign: "k".into(),
            number: AuditNumber::of(&theirs, &key, &own),
            via: "api",
        };
        let rec = crate::audit::chain::prepare(&Entry::Event(ev), "a", "t".into()).unwrap();
        let json = rec.json_for_tests();
        assert!(json.contains(&format!("\"number\":\"{p}\"")), "{json}");
        assert!(AuditNumber::own(&theirs, &own).is_none());
        assert!(!format!("{:?}", AuditNumber::own(&ours, &own)).contains("1230001"));
    }
}
