//! Outbound binds to one carrier (`[[carriers]]` entry).
//!
//! Owns: `binds` slots of the configured [`BindMode`], each a reconnect loop
//! (TCP, TLS, bind, run the session, back off with jitter); choosing the
//! least-loaded bound transmitting session for each submit; `max_tps` pacing
//! for the whole pool; pausing a session that answered `ESME_RTHROTTLED` or
//! `ESME_RMSGQFUL` and retrying that PDU instead of failing it.
//!
//! Must not know: routing between carriers, campaigns, text encoding.
//!
//! Invariants: a refused bind (bad credentials) backs off slowly, up to five
//! minutes, and is logged once per failure series; the slot table is locked
//! only to clone a handle, never across an `.await`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;
use rusmpp::CommandStatus;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::bind::{bind_esme, BIND_SEQ};
use super::codec::SmppCodec;
use super::handler::{BindEvent, InboundHandler};
use super::pdu::{self, MessageIds, SubmitRequest, SubmitResponse};
use super::session::{self, BindKind, Role, SessionConfig, SessionDeps, SessionHandle};
use super::status::{is_slow_down, status_label};
use super::{backoff, SmppError};
use crate::config::{BindMode, Carrier};
use crate::metrics::Metrics;

/// Longest a throttled PDU keeps being retried before it fails.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// A bound session that ends sooner than this counts as a failed connection
/// for the reconnect back-off.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// A stream a session can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Slot {
    kind: BindKind,
    current: RwLock<Option<SessionHandle>>,
    /// Milliseconds since the pool's epoch before which the slot rests.
    paused_until: AtomicU64,
    throttle_streak: AtomicU32,
}

impl Slot {
    fn handle(&self) -> Option<SessionHandle> {
        let g = self.current.read();
        g.as_ref().filter(|h| !h.is_closed()).cloned()
    }
    fn set(&self, h: Option<SessionHandle>) {
        *self.current.write() = h;
    }
}

struct Inner {
    name: Arc<str>,
    slots: Vec<Slot>,
    limiter: Option<DefaultDirectRateLimiter>,
    epoch: Instant,
    tasks: TaskTracker,
    /// Slots that have tried their first bind (bound or failed), and its
    /// signal (see [`Pool::first_bind_attempts`]).
    attempted: AtomicUsize,
    attempted_signal: tokio::sync::Notify,
}

impl Inner {
    /// Counts a slot's first bind attempt (once per slot) and wakes
    /// [`Pool::first_bind_attempts`].
    fn first_attempt_done(&self, first: &mut bool) {
        if std::mem::take(first) {
            self.attempted.fetch_add(1, Ordering::Release);
            self.attempted_signal.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The sessions bound to one carrier.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Starts every slot's reconnect loop. Sessions stop (with unbind) when
    /// `shutdown` is cancelled; [`Pool::wait`] waits for that.
    pub fn start(
        carrier: Carrier,
        metrics: Arc<Metrics>,
        inbound: Arc<dyn InboundHandler>,
        shutdown: CancellationToken,
    ) -> Pool {
        let n = carrier.binds.max(1) as usize;
        let kinds: Vec<BindKind> = match carrier.bind {
            BindMode::Transceiver => vec![BindKind::Transceiver; n],
            BindMode::Transmitter => vec![BindKind::Transmitter; n],
            BindMode::Receiver => vec![BindKind::Receiver; n],
            BindMode::TransmitterReceiver => {
                let mut v = vec![BindKind::Transmitter; n];
                v.extend(vec![BindKind::Receiver; n]);
                v
            }
        };
        let limiter = std::num::NonZeroU32::new(carrier.max_tps).map(|tps| {
            // A burst of a tenth of a second keeps the carrier's per-second
            // counter from seeing the whole second's quota at once.
            let burst = std::num::NonZeroU32::new((tps.get() / 10).max(1)).unwrap_or(tps);
            RateLimiter::direct(Quota::per_second(tps).allow_burst(burst))
        });
        let inner = Arc::new(Inner {
            name: Arc::from(carrier.name.as_str()),
            slots: kinds
                .into_iter()
                .map(|kind| Slot {
                    kind,
                    current: RwLock::new(None),
                    paused_until: AtomicU64::new(0),
                    throttle_streak: AtomicU32::new(0),
                })
                .collect(),
            limiter,
            epoch: Instant::now(),
            tasks: TaskTracker::new(),
            attempted: AtomicUsize::new(0),
            attempted_signal: tokio::sync::Notify::new(),
        });
        let tls = if carrier.tls {
            Some(crate::tls::connector(carrier.ca_file.as_deref()).map_err(|e| e.to_string()))
        } else {
            None
        };
        let deps = SessionDeps {
            handler: inbound,
            metrics,
            shutdown,
            ids: Arc::new(MessageIds::new()),
        };
        let carrier = Arc::new(carrier);
        for idx in 0..inner.slots.len() {
            let (inner2, carrier, deps, tls) =
                (inner.clone(), carrier.clone(), deps.clone(), tls.clone());
            inner
                .tasks
                .spawn(async move { run_slot(inner2, idx, carrier, deps, tls).await });
        }
        inner.tasks.close();
        Pool { inner }
    }

    /// Resolves once every slot has tried its first bind, bound or failed
    /// (SPEC §2: `READY=1` after the binds were attempted).
    pub async fn first_bind_attempts(&self) {
        loop {
            let signal = self.inner.attempted_signal.notified();
            if self.inner.attempted.load(Ordering::Acquire) >= self.inner.slots.len() {
                return;
            }
            signal.await;
        }
    }

    /// The carrier name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Bound sessions of any kind (for `/readyz`).
    pub fn bound_sessions(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.handle().is_some())
            .count()
    }

    /// Bound sessions that can take a submit_sm (for routing).
    pub fn bound_transmitters(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.kind.can_submit() && s.handle().is_some())
            .count()
    }

    /// Waits until every slot task has ended (after shutdown).
    pub async fn wait(&self) {
        self.inner.tasks.wait().await
    }

    fn pick(&self) -> Result<(usize, SessionHandle), Option<u64>> {
        let now = self.inner.now_ms();
        let mut best: Option<(usize, SessionHandle)> = None;
        let mut earliest: Option<u64> = None;
        for (i, slot) in self.inner.slots.iter().enumerate() {
            if !slot.kind.can_submit() {
                continue;
            }
            let Some(h) = slot.handle() else { continue };
            let until = slot.paused_until.load(Ordering::Relaxed);
            if until > now {
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
                continue;
            }
            if best.as_ref().is_none_or(|(_, b)| h.load() < b.load()) {
                best = Some((i, h));
            }
        }
        best.ok_or(earliest)
    }

    /// Sends one submit_sm on the least-loaded bound session and returns the
    /// carrier's message id. Throttling answers pause that session and the
    /// PDU is retried; other error statuses are returned as
    /// [`SmppError::Status`].
    pub async fn submit(&self, req: SubmitRequest) -> Result<SubmitResponse, SmppError> {
        self.submit_by(req, std::time::Instant::now() + MAX_THROTTLE_WAIT)
            .await
    }

    /// [`Pool::submit`], but the submit_sm is never written after
    /// `start_by`: waiting for pacing or a throttled session past it ends
    /// in [`SmppError::NotStarted`] (nothing sent). Once written, the
    /// session's response timeout bounds the answer.
    pub async fn submit_by(
        &self,
        req: SubmitRequest,
        start_by: std::time::Instant,
    ) -> Result<SubmitResponse, SmppError> {
        let pdu = pdu::submit_sm(req)?;
        let start_by = Instant::from_std(start_by);
        let started = Instant::now();
        loop {
            if Instant::now() >= start_by {
                return Err(SmppError::NotStarted);
            }
            let (idx, handle) = match self.pick() {
                Ok(x) => x,
                Err(None) => return Err(SmppError::NotBound),
                Err(Some(until)) => {
                    if started.elapsed() > MAX_THROTTLE_WAIT {
                        return Err(SmppError::Status(CommandStatus::EsmeRthrottled));
                    }
                    let wait = until.saturating_sub(self.inner.now_ms()).max(1);
                    tokio::time::sleep_until(
                        (Instant::now() + Duration::from_millis(wait)).min(start_by),
                    )
                    .await;
                    continue;
                }
            };
            if let Some(l) = &self.inner.limiter {
                if tokio::time::timeout_at(start_by, l.until_ready())
                    .await
                    .is_err()
                {
                    return Err(SmppError::NotStarted);
                }
            }
            let resp = handle.request(pdu.clone()).await?;
            let slot = &self.inner.slots[idx];
            match resp.status() {
                CommandStatus::EsmeRok => {
                    slot.throttle_streak.store(0, Ordering::Relaxed);
                    return Ok(SubmitResponse {
                        message_id: pdu::submit_resp_id(&resp),
                    });
                }
                s if is_slow_down(s) => {
                    // One pause per episode: the other answers of the same
                    // burst arrive while paused and do not lengthen it; a
                    // throttle right after a pause (no success between)
                    // doubles the next one.
                    let now = self.inner.now_ms();
                    if slot.paused_until.load(Ordering::Relaxed) <= now {
                        let streak = slot.throttle_streak.fetch_add(1, Ordering::Relaxed);
                        let pause =
                            backoff(streak, Duration::from_millis(100), Duration::from_secs(2));
                        slot.paused_until
                            .fetch_max(now + pause.as_millis() as u64, Ordering::Relaxed);
                        debug!(link = %self.inner.name, status = status_label(s), ?pause, "carrier asked to slow down; pausing session");
                    }
                    if started.elapsed() > MAX_THROTTLE_WAIT {
                        return Err(SmppError::Status(s));
                    }
                }
                s => return Err(SmppError::Status(s)),
            }
        }
    }
}

fn failure_reason(e: &SmppError) -> &'static str {
    match e {
        SmppError::BindRefused(CommandStatus::EsmeRinvpaswd) => "bad_password",
        SmppError::BindRefused(CommandStatus::EsmeRinvsysid) => "bad_system_id",
        SmppError::BindRefused(_) => "refused",
        SmppError::PhaseTimeout(_) => "timeout",
        SmppError::Tls(_) => "tls",
        SmppError::InvalidField { .. } => "config",
        SmppError::Io(_) => "connect",
        _ => "protocol",
    }
}

async fn establish(
    carrier: &Carrier,
    kind: BindKind,
    tls: &Option<Result<TlsConnector, String>>,
) -> Result<Framed<Box<dyn Io>, SmppCodec>, SmppError> {
    let within = carrier.response_timeout.max(Duration::from_secs(2));
    let addr = (carrier.host.as_str(), carrier.port);
    let tcp = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| SmppError::PhaseTimeout("connect"))??;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(Err(e)) => return Err(SmppError::Tls(e.clone())),
        Some(Ok(connector)) => {
            let name = if carrier.server_name.is_empty() {
                carrier.host.clone()
            } else {
                carrier.server_name.clone()
            };
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|_| SmppError::Tls("server_name is not a valid DNS name or IP".into()))?;
            let s = tokio::time::timeout(within, connector.connect(name, tcp))
                .await
                .map_err(|_| SmppError::PhaseTimeout("TLS handshake"))?
                .map_err(|e| SmppError::Tls(e.to_string()))?;
            Box::new(s)
        }
    };
    let mut framed = Framed::new(io, SmppCodec::new());
    let password = carrier
        .password
        .trimmed_str()
        .ok_or(SmppError::InvalidField {
            field: "password",
            reason: "not UTF-8",
        })?;
    bind_esme(
        &mut framed,
        kind,
        &carrier.system_id,
        password,
        &carrier.system_type,
        within,
    )
    .await?;
    Ok(framed)
}

async fn run_slot(
    inner: Arc<Inner>,
    idx: usize,
    carrier: Arc<Carrier>,
    deps: SessionDeps,
    tls: Option<Result<TlsConnector, String>>,
) {
    let slot = &inner.slots[idx];
    let link = inner.name.clone();
    let shutdown = deps.shutdown.clone();
    let bound_gauge = deps
        .metrics
        .smpp_sessions
        .with_label_values(&[&link, "bound"]);
    let mut attempt: u32 = 0;
    // Sessions in a row that ended within `STABLE_SESSION` of their bind: a
    // carrier that takes the bind and then drops us must see the same
    // growing back-off as one that refuses it, not a reconnect (and a pair
    // of bind_up/bind_down audit records) every ~150 ms forever.
    let mut short_sessions: u32 = 0;
    let mut first_attempt = true;
    let mut last_logged: Option<&'static str> = None;
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = establish(&carrier, slot.kind, &tls) => r,
            _ = shutdown.cancelled() => break,
        };
        let wait = match result {
            Ok(framed) => {
                attempt = 0;
                last_logged = None;
                let cfg = SessionConfig {
                    link: link.clone(),
                    kind: slot.kind,
                    role: Role::Esme,
                    window: carrier.window.max(1) as usize,
                    response_timeout: carrier.response_timeout,
                    enquire_link: Some(carrier.enquire_link),
                    idle_timeout: None,
                };
                let handle = session::spawn(framed, BIND_SEQ + 1, cfg, deps.clone());
                slot.throttle_streak.store(0, Ordering::Relaxed);
                slot.paused_until.store(0, Ordering::Relaxed);
                slot.set(Some(handle.clone()));
                bound_gauge.inc();
                // Counted once the session is in its slot, so a waiter sees
                // the carrier bound.
                inner.first_attempt_done(&mut first_attempt);
                info!(link = %link, kind = slot.kind.label(), "SMPP bound");
                let peer = format!("{}:{}", carrier.host, carrier.port);
                deps.handler.bind_event(BindEvent::Up {
                    link: link.to_string(),
                    peer: peer.clone(),
                    direction: "outbound",
                    mode: slot.kind.label(),
                });
                let bound_at = std::time::Instant::now();
                handle.closed().await;
                if bound_at.elapsed() < STABLE_SESSION {
                    short_sessions = short_sessions.saturating_add(1);
                } else {
                    short_sessions = 0;
                }
                slot.set(None);
                bound_gauge.dec();
                let reason = if shutdown.is_cancelled() {
                    "shutdown"
                } else {
                    "closed"
                };
                deps.handler.bind_event(BindEvent::Down {
                    link: link.to_string(),
                    peer,
                    reason,
                });
                if short_sessions <= 1 {
                    // A session that had lasted: reconnect at once (jittered).
                    backoff(0, Duration::from_millis(200), Duration::from_secs(1))
                } else {
                    backoff(
                        short_sessions - 1,
                        Duration::from_millis(200),
                        Duration::from_secs(30),
                    )
                }
            }
            Err(e) => {
                let reason = failure_reason(&e);
                deps.metrics
                    .smpp_bind_failures
                    .with_label_values(&[&link, reason])
                    .inc();
                inner.first_attempt_done(&mut first_attempt);
                let slow = matches!(
                    e,
                    SmppError::BindRefused(_) | SmppError::InvalidField { .. } | SmppError::Tls(_)
                );
                let wait = if slow {
                    backoff(attempt, Duration::from_secs(1), Duration::from_secs(300))
                } else {
                    backoff(attempt, Duration::from_millis(200), Duration::from_secs(30))
                };
                if last_logged != Some(reason) {
                    warn!(link = %link, kind = slot.kind.label(), reason, error = %e, retry_in = ?wait, "SMPP bind failed; retrying with back-off (logged once per series)");
                    // Audited like it is logged: once per series of failures.
                    deps.handler.bind_event(BindEvent::Failed {
                        link: link.to_string(),
                        peer: format!("{}:{}", carrier.host, carrier.port),
                        reason,
                    });
                    last_logged = Some(reason);
                } else {
                    debug!(link = %link, reason, error = %e, retry_in = ?wait, "SMPP bind failed again");
                }
                attempt = attempt.saturating_add(1);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}
