//! The store's error type.
//!
//! Errors that come out of one commit are handed to every caller whose write
//! rode in that commit, so the commit-level variants hold their cause in an
//! [`Arc`] and the whole type is [`Clone`].

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in [`crate::store`].
///
/// No variant ever carries a message body or a phone number: ops only see
/// metadata, and the variants below hold redb errors, paths and counts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or secured.
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// redb refused to open or create the database file.
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::DatabaseError>,
    },
    /// The file was written by a newer sms-conduit; opening it could corrupt it.
    #[error(
        "database {path} has schema version {found}, this build supports up to {supported}; \
         upgrade sms-conduit or restore a matching backup"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The writer thread could not be started.
    #[error("starting the store writer thread: {0}")]
    Thread(#[source] Arc<std::io::Error>),
    /// A transaction could not be started.
    #[error("store transaction: {0}")]
    Transaction(#[source] Arc<redb::TransactionError>),
    /// A table could not be opened (wrong key/value types, or storage trouble).
    #[error("store table: {0}")]
    Table(#[source] Arc<redb::TableError>),
    /// Reading or writing a table failed.
    #[error("store storage: {0}")]
    Storage(#[source] Arc<redb::StorageError>),
    /// The durable commit of a batch failed. Treat the outcome of the write as
    /// unknown: redb normally refuses further writes after an I/O failure,
    /// but the store cannot promise the batch left no trace.
    #[error("store commit: {0}")]
    Commit(#[source] Arc<redb::CommitError>),
    /// An op panicked; its writes were rolled back, the writer carries on.
    #[error("store operation panicked; its writes were rolled back")]
    OpPanicked,
    /// The store cannot commit now: a commit failed on its storage (a full
    /// disk, an I/O error) and the writer is reopening the database. Nothing
    /// of the refused write was kept; try again later (the store recovers by
    /// itself once the fault is gone, see [`crate::store::Store::is_healthy`]).
    #[error("store unavailable: it cannot commit and is recovering")]
    Unavailable,
    /// The store was closed (or its writer thread is gone).
    #[error("store is closed")]
    Closed,
    /// An op refused to write, with a reason meant for logs (never a body or
    /// a clear number). Owners of tables may use it for domain refusals.
    #[error("store operation refused: {0}")]
    Refused(String),
    /// Fleet mode: the shared state (Redis) failed or did not answer in
    /// time. Holds the operation and the client's error kind, never a key's
    /// value, a body or a number.
    #[error("shared state: {0}")]
    Shared(String),
}

macro_rules! from_redb {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::$v(Arc::new(e))
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError => Transaction,
    redb::TableError => Table,
    redb::StorageError => Storage,
    redb::CommitError => Commit,
);
