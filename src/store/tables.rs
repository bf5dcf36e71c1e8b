//! Table definitions owned by the store itself, and helpers other modules use
//! to open theirs.
//!
//! Owns: `schema_version` (file format of the whole database), `kv` (small
//! generic counters and markers), and the three shared-state tables behind
//! [`crate::store::shared::LocalShared`]. Modules that own other tables
//! (messages, audit, outbox) define their `TableDefinition`s next to their
//! code and open them through [`open`] / [`open_read`].

use std::cell::{RefCell, RefMut};

use redb::{
    ReadOnlyTable, ReadTransaction, Table, TableDefinition, TableError, TableHandle,
    WriteTransaction,
};

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

/// The write transaction an op runs in, with the tables its batch opened.
///
/// Every op and commit hook gets one (see [`crate::store::Store::write`]).
/// A table opened through [`open`] stays open until the writer commits the
/// batch, so the next op that needs it does not open it again: opening and
/// closing a redb table costs more than a small insert (a lookup in the
/// table of tables, a few allocations, the root staged back on close), and
/// the send path would otherwise pay it three times per message (measured,
/// ~1.8 µs of ~62). Written here because redb keeps no such cache and a
/// `Table` borrows its transaction, so it cannot live in any `'static`
/// (`Any`) map: the cache holds each key/value shape the store uses as a
/// variant of [`OpenTable`].
///
/// As with redb, one table may be borrowed once at a time; a second borrow
/// while the first is held is refused with an error, not a panic.
pub struct Tx<'t> {
    txn: &'t WriteTransaction,
    slots: [Slot<'t>; SLOTS],
}

/// Tables one transaction may hold open through [`Tx`]: more than the store
/// has, so a batch never runs out (an extra table is refused, not dropped).
const SLOTS: usize = 16;

#[derive(Default)]
struct Slot<'t> {
    name: std::cell::OnceCell<String>,
    table: RefCell<Option<OpenTable<'t>>>,
}

impl<'t> Tx<'t> {
    /// Wraps `txn`; its tables close when this is dropped (before a commit).
    pub fn new(txn: &'t WriteTransaction) -> Self {
        Self {
            txn,
            slots: Default::default(),
        }
    }

    /// The transaction itself, for what is not a cached table (deleting a
    /// table, migrating a legacy one). Opening a table that [`open`] keeps
    /// open through it fails with redb's "already open".
    pub fn txn(&self) -> &'t WriteTransaction {
        self.txn
    }
}

/// One open table, of each key/value shape the store's tables have.
pub enum OpenTable<'t> {
    StrBytes(Table<'t, &'static str, &'static [u8]>),
    StrU32(Table<'t, &'static str, u32>),
    U64Bytes(Table<'t, u64, &'static [u8]>),
    StrStrBytes(Table<'t, (&'static str, &'static str), &'static [u8]>),
    StrStrU64(Table<'t, (&'static str, &'static str), u64>),
    StrStrStr(Table<'t, (&'static str, &'static str), &'static str>),
    StrHashU64(Table<'t, (&'static str, &'static [u8; 32]), u64>),
    StrU64Bytes(Table<'t, (&'static str, u64), &'static [u8]>),
}

/// A key/value shape [`Tx`] can keep open: the `(K, V)` of a table.
pub trait Shape<'t, K: redb::Key + 'static, V: redb::Value + 'static> {
    fn wrap(t: Table<'t, K, V>) -> OpenTable<'t>;
    fn unwrap<'a>(o: &'a mut OpenTable<'t>) -> Option<&'a mut Table<'t, K, V>>;
}

macro_rules! shapes {
    ($($variant:ident: $k:ty => $v:ty;)*) => {$(
        impl<'t> Shape<'t, $k, $v> for ($k, $v) {
            fn wrap(t: Table<'t, $k, $v>) -> OpenTable<'t> {
                OpenTable::$variant(t)
            }
            fn unwrap<'a>(o: &'a mut OpenTable<'t>) -> Option<&'a mut Table<'t, $k, $v>> {
                match o {
                    OpenTable::$variant(t) => Some(t),
                    _ => None,
                }
            }
        }
    )*};
}

shapes! {
    StrBytes: &'static str => &'static [u8];
    StrU32: &'static str => u32;
    U64Bytes: u64 => &'static [u8];
    StrStrBytes: (&'static str, &'static str) => &'static [u8];
    StrStrU64: (&'static str, &'static str) => u64;
    StrStrStr: (&'static str, &'static str) => &'static str;
    StrHashU64: (&'static str, &'static [u8; 32]) => u64;
    StrU64Bytes: (&'static str, u64) => &'static [u8];
}

/// Opens (creating if needed) a table inside a write op, or borrows it if
/// an earlier op of the batch opened it. Drop the borrow before opening the
/// same table again.
pub fn open<'a, 't, K, V>(
    tx: &'a Tx<'t>,
    def: TableDefinition<'static, K, V>,
) -> Result<RefMut<'a, Table<'t, K, V>>, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    (K, V): Shape<'t, K, V>,
{
    let name = def.name();
    let slot = tx
        .slots
        .iter()
        .find(|s| s.name.get().is_none_or(|n| n == name))
        .ok_or_else(|| StoreError::Refused(format!("too many tables open to open {name}")))?;
    let mut cell = slot
        .table
        .try_borrow_mut()
        .map_err(|_| StoreError::Refused(format!("table {name} is already borrowed")))?;
    if cell.is_none() {
        *cell = Some(<(K, V)>::wrap(tx.txn.open_table(def)?));
        let _ = slot.name.set(name.to_owned());
    }
    RefMut::filter_map(cell, |o| o.as_mut().and_then(<(K, V)>::unwrap))
        .map_err(|_| StoreError::Refused(format!("table {name} is open with other types")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTable, ReadableTableMetadata};

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_table_stays_open_for_the_whole_transaction() {
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        {
            let tx = Tx::new(&txn);
            open(&tx, KV).unwrap().insert("a", b"1".as_slice()).unwrap();
            // Closed to the op, still open in the transaction: redb itself
            // refuses a second open, so the next op's open is the cache's.
            assert!(tx.txn().open_table(KV).is_err());
            let t = open(&tx, KV).unwrap();
            assert_eq!(t.get("a").unwrap().unwrap().value(), b"1");
        }
        // Dropping the `Tx` closed it: the transaction commits.
        txn.commit().unwrap();
        let r = db.begin_read().unwrap();
        let t = open_read(&r, KV).unwrap().unwrap();
        assert_eq!(t.get("a").unwrap().unwrap().value(), b"1");
    }

    #[test]
    fn tables_of_one_shape_are_kept_apart() {
        const OTHER: TableDefinition<&str, &[u8]> = TableDefinition::new("other");
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let tx = Tx::new(&txn);
        let mut kv = open(&tx, KV).unwrap();
        let mut other = open(&tx, OTHER).unwrap();
        kv.insert("k", b"kv".as_slice()).unwrap();
        other.insert("k", b"other".as_slice()).unwrap();
        assert_eq!(kv.get("k").unwrap().unwrap().value(), b"kv");
        assert_eq!(other.get("k").unwrap().unwrap().value(), b"other");
        let counters = open(&tx, DAILY_COUNTERS).unwrap();
        assert_eq!(counters.len().unwrap(), 0);
    }

    #[test]
    fn a_second_borrow_or_other_types_are_errors_not_panics() {
        const KV_AS_U32: TableDefinition<&str, u32> = TableDefinition::new("kv");
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let tx = Tx::new(&txn);
        let held = open(&tx, KV).unwrap();
        let again = open(&tx, KV).err().map(|e| e.to_string());
        assert!(again.is_some_and(|e| e.contains("already borrowed")));
        drop(held);
        let typed = open(&tx, KV_AS_U32).err().map(|e| e.to_string());
        assert!(
            typed.as_deref().is_some_and(|e| e.contains("other types")),
            "{typed:?}"
        );
        // Still usable after both refusals.
        open(&tx, KV).unwrap().insert("x", b"y".as_slice()).unwrap();
    }

    #[test]
    fn more_tables_than_slots_are_refused() {
        let (_dir, db) = db();
        let txn = db.begin_write().unwrap();
        let tx = Tx::new(&txn);
        let names: Vec<&'static str> = (0..=SLOTS)
            .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
            assert_eq!(open(&tx, def).is_ok(), i < SLOTS, "table {i}");
        }
    }
}
