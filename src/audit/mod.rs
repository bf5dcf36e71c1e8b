//! Tamper-evident audit log (SPEC §6; HIPAA 45 CFR 164.312(b) audit
//! controls and 164.312(c) integrity): a conduit proves what it did without
//! keeping what it carried.
//!
//! Owns: the `audit_chunks` table of the store (`seq` of a chunk's first
//! record → the chunk's records, one per line), the record format, the
//! hash chain, verification, export and retention.
//!
//! Must not know: message bodies, clear numbers other than our own senders
//! (see [`AuditNumber`]), sockets, config files.
//!
//! # Records
//!
//! A record is a flat JSON object: `seq` (from 0), `at` (RFC 3339 UTC with
//! milliseconds, `2024-05-01T12:34:56.789Z`), `event` (a name such as
//! `message.accepted`), `actor` (`system`, `client:<id>`, `carrier:<name>`,
//! `peer:<name>`, `operator`), the event's subject fields (see
//! [`AuditEvent`]), `prev_hash` and `hash`. Every value is a string or an
//! unsigned integer — no floats, booleans, nulls, arrays or nested objects.
//! Record 0 is `{"event":"audit.genesis","node":"<node id>",…}` with
//! `prev_hash` = 64 zeros.
//!
//! # Canonical JSON and the hash
//!
//! The *canonical JSON* of a record is the object serialised with its keys
//! sorted by byte order, no whitespace at all, strings escaped as serde_json
//! does (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters
//! as `\u00xx` in lower case, everything else — non-ASCII included — as raw
//! UTF-8), integers in plain decimal. That is exactly Python's
//! `json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//!
//! `hash` = lower-case hex of SHA-256(the 32 bytes `prev_hash` encodes ‖ the
//! canonical JSON of the record without its `hash` field). `prev_hash` is the
//! previous record's `hash`. Each stored record — and each export line — is the
//! canonical JSON of the whole record, `hash` included. A third party
//! re-verifies an export in a few lines:
//!
//! ```text
//! import sys, json, hashlib
//! prev = None
//! for line in sys.stdin.buffer:
//!     r = json.loads(line); h = r.pop("hash")
//!     c = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
//!     assert hashlib.sha256(bytes.fromhex(r["prev_hash"]) + c.encode()).hexdigest() == h, r["seq"]
//!     assert prev is None or (r["prev_hash"] == prev and r["seq"] == seq + 1), r["seq"]
//!     prev, seq = h, r["seq"]
//! ```
//!
//! The first line's `prev_hash` anchors the export (64 zeros from genesis).
//!
//! # Writing
//!
//! A record describing a state change is appended *inside the same store op*
//! as the change ([`append`], or [`Audit::write`] which also counts it in
//! metrics): both commit together, and a rolled-back op leaves neither a
//! record nor a gap, because the next `seq` is read from the table (or the
//! transaction's pending chunk) in that transaction. Events with no state
//! change go through [`Audit::record`].
//! Every write goes through the store's single writer, so appends never race.
//!
//! API key use is aggregated ([`Audit::key_used`]): one `api.key_used`
//! record per client per minute with a `count`, so auditing does not double
//! the write load; see `key_use.rs` for the trade-offs.
//!
//! # Invariants
//!
//! - no field holds a body, and a number is a pseudonym unless it is one of
//!   our own senders (enforced by the types in [`event`]);
//! - `seq` is contiguous from the first remaining record to the head; only
//!   retention ([`Audit::prune`]) removes records, only from the start, and
//!   it leaves an `audit.pruned` record naming the last one removed;
//! - nothing read from the file is unwrapped: a tampered record is a
//!   [`BreakReason`], never a panic.
//!
//! # Verifying while the appliance runs
//!
//! redb locks its file, so [`verify_file`] and [`export_file`] (the CLI's
//! `audit verify` / `audit export`) copy it to a private temporary
//! directory beside it and read the copy. In the appliance, [`verify`] and
//! [`export`] read a snapshot of the open store.

mod chain;
pub(crate) mod event;
mod export;
mod key_use;
mod prune;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

pub use chain::{
    append, chunk_records, decode_chunk, encode_chunk, format_at, head, store_records, AuditRecord,
    Head, Prepared, AUDIT, CHUNK_BYTES, SYSTEM, ZERO_HASH,
};
pub use event::{AuditEvent, AuditNumber, KeywordClass, OwnNumbers, GENESIS, KEY_USED, PRUNED};
pub use export::{export, export_file, parse_time, ExportError};
pub use prune::PRUNE_CHUNK;
/// The chain walk on a read transaction (for `crate::backup`'s check).
pub(crate) use verify::walk as verify_txn;
pub use verify::{verify, verify_file, BreakReason, CopyError, VerifyError, VerifyReport};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError, Tx};
use event::Entry;
use key_use::{KeyUse, Total};

/// How often the flusher writes finished key-use minutes.
pub const KEY_USE_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Handle to the audit log of one node. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    node: Arc<str>,
    metrics: Option<Arc<Metrics>>,
    key_use: KeyUse,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// A store op's view of the log: the transaction, and `append` that puts a
/// record in it. Given to the op of [`Audit::write`].
pub struct AuditTxn<'a, 't> {
    txn: &'a Tx<'t>,
    node: &'a str,
    written: u64,
}

impl<'a, 't> AuditTxn<'a, 't> {
    /// The op's transaction, for its own tables.
    pub fn txn(&self) -> &'a Tx<'t> {
        self.txn
    }

    /// Appends `event` in this transaction (see [`append`]); returns its
    /// `seq`.
    pub fn append(&mut self, event: AuditEvent, actor: &str) -> Result<u64, StoreError> {
        if cfg!(feature = "bench-audit-off") {
            return Ok(0);
        }
        self.append_prepared(&Audit::prepare(event, actor)?)
    }

    /// Appends a record prepared before the op ([`Audit::prepare`]): the
    /// writer thread, which every op waits on, then only links and hashes
    /// it. The op may run twice (see the store's writer), so it is
    /// borrowed. Returns its `seq`.
    pub fn append_prepared(&mut self, p: &Prepared) -> Result<u64, StoreError> {
        if cfg!(feature = "bench-audit-off") {
            return Ok(0);
        }
        let a = chain::append_prepared(self.txn, self.node, p, false)?;
        self.written += a.written;
        Ok(a.seq)
    }

    fn append_entry(&mut self, entry: Entry, actor: &str) -> Result<AuditRecord, StoreError> {
        let (rec, n) = chain::append_entry(self.txn, self.node, entry, actor, Utc::now())?;
        self.written += n;
        Ok(rec)
    }
}

/// What `append`/`record` return in a `bench-audit-off` build: nothing
/// was written. That build exists only to measure what the log costs
/// (BENCHMARKS.md); a production build always has the log.
fn benchmark_placeholder() -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: String::new(),
        event: "",
        prev_hash: String::new(),
        hash: String::new(),
        json: String::new(),
    }
}

impl Audit {
    /// Opens the log of node `node` on `store`, writing the genesis record if
    /// the chain is empty. `metrics.audit_records` counts committed records.
    pub async fn open(
        store: Store,
        node: &str,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Audit, StoreError> {
        let audit = Audit {
            inner: Arc::new(Inner {
                store,
                node: Arc::from(node),
                metrics,
                key_use: KeyUse::default(),
            }),
        };
        let node = audit.inner.node.clone();
        let written = audit
            .inner
            .store
            .write(move |txn| {
                let (head, written) = chain::ensure_genesis(txn, &node, Utc::now())?;
                Ok((head.seq, written))
            })
            .await;
        let (head_seq, written) = written?;
        if let Some(m) = &audit.inner.metrics {
            // Every later record goes through `count`, which moves it on.
            m.audit_head_seq
                .set(i64::try_from(head_seq).unwrap_or(i64::MAX));
            m.audit_records.inc_by(written);
        }
        Ok(audit)
    }

    /// The store this log writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The node id named by the genesis record.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Serialises `event` by `actor`, dated now, for
    /// [`AuditTxn::append_prepared`] in an op to come.
    pub fn prepare(event: AuditEvent, actor: &str) -> Result<Prepared, StoreError> {
        chain::prepare(&Entry::Event(event), actor, format_at(Utc::now()))
    }

    /// Records an event that comes with no state change of its own (a bind
    /// went down, a key failed). Durable when this returns `Ok`.
    pub async fn record(&self, event: AuditEvent, actor: &str) -> Result<AuditRecord, StoreError> {
        if cfg!(feature = "bench-audit-off") {
            return Ok(benchmark_placeholder());
        }
        let actor = actor.to_owned();
        self.write(move |log| log.append_entry(Entry::Event(event.clone()), &actor))
            .await
    }

    /// Runs `op` as a store op with the log at hand: the state change and
    /// its records commit together or not at all, and committed records are
    /// counted in metrics. Finished key-use minutes ride along.
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut AuditTxn<'_, '_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_within(Duration::ZERO, op).await
    }

    /// As [`Audit::write`], for a caller that can spare `wait` for the
    /// commit to be shared (see [`Store::write_within`]).
    pub async fn write_within<T, F>(&self, wait: Duration, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut AuditTxn<'_, '_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let now = Utc::now();
        let due = if self.inner.key_use.any_due(now) {
            self.inner.key_use.take(now, false)
        } else {
            Vec::new()
        };
        let node = self.inner.node.clone();
        let carried = due.clone();
        let result = self
            .inner
            .store
            .write_within(wait, move |txn| {
                let op = &mut op;
                let mut log = AuditTxn {
                    txn,
                    node: &node,
                    written: 0,
                };
                append_totals(&mut log, &carried)?;
                let value = op(&mut log)?;
                Ok((value, log.written))
            })
            .await;
        match result {
            Ok((value, written)) => {
                self.count(written);
                Ok(value)
            }
            Err(e) => {
                self.inner.key_use.restore(due);
                Err(e)
            }
        }
    }

    /// Counts one use of `client`'s API key. Never blocks on the store; see
    /// the key-use aggregation in the module doc.
    pub fn key_used(&self, client: &str) {
        self.inner.key_use.hit(client, Utc::now());
    }

    /// Writes aggregated key use now: finished minutes, or every minute
    /// including the current one when `all` (at a clean stop). Returns the
    /// number of `api.key_used` records written.
    pub async fn flush_key_use(&self, all: bool) -> Result<usize, StoreError> {
        let totals = self.inner.key_use.take(Utc::now(), all);
        if totals.is_empty() {
            return Ok(0);
        }
        let carried = totals.clone();
        match self
            .write(move |log| append_totals(log, &carried).map(|()| carried.len()))
            .await
        {
            Ok(n) => Ok(n),
            Err(e) => {
                self.inner.key_use.restore(totals);
                Err(e)
            }
        }
    }

    /// The flusher task: writes finished key-use minutes every
    /// [`KEY_USE_FLUSH_EVERY`]; when `shutdown` is cancelled, writes
    /// everything and returns. The drain must await it before closing the
    /// store.
    pub async fn run_key_use_flusher(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(KEY_USE_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush_key_use(false).await {
                        tracing::warn!(error = %e, "writing aggregated key use failed; will retry");
                    }
                }
            }
        }
        if let Err(e) = self.flush_key_use(true).await {
            tracing::error!(error = %e, "writing aggregated key use at stop failed");
        }
    }

    /// Deletes records older than `retention_days` before `now`, in ops of
    /// [`PRUNE_CHUNK`], each leaving an `audit.pruned` record (see
    /// `prune.rs`). Returns the number deleted. `retention_days == 0` deletes
    /// nothing (config validation forbids 0; treating it as "everything"
    /// would be the dangerous reading).
    pub async fn prune(&self, retention_days: u32, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff =
            TimeDelta::try_days(i64::from(retention_days)).and_then(|d| now.checked_sub_signed(d));
        let Some(cutoff) = cutoff.filter(|_| retention_days > 0) else {
            return Ok(0);
        };
        let mut total = 0u64;
        loop {
            let node = self.inner.node.clone();
            let (deleted, written) = self
                .inner
                .store
                .write(move |txn| prune::prune_chunk(txn, &node, cutoff, now, PRUNE_CHUNK))
                .await?;
            self.count(written);
            total += deleted;
            if deleted < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// The chain head (seq and hash of the last record).
    pub fn head(&self) -> Result<Option<Head>, StoreError> {
        head(&self.inner.store)
    }

    /// Walks the chain of the open store.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        verify(&self.inner.store)
    }

    fn count(&self, written: u64) {
        if let (Some(m), true) = (&self.inner.metrics, written > 0) {
            m.audit_records.inc_by(written);
            m.audit_head_seq.add(i64::try_from(written).unwrap_or(0));
        }
    }
}

fn append_totals(log: &mut AuditTxn<'_, '_>, totals: &[Total]) -> Result<(), StoreError> {
    for t in totals {
        log.append_entry(t.entry(), &t.actor())?;
    }
    Ok(())
}
