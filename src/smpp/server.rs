//! `[smpp_server]`: carriers (peers) bind to us here.
//!
//! Owns: the TLS listener (and the optional loopback plaintext one), the
//! connection limits (`max_connections` over both listeners,
//! `max_unbound_per_address`, `bind_timeout` from accept to bind), the TLS
//! handshake, bind authentication against `[[peers]]` — system_id, SHA-256 of
//! the password compared in constant time, source address in `allow`, the
//! client certificate's fingerprint (`cert_sha256`), `max_binds` — the
//! per-source throttle of failed binds, the table of bound peer sessions, and
//! sending deliver_sm to a bound receiver/transceiver
//! ([`ServerHandle::deliver`]).
//!
//! Must not know: what the relay does with a message (the
//! [`InboundHandler`] does), carriers we bind to.
//!
//! Invariants: nothing reaches the handler before a successful bind; every
//! failed bind is answered with the one status `ESME_RBINDFAIL` (so an
//! outsider cannot tell which system_ids exist), counted in
//! `smpp_bind_failures`, logged without the password and with an unknown
//! system_id only as a hash, and closed; a bind over the plaintext listener
//! is authenticated as strictly as over TLS (a peer that must present a
//! client certificate cannot bind there); the peer table's lock is never
//! held across an `.await`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusmpp::CommandStatus;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::bind::{answer_bind, await_bind, BindAttempt, NoBind};
use super::codec::SmppCodec;
use super::handler::{BindEvent, InboundHandler};
use super::pdu::{self, DeliverRequest, MessageIds};
use super::pool::Io;
use super::session::{self, BindKind, Role, SessionConfig, SessionDeps, SessionHandle};
use super::SmppError;
use crate::config::{Peer, SmppServer};
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// Who may bind.
pub(crate) enum Auth {
    /// `[[peers]]` entries.
    Peers(Vec<Peer>),
    /// Anyone (the simulator without credentials), under one link name.
    Any { link: String },
}

/// How to run a server (the config form is [`start_server`]).
pub(crate) struct ServerOptions {
    pub tls: Option<(SocketAddr, Arc<ServerTls>)>,
    pub plaintext: Option<SocketAddr>,
    pub window: usize,
    pub idle_timeout: Duration,
    pub response_timeout: Duration,
    /// Our system_id in bind responses.
    pub system_id: String,
    pub auth: Auth,
    pub limits: Limits,
    /// We send enquire_link on bound sessions this often.
    pub enquire_link: Option<Duration>,
    /// The TLS listener requires a client certificate (`tls.client_ca_file`):
    /// then no peer may bind over the plaintext listener, which has none.
    pub client_cert_required: bool,
}

/// Bounds on connections, whatever the peers do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Open connections on both listeners together.
    pub max_connections: usize,
    /// Connections from one source address that have not bound yet.
    pub max_unbound_per_address: usize,
    /// From accept to a successful bind, TLS handshake included.
    pub bind_timeout: Duration,
}

/// Failed binds a source address may make at once before it is throttled.
/// A carrier that mistyped a password retries a few times; a guesser makes
/// hundreds.
const BIND_FAILURE_BURST: f64 = 5.0;
/// Each failed bind allowance comes back after this long (5 a minute).
const BIND_FAILURE_REFILL: Duration = Duration::from_secs(12);
/// Source addresses whose failures are remembered; beyond it the entries
/// that have fully recovered go first, so the table cannot grow without
/// bound under a spread-out attack.
const MAX_TRACKED_SOURCES: usize = 4096;

/// A source address's failed-bind allowance (a token bucket).
struct FailBucket {
    tokens: f64,
    at: Instant,
    /// A throttled refusal was logged and audited since the bucket last
    /// had room: the next ones are only counted.
    announced: bool,
}

impl FailBucket {
    fn refill(&mut self, now: Instant) {
        let add = now.duration_since(self.at).as_secs_f64() / BIND_FAILURE_REFILL.as_secs_f64();
        self.tokens = (self.tokens + add).min(BIND_FAILURE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.announced = false;
        }
    }
}

/// A peer and its bound sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPeer {
    pub name: String,
    pub sessions: Vec<BindKind>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Binds per link, including ones being set up.
    counts: HashMap<String, u32>,
    sessions: HashMap<String, Vec<(u64, SessionHandle)>>,
}

struct Inner {
    opts: ServerOptions,
    /// `[[peers]]` as last reloaded; `None` = those of `opts.auth`. Read
    /// and cloned only, never held across an await.
    peers: parking_lot::RwLock<Option<Arc<Vec<Peer>>>>,
    deps: SessionDeps,
    table: Mutex<Table>,
    binds_ok: AtomicU64,
    binds_failed: AtomicU64,
    /// Open connections on both listeners.
    conns: AtomicUsize,
    /// Connections not bound yet, per source address (entries removed at 0).
    unbound: Mutex<HashMap<IpAddr, usize>>,
    /// Failed-bind allowances per source address.
    failures: Mutex<HashMap<IpAddr, FailBucket>>,
}

impl Inner {
    fn current_peers(&self) -> Option<Arc<Vec<Peer>>> {
        self.peers.read().clone()
    }

    fn table(&self) -> parking_lot::MutexGuard<'_, Table> {
        self.table.lock()
    }
}

/// The running server.
#[derive(Clone)]
pub struct ServerHandle {
    inner: Arc<Inner>,
    tls_addr: Option<SocketAddr>,
    plain_addr: Option<SocketAddr>,
    tasks: TaskTracker,
}

/// Starts `[smpp_server]`. `tls` is required when `listen` is set. Binding
/// port 0 reports the real port in [`ServerHandle::local_addr`].
pub async fn start_server(
    cfg: &SmppServer,
    tls: Option<Arc<ServerTls>>,
    peers: Vec<Peer>,
    handler: Arc<dyn InboundHandler>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<ServerHandle, SmppError> {
    let tls = match (cfg.listen, tls) {
        (Some(addr), Some(t)) => Some((addr, t)),
        (Some(_), None) => return Err(SmppError::Tls("smpp_server.listen needs [tls]".into())),
        (None, _) => None,
    };
    let client_cert_required = tls.as_ref().is_some_and(|(_, t)| t.requires_client_cert());
    let opts = ServerOptions {
        tls,
        plaintext: cfg.plaintext_listen,
        window: cfg.window.max(1) as usize,
        idle_timeout: cfg.idle_timeout,
        response_timeout: Duration::from_secs(10).min(cfg.idle_timeout),
        system_id: "sms-conduit".into(),
        auth: Auth::Peers(peers),
        limits: Limits {
            max_connections: cfg.max_connections.max(1),
            max_unbound_per_address: cfg.max_unbound_per_address.max(1),
            bind_timeout: cfg.bind_timeout,
        },
        enquire_link: Some(cfg.enquire_link),
        client_cert_required,
    };
    start(opts, handler, metrics, shutdown).await
}

pub(crate) async fn start(
    opts: ServerOptions,
    handler: Arc<dyn InboundHandler>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<ServerHandle, SmppError> {
    let tasks = TaskTracker::new();
    let tls_listener = match &opts.tls {
        Some((addr, t)) => Some((TcpListener::bind(addr).await?, t.clone())),
        None => None,
    };
    let plain_listener = match opts.plaintext {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let tls_addr = tls_listener
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let plain_addr = plain_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let inner = Arc::new(Inner {
        peers: parking_lot::RwLock::new(None),
        opts,
        deps: SessionDeps {
            handler,
            metrics,
            shutdown: shutdown.clone(),
            ids: Arc::new(MessageIds::new()),
        },
        table: Mutex::new(Table::default()),
        binds_ok: AtomicU64::new(0),
        binds_failed: AtomicU64::new(0),
        conns: AtomicUsize::new(0),
        unbound: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
    });
    if let Some((l, t)) = tls_listener {
        info!(addr = ?tls_addr, "SMPP server listening (TLS)");
        tasks.spawn(accept_loop(inner.clone(), l, Some(t), tasks.clone()));
    }
    if let Some(l) = plain_listener {
        info!(addr = ?plain_addr, "SMPP server listening (plaintext, loopback)");
        tasks.spawn(accept_loop(inner.clone(), l, None, tasks.clone()));
    }
    Ok(ServerHandle {
        inner,
        tls_addr,
        plain_addr,
        tasks,
    })
}

impl ServerHandle {
    /// The TLS listener's bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }
    /// The plaintext listener's bound address.
    pub fn plaintext_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }
    /// Applies reloaded `[[peers]]`: new binds are checked against them;
    /// sessions of peers that were removed or whose entry changed
    /// (password, allowed addresses, limits) are unbound, the others kept.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let old = match &self.inner.opts.auth {
            Auth::Peers(p) => self
                .inner
                .current_peers()
                .unwrap_or_else(|| Arc::new(p.clone())),
            Auth::Any { .. } => return,
        };
        let changed: Vec<String> = old
            .iter()
            .filter(|o| !peers.iter().any(|n| n == *o))
            .map(|o| o.name.clone())
            .collect();
        *self.inner.peers.write() = Some(Arc::new(peers));
        let t = self.inner.table();
        for name in &changed {
            for (_, h) in t.sessions.get(name).into_iter().flatten() {
                h.unbind();
            }
            if t.sessions.get(name).is_some_and(|s| !s.is_empty()) {
                info!(link = %name, "peer removed or changed by a reload: unbinding its sessions");
            }
        }
    }

    /// Peers with at least one bound session.
    pub fn bound_peers(&self) -> Vec<BoundPeer> {
        let t = self.inner.table();
        let mut v: Vec<BoundPeer> = t
            .sessions
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(name, s)| BoundPeer {
                name: name.clone(),
                sessions: s.iter().map(|(_, h)| h.kind()).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    /// Successful and failed binds since start.
    pub fn bind_counts(&self) -> (u64, u64) {
        (
            self.inner.binds_ok.load(Ordering::Relaxed),
            self.inner.binds_failed.load(Ordering::Relaxed),
        )
    }

    /// Sends a deliver_sm to `peer` on its least-loaded receiving session.
    /// `Ok` when the peer answered `ESME_ROK`.
    pub async fn deliver(&self, peer: &str, req: DeliverRequest) -> Result<(), SmppError> {
        let handle = {
            let t = self.inner.table();
            t.sessions.get(peer).and_then(|v| {
                v.iter()
                    .filter(|(_, h)| h.kind().can_receive() && !h.is_closed())
                    .min_by_key(|(_, h)| h.load())
                    .map(|(_, h)| h.clone())
            })
        };
        deliver_on(handle.ok_or(SmppError::NotBound)?, req).await
    }

    /// Sends a deliver_sm to `peer` on one of its receiving sessions other
    /// than session `not` ([`super::InboundMessage::session`]), taking them
    /// in turn by `turn`; on `not` itself only when it is the peer's one
    /// receiving session. What a carrier does that hands a receipt to any
    /// bind of the system_id (`sim-carrier --dlr-on-other-bind`). `Ok(true)`
    /// when the peer answered `ESME_ROK` on another session.
    pub async fn deliver_elsewhere(
        &self,
        peer: &str,
        not: u64,
        turn: usize,
        req: DeliverRequest,
    ) -> Result<bool, SmppError> {
        let (handle, other) = {
            let t = self.inner.table();
            let open: Vec<&(u64, SessionHandle)> = t
                .sessions
                .get(peer)
                .into_iter()
                .flatten()
                .filter(|(_, h)| h.kind().can_receive() && !h.is_closed())
                .collect();
            let others: Vec<&(u64, SessionHandle)> =
                open.iter().copied().filter(|(id, _)| *id != not).collect();
            match (others.is_empty(), open.first()) {
                (false, _) => (
                    others.get(turn % others.len()).map(|(_, h)| h.clone()),
                    true,
                ),
                (true, Some((_, h))) => (Some(h.clone()), false),
                (true, None) => (None, false),
            }
        };
        deliver_on(handle.ok_or(SmppError::NotBound)?, req).await?;
        Ok(other)
    }

    /// Waits until the listeners and every session have ended (after the
    /// shutdown token was cancelled).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await
    }
}

/// One deliver_sm on `handle`; `Ok` when answered `ESME_ROK`.
async fn deliver_on(handle: SessionHandle, req: DeliverRequest) -> Result<(), SmppError> {
    let resp = handle.request(pdu::deliver_sm(req)?).await?;
    match resp.status() {
        CommandStatus::EsmeRok => Ok(()),
        s => Err(SmppError::Status(s)),
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    tasks: TaskTracker,
) {
    let shutdown = inner.deps.shutdown.clone();
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "SMPP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(slot) = Slot::take(&inner, addr.ip().to_canonical()) else {
            // Closed at once: the refused connection costs one accept.
            drop(stream);
            continue;
        };
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tasks.spawn(serve(inner.clone(), stream, addr, acceptor, slot));
    }
}

/// One accepted connection's share of the limits, given back on drop.
struct Slot {
    inner: Arc<Inner>,
    ip: IpAddr,
    unbound: bool,
}

impl Slot {
    /// Counts a new connection from `ip`, or refuses it (counted in
    /// `smpp_connections_refused`) when a limit is reached.
    fn take(inner: &Arc<Inner>, ip: IpAddr) -> Option<Slot> {
        let limits = inner.opts.limits;
        let refused = |reason: &str| {
            inner
                .deps
                .metrics
                .smpp_connections_refused
                .with_label_values(&[reason])
                .inc();
            None
        };
        if inner.conns.load(Ordering::Relaxed) >= limits.max_connections {
            return refused("max_connections");
        }
        {
            let mut u = inner.unbound.lock();
            let n = u.entry(ip).or_insert(0);
            if *n >= limits.max_unbound_per_address {
                return refused("per_address");
            }
            *n += 1;
        }
        inner.conns.fetch_add(1, Ordering::Relaxed);
        inner.deps.metrics.smpp_server_connections.inc();
        Some(Slot {
            inner: inner.clone(),
            ip,
            unbound: true,
        })
    }

    fn release_unbound(&mut self) {
        if !std::mem::replace(&mut self.unbound, false) {
            return;
        }
        let mut u = self.inner.unbound.lock();
        if let Some(n) = u.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.ip);
            }
        }
    }

    /// The connection bound: it no longer counts against its address's
    /// unbound cap (`max_binds` bounds it now).
    fn bound(&mut self) {
        self.release_unbound();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_unbound();
        self.inner.conns.fetch_sub(1, Ordering::Relaxed);
        self.inner.deps.metrics.smpp_server_connections.dec();
    }
}

/// A short, stable stand-in for an attacker-chosen system_id in logs: the
/// first 12 hex digits of its SHA-256 (it may be a phone number).
fn sid_hash(system_id: &str) -> String {
    let d = Sha256::digest(system_id.as_bytes());
    hex::encode(&d[..6])
}

/// Whether `ip` may try a bind now (it has failed-bind allowance left).
/// `Err(first)`: throttled; `first` for the first throttled attempt since
/// it last had room (that one is logged and audited, the rest counted).
fn may_try(inner: &Inner, ip: IpAddr) -> Result<(), bool> {
    let mut f = inner.failures.lock();
    let Some(b) = f.get_mut(&ip) else {
        return Ok(());
    };
    b.refill(Instant::now());
    if b.tokens >= 1.0 {
        return Ok(());
    }
    Err(!std::mem::replace(&mut b.announced, true))
}

/// Takes one failed-bind allowance from `ip`.
fn charge_failure(inner: &Inner, ip: IpAddr) {
    let now = Instant::now();
    let mut f = inner.failures.lock();
    if f.len() >= MAX_TRACKED_SOURCES && !f.contains_key(&ip) {
        f.retain(|_, b| {
            b.refill(now);
            b.tokens < BIND_FAILURE_BURST
        });
        if f.len() >= MAX_TRACKED_SOURCES {
            if let Some(k) = f.keys().next().copied() {
                f.remove(&k);
            }
        }
    }
    let b = f.entry(ip).or_insert(FailBucket {
        tokens: BIND_FAILURE_BURST,
        at: now,
        announced: false,
    });
    b.refill(now);
    b.tokens = (b.tokens - 1.0).max(0.0);
}

fn fail(inner: &Inner, link: &str, reason: &'static str) {
    inner.binds_failed.fetch_add(1, Ordering::Relaxed);
    inner
        .deps
        .metrics
        .smpp_bind_failures
        .with_label_values(&[link, reason])
        .inc();
}

async fn serve(
    inner: Arc<Inner>,
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    mut slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + inner.opts.limits.bind_timeout;
    let (io, client_cert): (Box<dyn Io>, Option<[u8; 32]>) = match tls {
        None => (Box::new(stream), None),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                let cert = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Sha256::digest(c.as_ref()).into());
                (Box::new(s), cert)
            }
            Ok(Err(e)) => {
                fail(&inner, "unknown", "tls");
                warn!(ip = %addr.ip(), error = %e, "SMPP TLS handshake failed");
                return;
            }
            Err(_) => {
                fail(&inner, "unknown", "tls");
                return;
            }
        },
    };
    let mut framed = Framed::new(io, SmppCodec::new());
    let mut refused = 0u64;
    let shutdown = inner.deps.shutdown.clone();
    let within = deadline.saturating_duration_since(tokio::time::Instant::now());
    let attempt = tokio::select! {
        r = await_bind(&mut framed, within, &mut refused) => r,
        _ = shutdown.cancelled() => return,
    };
    if refused > 0 {
        inner
            .deps
            .metrics
            .smpp_pdus
            .with_label_values(&["unbound", "any", "in", "ESME_RINVBNDSTS"])
            .inc_by(refused);
    }
    let attempt = match attempt {
        Ok(a) => a,
        Err(NoBind::BadLength) => {
            fail(&inner, "unknown", "bad_length");
            return;
        }
        Err(NoBind::Gone) | Err(NoBind::Io(_)) => return,
    };
    let ip = addr.ip().to_canonical();
    let checked = match may_try(&inner, ip) {
        Ok(()) => authenticate(&inner, &attempt, ip, client_cert),
        Err(first) => Err(Refusal {
            reason: "throttled",
            link: None,
            announce: first,
        }),
    };
    let Bound { link, receipt_link } = match checked {
        Ok(b) => b,
        Err(r) => {
            let link = r.link.unwrap_or_else(|| "unknown".into());
            fail(&inner, &link, r.reason);
            if r.reason != "throttled" && r.reason != "max_binds" {
                charge_failure(&inner, ip);
            }
            if r.announce {
                // A known peer's name, else only a hash of what was sent:
                // an unknown system_id may be anything, a number included.
                let sid = if link == "unknown" {
                    sid_hash(&attempt.system_id)
                } else {
                    String::new()
                };
                warn!(link = %link, system_id_sha256 = %sid, ip = %ip, reason = r.reason, "SMPP bind refused");
                inner.deps.handler.bind_event(BindEvent::Failed {
                    link: link.clone(),
                    peer: ip.to_string(),
                    reason: r.reason,
                });
            }
            let status = if r.reason == "max_binds" {
                // Only a peer that passed authentication learns this.
                CommandStatus::EsmeRalybnd
            } else {
                CommandStatus::EsmeRbindfail
            };
            let _ = answer_bind(&mut framed, &attempt, status, &inner.opts.system_id).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), futures::SinkExt::close(&mut framed))
                    .await;
            return;
        }
    };
    let release = |inner: &Inner| {
        let mut t = inner.table();
        if let Some(c) = t.counts.get_mut(&link) {
            *c = c.saturating_sub(1);
        }
    };
    if answer_bind(
        &mut framed,
        &attempt,
        CommandStatus::EsmeRok,
        &inner.opts.system_id,
    )
    .await
    .is_err()
    {
        release(&inner);
        return;
    }
    slot.bound();
    inner.binds_ok.fetch_add(1, Ordering::Relaxed);
    info!(link = %link, kind = attempt.kind.label(), ip = %ip, "SMPP peer bound");
    inner.deps.handler.bind_event(BindEvent::Up {
        link: link.clone(),
        peer: ip.to_string(),
        direction: "inbound",
        mode: attempt.kind.label(),
    });
    let cfg = SessionConfig {
        link: Arc::from(link.as_str()),
        receipt_link: receipt_link.map(|c| Arc::from(c.as_str())),
        kind: attempt.kind,
        role: Role::Smsc,
        window: inner.opts.window,
        response_timeout: inner.opts.response_timeout,
        enquire_link: inner.opts.enquire_link,
        idle_timeout: Some(inner.opts.idle_timeout),
        id: {
            let mut t = inner.table();
            t.next_id += 1;
            t.next_id
        },
    };
    let id = cfg.id;
    let gauge = inner
        .deps
        .metrics
        .smpp_peer_sessions
        .with_label_values(&[&link]);
    gauge.inc();
    let handle = session::spawn(framed, 1, cfg, inner.deps.clone());
    inner
        .table()
        .sessions
        .entry(link.clone())
        .or_default()
        .push((id, handle.clone()));
    handle.closed().await;
    gauge.dec();
    inner.deps.handler.bind_event(BindEvent::Down {
        link: link.clone(),
        peer: ip.to_string(),
        reason: "closed",
    });
    {
        let mut t = inner.table();
        if let Some(v) = t.sessions.get_mut(&link) {
            v.retain(|(i, _)| *i != id);
        }
    }
    release(&inner);
    drop(slot);
}

/// A successful bind.
struct Bound {
    /// The peer's name.
    link: String,
    /// The carrier it speaks for (`peers[].carrier`).
    receipt_link: Option<String>,
}

/// A refused bind.
struct Refusal {
    /// For the metric, the log and the audit record.
    reason: &'static str,
    /// The peer, when the system_id named one.
    link: Option<String>,
    /// Log and audit this one (false for all but the first throttled).
    announce: bool,
}

/// Checks a bind. On success the bind is counted against `max_binds`.
/// `client_cert` is the SHA-256 of the certificate the peer presented on
/// TLS (`None` on the plaintext listener, or when none was asked for).
fn authenticate(
    inner: &Inner,
    attempt: &BindAttempt,
    ip: IpAddr,
    client_cert: Option<[u8; 32]>,
) -> Result<Bound, Refusal> {
    let refuse = |reason, link: Option<&String>| Refusal {
        reason,
        link: link.cloned(),
        announce: true,
    };
    let reloaded = inner.current_peers();
    let (link, receipt_link, max) = match &inner.opts.auth {
        Auth::Any { link } => (link.clone(), None, u32::MAX),
        Auth::Peers(configured) => {
            let peers = reloaded.as_deref().unwrap_or(configured);
            let Some(peer) = peers.iter().find(|p| p.system_id == attempt.system_id) else {
                return Err(refuse("unknown_system_id", None));
            };
            // The source address is checked before the password, so hosts
            // outside `allow` cannot probe passwords.
            if !peer.allow.iter().any(|net| net.contains(&ip)) {
                return Err(refuse("ip_not_allowed", Some(&peer.name)));
            }
            let digest = Sha256::digest(&attempt.password[..]);
            let ok: bool = digest.as_slice().ct_eq(&peer.password_sha256[..]).into();
            if !ok {
                return Err(refuse("bad_password", Some(&peer.name)));
            }
            // The same peer authentication on every listener: where TLS
            // asks for a client certificate, a bind without one (the
            // plaintext listener) is refused.
            let needs_cert = inner.opts.client_cert_required || peer.cert_sha256.is_some();
            match (client_cert, peer.cert_sha256) {
                (None, _) if needs_cert => {
                    return Err(refuse("no_client_cert", Some(&peer.name)));
                }
                (Some(got), Some(want)) if !bool::from(got.ct_eq(&want)) => {
                    return Err(refuse("cert_mismatch", Some(&peer.name)));
                }
                _ => {}
            }
            (peer.name.clone(), peer.carrier.clone(), peer.max_binds)
        }
    };
    let mut t = inner.table();
    let c = t.counts.entry(link.clone()).or_insert(0);
    if *c >= max {
        return Err(refuse("max_binds", Some(&link)));
    }
    *c += 1;
    Ok(Bound { link, receipt_link })
}
