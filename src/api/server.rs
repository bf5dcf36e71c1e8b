//! The HTTPS listener: from an accepted TCP socket to a served HTTP
//! connection. Shared by the client API and the metrics listener.
//!
//! Owns, per connection (one task each, tracked by a `TaskTracker`):
//! * the connection limit — a semaphore permit is taken at accept; when none
//!   is left the new socket is closed at once, so overload cannot queue;
//! * the TLS handshake, with a timeout, using the acceptor current *at accept
//!   time* ([`ServerTls::acceptor`]), so a SIGHUP reload applies to new
//!   connections while old ones keep their certificate;
//! * HTTP/2 when ALPN chose `h2`, HTTP/1.1 otherwise (hyper-util `auto`);
//! * the header read timeout (HTTP/1.1) and an idle timeout for keep-alive
//!   connections (both versions): no request in flight for `idle_timeout`
//!   closes the connection gracefully;
//! * graceful shutdown: when the token fires the accept loop stops and every
//!   connection gets `graceful_shutdown()` — in-flight requests finish, idle
//!   connections close.
//!
//! A plaintext HTTP request to a TLS port fails the handshake and the socket
//! is closed: no HTTP answer is ever written outside TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{routes, ApiState};
use crate::config;
use crate::tls::ServerTls;
use std::net::IpAddr;

/// How long a connection that is shutting down may take to finish its
/// in-flight requests before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// At shutdown, how long an HTTP/1 keep-alive connection still reads
/// requests before it is closed: a request the client wrote just as the
/// drain began is answered (with `Connection: close`) instead of meeting a
/// closed socket, which leaves a POST's outcome unknown to the client
/// (issue 16 item 8). A few round trips on any network; short enough not
/// to lengthen a drain that has nothing to do.
const SHUTDOWN_READ_GRACE: Duration = Duration::from_millis(250);
/// How often the failed-authentication limiter is pruned.
const AUTH_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// Per-listener connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64 counts as
    /// one) at most, so one host cannot take every slot.
    pub max_per_address: usize,
}

/// Connections from one address that may be in their TLS handshake at
/// once. A client opens a handful in parallel; an attacker holding bare
/// sockets open (issue 20 item 3: 700 idle sockets refused a legitimate
/// client 91 % of the time) gets no more than this many slots, for no
/// longer than the handshake timeout.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;

impl ConnLimits {
    /// The limits of `[api]`.
    pub fn from_api(api: &config::Api) -> Self {
        ConnLimits {
            handshake_timeout: api.handshake_timeout,
            header_timeout: api.header_timeout,
            idle_timeout: api.idle_timeout,
            max_connections: api.max_connections,
            max_per_address: api.max_connections_per_address,
        }
    }

    /// Limits for the metrics listener (a few scrapers).
    pub fn metrics() -> Self {
        ConnLimits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 32,
            max_per_address: 32,
        }
    }
}

/// Serves the client API on `listener` over TLS until `shutdown` fires.
/// Connection tasks are spawned on `tracker`; after this returns, close and
/// wait on the tracker to let in-flight requests finish.
pub async fn serve_api(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    state: ApiState,
    limits: ConnLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let auth = state.auth.clone();
    let token = shutdown.clone();
    tracker.spawn(async move {
        let mut every = tokio::time::interval(AUTH_HOUSEKEEPING);
        every.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = every.tick() => auth.housekeeping(),
            }
        }
    });
    let handlers = Handlers {
        router: routes::router(state.clone()),
        send: Some(state),
    };
    accept_loop(
        listener,
        Some(tls),
        handlers,
        limits,
        shutdown,
        tracker,
        "api",
    )
    .await;
}

/// What a listener serves: `router`, except `POST /v1/messages`, which
/// [`routes::send_direct`] serves when `send` is given (the client API).
pub(crate) struct Handlers {
    pub router: Router,
    pub send: Option<ApiState>,
}

impl From<Router> for Handlers {
    fn from(router: Router) -> Self {
        Handlers { router, send: None }
    }
}

/// Accepts connections until `shutdown` fires; TLS when `tls` is given.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    handlers: Handlers,
    limits: ConnLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    name: &'static str,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = name, %addr, tls = tls.is_some(), "listening");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The per-address caps first: a refused connection from a busy
        // address never takes a global slot.
        let Some(mine) = per_address.admit(peer.ip(), limits.max_per_address) else {
            tracing::debug!(listener = name, %peer, "per-address connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(listener = name, %peer, "connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let conn = Conn {
            peer,
            router: handlers.router.clone(),
            send: handlers.send.clone(),
            limits,
            shutdown: shutdown.clone(),
        };
        let tls = tls.clone();
        tracker.spawn(async move {
            conn.run(tcp, tls, mine).await;
            drop(permit);
        });
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// Connections per client address: open, and of those still in their
/// TLS handshake. IPv6 addresses count per /64 (one host usually has a
/// whole /64).
#[derive(Default)]
struct PerAddress {
    map: parking_lot::Mutex<std::collections::HashMap<IpAddr, (usize, usize)>>,
}

/// A connection's place in [`PerAddress`]; given back when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
    handshaking: bool,
}

fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl PerAddress {
    /// A slot for a new connection from `ip`, or `None` over a cap.
    fn admit(self: &Arc<Self>, ip: IpAddr, max_open: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.map.lock();
        let (open, handshaking) = map.entry(key).or_insert((0, 0));
        if *open >= max_open || *handshaking >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *open += 1;
        *handshaking += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
            handshaking: true,
        })
    }
}

impl AddressSlot {
    fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            if let Some((_, h)) = self.table.map.lock().get_mut(&self.key) {
                *h = h.saturating_sub(1);
            }
        }
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.table.map.lock();
        if let Some((open, h)) = map.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if self.handshaking {
                *h = h.saturating_sub(1);
            }
            if *open == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    router: Router,
    send: Option<ApiState>,
    limits: ConnLimits,
    shutdown: CancellationToken,
}

impl Conn {
    async fn run(self, tcp: TcpStream, tls: Option<Arc<ServerTls>>, mut mine: AddressSlot) {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            mine.handshake_done();
            return self.serve(tcp, None, None).await;
        };
        // The acceptor current now: a reload affects only later connections.
        let acceptor = tls.acceptor();
        let handshake = tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp));
        let stream = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        mine.handshake_done();
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        // The client certificate's fingerprint, for keys that require one.
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(crate::tls::cert_sha256);
        self.serve(stream, Some(h2), cert).await
    }

    /// Serves HTTP on an established stream. `alpn_h2`: `Some` on TLS (the
    /// ALPN decision), `None` on plaintext (protocol sniffed). `cert`: the
    /// SHA-256 of the client's TLS certificate, if it presented one.
    async fn serve<S>(self, io: S, alpn_h2: Option<bool>, cert: Option<[u8; 32]>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let svc_activity = activity.clone();
        let peer = self.peer;
        let router = self.router;
        let send = self.send;
        let svc_shutdown = self.shutdown.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let guard = svc_activity.begin();
            let draining = svc_shutdown.clone();
            let direct = send.as_ref().filter(|_| routes::is_send(&req)).cloned();
            if direct.is_none() {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(routes::PeerCert(cert));
            }
            let router = router.clone();
            async move {
                let mut resp = match direct {
                    Some(state) => Ok(routes::send_direct(state, peer.ip(), cert, req).await),
                    None => router.oneshot(req).await,
                };
                if draining.is_cancelled() {
                    // HTTP/1: the client learns the connection ends here,
                    // and sends its next request elsewhere. (HTTP/2 has
                    // GOAWAY and ignores the header.)
                    if let Ok(r) = resp.as_mut() {
                        r.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                }
                drop(guard);
                resp
            }
        });

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .max_header_list_size(32 * 1024)
            .keep_alive_interval(Some(self.limits.idle_timeout))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = match alpn_h2 {
            Some(true) => builder.http2_only(),
            Some(false) => builder.http1_only(),
            None => builder,
        };
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);

        let check =
            (self.limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closing = loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                    break false;
                }
                _ = self.shutdown.cancelled() => {
                    // A request already on its way is read and answered;
                    // the connection ends with the grace or with it.
                    if alpn_h2 != Some(true)
                        && tokio::time::timeout(SHUTDOWN_READ_GRACE, conn.as_mut())
                            .await
                            .is_ok()
                    {
                        break false;
                    }
                    break true;
                }
                _ = tick.tick() => {
                    if activity.idle_for() >= self.limits.idle_timeout {
                        tracing::debug!(peer = %peer, "idle connection closed");
                        break true;
                    }
                }
            }
        };
        if closing {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(CLOSE_GRACE, conn.as_mut())
                .await
                .is_err()
            {
                tracing::debug!(peer = %peer, "connection did not finish in time; dropped");
            }
        }
    }
}

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` when a request last began or ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActivityGuard(self.clone())
    }

    /// Zero while a request is in flight, else time since the last one.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
