//! Outbound binds to one carrier (`[[carriers]]` entry).
//!
//! Owns: `binds` slots of the configured [`BindMode`], each a reconnect loop
//! (TCP, TLS, bind, run the session, back off with jitter); choosing the
//! least-loaded bound transmitting session for each submit; retrying a PDU
//! the carrier answered `ESME_RTHROTTLED` or `ESME_RMSGQFUL` (after a
//! jittered delay, when the pool's [`Pacer`] admits it again) instead of
//! failing it. The pacer (`max_tps`, and the adaptive rate after a throttle)
//! is one per pool: a carrier counts the account's submits, not a session's.
//!
//! Must not know: routing between carriers, campaigns, text encoding.
//!
//! Invariants: a refused bind (bad credentials) backs off slowly, up to five
//! minutes, and is logged once per failure series; the slot table is locked
//! only to clone a handle, never across an `.await`; every submit_sm,
//! first try or retry, waits for the pacer's admission, so one throttle
//! episode slows the whole pool once and nothing resumes in a herd.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rand::Rng;
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
use super::pacer::Pacer;
use super::pdu::{self, MessageIds, SubmitRequest, SubmitResponse};
use super::session::{self, BindKind, Role, SessionConfig, SessionDeps, SessionHandle};
use super::status::{is_slow_down, status_label};
use super::{backoff, SmppError};
use crate::config::{BindMode, Carrier};
use crate::metrics::Metrics;

/// Longest a PDU keeps being retried after throttle answers, or waits for
/// the pacer, before it fails with the throttle status (the relay may then
/// fail over: the carrier refused every try, so nothing can duplicate).
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// A throttled PDU waits a random time up to this before queueing at the
/// pacer again, so the answers of one burst do not re-queue in the order
/// (and at the instant) they were refused.
const RETRY_JITTER: Duration = Duration::from_millis(50);

/// A bound session that ends sooner than this counts as a failed connection
/// for the reconnect back-off.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// A stream a session can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Slot {
    kind: BindKind,
    current: RwLock<Option<SessionHandle>>,
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
    pacer: Pacer,
    tasks: TaskTracker,
    /// Slots that have tried their first bind (bound or failed), and its
    /// signal (see [`Pool::first_bind_attempts`]).
    attempted: AtomicUsize,
    attempted_signal: tokio::sync::Notify,
    /// For `submit_seconds{carrier}`.
    metrics: Arc<Metrics>,
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
        let inner = Arc::new(Inner {
            name: Arc::from(carrier.name.as_str()),
            slots: kinds
                .into_iter()
                .map(|kind| Slot {
                    kind,
                    current: RwLock::new(None),
                })
                .collect(),
            pacer: Pacer::new(carrier.max_tps),
            tasks: TaskTracker::new(),
            attempted: AtomicUsize::new(0),
            attempted_signal: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
        });
        let tls = if carrier.tls {
            let c = match carrier.cert_sha256 {
                Some(pin) => crate::tls::pinned_connector(pin),
                None => crate::tls::connector(carrier.ca_file.as_deref()),
            };
            Some(c.map_err(|e| e.to_string()))
        } else {
            None
        };
        let deps = SessionDeps {
            handler: inbound,
            metrics,
            shutdown,
            ids: Arc::new(MessageIds::new()),
            tasks: inner.tasks.clone(),
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

    /// The least-loaded bound session that can take a submit_sm.
    fn pick(&self) -> Option<SessionHandle> {
        let mut best: Option<SessionHandle> = None;
        for slot in &self.inner.slots {
            if !slot.kind.can_submit() {
                continue;
            }
            let Some(h) = slot.handle() else { continue };
            if best.as_ref().is_none_or(|b| h.load() < b.load()) {
                best = Some(h);
            }
        }
        best
    }

    /// Sends one submit_sm on the least-loaded bound session and returns the
    /// carrier's message id. Every try waits for the pool's pacer; a
    /// throttling answer slows the pacer and the PDU is tried again when it
    /// is admitted again, up to [`MAX_THROTTLE_WAIT`], after which it ends in
    /// [`SmppError::NotStarted`] (nothing accepted); other error statuses
    /// are returned as [`SmppError::Status`].
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
        self.submit_on(req, start_by, None, None).await
    }

    /// The segments of one message, written in order on one session
    /// (carriers that reassemble in arrival order need both): each
    /// segment's submit_sm is queued only after the previous one's, on the
    /// session the first one chose. The answers are awaited concurrently;
    /// a segment the carrier throttles is retried on any session (the
    /// order then cannot be kept, and the carrier has the others already).
    /// Returns one future per segment, to be polled together.
    pub fn submit_in_order(
        &self,
        reqs: Vec<SubmitRequest>,
        start_by: std::time::Instant,
    ) -> Vec<futures::future::BoxFuture<'_, Result<SubmitResponse, SmppError>>> {
        let chosen: Arc<parking_lot::Mutex<Option<SessionHandle>>> = Arc::default();
        let mut prev: Option<tokio::sync::oneshot::Receiver<()>> = None;
        reqs.into_iter()
            .map(|req| {
                let (queued, next) = tokio::sync::oneshot::channel::<()>();
                let after = prev.replace(next);
                let chosen = chosen.clone();
                Box::pin(async move {
                    if let Some(after) = after {
                        // The previous segment is queued (or gave up).
                        let _ = after.await;
                    }
                    self.submit_on(req, start_by, Some(&chosen), Some(queued))
                        .await
                }) as futures::future::BoxFuture<'_, _>
            })
            .collect()
    }

    /// One submit_sm, paced, retried while throttled; on `chosen`'s
    /// session when given (the first caller chooses it); `queued` is told
    /// once the PDU is queued on a session (or dropped when it never is).
    async fn submit_on(
        &self,
        req: SubmitRequest,
        start_by: std::time::Instant,
        chosen: Option<&parking_lot::Mutex<Option<SessionHandle>>>,
        mut queued: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<SubmitResponse, SmppError> {
        let pdu = pdu::submit_sm(req)?;
        let start_by = Instant::from_std(start_by);
        let deadline = start_by.min(Instant::now() + MAX_THROTTLE_WAIT);
        let pacer = &self.inner.pacer;
        loop {
            // Nothing bound: fail now rather than queue for a turn.
            if self.pick().is_none() {
                return Err(SmppError::NotBound);
            }
            let Some(ticket) = pacer.admit(deadline).await else {
                // No turn before the deadline: nothing was accepted, a
                // "not started" (the caller retries later).
                return Err(SmppError::NotStarted);
            };
            let handle = match chosen {
                Some(c) => {
                    let mut c = c.lock();
                    match c.as_ref().filter(|h| !h.is_closed()) {
                        Some(h) => h.clone(),
                        None => {
                            let h = self.pick().ok_or(SmppError::NotBound)?;
                            *c = Some(h.clone());
                            h
                        }
                    }
                }
                None => self.pick().ok_or(SmppError::NotBound)?,
            };
            let sent_at = Instant::now();
            let waiting = handle.enqueue(pdu.clone()).await?;
            if let Some(q) = queued.take() {
                let _ = q.send(());
            }
            let resp = waiting.answer().await?;
            self.inner
                .metrics
                .submit_latency
                .with_label_values(&[&self.inner.name])
                .observe(sent_at.elapsed().as_secs_f64());
            match resp.status() {
                CommandStatus::EsmeRok => {
                    pacer.accepted();
                    return Ok(SubmitResponse {
                        message_id: pdu::submit_resp_id(&resp),
                    });
                }
                s if is_slow_down(s) => {
                    if let Some(rate) = pacer.throttled(ticket) {
                        debug!(link = %self.inner.name, status = status_label(s), rate = rate.round(), "carrier asked to slow down; pool rate lowered (submit_sm/s)");
                    }
                    if Instant::now() >= deadline {
                        // Throttled until its time ran out: the carrier
                        // took nothing; a temporary refusal (503 and
                        // Retry-After), not the carrier's final word.
                        return Err(SmppError::NotStarted);
                    }
                    let jitter = rand::thread_rng().gen_range(Duration::ZERO..=RETRY_JITTER);
                    tokio::time::sleep(jitter).await;
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

/// A TLS failure in words an operator acts on: an untrusted certificate
/// (a self-signed SMSC, say) names the options that trust it.
fn explain_tls(carrier: &str, e: &std::io::Error) -> String {
    let unknown = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            )
        });
    let ca_leaf = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(crate::tls::is_ca_used_as_leaf);
    if ca_leaf {
        format!(
            "{e}: the carrier's certificate: {}; or, for a self-signed one, pin it with carriers[].cert_sha256 (name = {carrier:?})",
            crate::tls::CA_AS_LEAF_HINT
        )
    } else if unknown {
        format!("{e}: the carrier's certificate is not signed by a trusted CA; for a self-signed certificate pin it with carriers[].cert_sha256 (name = {carrier:?}; openssl x509 -noout -fingerprint -sha256), or name its CA in carriers[].ca_file")
    } else {
        e.to_string()
    }
}

async fn establish(
    carrier: &Carrier,
    kind: BindKind,
    tls: &Option<Result<TlsConnector, String>>,
    metrics: &Metrics,
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
                .map_err(|e| SmppError::Tls(explain_tls(&carrier.name, &e)))?;
            // The chain the carrier presented (verified just now): its
            // earliest notAfter, for the certificate-expiry alert.
            let expiry =
                s.get_ref().1.peer_certificates().and_then(|chain| {
                    crate::tls::earliest_not_after(chain.iter().map(|c| c.as_ref()))
                });
            if let Some(t) = expiry {
                metrics
                    .tls_cert_expiry
                    .with_label_values(&["carrier", &carrier.name])
                    .set(t);
            }
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

/// The settings of an outbound (ESME) session to `carrier`.
fn esme_session(link: &Arc<str>, carrier: &Carrier, kind: BindKind) -> SessionConfig {
    SessionConfig {
        link: link.clone(),
        receipt_link: None,
        kind,
        role: Role::Esme,
        window: carrier.window.max(1) as usize,
        response_timeout: carrier.response_timeout,
        enquire_link: Some(carrier.enquire_link),
        idle_timeout: None,
        id: 0,
    }
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
            r = establish(&carrier, slot.kind, &tls, &deps.metrics) => r,
            _ = shutdown.cancelled() => break,
        };
        let wait = match result {
            Ok(framed) => {
                attempt = 0;
                last_logged = None;
                let cfg = esme_session(&link, &carrier, slot.kind);
                let handle = session::spawn(framed, BIND_SEQ + 1, cfg, deps.clone());
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
