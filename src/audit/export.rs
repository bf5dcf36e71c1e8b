//! Export: the stored records as JSON lines, for a SIEM or an auditor.
//!
//! Owns: the export format, which is simply each stored record (the
//! canonical JSON of the record, `hash` included) followed by `\n`, in `seq`
//! order. Because the bytes are the stored ones, a third party re-verifies
//! an export with the recipe in the [`super`] module doc; an export that
//! starts after seq 0 is anchored by its first line's `prev_hash`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use redb::{ReadTransaction, ReadableTable};

use super::chain::{self, chunk_records, peek};
use super::verify::{CopyError, FileCopy, COPY_ATTEMPTS};
use crate::store::{Store, StoreError};

/// A failed export.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// A time filter was given and the record's `at` cannot be read.
    #[error("audit record {seq} (or its chunk) is unreadable; run `sms-conduit audit verify`")]
    Malformed { seq: u64 },
}

/// Writes the records with `since <= at < until` (either bound optional) to
/// `out`, one per line, in `seq` order, from one consistent snapshot.
/// Returns the number of lines written.
pub fn export(
    store: &Store,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    store.read(|rtxn| Ok(export_txn(rtxn, since, until, out)))?
}

/// [`export`] from the database file at `path` (or the state directory
/// holding it) while the appliance may be running: reads a private copy,
/// like [`super::verify_file`].
pub fn export_file(
    path: &Path,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let mut attempt = 0;
    let copy = loop {
        attempt += 1;
        match FileCopy::take(path) {
            Err(CopyError::Open(e)) if attempt < COPY_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "opening a copy of the database failed; copying again");
            }
            other => break other?,
        }
    };
    let rtxn = copy.db.begin_read().map_err(StoreError::from)?;
    export_txn(&rtxn, since, until, out)
}

fn export_txn(
    rtxn: &ReadTransaction,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let Some(table) = chain::open_read(rtxn)? else {
        return Ok(0);
    };
    let io = |e| ExportError::Io(Arc::new(e));
    let filtered = since.is_some() || until.is_some();
    let mut lines = 0u64;
    for item in table.iter().map_err(StoreError::from)? {
        let (k, v) = item.map_err(StoreError::from)?;
        let mut seq = k.value();
        let chunk = chain::decode_chunk(v.value()).ok_or(ExportError::Malformed { seq })?;
        if !filtered {
            // A decoded chunk is the export's lines, but for the last `\n`.
            out.write_all(&chunk).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
            lines += chain::record_count(&chunk);
            continue;
        }
        for bytes in chunk_records(&chunk) {
            let at = peek(bytes)
                .and_then(|p| DateTime::parse_from_rfc3339(p.at).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or(ExportError::Malformed { seq })?;
            seq = seq.saturating_add(1);
            if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) {
                continue;
            }
            out.write_all(bytes).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
            lines += 1;
        }
    }
    out.flush().map_err(io)?;
    Ok(lines)
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2024-05-01T12:00:00Z`) or
/// a date (`2024-05-01`, midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_date() {
        let a = parse_time("2024-05-01").unwrap();
        assert_eq!(a, parse_time("2024-05-01T00:00:00Z").unwrap());
        assert_eq!(
            parse_time("2024-05-01T02:00:00+02:00").unwrap(),
            parse_time("2024-05-01T00:00:00.000Z").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
    }
}
