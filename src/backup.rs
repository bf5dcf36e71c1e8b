//! Backup and restore of a node's store (README "Backup and recovery").
//!
//! Owns: the list of tables a backup copies, taking a backup from one
//! consistent read snapshot into a new redb file, checking a backup (every
//! table known, schema not newer than this build, audit chain intact),
//! writing it atomically, restoring one into an empty state directory, and
//! the admin route through which a running appliance hands a backup to the
//! CLI.
//!
//! Why this shape: redb holds an exclusive lock on the live file, so no
//! second process can open it while the appliance runs, and copying its
//! bytes during a commit can tear. A redb read transaction is a consistent
//! MVCC snapshot that does not hold up the writer, so the backup is made
//! from one, table by table, by the process that holds the file: the
//! appliance itself while it runs (`GET /admin/backup` on the metrics
//! listener, see [`admin_router`]), the CLI when it does not.
//!
//! Must not know: message bodies (the store has none), config files (the
//! caller passes paths and the admin token).
//!
//! Invariants:
//! - a backup file exists under its final name only once it is complete,
//!   fsynced and verified: it is written to a temporary file in the target
//!   directory, checked, fsynced, renamed, and the directory fsynced;
//! - a table in the source that this module does not know fails the backup
//!   (it is never silently left out), so a new table must be added to
//!   [`copy_all`];
//! - restore writes only into an empty (or missing) state directory, and
//!   only a backup that verifies.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hmac::{Hmac, Mac};
use redb::{
    Database, MultimapTableHandle, ReadTransaction, ReadableTable, TableDefinition, TableHandle,
};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::audit::{VerifyError, VerifyReport};
use crate::store::{tables, Store, StoreError, DB_FILE};
use crate::types::Secret;

/// The admin route on the metrics listener that answers a backup.
pub const ADMIN_BACKUP_PATH: &str = "/admin/backup";

/// Content type of a backup file (a redb database).
const BACKUP_CONTENT_TYPE: &str = "application/octet-stream";

/// Bytes per read when streaming a backup to the CLI: large enough that a
/// multi-GB store streams in few syscalls, small enough to keep memory flat.
const STREAM_CHUNK: usize = 256 * 1024;

/// The pre-chunk audit table (see `audit::chain`), copied as it is when a
/// store still has it.
const LEGACY_AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Why a backup or restore failed. Never carries a stored value.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// redb refused to open a file (not a database, damaged, or locked).
    #[error("{path}: cannot open as a database: {what}")]
    Open { path: PathBuf, what: String },
    /// The live database is open in another process (the appliance runs):
    /// ask it for the backup instead.
    #[error("{0} is open in a running appliance")]
    Running(PathBuf),
    /// Reading the source or writing the copy failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source has a table this build does not know how to copy.
    #[error("table {0:?} is not known to this build's backup; refusing an incomplete copy")]
    UnknownTable(String),
    /// The file has no schema version: not an sms-conduit store.
    #[error("not an sms-conduit store (no schema version)")]
    NoSchema,
    /// The backup was written by a newer build.
    #[error("schema version {found} is newer than this build's {supported}")]
    SchemaTooNew { found: u32, supported: u32 },
    /// The backup's audit chain does not verify: it was altered or damaged.
    #[error("the backup's audit chain does not verify: {0}")]
    Chain(#[from] VerifyError),
    /// Restore refuses a state directory that already holds something.
    #[error("state dir {0} is not empty; restore only into an empty or missing directory")]
    NotEmpty(PathBuf),
    /// The running appliance did not hand over a backup.
    #[error("asking the running appliance for a backup: {0}")]
    Remote(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a verified backup holds.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// Entries per table, by table name.
    pub tables: Vec<(String, u64)>,
    /// The backup's audit chain.
    pub audit: VerifyReport,
}

/// Copies one table from the snapshot into the backup; a table the source
/// does not have is skipped. Returns the entries copied.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let Some(from) = tables::open_read(src, def)? else {
        return Ok(0);
    };
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for entry in from.iter()? {
        let (k, v) = entry?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

/// Entries of one table of the snapshot (0 when it does not exist).
fn count_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    _dst: &(),
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    use redb::ReadableTableMetadata;
    match tables::open_read(src, def)? {
        Some(t) => Ok(t.len()?),
        None => Ok(0),
    }
}

/// Applies `$f(src, dst, def)` to every table of the store, collecting
/// `(name, result)`. Every table of the store is listed here: a new one
/// must be added, or backups fail with [`BackupError::UnknownTable`].
macro_rules! each_table {
    ($f:ident, $src:expr, $dst:expr) => {{
        let mut done: Vec<(String, u64)> = Vec::new();
        macro_rules! one {
            ($def:expr) => {
                done.push(($def.name().to_string(), $f($src, $dst, $def)?));
            };
        }
        one!(tables::SCHEMA_VERSION_TABLE);
        one!(tables::KV);
        one!(tables::DAILY_COUNTERS);
        one!(tables::OPT_OUTS);
        one!(tables::CARRIER_IDS);
        one!(crate::store::shared::CONSENTS);
        one!(crate::relay::record::MESSAGES);
        one!(crate::relay::record::IDEMPOTENCY);
        one!(crate::webhook::outbox::OUTBOX);
        one!(crate::audit::AUDIT);
        one!(LEGACY_AUDIT);
        only_known(&$src, &done)?;
        done
    }};
}

/// Copies every table of `src` into `dst`; fails on a table it does not
/// know.
fn copy_all(
    src: &ReadTransaction,
    dst: &redb::WriteTransaction,
) -> Result<Vec<(String, u64)>, BackupError> {
    Ok(each_table!(copy_table, src, dst))
}

/// Fails when `src` has a table not in `known`.
fn only_known(src: &ReadTransaction, known: &[(String, u64)]) -> Result<(), BackupError> {
    for t in src.list_tables().map_err(StoreError::from)? {
        if !known.iter().any(|(name, _)| name == t.name()) {
            return Err(BackupError::UnknownTable(t.name().to_string()));
        }
    }
    if let Some(t) = src.list_multimap_tables().map_err(StoreError::from)?.next() {
        return Err(BackupError::UnknownTable(t.name().to_string()));
    }
    Ok(())
}

/// Writes the snapshot `src` as a new database into `file` (empty).
fn snapshot_into(src: &ReadTransaction, file: File, path: &Path) -> Result<(), BackupError> {
    let open = |e: redb::DatabaseError| BackupError::Open {
        path: path.to_path_buf(),
        what: e.to_string(),
    };
    let db = Database::builder().create_file(file).map_err(open)?;
    let txn = db.begin_write().map_err(StoreError::from)?;
    copy_all(src, &txn)?;
    txn.commit().map_err(StoreError::from)?;
    Ok(())
}

/// Checks a backup on an open database: schema, known tables, audit chain.
fn check(db: &Database) -> Result<BackupReport, BackupError> {
    let rtxn = db.begin_read().map_err(StoreError::from)?;
    let version = match tables::open_read(&rtxn, tables::SCHEMA_VERSION_TABLE)? {
        Some(t) => t
            .get(tables::SCHEMA_VERSION_KEY)
            .map_err(StoreError::from)?
            .map(|v| v.value()),
        None => None,
    };
    match version {
        None => return Err(BackupError::NoSchema),
        Some(v) if v > tables::SCHEMA_VERSION => {
            return Err(BackupError::SchemaTooNew {
                found: v,
                supported: tables::SCHEMA_VERSION,
            })
        }
        Some(_) => {}
    }
    let audit = crate::audit::verify_txn(&rtxn)?;
    let tables = each_table!(count_table, &rtxn, &());
    Ok(BackupReport { tables, audit })
}

/// Opens and checks a backup file (see [`check`]); never writes to it.
pub fn verify_backup(path: &Path) -> Result<BackupReport, BackupError> {
    // Open a private copy: redb may write to a file it opens (recovery),
    // and a backup must stay as it was made.
    let dir = tempfile::Builder::new()
        .prefix(".backup-check-")
        .tempdir_in(parent_of(path))
        .map_err(io(path))?;
    let copy = dir.path().join(DB_FILE);
    std::fs::copy(path, &copy).map_err(io(path))?;
    let db = Database::open(&copy).map_err(|e| BackupError::Open {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    check(&db)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file being written next to its final name; removed unless persisted.
struct Pending {
    file: tempfile::NamedTempFile,
    out: PathBuf,
}

impl Pending {
    fn new(out: &Path) -> Result<Self, BackupError> {
        let file = tempfile::Builder::new()
            .prefix(".sms-conduit-backup-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(parent_of(out))
            .map_err(io(out))?;
        Ok(Pending {
            file,
            out: out.to_path_buf(),
        })
    }

    /// Verifies the written file, fsyncs it, renames it to its final name
    /// and fsyncs the directory.
    fn finish(self) -> Result<BackupReport, BackupError> {
        let path = self.file.path().to_path_buf();
        self.file.as_file().sync_all().map_err(io(&path))?;
        let report = verify_backup(&path)?;
        self.file.persist(&self.out).map_err(|e| BackupError::Io {
            path: self.out.clone(),
            source: e.error,
        })?;
        sync_dir(&parent_of(&self.out))?;
        Ok(report)
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Backs up the store in `state_dir` when no appliance has it open.
/// [`BackupError::Running`] when one does (ask it with [`fetch_backup`]).
pub fn backup_offline(state_dir: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    let live = state_dir.join(DB_FILE);
    if !live.is_file() {
        return Err(BackupError::Io {
            path: live,
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let db = match Database::open(&live) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(BackupError::Running(live)),
        Err(e) => {
            return Err(BackupError::Open {
                path: live,
                what: e.to_string(),
            })
        }
    };
    let pending = Pending::new(out)?;
    let file = pending.file.reopen().map_err(io(out))?;
    let rtxn = db.begin_read().map_err(StoreError::from)?;
    snapshot_into(&rtxn, file, out)?;
    drop(rtxn);
    drop(db);
    pending.finish()
}

/// The bearer token of the admin route: HMAC-SHA256 of a fixed label under
/// the node's pseudonym key, hex. Whoever can read that key (and so the
/// state dir's pseudonyms) may take a backup; nobody else on the host can.
pub fn admin_token(pseudonym_key: &Secret) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pseudonym_key.expose())
        .expect("HMAC takes a key of any length");
    mac.update(b"sms-conduit admin backup v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Asks the running appliance (its metrics listener at `base`, e.g.
/// `http://127.0.0.1:9464`) for a backup, writes it to `out` atomically
/// and verifies it. `ca_file` is trusted when the listener uses TLS.
pub async fn fetch_backup(
    base: &str,
    token: &str,
    ca_file: Option<&Path>,
    out: &Path,
) -> Result<BackupReport, BackupError> {
    let remote = |e: &dyn std::fmt::Display| BackupError::Remote(e.to_string());
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(io(ca))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| remote(&e))?;
        // The listener's certificate names the service, not the loopback
        // address the CLI dials; the certificate itself is still checked.
        builder = builder
            .add_root_certificate(cert)
            .danger_accept_invalid_hostnames(true);
    }
    let client = builder.build().map_err(|e| remote(&e))?;
    let mut resp = client
        .get(format!("{base}{ADMIN_BACKUP_PATH}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| remote(&e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(BackupError::Remote(format!("{status}: {}", text.trim())));
    }
    let mut pending = Pending::new(out)?;
    while let Some(chunk) = resp.chunk().await.map_err(|e| remote(&e))? {
        pending.file.write_all(&chunk).map_err(io(out))?;
    }
    pending.file.flush().map_err(io(out))?;
    tokio::task::spawn_blocking(move || pending.finish())
        .await
        .map_err(|e| remote(&e))?
}

/// Restores the backup `from` into `state_dir`, which must be empty or
/// missing. The backup is verified first; the database file is written
/// under a temporary name, fsynced and renamed.
pub fn restore(from: &Path, state_dir: &Path) -> Result<BackupReport, BackupError> {
    match std::fs::read_dir(state_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(state_dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io(state_dir))?;
        }
        Err(e) => return Err(io(state_dir)(e)),
    }
    let report = verify_backup(from)?;
    let target = state_dir.join(DB_FILE);
    let tmp = state_dir.join(format!(".{DB_FILE}.restore"));
    {
        let mut src = File::open(from).map_err(io(from))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        std::io::copy(&mut src, &mut dst).map_err(io(&tmp))?;
        dst.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    sync_dir(state_dir)?;
    Ok(report)
}

/// What the admin route needs.
#[derive(Clone)]
struct Admin {
    store: Store,
    token: Arc<String>,
    /// Where the snapshot is written before it is streamed (the state dir:
    /// same protection as the live file).
    dir: PathBuf,
}

/// `GET /admin/backup` (`Authorization: Bearer <admin token>`): a verified
/// backup of this node's store, streamed. For the metrics listener, which
/// is loopback-only unless it uses TLS.
pub fn admin_router(store: Store, token: String, dir: PathBuf) -> Router {
    Router::new()
        .route(ADMIN_BACKUP_PATH, get(admin_backup))
        .with_state(Admin {
            store,
            token: Arc::new(token),
            dir,
        })
}

async fn admin_backup(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(admin.token.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    let made = tokio::task::spawn_blocking(move || -> Result<File, BackupError> {
        // An unnamed file in the state dir: nothing to clean up if the
        // stream is cut, and never visible to another process.
        let file = tempfile::tempfile_in(&admin.dir).map_err(io(&admin.dir))?;
        let copy = file.try_clone().map_err(io(&admin.dir))?;
        admin
            .store
            .read(|rtxn| Ok(snapshot_into(rtxn, copy, &admin.dir)))??;
        let mut file = file;
        file.seek(SeekFrom::Start(0)).map_err(io(&admin.dir))?;
        Ok(file)
    })
    .await;
    let file = match made {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::error!("admin backup failed: {e}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backup failed: {e}\n"),
            )
                .into_response();
        }
        Err(e) => {
            tracing::error!("admin backup task failed: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "backup failed\n").into_response();
        }
    };
    tracing::info!("backup handed to the CLI");
    let stream = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; STREAM_CHUNK];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((buf, file))
        })
        .await
        .map_err(std::io::Error::other);
        match read {
            Ok(Ok((buf, _))) if buf.is_empty() => None,
            Ok(Ok((buf, file))) => Some((Ok(bytes::Bytes::from(buf)), Some(file))),
            Ok(Err(e)) | Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(BACKUP_CONTENT_TYPE),
    );
    resp
}
