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
//!
//! Code map: this file holds the listener, the peer table and `serve` (one
//! connection from accept to unbind); [`guard`] the per-address slots and
//! failed-bind throttle; [`refuse`] the handshake, authentication and the
//! one way a bind is refused.

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
use crate::live::Part;
use crate::metrics::Metrics;
use crate::tls::ServerTls;

mod guard;
mod refuse;

use guard::*;
use refuse::*;

/// Who may bind.
pub(crate) enum Auth {
    /// `[[peers]]` entries: the server's part of the live configuration.
    Peers(Part<Vec<Peer>>),
    /// Anyone (the simulator without credentials), under one link name.
    /// Built only by `tools::sim`, so unused without the `tools` feature.
    #[cfg_attr(not(feature = "tools"), allow(dead_code))]
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
    let peers = Part::own(Arc::new(peers));
    start_server_in(cfg, tls, peers, handler, metrics, shutdown).await
}

/// As [`start_server`], the peers read from `peers` (the app: its part of
/// the live snapshot).
pub async fn start_server_in(
    cfg: &SmppServer,
    tls: Option<Arc<ServerTls>>,
    peers: Part<Vec<Peer>>,
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
        opts,
        deps: SessionDeps {
            handler,
            metrics,
            shutdown: shutdown.clone(),
            ids: Arc::new(MessageIds::new()),
            tasks: tasks.clone(),
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
    /// Applies reloaded `[[peers]]` to a server started with
    /// [`start_server`]: new binds are checked against them; sessions of
    /// peers that were removed or whose entry changed (password, allowed
    /// addresses, limits) are unbound, the others kept.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let Auth::Peers(part) = &self.inner.opts.auth else {
            return;
        };
        let old = part.load();
        part.set(Arc::new(peers));
        self.unbind_changed(&old, &part.load());
    }

    /// After the peers changed from `old` to `new` (in the app: with the
    /// live snapshot), unbinds the sessions of peers that were removed or
    /// whose entry changed.
    pub fn unbind_changed(&self, old: &[Peer], new: &[Peer]) {
        let changed: Vec<String> = old
            .iter()
            .filter(|o| !new.iter().any(|n| n == *o))
            .map(|o| o.name.clone())
            .collect();
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
    let Some((io, client_cert)) = handshake(&inner, stream, addr, tls, deadline).await else {
        return;
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
        Err(r) => return refuse_bind(&inner, framed, &attempt, ip, r).await,
    };
    let release = |inner: &Inner| {
        let mut t = inner.table();
        if let Some(c) = t.counts.get_mut(&link) {
            *c = c.saturating_sub(1);
        }
    };
    let ok = CommandStatus::EsmeRok;
    if answer_bind(&mut framed, &attempt, ok, &inner.opts.system_id)
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
