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
use redb::{ReadableTable, WriteTransaction};

use super::chain::{append_entry, decode_hash, peek, AUDIT, SYSTEM};
use super::event::Entry;
use crate::store::{tables, StoreError};

/// Records deleted per store op.
pub const PRUNE_CHUNK: usize = 10_000;

/// One chunk. Returns (records deleted, records written).
pub(crate) fn prune_chunk(
    txn: &WriteTransaction,
    node: &str,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    max: usize,
) -> Result<(u64, u64), StoreError> {
    let mut table = tables::open(txn, AUDIT)?;
    let Some(head) = table.last()?.map(|(k, _)| k.value()) else {
        return Ok((0, 0));
    };
    let mut victims: Vec<u64> = Vec::new();
    let mut last: Option<(u64, String)> = None;
    for item in table.range(..head)? {
        let (k, v) = item?;
        let seq = k.value();
        let Some(p) = peek(v.value()) else {
            tracing::warn!(seq, "audit record unreadable; pruning stops before it");
            break;
        };
        let old = DateTime::parse_from_rfc3339(p.at).is_ok_and(|at| at < cutoff);
        if !old || decode_hash(p.hash).is_none() {
            break;
        }
        victims.push(seq);
        last = Some((seq, p.hash.to_owned()));
        if victims.len() >= max {
            break;
        }
    }
    let Some((last_seq, last_hash)) = last else {
        return Ok((0, 0));
    };
    for seq in &victims {
        table.remove(*seq)?;
    }
    drop(table);
    let count = victims.len() as u64;
    let entry = Entry::Pruned {
        count,
        last_seq,
        last_hash,
    };
    let (_, written) = append_entry(txn, node, entry, SYSTEM, now)?;
    Ok((count, written))
}
