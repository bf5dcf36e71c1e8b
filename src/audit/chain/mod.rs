//! The hash chain: the `audit_chunks` table, the canonical form, and
//! appending.
//!
//! Owns: the byte format of a record (see the module doc of [`super`] for
//! the definition a third party re-implements), the chunked layout of the
//! table ([`AUDIT`]), and the only code that appends to it.
//!
//! How appending is cheap: records a write transaction appends collect in
//! a per-transaction pending chunk and are inserted as ONE value just
//! before the commit (a [`crate::store::before_commit`] hook), so a batch
//! of a few hundred records costs one B-tree insert instead of one each.
//!
//! Invariants:
//! - `append` reads the head in the caller's transaction (or its pending
//!   chunk), so a record shares the fate of the state change it describes:
//!   a rolled-back op leaves neither the record nor a gap in `seq`;
//! - chunks are contiguous: the record at `key + i` is line `i` of chunk
//!   `key` (decoded), and each line is exactly the canonical JSON of the
//!   full record (including `hash`); export hands these bytes out
//!   unchanged;
//! - anything in a write op that reads the table calls [`flush_pending`]
//!   first;
//! - nothing here unwraps data read from the file: a tampered head is a
//!   [`StoreError::Refused`], and the log refuses to extend it.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{AuditEvent, Entry, FieldValue, RESERVED};
use crate::store::{tables, Store, StoreError, Tx};

mod prepared;

pub(crate) use prepared::prepare;
pub use prepared::Prepared;

/// The chain in chunks: `seq` of a chunk's first record → the canonical
/// JSON of its records, in order, separated by `\n` (canonical JSON never
/// contains a raw newline), stored as [`encode_chunk`] makes it
/// (zstd-compressed but for the last record). The record at `key + i` is
/// line `i`; chunks are contiguous. One chunk holds what one transaction
/// appended (split at [`CHUNK_BYTES`]), so a batch of messages costs one
/// insert, not one per record.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_chunks");

/// Most bytes of records in a chunk, before compression (a record longer
/// than this is a chunk of its own). Chunks are large on purpose: one
/// insert per transaction is the cheapest. Measured: chunks under a redb
/// page (4,000 bytes, ~10 records) cost twice the writer CPU, since redb
/// rebuilds a leaf of small values on every insert, where a leaf holding
/// one value of a page or more is left alone and the new value gets a page
/// of its own.
pub const CHUNK_BYTES: usize = 64 * 1024;

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

/// [`decode_hash`], or the error an append reports for a broken chain head.
fn decode_prev(prev_hash: &str) -> Result<[u8; 32], StoreError> {
    decode_hash(prev_hash)
        .ok_or_else(|| StoreError::Refused("audit prev_hash is not a hash".into()))
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
    txn: &Tx<'_>,
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
    txn: &Tx<'_>,
    node: &str,
    entry: Entry,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(AuditRecord, u64), StoreError> {
    let p = prepare(&entry, actor, format_at(now))?;
    let a = append_prepared(txn, node, &p, true)?;
    match a.record {
        Some(r) => Ok((r, a.written)),
        None => Err(StoreError::Refused("audit record not kept".into())),
    }
}

/// What [`append_prepared`] did.
pub(crate) struct Appended {
    pub(crate) seq: u64,
    /// Records written: 1, or 2 with a genesis record.
    pub(crate) written: u64,
    /// The record, when asked for.
    pub(crate) record: Option<AuditRecord>,
}

/// Appends a prepared record in the caller's write transaction.
///
/// In the store's writer the record goes to the transaction's pending
/// chunk, written to the table once, before the commit (or when it would
/// pass [`CHUNK_BYTES`]); anywhere else (no commit hook runs) it is written
/// at once as a chunk of one. `keep` asks for an [`AuditRecord`] copy of
/// what was written.
pub(crate) fn append_prepared(
    txn: &Tx<'_>,
    node: &str,
    p: &Prepared,
    keep: bool,
) -> Result<Appended, StoreError> {
    let txn_id = crate::store::current_txn();
    PENDING.with(|cell| {
        let mut shared = cell.borrow_mut();
        let mut local = None;
        let slot = if txn_id == 0 {
            &mut local
        } else {
            &mut *shared
        };
        let mut written = 0;
        let pending = match slot {
            Some(q) if q.txn == txn_id => q,
            other => {
                let (head, w) = head_or_genesis(&mut *tables::open(txn, AUDIT)?, node, &p.at)?;
                written = w;
                crate::store::before_commit(flush_pending);
                other.insert(Pending {
                    txn: txn_id,
                    first: next_seq(&head)?,
                    head_bytes: decode_prev(&head.hash)?,
                    head,
                    buf: Vec::with_capacity(CHUNK_BYTES),
                })
            }
        };
        let seq = next_seq(&pending.head)?;
        if !pending.buf.is_empty() && pending.buf.len() + 1 + p.max_len() > CHUNK_BYTES {
            pending.write(txn)?;
        }
        let len = pending.buf.len();
        if len > 0 {
            pending.buf.push(b'\n');
        }
        let start = pending.buf.len();
        let (hash, bytes) = match p.write(
            seq,
            &pending.head.hash,
            &pending.head_bytes,
            &mut pending.buf,
        ) {
            Ok(h) => h,
            Err(e) => {
                pending.buf.truncate(len);
                return Err(e);
            }
        };
        let record = keep
            .then(|| {
                let json = pending.buf[start..].to_vec();
                record_of(p.event, &p.at, seq, &pending.head.hash, &hash, json)
            })
            .transpose()?;
        pending.head.seq = seq;
        pending.head_bytes = bytes;
        pending.head.hash.clear();
        pending
            .head
            .hash
            .push_str(std::str::from_utf8(&hash).unwrap_or_default());
        if txn_id == 0 {
            pending.write(txn)?;
        }
        Ok(Appended {
            seq,
            written: written + 1,
            record,
        })
    })
}

fn next_seq(head: &Head) -> Result<u64, StoreError> {
    head.seq
        .checked_add(1)
        .ok_or_else(|| StoreError::Refused("audit seq exhausted".into()))
}

/// The records the writer thread's current transaction appended and has
/// not yet written to the table.
struct Pending {
    /// [`crate::store::current_txn`] of the transaction: a pending chunk is
    /// never used across a commit, an abort or a slow-path retry.
    txn: u64,
    /// `seq` of the first record in `buf` (the chunk's key).
    first: u64,
    /// The chain head including `buf`.
    head: Head,
    /// `head.hash` as bytes: each append hashes it, decoding it once.
    head_bytes: [u8; 32],
    /// Canonical JSON records separated by `\n`.
    buf: Vec<u8>,
}

impl Pending {
    /// Writes `buf` as one chunk and starts an empty one after it.
    fn write(&mut self, txn: &Tx<'_>) -> Result<(), StoreError> {
        if !self.buf.is_empty() {
            // `buf` holds the records `first..=head.seq`.
            let count = self.head.seq.saturating_sub(self.first) + 1;
            debug_assert_eq!(count, record_count(&self.buf));
            let value = encode_counted(&self.buf, count)?;
            tables::open(txn, AUDIT)?.insert(self.first, value.as_slice())?;
            self.buf.clear();
            self.first = next_seq(&self.head)?;
        }
        Ok(())
    }
}

thread_local! {
    /// The pending chunk of the writer thread's current transaction. A batch
    /// of ops appends hundreds of records; one insert of them all costs a
    /// fraction of one B-tree insert each (measured in BENCHMARKS.md).
    static PENDING: std::cell::RefCell<Option<Pending>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes the current transaction's pending records to the table (the
/// writer runs this before the commit; readers of the table inside a write
/// op call it first).
pub(crate) fn flush_pending(txn: &Tx<'_>) -> Result<(), StoreError> {
    let txn_id = crate::store::current_txn();
    PENDING.with(|cell| match &mut *cell.borrow_mut() {
        Some(p) if txn_id != 0 && p.txn == txn_id => p.write(txn),
        _ => Ok(()),
    })
}

/// Stores `records` (`seq`, canonical JSON), in `seq` order, as chunks:
/// each run of contiguous `seq`s becomes chunks of about [`CHUNK_BYTES`].
/// Used to move a first-layout table into chunks; a test that plays an
/// attacker rewriting the file uses it too.
pub fn store_records(
    table: &mut Table<'_, u64, &'static [u8]>,
    records: impl IntoIterator<Item = (u64, Vec<u8>)>,
) -> Result<(), StoreError> {
    let mut chunk: Option<(u64, u64, Vec<u8>)> = None;
    for (seq, bytes) in records {
        match &mut chunk {
            Some((_, last, buf)) if last.checked_add(1) == Some(seq) && buf.len() < CHUNK_BYTES => {
                buf.push(b'\n');
                buf.extend_from_slice(&bytes);
                *last = seq;
            }
            _ => {
                if let Some((key, _, buf)) = chunk.replace((seq, seq, bytes)) {
                    table.insert(key, encode_chunk(&buf)?.as_slice())?;
                }
            }
        }
    }
    if let Some((key, _, buf)) = chunk {
        table.insert(key, encode_chunk(&buf)?.as_slice())?;
    }
    Ok(())
}

/// The table of the first layout, one record per `seq` (before chunks).
const LEGACY: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Moves the records of a first-layout `audit` table into chunks and
/// deletes it. Returns how many records moved (0 when there was none).
/// Refuses when both layouts hold records: that file was written by two
/// builds and the operator must look at it.
fn migrate_legacy(txn: &Tx<'_>) -> Result<u64, StoreError> {
    let present = txn
        .txn()
        .list_tables()?
        .any(|t| redb::TableHandle::name(&t) == "audit");
    if !present {
        return Ok(0);
    }
    let records: Vec<(u64, Vec<u8>)> = {
        let legacy = txn.txn().open_table(LEGACY)?;
        let mut out = Vec::new();
        for item in legacy.iter()? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        out
    };
    let moved = records.len() as u64;
    if moved > 0 {
        let mut table = tables::open(txn, AUDIT)?;
        if !table.is_empty()? {
            return Err(StoreError::Refused(
                "the store holds audit records in both the old and the chunked table; \
                 export both before deleting either"
                    .into(),
            ));
        }
        store_records(&mut table, records)?;
        tracing::info!(records = moved, "audit records moved to the chunked table");
    }
    txn.txn().delete_table(LEGACY)?;
    Ok(moved)
}

/// Writes the genesis record if the chain is empty; returns the head and
/// how many records were written (0 or 1).
pub(crate) fn ensure_genesis(
    txn: &Tx<'_>,
    node: &str,
    now: DateTime<Utc>,
) -> Result<(Head, u64), StoreError> {
    flush_pending(txn)?;
    migrate_legacy(txn)?;
    head_or_genesis(&mut *tables::open(txn, AUDIT)?, node, &format_at(now))
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
fn build(
    entry: &Entry,
    actor: &str,
    at: &str,
    seq: u64,
    prev_hash: &str,
) -> Result<AuditRecord, StoreError> {
    let mut out = Vec::with_capacity(384);
    let prev = decode_prev(prev_hash)?;
    let (hash, _) = prepare(entry, actor, at.to_owned())?.write(seq, prev_hash, &prev, &mut out)?;
    record_of(entry.name(), at, seq, prev_hash, &hash, out)
}

fn record_of(
    event: &'static str,
    at: &str,
    seq: u64,
    prev_hash: &str,
    hash: &[u8; 64],
    json: Vec<u8>,
) -> Result<AuditRecord, StoreError> {
    let utf8 = |_| StoreError::Refused("audit record is not UTF-8".into());
    Ok(AuditRecord {
        seq,
        at: at.to_owned(),
        event,
        prev_hash: prev_hash.to_owned(),
        hash: std::str::from_utf8(hash).map_err(utf8)?.to_owned(),
        json: String::from_utf8(json).map_err(|e| utf8(e.utf8_error()))?,
    })
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Refused(format!("audit record encoding: {e}"))
}

/// The records of a decoded chunk ([`decode_chunk`]), in order.
pub fn chunk_records(chunk: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    chunk.split(|b| *b == b'\n')
}

/// How many records a decoded chunk (or a run of its lines) holds.
pub(crate) fn record_count(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|b| **b == b'\n').count() as u64 + 1
}

/// First byte of a compressed chunk (a plain chunk starts with `{`).
const ZSTD_CHUNK: u8 = 1;

/// zstd level for chunks: the fastest of the standard levels. Records
/// compress ~6:1 (keys repeat, each `prev_hash` is the hash before it,
/// hex is 4 bits a byte), which cuts what each commit writes.
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// One zstd context per thread (in practice: the store's writer), kept:
    /// making a context per chunk cost more than compressing the chunk.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Records before the last of a chunk below this many bytes are stored
/// as they are: zstd's per-frame set-up (its tables) costs more CPU than
/// the few hundred bytes it would save, and what a commit writes is a page
/// either way. A steady 1,000 msg/s commits a few records at a time.
const COMPRESS_FROM: usize = 2048;

/// The stored form of a chunk (`records`: canonical JSON lines joined by
/// `\n`). One record, or records of fewer than [`COMPRESS_FROM`] bytes
/// before the last, are stored as they are. More are
/// `[1][count: u32 LE][len: u32 LE][zstd of all records but the last][last
/// record]`: the head (the last record) is read without decompressing.
pub fn encode_chunk(records: &[u8]) -> Result<Vec<u8>, StoreError> {
    encode_counted(records, record_count(records))
}

/// [`encode_chunk`] of `count` records (a caller that knows saves a scan).
fn encode_counted(records: &[u8], count: u64) -> Result<Vec<u8>, StoreError> {
    let Some(split) = records.iter().rposition(|b| *b == b'\n') else {
        return Ok(records.to_vec());
    };
    let (body, last) = (&records[..split], &records[split + 1..]);
    if body.len() < COMPRESS_FROM {
        return Ok(records.to_vec());
    }
    let packed = COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            let c = match &mut *c {
                Some(c) => c,
                none => none.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            };
            c.compress(body)
        })
        .map_err(|e| StoreError::Refused(format!("compressing an audit chunk: {e}")))?;
    let too_big = |_| StoreError::Refused("audit chunk too large".into());
    let mut out = Vec::with_capacity(9 + packed.len() + last.len());
    out.push(ZSTD_CHUNK);
    out.extend_from_slice(&u32::try_from(count).map_err(too_big)?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(packed.len()).map_err(too_big)?.to_le_bytes());
    out.extend_from_slice(&packed);
    out.extend_from_slice(last);
    Ok(out)
}

/// A compressed chunk's parts: record count, zstd data, last record.
fn split_encoded(value: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let rest = value.strip_prefix(&[ZSTD_CHUNK])?;
    let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    let packed = rest.get(8..8usize.checked_add(len)?)?;
    let last = rest.get(8 + len..)?;
    (count >= 2).then_some((u64::from(count), packed, last))
}

/// The records of a stored chunk, joined by `\n` (see [`encode_chunk`]).
/// `None` when the value is neither form, or does not decompress to at
/// most twice [`CHUNK_BYTES`] (a tampered length cannot make it allocate
/// more).
pub fn decode_chunk(value: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if value.first() != Some(&ZSTD_CHUNK) {
        return Some(std::borrow::Cow::Borrowed(value));
    }
    let (count, packed, last) = split_encoded(value)?;
    let mut out = zstd::bulk::decompress(packed, 2 * CHUNK_BYTES).ok()?;
    if record_count(&out) + 1 != count {
        return None;
    }
    out.push(b'\n');
    out.extend_from_slice(last);
    Some(std::borrow::Cow::Owned(out))
}

/// A stored chunk's record count and last record, without decompressing.
pub(crate) fn chunk_tail(value: &[u8]) -> Option<(u64, &[u8])> {
    if value.first() == Some(&ZSTD_CHUNK) {
        let (count, _, last) = split_encoded(value)?;
        return Some((count, last));
    }
    Some((record_count(value), chunk_records(value).next_back()?))
}

/// The position (`seq`) of a stored chunk's last record.
pub(crate) fn last_seq_of(key: u64, value: &[u8]) -> Option<u64> {
    key.checked_add(chunk_tail(value)?.0 - 1)
}

/// The last record's seq (its position) and hash. A last record whose hash
/// cannot be read is refused: the log does not extend a chain it cannot
/// link to.
pub(crate) fn read_head(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<Head>, StoreError> {
    let Some((k, v)) = table.last()? else {
        return Ok(None);
    };
    let tail = chunk_tail(v.value());
    let seq = tail.and_then(|(count, _)| k.value().checked_add(count - 1));
    let hash = tail
        .and_then(|(_, last)| peek(last))
        .map(|p| p.hash)
        .filter(|h| decode_hash(h).is_some())
        .map(str::to_owned);
    match (seq, hash) {
        (Some(seq), Some(hash)) => Ok(Some(Head { seq, hash })),
        _ => Err(StoreError::Refused(format!(
            "the audit chain head (chunk {}) is malformed; run `sms-conduit audit verify`",
            k.value()
        ))),
    }
}

/// The chain's table for reading: the chunks, or a first-layout table not
/// yet moved (its records read as chunks of one), so `audit verify` and
/// `audit export` work on a copy taken before the upgraded appliance first
/// started. `None` before the first record.
pub(crate) fn open_read(
    rtxn: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, StoreError> {
    match tables::open_read(rtxn, AUDIT)? {
        Some(t) => Ok(Some(t)),
        None => tables::open_read(rtxn, LEGACY),
    }
}

/// The chain head of `store`, for the metrics and the start/stop log line.
/// `None` before the first record.
pub fn head(store: &Store) -> Result<Option<Head>, StoreError> {
    store.read(|rtxn| match open_read(rtxn)? {
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

    /// Outside the store's writer no commit hook runs: each record is
    /// written at once, as a chunk of its own, and the chain still links.
    #[test]
    fn appends_outside_the_writer_are_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("a.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert_eq!(crate::store::current_txn(), 0);
        let at = Utc::now();
        for i in 0..3 {
            let entry = Entry::KeyUsed {
                client: "c".into(),
                count: i,
                minute: "m".into(),
            };
            let tx = crate::store::Tx::new(&txn);
            let (rec, written) = append_entry(&tx, "n", entry, SYSTEM, at).unwrap();
            assert_eq!((rec.seq, written), (i + 1, if i == 0 { 2 } else { 1 }));
        }
        txn.commit().unwrap();
        let rtxn = db.begin_read().unwrap();
        let t = rtxn.open_table(AUDIT).unwrap();
        let keys: Vec<u64> = t.iter().unwrap().map(|i| i.unwrap().0.value()).collect();
        assert_eq!(keys, [0, 1, 2, 3]);
        let report = crate::audit::verify::walk(&rtxn).unwrap();
        assert_eq!((report.count, report.head.map(|h| h.seq)), (4, Some(3)));
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
        // Every place the three fields can go: before a key, at the end, two
        // at one offset; and a record appended to a buffer that holds others.
        entries.push(Entry::KeyUsed {
            client: "c".into(),
            count: 3,
            minute: "m".into(),
        });
        entries.push(Entry::Pruned {
            count: 1,
            last_seq: 2,
            last_hash: ZERO_HASH.into(),
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
        let mut out = b"prefix".to_vec();
        for entry in &entries {
            let p = prepare(entry, "z", "2024-05-01T12:34:56.789Z".to_owned()).unwrap();
            out.truncate(6);
            let (hash, bytes) = p.write(u64::MAX, ZERO_HASH, &[0; 32], &mut out).unwrap();
            let r = build(entry, "z", "2024-05-01T12:34:56.789Z", u64::MAX, ZERO_HASH).unwrap();
            assert_eq!(&out[6..], r.json.as_bytes());
            assert_eq!(&hash[..], r.hash.as_bytes());
            assert_eq!(decode_hash(&r.hash), Some(bytes));
        }
        assert!(decode_prev("not a hash").is_err());
        assert_eq!(&out[..6], b"prefix");
    }
}
