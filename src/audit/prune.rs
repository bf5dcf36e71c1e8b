//! Retention: deleting the oldest records without breaking the chain.
//!
//! Owns: the one way records leave the `audit` table.
//!
//! How: each op deletes up to [`PRUNE_CHUNK`] records from the start of the
//! chain whose `at` is before the cutoff, and appends, *in the same
//! transaction*, an `audit.pruned` record `{count, last_seq, last_hash}`
//! naming the last deleted record. So at every commit the first remaining
//! record's `prev_hash` (the anchor) is vouched for by a record still in the
//! chain, even if the process stops between chunks.
//!
//! Invariants: only a prefix is deleted (pruning stops at the first record
//! that is recent enough, or whose `at` cannot be read — it is left for
//! `verify` to report); the head is never deleted, so the chain is never
//! empty once started; chunks keep each op short, since an op holds up every
//! write behind it.

use chrono::{DateTime, Utc};
use redb::ReadableTable;

use super::chain::{
    append_entry, chunk_records, decode_chunk, decode_hash, encode_chunk, flush_pending,
    last_seq_of, peek, AUDIT, SYSTEM,
};
use super::event::Entry;
use crate::store::{tables, StoreError, Tx};

/// Records deleted per store op.
pub const PRUNE_CHUNK: usize = 10_000;

/// One chunk of up to `max` records. Returns (records deleted, records
/// written).
pub(crate) fn prune_chunk(
    txn: &Tx<'_>,
    node: &str,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    max: usize,
) -> Result<(u64, u64), StoreError> {
    flush_pending(txn)?;
    let mut table = tables::open(txn, AUDIT)?;
    let Some(head) = table
        .last()?
        .and_then(|(k, v)| last_seq_of(k.value(), v.value()))
    else {
        return Ok((0, 0));
    };
    let max = max as u64;
    let mut deleted = 0u64;
    let mut last: Option<(u64, String)> = None;
    // Stored chunks wholly deleted, and at most one (the last touched)
    // whose remaining records move under the key of the first of them.
    let mut whole: Vec<u64> = Vec::new();
    let mut split: Option<(u64, u64, Vec<u8>)> = None;
    'chunks: for item in table.iter()? {
        let (k, v) = item?;
        let key = k.value();
        let Some(chunk) = decode_chunk(v.value()) else {
            tracing::warn!(seq = key, "audit chunk unreadable; pruning stops before it");
            break;
        };
        let mut taken = 0usize;
        let mut seq = key;
        for bytes in chunk_records(&chunk) {
            let hash = (seq < head && deleted < max)
                .then(|| prunable(bytes, seq, cutoff))
                .flatten();
            let Some(hash) = hash else {
                if seq > key {
                    split = Some((key, seq, chunk.get(taken..).unwrap_or_default().to_vec()));
                }
                break 'chunks;
            };
            last = Some((seq, hash.to_owned()));
            deleted += 1;
            taken += bytes.len() + 1;
            seq = seq.saturating_add(1);
        }
        whole.push(key);
    }
    let Some((last_seq, last_hash)) = last else {
        return Ok((0, 0));
    };
    for key in whole {
        table.remove(key)?;
    }
    if let Some((key, first_left, rest)) = split {
        table.remove(key)?;
        table.insert(first_left, encode_chunk(&rest)?.as_slice())?;
    }
    drop(table);
    let entry = Entry::Pruned {
        count: deleted,
        last_seq,
        last_hash,
    };
    let (_, written) = append_entry(txn, node, entry, SYSTEM, now)?;
    Ok((deleted, written))
}

/// The record's hash when it may go: its `at` is before `cutoff` and its
/// hash is readable (an unreadable record stops pruning; it is left for
/// `verify` to report).
fn prunable(bytes: &[u8], seq: u64, cutoff: DateTime<Utc>) -> Option<&str> {
    let Some(p) = peek(bytes) else {
        tracing::warn!(seq, "audit record unreadable; pruning stops before it");
        return None;
    };
    let old = DateTime::parse_from_rfc3339(p.at).is_ok_and(|at| at < cutoff);
    (old && decode_hash(p.hash).is_some()).then_some(p.hash)
}
