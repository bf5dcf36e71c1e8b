//! The hash chain: the `audit` table, the canonical form, and appending.
//!
//! Owns: the byte format of a record (see the module doc of [`super`] for
//! the definition a third party re-implements) and the only code that
//! inserts into the `audit` table.
//!
//! Invariants:
//! - `append` reads the head in the caller's transaction, so a record shares
//!   the fate of the state change it describes: a rolled-back op leaves
//!   neither the record nor a gap in `seq`;
//! - a stored value is exactly the canonical JSON of the full record
//!   (including `hash`); export hands these bytes out unchanged;
//! - nothing here unwraps data read from the file: a tampered head is a
//!   [`StoreError::Refused`], and the log refuses to extend it.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{AuditEvent, Entry, RESERVED};
use crate::store::{tables, Store, StoreError};

/// `seq` → the record's canonical JSON bytes.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// `prev_hash` of record 0.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Actor of records the appliance writes on its own behalf.
pub const SYSTEM: &str = "system";

/// One committed (or about to be committed) record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub at: String,
    pub event: &'static str,
    pub prev_hash: String,
    pub hash: String,
    /// The stored bytes: canonical JSON of the whole record.
    pub json: String,
}

/// The last record of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    /// Lower-case hex SHA-256.
    pub hash: String,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq={} hash={}", self.seq, self.hash)
    }
}

/// `at` as records carry it: `2024-05-01T12:34:56.789Z`.
pub fn format_at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Canonical JSON: objects with keys sorted by byte order, no whitespace,
/// strings and numbers as serde_json writes them (same as Python's
/// `json.dumps(.., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
/// for the strings and unsigned integers records hold).
pub(crate) fn canonical(v: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}

/// `SHA-256(bytes(prev_hash) ‖ canonical)`, lower-case hex. `None` when
/// `prev_hash` is not 64 hex characters.
pub(crate) fn chain_hash(prev_hash: &str, canonical: &[u8]) -> Option<String> {
    let prev = decode_hash(prev_hash)?;
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    Some(hex::encode(h.finalize()))
}

/// Decodes a 64-character lower-case hex hash.
pub(crate) fn decode_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The few fields prune, export and head need, read without building a map.
#[derive(Deserialize)]
pub(crate) struct Peek<'a> {
    #[serde(borrow)]
    pub(crate) at: &'a str,
    #[serde(borrow)]
    pub(crate) hash: &'a str,
}

pub(crate) fn peek(bytes: &[u8]) -> Option<Peek<'_>> {
    serde_json::from_slice::<Peek<'_>>(bytes).ok()
}

/// Appends `event` to the chain inside the caller's write transaction.
///
/// Call it from inside a [`Store::write`] op that makes the state change the
/// event describes: both commit together or neither does. Writes the genesis
/// record first when the table is empty (`node` names it). `actor` says who
/// acted (`system`, `client:<id>`, `carrier:<name>`, `operator`).
///
/// Does not count the record in metrics (the op may still be rolled back);
/// [`super::Audit::write`] does that after the commit.
pub fn append(
    txn: &WriteTransaction,
    node: &str,
    event: AuditEvent,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<AuditRecord, StoreError> {
    Ok(append_entry(txn, node, Entry::Event(event), actor, now)?.0)
}

/// Appends one entry; returns it and how many records were written (2 when
/// a genesis record had to be written first).
pub(crate) fn append_entry(
    txn: &WriteTransaction,
    node: &str,
    entry: Entry,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(AuditRecord, u64), StoreError> {
    let mut table = tables::open(txn, AUDIT)?;
    let at = format_at(now);
    let txn_id = crate::store::current_txn();
    let cached = (txn_id != 0)
        .then(|| {
            HEAD_CACHE.with(|c| match &*c.borrow() {
                Some((id, h)) if *id == txn_id => Some(h.clone()),
                _ => None,
            })
        })
        .flatten();
    let (head, mut written) = match cached {
        Some(h) => (h, 0),
        None => head_or_genesis(&mut table, node, &at)?,
    };
    let seq = head
        .seq
        .checked_add(1)
        .ok_or_else(|| StoreError::Refused("audit seq exhausted".into()))?;
    let rec = build(&entry, actor, &at, seq, &head.hash)?;
    table.insert(seq, rec.json.as_bytes())?;
    written += 1;
    if txn_id != 0 {
        let new_head = Head {
            seq,
            hash: rec.hash.clone(),
        };
        HEAD_CACHE.with(|c| *c.borrow_mut() = Some((txn_id, new_head)));
    }
    Ok((rec, written))
}

thread_local! {
    /// The chain head as the writer thread's current transaction left it:
    /// the next append in the same transaction needs no read (and no JSON
    /// peek) of the last record. Keyed by [`crate::store::current_txn`], so
    /// it is never used across a commit, an abort or a slow-path retry.
    static HEAD_CACHE: std::cell::RefCell<Option<(u64, Head)>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes the genesis record if the chain is empty; returns the head and
/// how many records were written (0 or 1).
pub(crate) fn ensure_genesis(
    txn: &WriteTransaction,
    node: &str,
    now: DateTime<Utc>,
) -> Result<(Head, u64), StoreError> {
    head_or_genesis(&mut tables::open(txn, AUDIT)?, node, &format_at(now))
}

fn head_or_genesis(
    table: &mut Table<'_, u64, &'static [u8]>,
    node: &str,
    at: &str,
) -> Result<(Head, u64), StoreError> {
    if let Some(h) = read_head(table)? {
        return Ok((h, 0));
    }
    let genesis = Entry::Genesis {
        node: node.to_owned(),
    };
    let g = build(&genesis, SYSTEM, at, 0, ZERO_HASH)?;
    table.insert(0, g.json.as_bytes())?;
    Ok((
        Head {
            seq: 0,
            hash: g.hash,
        },
        1,
    ))
}

/// Builds a record and its stored bytes.
///
/// Records are flat (strings and unsigned integers), so the canonical form
/// is written straight from the sorted field list — the same bytes
/// [`canonical`] gives for the equivalent object, without building one
/// (this runs for every accepted message and every receipt).
fn build(
    entry: &Entry,
    actor: &str,
    at: &str,
    seq: u64,
    prev_hash: &str,
) -> Result<AuditRecord, StoreError> {
    let mut fields = entry.fields();
    if let Some((k, _)) = fields.iter().find(|(k, _)| RESERVED.contains(k)) {
        return Err(StoreError::Refused(format!(
            "audit event {} uses the reserved field {k}",
            entry.name()
        )));
    }
    fields.push(("seq", Value::from(seq)));
    fields.push(("at", Value::from(at)));
    fields.push(("event", Value::from(entry.name())));
    fields.push(("actor", Value::from(actor)));
    fields.push(("prev_hash", Value::from(prev_hash)));
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(StoreError::Refused(format!(
            "audit event {} repeats field {}",
            entry.name(),
            w[0].0
        )));
    }
    let (unhashed, at_hash) = flat_canonical(&fields).map_err(json_err)?;
    let hash = chain_hash(prev_hash, &unhashed)
        .ok_or_else(|| StoreError::Refused("audit prev_hash is not a hash".into()))?;
    let json = String::from_utf8(splice_hash(&unhashed, at_hash, &hash))
        .map_err(|_| StoreError::Refused("audit record is not UTF-8".into()))?;
    Ok(AuditRecord {
        seq,
        at: at.to_owned(),
        event: entry.name(),
        prev_hash: prev_hash.to_owned(),
        hash,
        json,
    })
}

/// Canonical JSON of `fields` (sorted by key, no duplicates), and the byte
/// offset where a `hash` field belongs in it (before the first key that
/// sorts after `"hash"`, or before the closing brace): the record is
/// serialised once, hashed, and the hash spliced in ([`splice_hash`]).
fn flat_canonical(fields: &[(&'static str, Value)]) -> Result<(Vec<u8>, usize), serde_json::Error> {
    let mut out = Vec::with_capacity(384);
    out.push(b'{');
    let mut at_hash = None;
    for (k, v) in fields {
        if at_hash.is_none() && "hash" < *k {
            at_hash = Some(out.len());
        }
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        serde_json::to_writer(&mut out, v)?;
    }
    let at_hash = at_hash.unwrap_or(out.len());
    out.push(b'}');
    Ok((out, at_hash))
}

/// `unhashed` with `"hash":"<hex>"` inserted at `at` (from
/// [`flat_canonical`]); hex needs no escaping.
fn splice_hash(unhashed: &[u8], at: usize, hash: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(unhashed.len() + hash.len() + 10);
    out.extend_from_slice(&unhashed[..at]);
    // A field before the hash needs a comma before it; a field after, after.
    let before = at > 1;
    let after = unhashed.get(at) != Some(&b'}');
    if before {
        out.push(b',');
    }
    out.extend_from_slice(b"\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.push(b'"');
    if after && !before {
        out.push(b',');
    }
    // When the hash goes before a field, `unhashed[at]` is that field's
    // comma (or, first of all, its opening quote).
    out.extend_from_slice(&unhashed[at..]);
    out
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Refused(format!("audit record encoding: {e}"))
}

/// The last record's seq (its key) and hash. A last record whose hash
/// cannot be read is refused: the log does not extend a chain it cannot
/// link to.
pub(crate) fn read_head(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<Head>, StoreError> {
    let Some((k, v)) = table.last()? else {
        return Ok(None);
    };
    let seq = k.value();
    let hash = peek(v.value())
        .map(|p| p.hash)
        .filter(|h| decode_hash(h).is_some())
        .map(str::to_owned)
        .ok_or_else(|| {
            StoreError::Refused(format!(
                "audit record {seq} (the chain head) is malformed; \
                 run `sms-conduit audit verify`"
            ))
        })?;
    Ok(Some(Head { seq, hash }))
}

/// The chain head of `store`, for the metrics and the start/stop log line.
/// `None` before the first record.
pub fn head(store: &Store) -> Result<Option<Head>, StoreError> {
    store.read(|rtxn| match tables::open_read(rtxn, AUDIT)? {
        Some(t) => read_head(&t),
        None => Ok(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": "x\"\n\u0001é", "c": {"z": 2, "y": [3, "q"]} }"#,
        )
        .unwrap();
        let c = String::from_utf8(canonical(&v).unwrap()).unwrap();
        assert_eq!(c, r#"{"a":"x\"\n\u0001é","b":1,"c":{"y":[3,"q"],"z":2}}"#);
    }

    #[test]
    fn hash_is_sha256_of_prev_bytes_then_canonical() {
        // python3 -c 'import hashlib; print(hashlib.sha256(bytes(32) + b"{}").hexdigest())'
        assert_eq!(
            chain_hash(ZERO_HASH, b"{}").unwrap(),
            "fb1634c4e6cd4b1f1afe3ce2d6ef080f7ac5d1f357d723ad4dfca782733b62db"
        );
        assert!(chain_hash("zz", b"{}").is_none());
        assert!(decode_hash(&"A".repeat(64)).is_none());
    }

    #[test]
    fn built_records_are_the_canonical_json_with_their_hash() {
        let mut entries: Vec<Entry> = crate::audit::event::every_event()
            .into_iter()
            .map(Entry::Event)
            .collect();
        entries.push(Entry::Genesis {
            node: "n\"1".into(),
        });
        for entry in &entries {
            let r = build(entry, "client:c", "2024-05-01T12:34:56.789Z", 7, ZERO_HASH).unwrap();
            let mut v: Value = serde_json::from_str(&r.json).unwrap();
            assert_eq!(canonical(&v).unwrap(), r.json.as_bytes(), "{}", r.json);
            let h = v.as_object_mut().unwrap().remove("hash").unwrap();
            assert_eq!(h.as_str(), Some(r.hash.as_str()));
            let unhashed = canonical(&v).unwrap();
            assert_eq!(chain_hash(ZERO_HASH, &unhashed).unwrap(), r.hash);
        }
        for (fields, at) in [(vec![], 1), (vec![("z", Value::from(1))], 1)] {
            let (u, a) = flat_canonical(&fields).unwrap();
            assert_eq!(a, at);
            let mut v: Value = serde_json::from_slice(&splice_hash(&u, a, "ab")).unwrap();
            assert_eq!(v.as_object_mut().unwrap().remove("hash").unwrap(), "ab");
        }
    }
}
