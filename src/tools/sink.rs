//! A webhook receiver for tests and the `demo` command: the client
//! application's end of SPEC §4.
//!
//! Owns an HTTPS listener on `127.0.0.1:0` (the API's accept loop, so the
//! same TLS, HTTP/1.1 + h2 and shutdown behaviour), a secret to verify
//! `Conduit-Signature` with, and the events it accepted, in memory and in
//! arrival order. It can be told to fail (503) or to hang before failing,
//! to play a client that is down or slow.
//!
//! Invariants: an event is recorded only when its signature verifies and
//! the sink answers 2xx; a bad signature is answered 401 and counted; nothing
//! here logs a request body (MO events carry texts).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Router;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::server::{accept_loop, ConnLimits};
use crate::config;
use crate::tls::{self, ClientAuth, ServerTls, TlsError};
use crate::types::Secret;
use crate::webhook::sign::{verify, DEFAULT_TOLERANCE, HEADER};

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Verify, record, answer 200.
    Ok,
    /// Answer 503 without recording.
    Fail,
    /// Wait this long (or until the sink stops), then answer 503 without
    /// recording: a client that does not answer in time.
    Hang(Duration),
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("webhook sink TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("webhook sink: {0}")]
    Io(#[from] std::io::Error),
}

struct SinkState {
    secret: Secret,
    mode: Mutex<Mode>,
    events: Mutex<Vec<serde_json::Value>>,
    received: watch::Sender<usize>,
    attempts: AtomicU64,
    bad_signatures: AtomicU64,
    keep_events: bool,
    shutdown: CancellationToken,
}

/// A running sink. Stops when [`Sink::stop`] is called or it is dropped.
pub struct Sink {
    addr: SocketAddr,
    ca_file: Option<PathBuf>,
    state: Arc<SinkState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Starts a sink with a new self-signed certificate for `127.0.0.1` and
    /// `localhost`, written to `dir/sink.crt` (the CA file a webhook needs)
    /// and `dir/sink.key` (mode 0600).
    pub async fn start_self_signed(dir: &Path, secret: Secret) -> Result<Sink, SinkError> {
        let ss = tls::self_signed(&["127.0.0.1", "localhost"])?;
        let cert_file = dir.join("sink.crt");
        let key_file = dir.join("sink.key");
        std::fs::write(&cert_file, &ss.cert_pem)?;
        let mut key = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&key_file)?;
        std::io::Write::write_all(&mut key, ss.key_pem.as_bytes())?;
        let tls_cfg = config::Tls {
            cert_file: cert_file.clone(),
            key_file,
            client_ca_file: None,
        };
        let tls = ServerTls::load(&tls_cfg, &[b"h2", b"http/1.1"], ClientAuth::None)?;
        let mut sink = Self::start(tls, secret).await?;
        sink.ca_file = Some(cert_file);
        Ok(sink)
    }

    /// Starts a sink serving with `tls`, verifying with `secret`.
    pub async fn start(tls: Arc<ServerTls>, secret: Secret) -> Result<Sink, SinkError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, tls, secret, true)
    }

    /// Starts a sink on `listener`. With `keep_events` false it only counts
    /// what it accepted ([`Sink::events`] stays empty): a load generator
    /// receiving tens of thousands of events keeps no copies.
    pub fn start_on(
        listener: TcpListener,
        tls: Arc<ServerTls>,
        secret: Secret,
        keep_events: bool,
    ) -> Result<Sink, SinkError> {
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (received, _) = watch::channel(0usize);
        let state = Arc::new(SinkState {
            secret,
            mode: Mutex::new(Mode::Ok),
            events: Mutex::new(Vec::new()),
            received,
            attempts: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            keep_events,
            shutdown: shutdown.clone(),
        });
        let router = Router::new().fallback(receive).with_state(state.clone());
        tracker.spawn(accept_loop(
            listener,
            Some(tls),
            router.into(),
            ConnLimits::metrics(),
            shutdown.clone(),
            tracker.clone(),
            "webhook-sink",
        ));
        Ok(Sink {
            addr,
            ca_file: None,
            state,
            shutdown,
            tracker,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>/events`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/events", self.addr.port())
    }

    /// The certificate to trust, when the sink made its own.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A `[[clients]]` webhook pointing here with the sink's secret.
    pub fn webhook(&self, concurrency: u32) -> config::Webhook {
        config::Webhook {
            url: self.url(),
            secret: self.state.secret.clone(),
            secret_next: None,
            ca_file: self.ca_file.clone(),
            concurrency,
        }
    }

    /// Changes how later requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    /// Accepted events (parsed JSON), in arrival order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.state.events.lock().clone()
    }

    /// Number of accepted events.
    pub fn count(&self) -> usize {
        *self.state.received.borrow()
    }

    /// Requests received, whatever the answer.
    pub fn attempts(&self) -> u64 {
        self.state.attempts.load(Ordering::Relaxed)
    }

    /// Requests refused for a missing or wrong signature.
    pub fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` events were accepted; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.state.received.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stops accepting, ends hanging requests and waits for connections.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(
    State(st): State<Arc<SinkState>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    st.attempts.fetch_add(1, Ordering::Relaxed);
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|h| verify(st.secret.expose(), h, &body, now, DEFAULT_TOLERANCE));
    if !matches!(signed, Some(Ok(()))) {
        st.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let mode = *st.mode.lock();
    match mode {
        Mode::Fail => return StatusCode::SERVICE_UNAVAILABLE,
        Mode::Hang(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = st.shutdown.cancelled() => {}
            }
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        Mode::Ok => {}
    }
    if st.keep_events {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return StatusCode::BAD_REQUEST;
        };
        st.events.lock().push(event);
    }
    st.received.send_modify(|c| *c += 1);
    StatusCode::OK
}
