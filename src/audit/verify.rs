//! Walking the chain, in the appliance or on a copy of its database file.
//!
//! Owns: the rules that decide whether a chain is intact, and the
//! copy-then-open path used by the CLI while the appliance runs.
//!
//! A record passes when, in this order:
//! 1. its bytes are a JSON object of strings and unsigned integers, in the
//!    canonical form, with `seq`, `at` (RFC 3339), `event`, `actor`,
//!    `prev_hash` and `hash` (64 lower-case hex) — else `Malformed`;
//! 2. `hash` = SHA-256(bytes(`prev_hash`) ‖ canonical JSON without `hash`) —
//!    else `HashMismatch` (the record was edited);
//! 3. its position (chunk key + line) follows the previous one by one — else
//!    `Gap` (records deleted);
//! 4. its `seq` field equals its position — else `Reordered` (records moved);
//! 5. its `prev_hash` is the previous record's `hash` (or 64 zeros for
//!    record 0, which must be `audit.genesis`) — else `BrokenLink`.
//!
//! When record 0 is gone (retention), the first remaining record's
//! `prev_hash` is the chain's *anchor*: it is trusted only if an
//! `audit.pruned` record later in the chain names it (`last_seq` = first
//! seq − 1, `last_hash` = anchor) — else `Unanchored`.
//!
//! What a chain cannot show on its own: records cut off the *end*, or a chain
//! rewritten from some point on by someone with write access to the file
//! (the hash is unkeyed, so anyone can recompute it). The head — logged at
//! start and clean stop, exported in metrics and to the SIEM — is the
//! outside witness for that: compare it with [`VerifyReport::head`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableTable};
use serde_json::{Map, Value};

use super::chain::{self, canonical, chain_hash, decode_hash, Head, ZERO_HASH};
use super::event::{GENESIS, PRUNED};
use crate::store::{Store, StoreError, DB_FILE};

/// What a successful walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records walked.
    pub count: u64,
    /// Key of the first record (0 unless retention pruned the start).
    pub first_seq: Option<u64>,
    /// `prev_hash` of the first record: 64 zeros for an unpruned chain, else
    /// the `last_hash` of the `audit.pruned` record that vouches for it.
    pub anchor: Option<String>,
    /// The last record.
    pub head: Option<Head>,
}

/// Why a record broke the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    /// The record's hash does not match its content: it was edited.
    #[error("hash does not match the record's content")]
    HashMismatch,
    /// The record does not link to the one before it.
    #[error("prev_hash is not the hash of the record before")]
    BrokenLink,
    /// Records before this one are missing.
    #[error("records missing: expected seq {expected}")]
    Gap { expected: u64 },
    /// The record's own `seq` is not its position: records were moved.
    #[error("record is out of place (its seq field differs from its position)")]
    Reordered,
    /// Not a well-formed record; `detail` says which rule (never content).
    #[error("malformed record: {detail}")]
    Malformed { detail: &'static str },
    /// The chain starts after 0 and no `audit.pruned` record accounts for
    /// the missing start.
    #[error("chain starts after seq 0 and no audit.pruned record names its anchor")]
    Unanchored,
}

/// A failed verification.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken at `seq` (the first bad record).
    #[error("audit chain broken at seq {seq}: {reason}")]
    Broken { seq: u64, reason: BreakReason },
    /// The database could not be read (a damaged file is tamper evidence too).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database file could not be copied or the copy opened.
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// Taking a private copy of the database file failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CopyError {
    /// Reading the original or writing the copy failed.
    #[error("copying {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// redb refused the copy (a copy torn by a concurrent commit, or a
    /// damaged original).
    #[error(transparent)]
    Open(StoreError),
}

/// Walks the chain of an open store (one consistent snapshot).
pub fn verify(store: &Store) -> Result<VerifyReport, VerifyError> {
    store.read(|rtxn| Ok(walk(rtxn)))?
}

/// Walks the chain of the database at `path` (the file, or the state
/// directory holding it) while the appliance may be running.
///
/// redb locks the live file, so this copies it into a private temporary
/// directory next to it (same filesystem, same 0700 protection), opens the
/// copy and walks it; the copy is deleted afterwards. A copy taken during a
/// commit can be torn; redb's checksums then refuse it and the copy is
/// retried (three attempts).
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = FileCopy::take(path)
            .map_err(VerifyError::from)
            .and_then(|c| {
                let rtxn = c.db.begin_read().map_err(StoreError::from)?;
                walk(&rtxn)
            });
        match result {
            Err(VerifyError::Store(e) | VerifyError::Copy(CopyError::Open(e)))
                if attempt < COPY_ATTEMPTS =>
            {
                tracing::warn!(error = %e, attempt, "reading a copy of the database failed; copying again");
            }
            other => return other,
        }
    }
}

pub(crate) const COPY_ATTEMPTS: u32 = 3;

/// A private copy of a database file, opened with redb. Deleted on drop.
pub(crate) struct FileCopy {
    pub(crate) db: Database,
    _dir: tempfile::TempDir,
}

impl FileCopy {
    pub(crate) fn take(path: &Path) -> Result<FileCopy, CopyError> {
        let file = if path.is_dir() {
            path.join(DB_FILE)
        } else {
            path.to_path_buf()
        };
        let err = |e: std::io::Error| CopyError::Io {
            path: file.clone(),
            source: Arc::new(e),
        };
        if !file.is_file() {
            return Err(err(std::io::ErrorKind::NotFound.into()));
        }
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = tempfile::Builder::new()
            .prefix(".audit-copy-")
            .tempdir_in(&parent)
            .map_err(err)?;
        let copy = dir.path().join(DB_FILE);
        std::fs::copy(&file, &copy).map_err(err)?;
        let db = Database::open(&copy).map_err(|e| {
            CopyError::Open(StoreError::Open {
                path: copy.clone(),
                source: Arc::new(e),
            })
        })?;
        Ok(FileCopy { db, _dir: dir })
    }
}

/// The parsed fields of one record that the walk needs.
struct Parsed {
    seq: u64,
    event: String,
    prev_hash: String,
    hash: String,
    /// `(last_seq, last_hash)` of an `audit.pruned` record.
    pruned: Option<(u64, String)>,
}

fn malformed(detail: &'static str) -> BreakReason {
    BreakReason::Malformed { detail }
}

/// Checks rules 1 and 2 of the module doc on one stored record.
fn parse(bytes: &[u8]) -> Result<Parsed, BreakReason> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| malformed("not JSON"))?;
    let flat = value
        .as_object()
        .is_some_and(|o| o.values().all(|v| v.is_string() || v.is_u64()));
    if !flat {
        return Err(malformed(
            "not a JSON object of strings and unsigned integers",
        ));
    }
    if canonical(&value).map_err(|_| malformed("not encodable"))? != bytes {
        return Err(malformed("not in canonical form"));
    }
    let Value::Object(mut obj) = value else {
        return Err(malformed("not a JSON object"));
    };
    let seq = obj
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or(malformed("seq missing"))?;
    let at = str_field(&obj, "at").ok_or(malformed("at missing"))?;
    chrono::DateTime::parse_from_rfc3339(at).map_err(|_| malformed("at is not RFC 3339"))?;
    let event = str_field(&obj, "event").ok_or(malformed("event missing"))?;
    str_field(&obj, "actor").ok_or(malformed("actor missing"))?;
    let prev_hash = str_field(&obj, "prev_hash")
        .filter(|h| decode_hash(h).is_some())
        .ok_or(malformed("prev_hash missing or not a hash"))?;
    let pruned = if event == PRUNED {
        let last_seq = obj.get("last_seq").and_then(Value::as_u64);
        let last_hash = str_field(&obj, "last_hash");
        match (last_seq, last_hash) {
            (Some(s), Some(h)) => Some((s, h.to_owned())),
            _ => return Err(malformed("audit.pruned without last_seq/last_hash")),
        }
    } else {
        None
    };
    let (event, prev_hash) = (event.to_owned(), prev_hash.to_owned());
    let hash = match obj.remove("hash") {
        Some(Value::String(h)) if decode_hash(&h).is_some() => h,
        _ => return Err(malformed("hash missing or not a hash")),
    };
    let unhashed = canonical(&Value::Object(obj)).map_err(|_| malformed("not encodable"))?;
    if chain_hash(&prev_hash, &unhashed).as_deref() != Some(hash.as_str()) {
        return Err(BreakReason::HashMismatch);
    }
    Ok(Parsed {
        seq,
        event,
        prev_hash,
        hash,
        pruned,
    })
}

fn str_field<'a>(obj: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    obj.get(k).and_then(Value::as_str)
}

/// Walks the chain of one snapshot, chunk by chunk; a record's position
/// (the `seq` it must carry) is its chunk's key plus its line.
pub(crate) fn walk(rtxn: &ReadTransaction) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        count: 0,
        first_seq: None,
        anchor: None,
        head: None,
    };
    let Some(table) = chain::open_read(rtxn)? else {
        return Ok(report);
    };
    let mut anchored = true;
    for item in table.iter().map_err(StoreError::from)? {
        let (k, v) = item.map_err(StoreError::from)?;
        let chunk_key = k.value();
        let bad_chunk = |detail| VerifyError::Broken {
            seq: chunk_key,
            reason: malformed(detail),
        };
        if v.value().is_empty() {
            return Err(bad_chunk("empty chunk"));
        }
        let chunk =
            chain::decode_chunk(v.value()).ok_or_else(|| bad_chunk("chunk does not decode"))?;
        for (i, bytes) in chain::chunk_records(&chunk).enumerate() {
            // The record's position: where its chunk says it is.
            let key = u64::try_from(i)
                .ok()
                .and_then(|i| chunk_key.checked_add(i))
                .unwrap_or(u64::MAX);
            let broken = |reason| VerifyError::Broken { seq: key, reason };
            let rec = parse(bytes).map_err(broken)?;
            match &report.head {
                None => {
                    if rec.seq != key {
                        return Err(broken(BreakReason::Reordered));
                    }
                    if key == 0 {
                        if rec.event != GENESIS {
                            return Err(broken(malformed("record 0 is not audit.genesis")));
                        }
                        if rec.prev_hash != ZERO_HASH {
                            return Err(broken(BreakReason::BrokenLink));
                        }
                    } else {
                        anchored = false;
                    }
                    report.first_seq = Some(key);
                    report.anchor = Some(rec.prev_hash.clone());
                }
                Some(prev) => {
                    let expected = prev.seq.saturating_add(1);
                    if key != expected {
                        return Err(broken(BreakReason::Gap { expected }));
                    }
                    if rec.seq != key {
                        return Err(broken(BreakReason::Reordered));
                    }
                    if rec.prev_hash != prev.hash {
                        return Err(broken(BreakReason::BrokenLink));
                    }
                }
            }
            if let (false, Some((last_seq, last_hash))) = (anchored, &rec.pruned) {
                let first = report.first_seq.unwrap_or(0);
                anchored = last_seq.checked_add(1) == Some(first)
                    && report.anchor.as_deref() == Some(last_hash.as_str());
            }
            report.count += 1;
            report.head = Some(Head {
                seq: key,
                hash: rec.hash,
            });
        }
    }
    if !anchored {
        return Err(VerifyError::Broken {
            seq: report.first_seq.unwrap_or(0),
            reason: BreakReason::Unanchored,
        });
    }
    Ok(report)
}
