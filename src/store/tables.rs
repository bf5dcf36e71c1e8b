//! Table definitions owned by the store itself, and helpers other modules use
//! to open theirs.
//!
//! Owns: `schema_version` (file format of the whole database), `kv` (small
//! generic counters and markers), and the three shared-state tables behind
//! [`crate::store::shared::LocalShared`]. Modules that own other tables
//! (messages, audit, outbox) define their `TableDefinition`s next to their
//! code and open them through [`open`] / [`open_read`].

use redb::{ReadOnlyTable, ReadTransaction, Table, TableDefinition, TableError, WriteTransaction};

use super::StoreError;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Key in [`SCHEMA_VERSION_TABLE`] under which the version is kept.
pub const SCHEMA_VERSION_KEY: &str = "store";

/// `"store"` → schema version of the file.
pub const SCHEMA_VERSION_TABLE: TableDefinition<&str, u32> = TableDefinition::new("schema_version");

/// Generic counters and markers: name → bytes. Keys are fixed strings from
/// code, never from a request.
pub const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// `(key, day)` → segments counted that day. `day` is the local date of the
/// counter's reset zone, `YYYY-MM-DD`.
pub const DAILY_COUNTERS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("daily_counters");

/// `(campaign, pseudonym)` → unix seconds of the opt-out.
pub const OPT_OUTS: TableDefinition<(&str, &[u8; 32]), u64> = TableDefinition::new("opt_outs");

/// `(carrier, index key of a carrier message id)` → our message id. The key
/// is [`crate::smpp::dlr::index_key`] of the id (one entry per segment).
/// (The earlier `carrier_ids` table held every form of each id; a file that
/// still has it is read without it, so receipts for messages sent before
/// the upgrade are not correlated.)
pub const CARRIER_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("carrier_index");

/// Opens (creating if needed) a table inside a write op.
pub fn open<'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'txn WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<Table<'txn, K, V>, StoreError> {
    Ok(txn.open_table(def)?)
}

/// Opens a table for reading; `None` when no write has created it yet, so
/// readers of a fresh database see "empty" rather than an error.
pub fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
