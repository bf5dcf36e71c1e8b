//! Message metadata and idempotency records in the store.
//!
//! Owns the tables `messages` (id → metadata record) and `idempotency`
//! ((client, key) → JSON state), and the message id format. Ids begin with
//! their creation time in fixed-width hex ([`message_id_at`]), so the
//! `messages` table is in creation order: new records go to the right edge
//! of the B-tree and retention prunes a key range, with no second index.
//! A record holds ids, config names, our own sender number, the
//! recipient's *pseudonym*, counts and statuses — never a text and never a
//! clear recipient number (SPEC §1).

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::status::{IdempotencyState, MessageStatus};
use crate::store::shared::SharedState;
use crate::store::{tables, Store, StoreError, Tx};
use crate::text::Encoding;
use crate::webhook::StatusEvent;

/// id → [`MessageRecord`] as [`encode_message`] writes it.
pub const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");

/// A new message id for a message created at unix ms `ms`:
/// `msg_` + 12 hex digits of `ms` + 12 random hex digits. Ids sort by
/// creation time (to the millisecond), which [`prune_before`] relies on.
pub fn message_id_at(ms: u64) -> String {
    use std::fmt::Write;
    let r: u64 = rand::random::<u64>() & 0xFFFF_FFFF_FFFF;
    // Sized up front: `format!` would grow the string three times.
    let mut id = String::with_capacity(28);
    let _ = write!(id, "msg_{:012x}{:012x}", ms & 0xFFFF_FFFF_FFFF, r);
    id
}

/// The smallest id [`message_id_at`] can give at `ms`.
fn id_floor(ms: u64) -> String {
    format!("msg_{:012x}", ms & 0xFFFF_FFFF_FFFF)
}

/// (client id, idempotency key) → JSON of [`IdempotencyRecord`].
pub const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");

/// The metadata kept for one MT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: String,
    pub client: String,
    pub campaign: String,
    /// Our own sender number (not PHI).
    pub from: String,
    /// HMAC pseudonym of the recipient, hex.
    pub to_pseudonym: String,
    pub carrier: Option<String>,
    /// Carrier message id of each segment, in order (empty where unknown).
    pub carrier_ids: Vec<String>,
    pub encoding: Encoding,
    pub segments: u32,
    pub status: MessageStatus,
    /// Final receipts seen, per segment index (for multi-part status).
    #[serde(default)]
    pub part_states: Vec<Option<MessageStatus>>,
    pub error_code: Option<String>,
    pub client_ref: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// The relay builds a message's webhook event from its record (the
/// webhook module knows events, not records).
impl StatusEvent {
    /// The status of a message record as it is now.
    pub fn from_record(rec: &MessageRecord) -> Self {
        StatusEvent {
            message_id: rec.id.clone(),
            status: rec.status.as_str().to_owned(),
            error_code: rec.error_code.clone(),
            carrier: rec.carrier.clone(),
            campaign_id: Some(rec.campaign.clone()),
            client_ref: rec.client_ref.clone(),
            segments: rec.segments,
            created_ms: rec.created_ms,
            updated_ms: rec.updated_ms,
        }
    }
}

/// The state of an idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Keyed hash (HMAC with the deployment key) of the request, hex. Keyed so
    /// that a stolen database cannot be used to guess short texts.
    pub request_hash: String,
    /// `pending` until the outcome is known; `done` after.
    pub state: IdempotencyState,
    /// The message id, once one was assigned.
    pub message_id: Option<String>,
    /// The first outcome to replay: the 201 body, or the problem `code`.
    pub outcome: Option<serde_json::Value>,
    pub created_ms: u64,
    /// [`new_boot_id`] of the relay that claimed the key: a `pending`
    /// claim of another boot was interrupted (a crash) while it may have
    /// been with a carrier. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Fleet mode: the node that claimed the key (`[node] id`); absent in
    /// one appliance's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Where an idempotency key's first attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdemPhase {
    /// Claimed by this process and still running.
    InFlight,
    /// Claimed by a process that ended before its outcome was recorded:
    /// the submit may have reached the carrier (the claim is made just
    /// before the first submit_sm), so the outcome is unknown.
    Interrupted,
    /// The outcome is recorded.
    Done,
}

impl IdempotencyRecord {
    /// See [`IdemPhase`]; `boot` is the asking relay's boot id.
    pub fn phase(&self, boot: &str) -> IdemPhase {
        if self.state == IdempotencyState::Done {
            IdemPhase::Done
        } else if self.boot.as_deref() == Some(boot) {
            IdemPhase::InFlight
        } else {
            IdemPhase::Interrupted
        }
    }

    /// [`Self::phase`] as node `node` sees a claim in the fleet's shared
    /// state: another node's pending claim is in flight there (only its
    /// own node can tell a crash from a send in progress).
    pub fn phase_at(&self, node: &str, boot: &str) -> IdemPhase {
        match self.node.as_deref() {
            Some(n) if n != node && self.state != IdempotencyState::Done => IdemPhase::InFlight,
            _ => self.phase(boot),
        }
    }

    /// A fresh claim: pending, with the message id about to be sent.
    pub fn pending(
        request_hash: &str,
        message_id: &str,
        boot: &str,
        node: Option<&str>,
        now_ms: u64,
    ) -> Self {
        IdempotencyRecord {
            request_hash: request_hash.to_owned(),
            state: IdempotencyState::Pending,
            message_id: Some(message_id.to_owned()),
            outcome: None,
            created_ms: now_ms,
            boot: Some(boot.to_owned()),
            node: node.map(str::to_owned),
        }
    }

    /// Its JSON form (the store's value and the fleet's).
    pub fn to_json(&self) -> Result<Vec<u8>, StoreError> {
        json(self)
    }

    /// Reads a record written by [`Self::to_json`].
    pub fn from_json(v: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(v)
            .map_err(|e| StoreError::Refused(format!("idempotency record is malformed: {e}")))
    }
}

/// A random id for one start of the relay: tells a claim made since this
/// start from one left by an earlier run.
pub fn new_boot_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Refused(format!("serialising a record: {e}")))
}

/// First byte of a message record in the first compact format
/// ([`postcard`] of [`MessageRecordV1`]: statuses and the encoding as
/// strings). Records written before it are JSON and begin with `{`; both
/// are still read ([`decode_message`]).
const MESSAGE_FORMAT_1: u8 = 1;
/// First byte of a message record now: [`postcard`] of [`MessageRecord`],
/// whose statuses and encoding are enums (their variant index).
const MESSAGE_FORMAT_2: u8 = 2;

/// The stored bytes of a message record: [`MESSAGE_FORMAT_2`] then the
/// record in postcard (field order of [`MessageRecord`]; append new fields
/// at the end only behind a new format byte).
pub fn encode_message(rec: &MessageRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(256);
    out.push(MESSAGE_FORMAT_2);
    postcard::to_io(rec, &mut out)
        .map_err(|e| StoreError::Refused(format!("serialising a message record: {e}")))?;
    Ok(out)
}

/// Reads stored message record bytes (any format).
pub fn decode_message(id: &str, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    let malformed = |e: &dyn std::fmt::Display| {
        StoreError::Refused(format!("message record {id} is malformed: {e}"))
    };
    match bytes.split_first() {
        Some((&MESSAGE_FORMAT_2, rest)) => postcard::from_bytes(rest).map_err(|e| malformed(&e)),
        Some((&MESSAGE_FORMAT_1, rest)) => postcard::from_bytes::<MessageRecordV1>(rest)
            .map(MessageRecord::from)
            .map_err(|e| malformed(&e)),
        // JSON (records before the compact format, and fleet projections):
        // the names are the enums' serde names, read through the string
        // form so that any stored name still decodes.
        Some((b'{', _)) => serde_json::from_slice::<MessageRecordV1>(bytes)
            .map(MessageRecord::from)
            .map_err(|e| malformed(&e)),
        _ => Err(malformed(&"unknown format")),
    }
}

/// A message record as [`MESSAGE_FORMAT_1`] and JSON hold it: statuses and
/// the encoding as their names.
#[derive(Deserialize)]
struct MessageRecordV1 {
    id: String,
    client: String,
    campaign: String,
    from: String,
    to_pseudonym: String,
    carrier: Option<String>,
    carrier_ids: Vec<String>,
    encoding: String,
    segments: u32,
    status: String,
    #[serde(default)]
    part_states: Vec<Option<String>>,
    error_code: Option<String>,
    client_ref: Option<String>,
    created_ms: u64,
    updated_ms: u64,
}

impl From<MessageRecordV1> for MessageRecord {
    fn from(r: MessageRecordV1) -> Self {
        MessageRecord {
            id: r.id,
            client: r.client,
            campaign: r.campaign,
            from: r.from,
            to_pseudonym: r.to_pseudonym,
            carrier: r.carrier,
            carrier_ids: r.carrier_ids,
            encoding: Encoding::parse(&r.encoding),
            segments: r.segments,
            status: MessageStatus::parse(&r.status),
            part_states: r
                .part_states
                .iter()
                .map(|p| p.as_deref().map(MessageStatus::parse))
                .collect(),
            error_code: r.error_code,
            client_ref: r.client_ref,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

/// A record as fleet mode projects it for other nodes' `GET` (JSON, which
/// [`decode_message`] reads): without the recipient's pseudonym and the
/// carrier ids, which only the owner needs.
pub fn projection(rec: &MessageRecord) -> Result<Vec<u8>, StoreError> {
    let mut p = rec.clone();
    p.to_pseudonym = String::new();
    p.carrier_ids = Vec::new();
    p.part_states = Vec::new();
    json(&p)
}

/// Fleet mode: projects a record's status for the other nodes' `GET`.
/// Best effort: the owner's store stays the truth, and its own `GET`
/// answers from it.
pub async fn project(shared: &dyn SharedState, rec: &MessageRecord) {
    if !shared.messages_are_shared() {
        return;
    }
    let p = match projection(rec) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(message = %rec.id, "message projection: {e}");
            return;
        }
    };
    if let Err(e) = shared.project_message(&rec.id, rec.updated_ms, &p).await {
        tracing::warn!(message = %rec.id, "message projection: {e}");
    }
}

/// [`project`] of a stored record after its status changed (a receipt).
pub async fn project_stored(store: &Store, shared: &dyn SharedState, id: &str) {
    if !shared.messages_are_shared() {
        return;
    }
    if let Ok(Some(rec)) = get_message(store, id) {
        project(shared, &rec).await;
    }
}

/// Inserts or replaces a message record (inside a store op).
pub fn put_message(txn: &Tx<'_>, rec: &MessageRecord) -> Result<(), StoreError> {
    insert_message(&mut *tables::open(txn, MESSAGES)?, rec)
}

fn insert_message(
    t: &mut redb::Table<'_, &'static str, &'static [u8]>,
    rec: &MessageRecord,
) -> Result<(), StoreError> {
    t.insert(rec.id.as_str(), encode_message(rec)?.as_slice())?;
    Ok(())
}

/// Reads a message record.
pub fn get_message(store: &Store, id: &str) -> Result<Option<MessageRecord>, StoreError> {
    store.read(|rtxn| {
        let Some(t) = tables::open_read(rtxn, MESSAGES)? else {
            return Ok(None);
        };
        let Some(v) = t.get(id)? else {
            return Ok(None);
        };
        decode_message(id, v.value()).map(Some)
    })
}

/// Reads message `id` inside a write op and lets `change` edit it; writes
/// it back when `change` returns true. One open of the table for both (a
/// receipt does this for every message). `None` when there is no such
/// message; else the record as it now is, and whether it was written.
pub fn update_message(
    txn: &Tx<'_>,
    id: &str,
    change: impl FnOnce(&mut MessageRecord) -> bool,
) -> Result<Option<(MessageRecord, bool)>, StoreError> {
    let mut t = tables::open(txn, MESSAGES)?;
    let mut rec = match t.get(id)? {
        Some(v) => decode_message(id, v.value())?,
        None => return Ok(None),
    };
    let write = change(&mut rec);
    if write {
        insert_message(&mut t, &rec)?;
    }
    Ok(Some((rec, write)))
}

/// What `begin_idempotent` found.
#[derive(Debug)]
pub enum Idem {
    /// The key is new and is now recorded as pending.
    Fresh,
    /// The key exists.
    Existing(IdempotencyRecord),
}

/// Records `key` as pending for `client` unless it exists (inside a store op).
pub fn begin_idempotent(
    txn: &Tx<'_>,
    client: &str,
    key: &str,
    request_hash: &str,
    message_id: &str,
    boot: &str,
    now_ms: u64,
) -> Result<Idem, StoreError> {
    let mut t = tables::open(txn, IDEMPOTENCY)?;
    if let Some(v) = t.get((client, key))? {
        let rec: IdempotencyRecord = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Refused(format!("idempotency record is malformed: {e}")))?;
        return Ok(Idem::Existing(rec));
    }
    let rec = IdempotencyRecord::pending(request_hash, message_id, boot, None, now_ms);
    t.insert((client, key), json(&rec)?.as_slice())?;
    Ok(Idem::Fresh)
}

/// Marks a key done with the outcome to replay (inside a store op).
pub fn finish_idempotent(
    txn: &Tx<'_>,
    client: &str,
    key: &str,
    message_id: &str,
    outcome: serde_json::Value,
) -> Result<(), StoreError> {
    let mut t = tables::open(txn, IDEMPOTENCY)?;
    let mut rec: IdempotencyRecord = match t.get((client, key))? {
        Some(v) => serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Refused(format!("idempotency record is malformed: {e}")))?,
        None => return Ok(()),
    };
    rec.state = IdempotencyState::Done;
    rec.message_id = Some(message_id.to_owned());
    rec.outcome = Some(outcome);
    t.insert((client, key), json(&rec)?.as_slice())?;
    Ok(())
}

/// Forgets a key whose request was refused before anything was sent, so the
/// client may retry with the same key.
pub fn forget_idempotent(txn: &Tx<'_>, client: &str, key: &str) -> Result<(), StoreError> {
    tables::open(txn, IDEMPOTENCY)?.remove((client, key))?;
    Ok(())
}

/// Ids of `accepted` messages created in `[from_ms, until_ms)`, at most
/// `limit` records read, and where the next call should start.
pub struct AcceptedBetween {
    pub ids: Vec<String>,
    pub next_ms: u64,
}

/// See [`AcceptedBetween`] (inside a store op; ids sort by creation time).
pub fn accepted_between(
    txn: &Tx<'_>,
    from_ms: u64,
    until_ms: u64,
    limit: usize,
) -> Result<AcceptedBetween, StoreError> {
    let t = tables::open(txn, MESSAGES)?;
    let (lo, hi) = (id_floor(from_ms), id_floor(until_ms));
    let mut out = AcceptedBetween {
        ids: Vec::new(),
        next_ms: until_ms,
    };
    for (n, item) in t.range(lo.as_str()..hi.as_str())?.enumerate() {
        let (k, v) = item?;
        let rec = decode_message(k.value(), v.value())?;
        if n >= limit {
            // Resume at this record's millisecond: what the next call
            // re-reads of it was settled (no longer `accepted`). A
            // millisecond of more than `limit` records moves on by one.
            out.next_ms = rec.created_ms.max(from_ms + 1);
            break;
        }
        if rec.status == MessageStatus::Accepted {
            out.ids.push(rec.id);
        }
    }
    Ok(out)
}

/// Deletes message records created before `cutoff_ms`, at most `limit` per
/// call (call again while it returns `limit`). Idempotency keys older than
/// the cutoff go too.
pub fn prune_before(txn: &Tx<'_>, cutoff_ms: u64, limit: usize) -> Result<usize, StoreError> {
    let mut messages = tables::open(txn, MESSAGES)?;
    let floor = id_floor(cutoff_ms);
    let mut old: Vec<String> = Vec::new();
    for item in messages.range("msg_"..floor.as_str())? {
        let (k, _) = item?;
        old.push(k.value().to_owned());
        if old.len() >= limit {
            break;
        }
    }
    for id in &old {
        messages.remove(id.as_str())?;
    }
    drop(messages);
    if old.len() < limit {
        let mut idem = tables::open(txn, IDEMPOTENCY)?;
        idem.retain(|_, v| {
            serde_json::from_slice::<IdempotencyRecord>(v)
                .map(|r| r.created_ms >= cutoff_ms)
                .unwrap_or(false)
        })?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_claim_of_another_boot_was_interrupted() {
        let mut r = IdempotencyRecord {
            request_hash: "h".into(),
            state: IdempotencyState::Pending,
            message_id: Some("msg_1".into()),
            outcome: None,
            created_ms: 1,
            boot: Some("boot-a".into()),
            node: None,
        };
        assert_eq!(r.phase("boot-a"), IdemPhase::InFlight);
        assert_eq!(r.phase("boot-b"), IdemPhase::Interrupted);
        r.boot = None;
        assert_eq!(r.phase("boot-a"), IdemPhase::Interrupted, "older versions");
        r.state = IdempotencyState::Done;
        assert_eq!(r.phase("boot-b"), IdemPhase::Done);
    }

    #[test]
    fn another_nodes_pending_claim_is_in_flight() {
        let mut r = IdempotencyRecord::pending("h", "msg_1", "boot-a", Some("node-a"), 1);
        assert_eq!(r.phase_at("node-b", "boot-b"), IdemPhase::InFlight);
        assert_eq!(r.phase_at("node-a", "boot-a"), IdemPhase::InFlight);
        assert_eq!(r.phase_at("node-a", "boot-c"), IdemPhase::Interrupted);
        r.state = IdempotencyState::Done;
        assert_eq!(r.phase_at("node-b", "boot-b"), IdemPhase::Done);
        let back = IdempotencyRecord::from_json(&r.to_json().unwrap()).unwrap();
        assert_eq!(back, r);
    }

    fn rec(id: &str, created_ms: u64) -> MessageRecord {
        MessageRecord {
            id: id.into(),
            client: "c".into(),
            campaign: "C".into(),
            from: "+15551230001".into(),
            to_pseudonym: "ab".repeat(32),
            carrier: Some("a".into()),
            carrier_ids: vec!["1".into()],
            encoding: Encoding::Gsm7,
            segments: 1,
            status: MessageStatus::Accepted,
            part_states: vec![None],
            error_code: None,
            client_ref: None,
            created_ms,
            updated_ms: created_ms,
        }
    }

    #[test]
    fn message_records_round_trip_and_read_the_json_format() {
        let r = rec(&message_id_at(7), 7);
        let bytes = encode_message(&r).unwrap();
        assert_eq!(bytes[0], MESSAGE_FORMAT_2);
        assert!(bytes.len() < json(&r).unwrap().len() * 3 / 4);
        assert_eq!(decode_message(&r.id, &bytes).unwrap(), r);
        assert_eq!(decode_message(&r.id, &json(&r).unwrap()).unwrap(), r);
        for bad in [&b""[..], b"\x01", b"\x09abc", b"{not json"] {
            assert!(decode_message("m", bad).is_err());
        }
        // Truncated at every length: an error, never a panic.
        for n in 0..bytes.len() {
            let _ = decode_message("m", &bytes[..n]);
        }
    }

    /// A record as format 1 stored it (statuses and encoding as strings),
    /// byte for byte, and the same record as JSON: both still decode.
    #[test]
    fn format_1_and_json_records_still_decode() {
        const V1: &[u8] = b"\x01\x05msg_1\x01c\x01C\x0c+15551230001\x02ab\x01\x01a\x02\x011\x012\x04ucs2\x02\x09delivered\x02\x01\x09delivered\x00\x00\x01\x01r\x07\x09";
        let want = MessageRecord {
            id: "msg_1".into(),
            client: "c".into(),
            campaign: "C".into(),
            from: "+15551230001".into(),
            to_pseudonym: "ab".into(),
            carrier: Some("a".into()),
            carrier_ids: vec!["1".into(), "2".into()],
            encoding: Encoding::Ucs2,
            segments: 2,
            status: MessageStatus::Delivered,
            part_states: vec![Some(MessageStatus::Delivered), None],
            error_code: None,
            client_ref: Some("r".into()),
            created_ms: 7,
            updated_ms: 9,
        };
        assert_eq!(decode_message("msg_1", V1).unwrap(), want);
        let json = r#"{"id":"msg_1","client":"c","campaign":"C","from":"+15551230001","to_pseudonym":"ab","carrier":"a","carrier_ids":["1","2"],"encoding":"ucs2","segments":2,"status":"delivered","part_states":["delivered",null],"error_code":null,"client_ref":"r","created_ms":7,"updated_ms":9}"#;
        assert_eq!(decode_message("msg_1", json.as_bytes()).unwrap(), want);
        // The JSON the enums serialise to is the same as the strings'.
        assert_eq!(
            String::from_utf8(super::json(&want).unwrap()).unwrap(),
            json
        );
    }

    #[tokio::test]
    async fn records_idempotency_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let (old_id, new_id) = (message_id_at(1_000), message_id_at(9_000));
        assert!(old_id < new_id && old_id < id_floor(5_000) && id_floor(5_000) < new_id);
        let (o, n) = (old_id.clone(), new_id.clone());
        store
            .write(move |t| {
                put_message(t, &rec(&o, 1_000))?;
                put_message(t, &rec(&n, 9_000))
            })
            .await
            .unwrap();
        assert_eq!(
            get_message(&store, &new_id).unwrap().unwrap().created_ms,
            9_000
        );
        let first = store
            .write(|t| begin_idempotent(t, "c", "k1", "h1", "msg_1", "b", 5))
            .await
            .unwrap();
        assert!(matches!(first, Idem::Fresh));
        let again = store
            .write(|t| begin_idempotent(t, "c", "k1", "h2", "msg_2", "b", 6))
            .await
            .unwrap();
        match again {
            Idem::Existing(r) => {
                assert_eq!(r.request_hash, "h1");
                assert_eq!(r.state, IdempotencyState::Pending);
            }
            Idem::Fresh => panic!("key recorded twice"),
        }
        store
            .write(|t| {
                finish_idempotent(
                    t,
                    "c",
                    "k1",
                    "msg_new",
                    serde_json::json!({"id": "msg_new"}),
                )
            })
            .await
            .unwrap();
        let pruned = store.write(|t| prune_before(t, 5_000, 100)).await.unwrap();
        assert_eq!(pruned, 1);
        assert!(get_message(&store, &old_id).unwrap().is_none());
        assert!(get_message(&store, &new_id).unwrap().is_some());
        store.close().await.unwrap();
    }
}
