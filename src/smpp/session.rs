//! The session engine: one task owns one bound SMPP connection.
//!
//! Owns: sequence numbers, the window of outstanding requests and their
//! response timeouts, enquire_link (sending ours, answering theirs), the idle
//! timeout, generic_nack for garbage, answering the peer's message PDUs via
//! the [`InboundHandler`], batching writes (`feed` everything queued, `flush`
//! once; a small batch first waits one scheduler turn for more), and unbind
//! on shutdown.
//!
//! Other code talks to the session only through a [`SessionHandle`]: a
//! bounded `mpsc` of requests, each answered on a `oneshot`.
//!
//! Must not know: how the connection was made or authenticated (see
//! [`super::bind`]), carriers, peers, routing.
//!
//! Invariants: at most `window` requests outstanding; every caller gets
//! exactly one answer (response, `Timeout`, or, when the session dies — all
//! at once — `LostInFlight` for those taken into the window and
//! `SessionLost` for those still queued); the socket is touched only by
//! this task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use prometheus::IntCounter;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{Frame, SmppCodec};
use super::handler::{InboundHandler, InboundKind};
use super::pdu::{self, MessageIds};
use super::status::{command_label, status_label};
use super::SmppError;
use crate::metrics::Metrics;

/// A batch of fewer PDUs than this waits one scheduler turn for company
/// before it is written (see the end of [`Engine::run`]'s loop).
const COALESCE_BELOW: usize = 8;

/// How a session is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    /// The ESME may send submit_sm.
    pub fn can_submit(self) -> bool {
        !matches!(self, BindKind::Receiver)
    }
    /// The SMSC may send deliver_sm.
    pub fn can_receive(self) -> bool {
        !matches!(self, BindKind::Transmitter)
    }
    /// For logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
            BindKind::Transceiver => "transceiver",
        }
    }
}

/// Which end of the bind this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We bound to a carrier (outbound pool).
    Esme,
    /// A peer bound to us (server, simulator).
    Smsc,
}

/// Per-session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Carrier or peer name from config (metric label, log field).
    pub link: Arc<str>,
    /// The name receipts on this session are handed to the handler under
    /// (a peer speaking for a carrier: `peers[].carrier`); `None` = `link`.
    pub receipt_link: Option<Arc<str>>,
    pub kind: BindKind,
    pub role: Role,
    /// Outstanding requests we may have in flight.
    pub window: usize,
    pub response_timeout: Duration,
    /// Send enquire_link this often; `None` = only answer the peer's.
    pub enquire_link: Option<Duration>,
    /// Close when nothing arrives from the peer for this long.
    pub idle_timeout: Option<Duration>,
    /// The server's id of this session, handed to the handler with each
    /// message ([`super::InboundMessage::session`]); 0 for a session we opened.
    pub id: u64,
}

/// What a session needs besides its socket.
#[derive(Clone)]
pub struct SessionDeps {
    pub handler: Arc<dyn InboundHandler>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Ids for submit_sm/data_sm we accept (SMSC role).
    pub ids: Arc<MessageIds>,
    /// Where the session's task is tracked: the pool's or the server's
    /// tracker, which their `wait` (the drain's sessions phase) waits for.
    pub tasks: tokio_util::task::TaskTracker,
}

struct Outgoing {
    pdu: Pdu,
    reply: oneshot::Sender<Result<Command, SmppError>>,
}

/// A cheap, cloneable way to use a session.
#[derive(Clone)]
pub struct SessionHandle {
    tx: mpsc::Sender<Outgoing>,
    load: Arc<AtomicUsize>,
    done: CancellationToken,
    stop: CancellationToken,
    kind: BindKind,
}

/// One request counted in its session's load until dropped.
struct QueuedLoad(Arc<AtomicUsize>);
impl Drop for QueuedLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request queued on a session ([`SessionHandle::enqueue`]).
pub struct Queued {
    rx: oneshot::Receiver<Result<Command, SmppError>>,
    _load: QueuedLoad,
}

impl Queued {
    /// The response (any status). A session that ends answers every
    /// request it took (`finish`); a reply dropped unanswered means the
    /// task died with it, perhaps after writing it: unknown, not retryable.
    pub async fn answer(self) -> Result<Command, SmppError> {
        self.rx.await.unwrap_or(Err(SmppError::LostInFlight))
    }
}

impl SessionHandle {
    /// Sends a request and waits for its response (any status). Fails with
    /// `Timeout` or `SessionLost`.
    pub async fn request(&self, pdu: Pdu) -> Result<Command, SmppError> {
        self.enqueue(pdu).await?.answer().await
    }

    /// Queues a request on this session (requests are written in the order
    /// they are queued) and returns a handle to its answer.
    pub async fn enqueue(&self, pdu: Pdu) -> Result<Queued, SmppError> {
        self.load.fetch_add(1, Ordering::Relaxed);
        let load = QueuedLoad(self.load.clone());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Outgoing { pdu, reply })
            .await
            .map_err(|_| SmppError::SessionLost)?;
        Ok(Queued { rx, _load: load })
    }
    /// Requests queued or outstanding through this handle's session.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
    pub fn kind(&self) -> BindKind {
        self.kind
    }
    pub fn is_closed(&self) -> bool {
        self.done.is_cancelled()
    }
    /// Resolves when the session task has ended.
    pub async fn closed(&self) {
        self.done.cancelled().await
    }
    /// Asks for a clean unbind: outstanding requests finish first.
    pub fn unbind(&self) {
        self.stop.cancel()
    }
}

/// Why a session ended (for logs).
#[derive(Debug)]
enum End {
    PeerClosed,
    PeerUnbound,
    Unbound,
    KeepAliveTimeout,
    Idle,
    BadLength,
    Io(std::io::Error),
}

enum Waiter {
    Caller(oneshot::Sender<Result<Command, SmppError>>),
    KeepAlive,
    Unbind,
}

/// Starts the engine on a bound connection. `next_seq` follows the bind's.
pub fn spawn<S>(
    framed: Framed<S, SmppCodec>,
    next_seq: u32,
    cfg: SessionConfig,
    deps: SessionDeps,
) -> SessionHandle
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(cfg.window.max(1));
    let done = CancellationToken::new();
    let stop = CancellationToken::new();
    let handle = SessionHandle {
        tx,
        load: Arc::new(AtomicUsize::new(0)),
        done: done.clone(),
        stop: stop.clone(),
        kind: cfg.kind,
    };
    let window_gauge = deps.metrics.smpp_window.with_label_values(&[&cfg.link]);
    let engine = Engine {
        framed,
        seq: next_seq.max(1),
        pending: HashMap::with_capacity(cfg.window),
        deadlines: VecDeque::with_capacity(cfg.window),
        outq: Vec::with_capacity(64),
        handlers: FuturesUnordered::new(),
        keepalive_outstanding: false,
        callers: 0,
        counters: HashMap::new(),
        end: None,
        window_gauge,
        cfg,
        deps,
    };
    let tasks = engine.deps.tasks.clone();
    tasks.spawn(async move {
        engine.run(rx, stop).await;
        done.cancel();
    });
    handle
}

struct Engine<S> {
    framed: Framed<S, SmppCodec>,
    cfg: SessionConfig,
    deps: SessionDeps,
    seq: u32,
    pending: HashMap<u32, Waiter>,
    /// Deadlines in send order; the timeout is constant, so they are sorted.
    deadlines: VecDeque<(Instant, u32)>,
    outq: Vec<Command>,
    handlers: FuturesUnordered<BoxFuture<'static, Command>>,
    keepalive_outstanding: bool,
    /// Caller requests outstanding (the window in use).
    callers: usize,
    counters: HashMap<(u32, bool, u32), IntCounter>,
    end: Option<End>,
    window_gauge: prometheus::IntGauge,
}

impl<S> Engine<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let idle_for = self.cfg.idle_timeout;
        let idle = sleep_until(idle_for.map_or(far, |d| Instant::now() + d));
        let timer = sleep_until(far);
        tokio::pin!(idle, timer);
        let period = self.cfg.enquire_link.unwrap_or(Duration::from_secs(86_400));
        let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        let mut unbind_sent = false;
        let mut closing_deadline = far;
        let shutdown = self.deps.shutdown.clone();

        while self.end.is_none() {
            if let Some(&(d, _)) = self.deadlines.front() {
                if timer.deadline() != d {
                    timer.as_mut().reset(d);
                }
            }
            let can_take = !closing && self.callers < self.cfg.window;
            let can_read = self.handlers.len() < self.cfg.window.max(1);
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !closing => {
                    closing = true;
                    closing_deadline = Instant::now() + self.cfg.response_timeout * 2;
                }
                _ = shutdown.cancelled(), if !closing => {
                    closing = true;
                    closing_deadline = Instant::now() + self.cfg.response_timeout * 2;
                }
                frame = self.framed.next(), if can_read => {
                    self.on_read(frame);
                    if let Some(d) = idle_for {
                        idle.as_mut().reset(Instant::now() + d);
                    }
                    for _ in 0..128 {
                        if self.end.is_some() || self.handlers.len() >= self.cfg.window.max(1) {
                            break;
                        }
                        match self.framed.next().now_or_never() {
                            Some(frame) => self.on_read(frame),
                            None => break,
                        }
                    }
                }
                out = rx.recv(), if can_take => match out {
                    Some(out) => {
                        self.send_request(out);
                        self.gather(&mut rx, true);
                    }
                    None => {
                        closing = true;
                        closing_deadline = Instant::now() + self.cfg.response_timeout * 2;
                    }
                },
                Some(resp) = self.handlers.next(), if !self.handlers.is_empty() => {
                    self.outq.push(resp);
                    self.gather(&mut rx, !closing);
                }
                _ = &mut timer, if !self.deadlines.is_empty() => self.expire(),
                _ = keepalive.tick(), if self.cfg.enquire_link.is_some() && !closing => {
                    if !self.keepalive_outstanding {
                        self.keepalive_outstanding = true;
                        self.queue_request(Pdu::EnquireLink, Waiter::KeepAlive);
                    }
                }
                _ = &mut idle, if idle_for.is_some() => {
                    info!(link = %self.cfg.link, "SMPP session idle; unbinding");
                    let seq = self.next_seq();
                    self.outq.push(Command::new(CommandStatus::EsmeRok, seq, Pdu::Unbind));
                    self.end = Some(End::Idle);
                }
                _ = sleep_until(closing_deadline), if closing => {
                    self.end = Some(End::Unbound);
                }
            }
            if closing && !unbind_sent && self.pending.is_empty() && self.handlers.is_empty() {
                unbind_sent = true;
                self.queue_request(Pdu::Unbind, Waiter::Unbind);
            }
            if !self.outq.is_empty() {
                if !closing && self.end.is_none() && self.outq.len() < COALESCE_BELOW {
                    // A small batch: let the runtime run the request and
                    // receipt tasks that are ready once, so what they queue
                    // goes out in this write instead of a write each (on
                    // loopback a write costs more than the PDUs in it).
                    self.gather(&mut rx, true);
                    if self.outq.len() < COALESCE_BELOW {
                        tokio::task::yield_now().await;
                        self.gather(&mut rx, true);
                    }
                }
                if let Err(e) = self.write_out().await {
                    self.end.get_or_insert(End::Io(e));
                }
            }
        }
        self.finish(rx).await;
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = if self.seq >= 0x7FFF_FFFF {
            1
        } else {
            self.seq + 1
        };
        s
    }

    fn queue_request(&mut self, pdu: Pdu, waiter: Waiter) {
        let seq = self.next_seq();
        if matches!(waiter, Waiter::Caller(_)) {
            self.callers += 1;
            self.window_gauge.inc();
        }
        self.pending.insert(seq, waiter);
        self.deadlines
            .push_back((Instant::now() + self.cfg.response_timeout, seq));
        self.outq
            .push(Command::new(CommandStatus::EsmeRok, seq, pdu));
    }

    /// Takes, without waiting, what is ready to go out: answers of finished
    /// inbound handlers and, with `requests` (not while closing), callers'
    /// requests the window has room for.
    fn gather(&mut self, rx: &mut mpsc::Receiver<Outgoing>, requests: bool) {
        while let Some(Some(resp)) = self.handlers.next().now_or_never() {
            self.outq.push(resp);
        }
        while requests && self.callers < self.cfg.window {
            match rx.try_recv() {
                Ok(out) => self.send_request(out),
                Err(_) => break,
            }
        }
    }

    fn send_request(&mut self, out: Outgoing) {
        if out.reply.is_closed() {
            return; // the caller gave up before we sent it
        }
        self.queue_request(out.pdu, Waiter::Caller(out.reply));
    }

    fn take_pending(&mut self, seq: u32) -> Option<Waiter> {
        let w = self.pending.remove(&seq)?;
        if matches!(w, Waiter::Caller(_)) {
            self.callers -= 1;
            self.window_gauge.dec();
        }
        Some(w)
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(d, seq)) = self.deadlines.front() {
            if d > now {
                break;
            }
            self.deadlines.pop_front();
            match self.take_pending(seq) {
                Some(Waiter::Caller(tx)) => {
                    let _ = tx.send(Err(SmppError::Timeout));
                }
                Some(Waiter::KeepAlive) => {
                    warn!(link = %self.cfg.link, "enquire_link unanswered; dropping session");
                    self.end = Some(End::KeepAliveTimeout);
                    return;
                }
                Some(Waiter::Unbind) => {
                    self.end = Some(End::Unbound);
                    return;
                }
                None => {}
            }
        }
    }

    fn count(&mut self, id: CommandId, out: bool, status: CommandStatus) {
        let key = (u32::from(id), out, u32::from(status));
        let link = &self.cfg.link;
        let metrics = &self.deps.metrics;
        self.counters
            .entry(key)
            .or_insert_with(|| {
                metrics.smpp_pdus.with_label_values(&[
                    &**link,
                    command_label(id),
                    if out { "out" } else { "in" },
                    status_label(status),
                ])
            })
            .inc();
    }

    fn on_read(&mut self, frame: Option<Result<Frame, std::io::Error>>) {
        match frame {
            None => self.end = Some(End::PeerClosed),
            Some(Err(e)) => self.end = Some(End::Io(e)),
            Some(Ok(Frame::BadLength {
                sequence_number,
                length,
            })) => {
                warn!(link = %self.cfg.link, length, "SMPP command_length out of bounds; closing");
                self.outq.push(pdu::generic_nack(
                    CommandStatus::EsmeRinvcmdlen,
                    sequence_number,
                ));
                self.end = Some(End::BadLength);
            }
            Some(Ok(Frame::Invalid {
                command_id,
                sequence_number,
                status,
            })) => {
                debug!(link = %self.cfg.link, command_id, "undecodable SMPP PDU");
                if command_id & 0x8000_0000 != 0 {
                    if let Some(Waiter::Caller(tx)) = self.take_pending(sequence_number) {
                        let _ = tx.send(Err(SmppError::Protocol("undecodable response")));
                    }
                } else {
                    self.outq.push(pdu::generic_nack(status, sequence_number));
                }
            }
            Some(Ok(Frame::Command(cmd))) => {
                self.count(cmd.id(), false, cmd.status());
                if cmd.id().is_response() {
                    self.on_response(cmd);
                } else {
                    self.on_request(cmd);
                }
            }
        }
    }

    fn on_response(&mut self, cmd: Command) {
        match self.take_pending(cmd.sequence_number()) {
            Some(Waiter::Caller(tx)) => {
                let _ = tx.send(Ok(cmd));
            }
            Some(Waiter::KeepAlive) => self.keepalive_outstanding = false,
            Some(Waiter::Unbind) => self.end = Some(End::Unbound),
            None => debug!(link = %self.cfg.link, "SMPP response for no outstanding request"),
        }
    }

    fn on_request(&mut self, cmd: Command) {
        let seq = cmd.sequence_number();
        let id = cmd.id();
        match id {
            CommandId::EnquireLink => self.outq.push(Command::new(
                CommandStatus::EsmeRok,
                seq,
                Pdu::EnquireLinkResp,
            )),
            CommandId::Unbind => {
                self.outq
                    .push(Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp));
                self.end = Some(End::PeerUnbound);
            }
            CommandId::DeliverSm | CommandId::DataSm | CommandId::SubmitSm => {
                self.on_message(cmd);
            }
            CommandId::BindTransmitter | CommandId::BindReceiver | CommandId::BindTransceiver => {
                self.outq.push(pdu::empty_resp(
                    id.matching_response(),
                    CommandStatus::EsmeRalybnd,
                    seq,
                ))
            }
            CommandId::Outbind | CommandId::AlertNotification => {}
            CommandId::Other(_) => self
                .outq
                .push(pdu::generic_nack(CommandStatus::EsmeRinvcmdid, seq)),
            _ => self.outq.push(pdu::empty_resp(
                id.matching_response(),
                CommandStatus::EsmeRinvcmdid,
                seq,
            )),
        }
    }

    fn on_message(&mut self, cmd: Command) {
        let seq = cmd.sequence_number();
        let id = cmd.id();
        let allowed = match (self.cfg.role, id) {
            (Role::Esme, CommandId::DeliverSm | CommandId::DataSm) => self.cfg.kind.can_receive(),
            // Carriers bound to our server deliver MO and receipts as
            // deliver_sm (as they would to any ESME) or as submit_sm/data_sm.
            (Role::Smsc, CommandId::SubmitSm | CommandId::DataSm | CommandId::DeliverSm) => {
                self.cfg.kind.can_submit()
            }
            _ => false,
        };
        let msg = if allowed {
            cmd.pdu().and_then(pdu::inbound_message)
        } else {
            None
        };
        drop(cmd);
        let Some(mut msg) = msg else {
            let status = if allowed {
                CommandStatus::EsmeRinvcmdlen
            } else {
                CommandStatus::EsmeRinvbndsts
            };
            self.outq
                .push(pdu::empty_resp(id.matching_response(), status, seq));
            return;
        };
        let kind = msg.kind;
        if self.cfg.role == Role::Smsc && kind != InboundKind::DeliverSm {
            msg.message_id = Some(self.deps.ids.next_id());
        }
        msg.session = self.cfg.id;
        let mid = msg.message_id.clone();
        let handler = self.deps.handler.clone();
        let link = match &self.cfg.receipt_link {
            Some(carrier) if msg.is_receipt() => carrier.clone(),
            _ => self.cfg.link.clone(),
        };
        self.handlers.push(Box::pin(async move {
            let status = handler.deliver(&link, msg).await;
            pdu::message_resp(kind, status, seq, mid.as_deref())
        }));
    }

    async fn write_out(&mut self) -> Result<(), std::io::Error> {
        let timeout = self.cfg.response_timeout.max(Duration::from_secs(1));
        let batch: Vec<Command> = std::mem::take(&mut self.outq);
        for c in &batch {
            self.count(c.id(), true, c.status());
        }
        let framed = &mut self.framed;
        let write = async move {
            for c in batch {
                framed.feed(c).await?;
            }
            framed.flush().await?;
            // The write buffer held text. The flushed bytes sit before its
            // start (it was advanced past them): asking for one byte more
            // than it has makes `BytesMut` reclaim that front in place (no
            // allocation while nothing is pending), and the whole
            // allocation is then zeroed. Without the reclaim, every PDU sent
            // on the session stayed readable in memory (tests/memory_canary.rs).
            let buf = framed.write_buffer_mut();
            if buf.is_empty() {
                let cap = buf.capacity();
                buf.reserve(cap + 1);
                let cap = buf.capacity();
                buf.resize(cap, 0);
                buf.clear();
            }
            Ok::<(), std::io::Error>(())
        };
        // Most writes complete at once (the socket has room): only a write
        // that has to wait arms the stall timer.
        match crate::deadline::within(timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "SMPP write stalled",
            )),
        }
    }

    async fn finish(mut self, mut rx: mpsc::Receiver<Outgoing>) {
        let end = self.end.take();
        match &end {
            Some(End::Unbound) | Some(End::PeerUnbound) => {
                info!(link = %self.cfg.link, kind = self.cfg.kind.label(), "SMPP session unbound")
            }
            Some(End::Io(e)) => {
                warn!(link = %self.cfg.link, kind = self.cfg.kind.label(), error = %e, "SMPP session lost")
            }
            other => {
                warn!(link = %self.cfg.link, kind = self.cfg.kind.label(), reason = ?other, "SMPP session lost")
            }
        }
        let lost = self.pending.len();
        // Taken into the window, so written or about to be: the peer may
        // have it. Only what is still queued below was surely never sent.
        for (_, w) in self.pending.drain() {
            if let Waiter::Caller(tx) = w {
                let _ = tx.send(Err(SmppError::LostInFlight));
            }
        }
        self.window_gauge.sub(self.callers as i64);
        self.callers = 0;
        rx.close();
        while let Ok(out) = rx.try_recv() {
            let _ = out.reply.send(Err(SmppError::SessionLost));
        }
        if lost > 0 {
            debug!(link = %self.cfg.link, lost, "failed outstanding requests");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.framed.close()).await;
    }
}
