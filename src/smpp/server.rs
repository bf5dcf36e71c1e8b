//! `[smpp_server]`: carriers (peers) bind to us here.
//!
//! Owns: the TLS listener (and the optional loopback plaintext one), the TLS
//! handshake, bind authentication against `[[peers]]` — system_id, SHA-256 of
//! the password compared in constant time, source address in `allow`,
//! `max_binds` — the table of bound peer sessions, and sending deliver_sm
//! to a bound receiver/transceiver ([`ServerHandle::deliver`]).
//!
//! Must not know: what the relay does with a message (the
//! [`InboundHandler`] does), carriers we bind to.
//!
//! Invariants: nothing reaches the handler before a successful bind; failed
//! binds are answered with a status, counted in `smpp_bind_failures`, logged
//! without the password, and closed; the peer table's lock is never held
//! across an `.await`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    let opts = ServerOptions {
        tls,
        plaintext: cfg.plaintext_listen,
        window: cfg.window.max(1) as usize,
        idle_timeout: cfg.idle_timeout,
        response_timeout: Duration::from_secs(10).min(cfg.idle_timeout),
        system_id: "sms-conduit".into(),
        auth: Auth::Peers(peers),
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
        let handle = handle.ok_or(SmppError::NotBound)?;
        let resp = handle.request(pdu::deliver_sm(req)?).await?;
        match resp.status() {
            CommandStatus::EsmeRok => Ok(()),
            s => Err(SmppError::Status(s)),
        }
    }

    /// Waits until the listeners and every session have ended (after the
    /// shutdown token was cancelled).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await
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
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tasks.spawn(serve(inner.clone(), stream, addr, acceptor));
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

async fn serve(inner: Arc<Inner>, stream: TcpStream, addr: SocketAddr, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    fail(&inner, "unknown", "tls");
                    warn!(ip = %addr.ip(), error = %e, "SMPP TLS handshake failed");
                    return;
                }
                Err(_) => {
                    fail(&inner, "unknown", "tls");
                    return;
                }
            }
        }
    };
    let mut framed = Framed::new(io, SmppCodec::new());
    let mut refused = 0u64;
    let shutdown = inner.deps.shutdown.clone();
    let attempt = tokio::select! {
        r = await_bind(&mut framed, inner.opts.idle_timeout, &mut refused) => r,
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
    let link = match authenticate(&inner, &attempt, ip) {
        Ok(link) => link,
        Err((status, reason, link)) => {
            let link = link.unwrap_or_else(|| "unknown".into());
            fail(&inner, &link, reason);
            warn!(link = %link, system_id = ?attempt.system_id, ip = %ip, reason, "SMPP bind refused");
            inner.deps.handler.bind_event(BindEvent::Failed {
                link: link.clone(),
                peer: ip.to_string(),
                reason,
            });
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
        kind: attempt.kind,
        role: Role::Smsc,
        window: inner.opts.window,
        response_timeout: inner.opts.response_timeout,
        enquire_link: None,
        idle_timeout: Some(inner.opts.idle_timeout),
    };
    let gauge = inner
        .deps
        .metrics
        .smpp_sessions
        .with_label_values(&[&link, "bound"]);
    gauge.inc();
    let handle = session::spawn(framed, 1, cfg, inner.deps.clone());
    let id = {
        let mut t = inner.table();
        t.next_id += 1;
        let id = t.next_id;
        t.sessions
            .entry(link.clone())
            .or_default()
            .push((id, handle.clone()));
        id
    };
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
}

/// Checks a bind. On success the bind is counted against `max_binds`.
fn authenticate(
    inner: &Inner,
    attempt: &BindAttempt,
    ip: IpAddr,
) -> Result<String, (CommandStatus, &'static str, Option<String>)> {
    let reloaded = inner.current_peers();
    let (link, max) = match &inner.opts.auth {
        Auth::Any { link } => (link.clone(), u32::MAX),
        Auth::Peers(configured) => {
            let peers = reloaded.as_deref().unwrap_or(configured);
            let Some(peer) = peers.iter().find(|p| p.system_id == attempt.system_id) else {
                return Err((CommandStatus::EsmeRinvsysid, "unknown_system_id", None));
            };
            // The source address is checked before the password, so hosts
            // outside `allow` cannot probe passwords.
            if !peer.allow.iter().any(|net| net.contains(&ip)) {
                return Err((
                    CommandStatus::EsmeRbindfail,
                    "ip_not_allowed",
                    Some(peer.name.clone()),
                ));
            }
            let digest = Sha256::digest(&attempt.password[..]);
            let ok: bool = digest.as_slice().ct_eq(&peer.password_sha256[..]).into();
            if !ok {
                return Err((
                    CommandStatus::EsmeRinvpaswd,
                    "bad_password",
                    Some(peer.name.clone()),
                ));
            }
            (peer.name.clone(), peer.max_binds)
        }
    };
    let mut t = inner.table();
    let c = t.counts.entry(link.clone()).or_insert(0);
    if *c >= max {
        return Err((CommandStatus::EsmeRalybnd, "max_binds", Some(link)));
    }
    *c += 1;
    Ok(link)
}
