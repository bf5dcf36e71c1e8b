//! The embedded store: one redb file, one group-commit writer.
//!
//! Owns: `<state_dir>/sms-conduit.redb`, its schema version, the only write
//! path into it ([`Store::write`]), and the shared-state seam of SPEC §8
//! ([`shared::SharedState`], implemented locally by [`shared::LocalShared`]
//! and, in fleet mode, on Redis by [`redis_shared::RedisShared`]).
//!
//! Must not know: message bodies (SPEC §1.1 — ops only ever carry metadata),
//! sockets, config files. Tables for messages, audit records and the outbox
//! belong to the modules that use them; they define their
//! `redb::TableDefinition`s and open them with [`tables::open`] /
//! [`tables::open_read`]. Write ops get the transaction as a [`Tx`], which
//! keeps the tables a batch opened open until it commits.
//!
//! Invariants:
//! - every write goes through the single writer thread ([`writer`]); a
//!   caller's `write(..).await` returns `Ok` only once its writes are durable,
//!   and many writes share one fsync (group commit);
//! - an op that returns `Err` (or panics) is rolled back alone; the other ops
//!   of its batch are committed;
//! - the queue in front of the writer is bounded, so a slow disk slows
//!   callers down instead of growing memory;
//! - reads never wait for the writer ([`Store::read`] is a redb MVCC
//!   snapshot). A read may see an op's writes a moment before they are
//!   durable (see [`writer`]); it never sees a failed op's writes;
//! - a store that cannot commit says so and heals itself: after a batch
//!   fails, the writer tries to start a write transaction; if redb refuses
//!   (after any I/O error, a full disk included, it refuses every write until
//!   the database is reopened), [`Store::is_healthy`] turns false *before*
//!   the batch's callers are answered, readers are cut off from the poisoned
//!   database, and every write and read is refused at once with
//!   [`StoreError::Unavailable`] (nothing of a refused write is kept). The
//!   writer reopens the file (schema checked) with a back-off from
//!   [`writer::REOPEN_FIRST`] to [`writer::REOPEN_MAX`], and only after an
//!   empty durable commit on the reopened database succeeded does it hand
//!   that database to readers and turn `is_healthy` true again. No restart,
//!   and no caller ever waits on a store that cannot commit;
//! - fault injection ([`FaultSwitch`], [`Store::open_with_faults`]) is for
//!   tests only; [`Store::open`] runs on redb's plain file backend.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sms_conduit::store::StoreError> {
//! use sms_conduit::store::{tables, Store};
//! let store = Store::open(std::path::Path::new("/var/lib/sms-conduit"), None)?;
//! store
//!     .write(|txn| {
//!         tables::open(txn, tables::KV)?.insert("boot", b"1".as_slice())?;
//!         Ok(())
//!     })
//!     .await?;
//! let boot = store.read(|rtxn| {
//!     let Some(t) = tables::open_read(rtxn, tables::KV)? else { return Ok(None) };
//!     Ok(t.get("boot")?.map(|v| v.value().to_vec()))
//! })?;
//! # let _ = boot;
//! store.close().await?;
//! # Ok(()) }
//! ```

mod error;
mod fault;
pub(crate) mod redis_shared;
pub mod shared;
pub mod tables;
mod writer;

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadTransaction, ReadableTable};
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;
#[doc(hidden)]
pub use fault::FaultSwitch;
pub use shared::{LocalShared, SharedState};
pub use tables::Tx;
pub(crate) use writer::{before_commit, current_txn};

use crate::metrics::Metrics;
use writer::{Counters, Msg, OpJob, Wake};

/// File name of the database inside `state_dir`.
pub const DB_FILE: &str = "sms-conduit.redb";

/// Counts since the store was opened (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits (fsyncs) done by the writer.
    pub commits: u64,
    /// Ops the writer ran (kept or not).
    pub ops: u64,
}

/// Handle to the store. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What the writer thread shares with every handle: the database readers
/// use, and whether it can commit.
pub(crate) struct Live {
    pub(crate) path: PathBuf,
    /// `None` once closed, and while the writer reopens a database that
    /// failed to commit. The lock is only held to clone or swap the `Arc`.
    pub(crate) db: RwLock<Option<Arc<Database>>>,
    /// False from a failed commit until the writer has reopened the
    /// database and a durable probe commit succeeded (see [`writer`]).
    pub(crate) healthy: AtomicBool,
    /// Set by [`Store::close`]: tells "closed" from "recovering" when `db`
    /// is `None`.
    pub(crate) closed: AtomicBool,
    /// The fault switch the database was opened with, to reopen it with the
    /// same one; `None` on the normal path.
    pub(crate) faults: Option<FaultSwitch>,
    /// `store.commit_wait_max_ms` in µs: the longest a busy batch waits for
    /// company (see `writer::linger_for`). Read once per batch.
    pub(crate) commit_wait_max_us: AtomicU64,
}

impl Live {
    /// The error for a write or read refused because there is no database.
    pub(crate) fn refusal(&self) -> StoreError {
        if self.closed.load(Ordering::Acquire) {
            StoreError::Closed
        } else {
            StoreError::Unavailable
        }
    }
}

struct Inner {
    live: Arc<Live>,
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// In-memory copy of the opt-out table, loaded on first use (see
    /// [`shared::OptOutMirror`]). Here, not in [`LocalShared`], so every
    /// handle over this store sees one copy.
    opt_outs: std::sync::OnceLock<shared::OptOutMirror>,
    /// The daily counters in memory (see [`shared::DailyMirror`]), here for
    /// the same reason.
    daily: shared::DailyMirror,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.live.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/sms-conduit.redb` and starts
    /// the writer thread.
    ///
    /// The directory is created with mode 0700 and the file with 0600. A file
    /// whose schema version is newer than [`tables::SCHEMA_VERSION`] is
    /// refused with [`StoreError::SchemaTooNew`]. Needs no runtime; writes
    /// need a tokio runtime to be awaited. Opened on a runtime, the store
    /// answers its writers from a task on it, one wake-up of the runtime per
    /// commit (see `writer::Answerer`).
    pub fn open(state_dir: &Path, metrics: Option<Arc<Metrics>>) -> Result<Store, StoreError> {
        Self::open_inner(state_dir, metrics, None)
    }

    /// As [`Store::open`], over a backend whose writes fail while `faults`
    /// is on (see [`FaultSwitch`]). For tests of the store's fault handling.
    #[doc(hidden)]
    pub fn open_with_faults(
        state_dir: &Path,
        metrics: Option<Arc<Metrics>>,
        faults: FaultSwitch,
    ) -> Result<Store, StoreError> {
        Self::open_inner(state_dir, metrics, Some(faults))
    }

    fn open_inner(
        state_dir: &Path,
        metrics: Option<Arc<Metrics>>,
        faults: Option<FaultSwitch>,
    ) -> Result<Store, StoreError> {
        prepare_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        precreate_file(&path)?;
        let db = Arc::new(open_db(&path, faults.as_ref())?);
        let live = Arc::new(Live {
            path,
            db: RwLock::new(Some(db.clone())),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            faults,
            commit_wait_max_us: AtomicU64::new(micros(writer::LINGER_MAX)),
        });
        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let wake = Arc::new(Wake::default());
        let answers = writer::Answerer::on_current_runtime();
        let thread = {
            let (live, counters, wake) = (live.clone(), counters.clone(), wake.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer::run(live, db, rx, metrics, counters, wake, answers))
                .map_err(|e| StoreError::Thread(Arc::new(e)))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                live,
                tx,
                counters,
                wake,
                thread: Mutex::new(Some(thread)),
                opt_outs: std::sync::OnceLock::new(),
                daily: shared::DailyMirror::default(),
            }),
        })
    }

    /// Sets the longest a busy batch waits for company before its commit
    /// (`store.commit_wait_max_ms`): the latency a send may spend so that
    /// its commit is shared. At least the writer's 1 ms floor; takes effect
    /// from the next batch.
    pub fn set_commit_wait_max(&self, max: Duration) {
        self.inner
            .live
            .commit_wait_max_us
            .store(micros(max), Ordering::Relaxed);
    }

    /// The longest a busy batch waits for company (see
    /// [`Store::set_commit_wait_max`]).
    pub fn commit_wait_max(&self) -> Duration {
        Duration::from_micros(self.inner.live.commit_wait_max_us.load(Ordering::Relaxed))
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.live.path
    }

    /// Whether the store can commit: false from the moment a commit (or the
    /// start of a write transaction) failed on the database's storage until
    /// the writer has reopened it and a durable probe commit succeeded, and
    /// false once closed. While false, writes and reads are refused with
    /// [`StoreError::Unavailable`]. One atomic load.
    pub fn is_healthy(&self) -> bool {
        self.inner.live.healthy.load(Ordering::Acquire)
            && !self.inner.live.closed.load(Ordering::Acquire)
    }

    /// Queues `op` for the writer and waits until its writes are durable.
    ///
    /// `op` runs on the writer thread in its own transaction. Returning `Err`
    /// rolls back everything `op` wrote and is handed back here; the other ops
    /// of the batch are unaffected. `op` must be short and must not block on
    /// anything but redb: it holds up every write behind it.
    ///
    /// Once queued, the write happens even if this future is dropped.
    ///
    /// While the store is not healthy ([`Store::is_healthy`]) the op is not
    /// run and the answer is [`StoreError::Unavailable`], at once.
    ///
    /// The commit starts as soon as the writer is free: for ops somebody is
    /// waiting on (a client's send). See [`Store::write_within`] for the
    /// others.
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_within(Duration::ZERO, op).await
    }

    /// As [`Store::write`], but the op's commit may wait up to `wait` for
    /// other ops to share it (one fsync for all): for writes whose caller
    /// can spare a few milliseconds, such as a receipt (the carrier waits
    /// for its deliver_sm_resp) or an outbox removal. It rides along with
    /// the next commit that happens anyway, or commits when `wait` is up.
    /// Still durable before it is answered.
    pub async fn write_within<T, F>(&self, wait: Duration, op: F) -> Result<T, StoreError>
    where
        F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let rx = self.queue(wait, op).await?;
        // The sender is dropped unanswered only if the op (or the writer)
        // panicked; every queued op is otherwise answered, even on close.
        rx.await.unwrap_or(Err(StoreError::OpPanicked))
    }

    /// Queues `op` as [`Store::write_within`] does, and returns once it is
    /// queued, without waiting for its commit: for a write nobody waits on,
    /// whose loss in a crash is acceptable (an in-memory value it persists
    /// stays authoritative while the process runs). A graceful close still
    /// commits it (the writer commits what is queued). A failure to commit
    /// is the store's to report (it turns unhealthy), not this caller's.
    pub(crate) async fn write_detached<F>(&self, wait: Duration, op: F) -> Result<(), StoreError>
    where
        F: FnMut(&Tx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        self.queue(wait, op).await.map(drop)
    }

    async fn queue<T, F>(
        &self,
        wait: Duration,
        op: F,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        F: FnMut(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_healthy() {
            return Err(self.inner.live.refusal());
        }
        let (tx, rx) = oneshot::channel();
        let due = Instant::now() + wait;
        self.inner
            .tx
            .send(Msg::Op(
                Box::new(OpJob {
                    op,
                    tx,
                    result: None,
                }),
                due,
            ))
            .await
            .map_err(|_| StoreError::Closed)?;
        self.inner.wake.queued(due);
        Ok(rx)
    }

    /// Runs `f` on a consistent snapshot. Synchronous and fast; never waits
    /// for the writer.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let rtxn = db.begin_read()?;
        f(&rtxn)
    }

    /// Waits until every write queued before this call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        self.inner.wake.queued(Instant::now());
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Graceful shutdown: refuses new writes, commits everything queued,
    /// stops the writer thread and releases the file (so it may be reopened
    /// once every clone of this handle is dropped or closed). Idempotent.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(tx)).await.is_ok() {
            self.inner.wake.queued(Instant::now());
            // An error means the writer already ended: nothing left to wait for.
            let _ = rx.await;
        }
        self.inner.live.closed.store(true, Ordering::Release);
        self.inner.live.db.write().take();
        let handle = self.inner.thread.lock().take();
        if let Some(handle) = handle {
            // Joining is quick (the thread has answered everything) but
            // blocking, so keep it off the async worker.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        Ok(())
    }

    /// Commits and op counts since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            ops: self.inner.counters.ops.load(Ordering::Relaxed),
        }
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.inner.live.db.read().clone();
        db.ok_or_else(|| self.inner.live.refusal())
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |e| StoreError::StateDir {
        path: dir.to_path_buf(),
        source: Arc::new(e),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        // An existing directory made by an operator: say so, do not chmod it
        // behind their back (systemd's StateDirectory= makes it 0700).
        tracing::warn!(
            dir = %dir.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "state directory is accessible to group/others; 0700 is expected"
        );
    }
    Ok(())
}

/// Creates the file with 0600 before redb opens it, whatever the umask.
pub(crate) fn precreate_file(path: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::StateDir {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })
}

/// Whole microseconds of `d`, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Opens the database file, over the plain file backend or, for tests, the
/// fault-injecting one, and checks its schema.
pub(crate) fn open_db(path: &Path, faults: Option<&FaultSwitch>) -> Result<Database, StoreError> {
    let open_err = |e: redb::DatabaseError| StoreError::Open {
        path: path.to_path_buf(),
        source: Arc::new(e),
    };
    let db = match faults {
        None => Database::create(path).map_err(open_err)?,
        Some(switch) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| open_err(e.into()))?;
            let backend = redb::backends::FileBackend::new(file).map_err(open_err)?;
            Database::builder()
                .create_with_backend(fault::FaultBackend::new(backend, switch.clone()))
                .map_err(open_err)?
        }
    };
    check_schema(&db, path)?;
    Ok(db)
}

/// Writes the version into a new file, refuses a newer one, and creates the
/// store's own tables so readers find them.
fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(tables::SCHEMA_VERSION_TABLE)?;
        let found = t.get(tables::SCHEMA_VERSION_KEY)?.map(|v| v.value());
        match found {
            Some(v) if v > tables::SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found: v,
                    supported: tables::SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => {
                t.insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION)?;
            }
        }
        txn.open_table(tables::KV)?;
        txn.open_table(tables::DAILY_COUNTERS)?;
        txn.open_table(tables::OPT_OUTS)?;
        txn.open_table(tables::CARRIER_IDS)?;
    }
    txn.commit()?;
    Ok(())
}
