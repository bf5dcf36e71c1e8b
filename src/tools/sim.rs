//! The simulated carrier SMSC (`sms-conduit sim-carrier`, SPEC §2) for
//! tests, the demo and benchmarks.
//!
//! Owns: an SMSC built from the same [`super::server`] and session engine:
//! it accepts binds (one system_id/password, or anyone), answers submit_sm
//! with unique hex message ids, refuses a `fail_rate` fraction with
//! `ESME_RSUBMITFAIL` and anything above `throttle_tps` with
//! `ESME_RTHROTTLED` (counting every submit_sm, the throttled ones and the
//! busiest calendar second), and after `dlr_delay` sends a delivery receipt
//! (Appendix B text plus `receipted_message_id` and `message_state` TLVs)
//! when registered_delivery asks — on the bind that took the submit, or
//! with [`SimOptions::dlr_on_other_bind`] on another bind of the same
//! system_id, as carriers do. [`SimHandle::send_mo`] pushes an MO.
//!
//! Must not know: the relay, the config file (the CLI maps flags to
//! [`SimOptions`]).
//!
//! Invariants: like the real path, no text (MT, MO or receipt snippet) is
//! logged; the snippet lives in zeroizing buffers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use rusmpp::CommandStatus;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::smpp::handler::{InboundHandler, InboundKind, InboundMessage, ReceiptTlvs};
use crate::smpp::pdu::DeliverRequest;
use crate::smpp::server::{self, Auth, ServerHandle, ServerOptions};
use crate::smpp::SmppError;
use crate::tls::{ClientAuth, ServerTls};

/// The link name the simulator gives every bound client.
pub const SIM_LINK: &str = "sim";

/// Settings of a simulated carrier.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    /// Certificate and key PEM files; `None` = plaintext.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// When both are set, only this system_id/password may bind.
    pub system_id: Option<String>,
    pub password: Option<String>,
    pub dlr_delay: Duration,
    /// Fraction (0..1) of submits refused with `ESME_RSUBMITFAIL`.
    pub fail_rate: f64,
    /// Submits per second above which `ESME_RTHROTTLED` is answered; 0 = none.
    pub throttle_tps: u32,
    pub window: usize,
    pub idle_timeout: Duration,
    /// Deliver each receipt on another bound session of the submitter's
    /// system_id than the one that took the submit, taking them in turn
    /// (round-robin); on the same one only when it is the only one bound.
    /// A carrier does that: receipts may come on any bind, e.g. the
    /// other node's in a fleet. Off: the least-loaded receiving session,
    /// which with one bind per client is the submitting one.
    pub dlr_on_other_bind: bool,
}

impl SimOptions {
    /// Plaintext on `listen`, anyone may bind, receipts after 10 ms.
    pub fn new(listen: SocketAddr) -> Self {
        SimOptions {
            listen,
            tls: None,
            system_id: None,
            password: None,
            dlr_delay: Duration::from_millis(10),
            fail_rate: 0.0,
            throttle_tps: 0,
            window: 1024,
            idle_timeout: Duration::from_secs(300),
            dlr_on_other_bind: false,
        }
    }
}

/// Counters of a simulator run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub binds: u64,
    pub bind_failures: u64,
    pub submits: u64,
    pub accepted: u64,
    pub failed: u64,
    pub throttled: u64,
    pub receipts_sent: u64,
    pub receipts_failed: u64,
    /// Receipts delivered on another session than the one that took the
    /// submit ([`SimOptions::dlr_on_other_bind`]).
    pub receipts_on_other_bind: u64,
    pub mo_sent: u64,
    /// The most submit_sm (accepted, refused or throttled) received within
    /// one second of the simulator's clock (seconds counted from its start).
    pub peak_submits_per_sec: u64,
}

#[derive(Default)]
struct Counters {
    submits: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    receipts_sent: AtomicU64,
    receipts_failed: AtomicU64,
    receipts_on_other_bind: AtomicU64,
    mo_sent: AtomicU64,
    per_second: PerSecond,
}

/// Submits per whole second since the simulator started, keeping the
/// busiest one: what a carrier's per-second throttle counter sees, and the
/// figure issue 16 item 6 was reported in (a peak of 5,607 submit_sm/s
/// against a carrier throttling at 200/s).
#[derive(Default)]
struct PerSecond {
    /// (second since start, submits in it, busiest second so far).
    cells: parking_lot::Mutex<(u64, u64, u64)>,
}

impl PerSecond {
    fn count(&self, second: u64) {
        let mut c = self.cells.lock();
        if c.0 != second {
            *c = (second, 0, c.2);
        }
        c.1 += 1;
        c.2 = c.2.max(c.1);
    }

    fn peak(&self) -> u64 {
        self.cells.lock().2
    }
}

struct DlrJob {
    due: Instant,
    link: String,
    /// The session that took the submit, when the receipt is to go on
    /// another one ([`SimOptions::dlr_on_other_bind`]).
    not_on: Option<u64>,
    req: DeliverRequest,
}

struct SimHandler {
    counters: Arc<Counters>,
    /// The clock of [`PerSecond`].
    started: Instant,
    throttle: Option<DefaultDirectRateLimiter>,
    fail_rate: f64,
    dlr_delay: Duration,
    dlr_on_other_bind: bool,
    dlr: mpsc::Sender<DlrJob>,
}

/// The first 20 characters of a submitted text, for the receipt's `text:`
/// field, as printable ASCII (others become `?`).
fn snippet(msg: &InboundMessage) -> Zeroizing<String> {
    let mut bytes = msg.body_bytes();
    if msg.esm_class & 0x40 != 0 {
        let skip = bytes.first().map_or(0, |&l| l as usize + 1);
        bytes = bytes.get(skip..).unwrap_or(&[]);
    }
    let mut out = Zeroizing::new(String::with_capacity(20));
    let printable = |c: char| {
        if c.is_ascii_graphic() || c == ' ' {
            c
        } else {
            '?'
        }
    };
    if msg.data_coding == 0x08 {
        for pair in bytes.chunks_exact(2).take(20) {
            let c =
                char::from_u32(u32::from(u16::from_be_bytes([pair[0], pair[1]]))).unwrap_or('?');
            out.push(printable(c));
        }
    } else {
        for &b in bytes.iter().take(20) {
            out.push(printable(char::from(b)));
        }
    }
    out
}

fn receipt_for(msg: &InboundMessage, id: &str) -> DeliverRequest {
    let now = chrono::Utc::now().format("%y%m%d%H%M");
    let text = snippet(msg);
    let body = Zeroizing::new(
        format!(
            "id:{id} sub:001 dlvrd:001 submit date:{now} done date:{now} stat:DELIVRD err:000 text:{}",
            text.as_str()
        )
        .into_bytes(),
    );
    DeliverRequest {
        source_addr: msg.dest_addr.clone(),
        dest_addr: msg.source_addr.clone(),
        esm_class: 0x04,
        data_coding: 0,
        registered_delivery: 0,
        short_message: body,
        receipt: ReceiptTlvs {
            receipted_message_id: Some(id.to_owned()),
            message_state: Some(2),
            network_error_code: None,
        },
    }
}

impl InboundHandler for SimHandler {
    fn deliver<'a>(&'a self, link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        Box::pin(async move {
            if msg.kind == InboundKind::DeliverSm {
                return CommandStatus::EsmeRok;
            }
            self.counters.submits.fetch_add(1, Ordering::Relaxed);
            self.counters
                .per_second
                .count(self.started.elapsed().as_secs());
            if let Some(t) = &self.throttle {
                if t.check().is_err() {
                    self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                    return CommandStatus::EsmeRthrottled;
                }
            }
            if self.fail_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.fail_rate {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                return CommandStatus::EsmeRsubmitfail;
            }
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if msg.registered_delivery & 0x03 != 0 {
                if let Some(id) = &msg.message_id {
                    let job = DlrJob {
                        due: Instant::now() + self.dlr_delay,
                        link: link.to_owned(),
                        not_on: self.dlr_on_other_bind.then_some(msg.session),
                        req: receipt_for(&msg, id),
                    };
                    if self.dlr.send(job).await.is_err() {
                        self.counters
                            .receipts_failed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            CommandStatus::EsmeRok
        })
    }
}

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    server: ServerHandle,
    counters: Arc<Counters>,
    tasks: TaskTracker,
    addr: SocketAddr,
}

/// Starts a simulator; it runs until `shutdown` is cancelled.
pub async fn start_sim(
    opts: SimOptions,
    shutdown: CancellationToken,
) -> Result<SimHandle, SmppError> {
    let counters = Arc::new(Counters::default());
    let (dlr_tx, dlr_rx) = mpsc::channel(4096);
    let throttle = std::num::NonZeroU32::new(opts.throttle_tps).map(|tps| {
        // Carriers count per second; a tenth of a second of burst is closer
        // to them than strict spacing.
        let burst = std::num::NonZeroU32::new((tps.get() / 10).max(1)).unwrap_or(tps);
        RateLimiter::direct(Quota::per_second(tps).allow_burst(burst))
    });
    let handler = Arc::new(SimHandler {
        counters: counters.clone(),
        started: Instant::now(),
        throttle,
        fail_rate: opts.fail_rate.clamp(0.0, 1.0),
        dlr_delay: opts.dlr_delay,
        dlr_on_other_bind: opts.dlr_on_other_bind,
        dlr: dlr_tx,
    });
    let tls = match &opts.tls {
        Some((cert, key)) => {
            let cfg = crate::config::Tls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: None,
            };
            let t = ServerTls::load(&cfg, &[], ClientAuth::None)
                .map_err(|e| SmppError::Tls(e.to_string()))?;
            Some((opts.listen, t))
        }
        None => None,
    };
    let plaintext = if tls.is_none() {
        Some(opts.listen)
    } else {
        None
    };
    let auth = match (&opts.system_id, &opts.password) {
        (Some(sid), Some(pw)) => {
            use sha2::Digest;
            Auth::Peers(crate::live::Part::own(Arc::new(vec![
                crate::config::Peer {
                    name: SIM_LINK.into(),
                    system_id: sid.clone(),
                    password_sha256: sha2::Sha256::digest(pw.as_bytes()).into(),
                    allow: vec![
                        "0.0.0.0/0"
                            .parse()
                            .map_err(|_| SmppError::Protocol("cidr"))?,
                        "::/0".parse().map_err(|_| SmppError::Protocol("cidr"))?,
                    ],
                    max_binds: u32::MAX,
                    carrier: None,
                    cert_sha256: None,
                },
            ])))
        }
        _ => Auth::Any {
            link: SIM_LINK.into(),
        },
    };
    let server_opts = ServerOptions {
        tls,
        plaintext,
        window: opts.window.max(1),
        idle_timeout: opts.idle_timeout,
        response_timeout: Duration::from_secs(10),
        system_id: "SIMSMSC".into(),
        auth,
        // A test and demo SMSC: generous bounds, no keep-alive of its own.
        limits: server::Limits {
            max_connections: 65_536,
            max_unbound_per_address: 65_536,
            bind_timeout: opts.idle_timeout,
        },
        enquire_link: None,
        client_cert_required: false,
    };
    let metrics = Arc::new(Metrics::new());
    let server = server::start(server_opts, handler, metrics, shutdown.clone()).await?;
    let addr = server
        .local_addr()
        .or(server.plaintext_addr())
        .ok_or(SmppError::Protocol("no listener"))?;
    let tasks = TaskTracker::new();
    tasks.spawn(send_receipts(
        server.clone(),
        dlr_rx,
        counters.clone(),
        shutdown,
    ));
    tasks.close();
    Ok(SimHandle {
        server,
        counters,
        tasks,
        addr,
    })
}

/// Runs a simulator until `shutdown`, then returns its counters.
pub async fn run_sim(
    opts: SimOptions,
    shutdown: CancellationToken,
) -> Result<SimReport, SmppError> {
    let sim = start_sim(opts, shutdown.clone()).await?;
    shutdown.cancelled().await;
    sim.wait().await;
    Ok(sim.report())
}

async fn send_receipts(
    server: ServerHandle,
    mut rx: mpsc::Receiver<DlrJob>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(256));
    let inflight = TaskTracker::new();
    // Whose turn it is among the other sessions (`dlr_on_other_bind`).
    let mut turn = 0usize;
    loop {
        let job = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => break },
            _ = shutdown.cancelled() => break,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(job.due) => {}
            _ = shutdown.cancelled() => break,
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (server, counters) = (server.clone(), counters.clone());
        let my_turn = turn;
        turn = turn.wrapping_add(1);
        inflight.spawn(async move {
            let _permit = permit;
            let mut job = job;
            // A receiver may be reconnecting; try a few times.
            for attempt in 0..5u32 {
                let req = DeliverRequest {
                    source_addr: job.req.source_addr.clone(),
                    dest_addr: job.req.dest_addr.clone(),
                    esm_class: job.req.esm_class,
                    data_coding: job.req.data_coding,
                    registered_delivery: 0,
                    short_message: job.req.short_message.clone(),
                    receipt: job.req.receipt.clone(),
                };
                let sent = match job.not_on {
                    Some(not) => {
                        server
                            .deliver_elsewhere(
                                &job.link,
                                not,
                                my_turn.wrapping_add(attempt as usize),
                                req,
                            )
                            .await
                    }
                    None => server.deliver(&job.link, req).await.map(|()| false),
                };
                match sent {
                    Ok(other) => {
                        counters.receipts_sent.fetch_add(1, Ordering::Relaxed);
                        if other {
                            counters
                                .receipts_on_other_bind
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    Err(_) if attempt < 4 => {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await
                    }
                    Err(_) => break,
                }
            }
            job.req.short_message = Zeroizing::new(Vec::new());
            counters.receipts_failed.fetch_add(1, Ordering::Relaxed);
        });
    }
    inflight.close();
    inflight.wait().await;
}

impl SimHandle {
    /// The listening address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    pub fn report(&self) -> SimReport {
        let c = &self.counters;
        let (binds, bind_failures) = self.server.bind_counts();
        SimReport {
            binds,
            bind_failures,
            submits: c.submits.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            receipts_sent: c.receipts_sent.load(Ordering::Relaxed),
            receipts_failed: c.receipts_failed.load(Ordering::Relaxed),
            receipts_on_other_bind: c.receipts_on_other_bind.load(Ordering::Relaxed),
            mo_sent: c.mo_sent.load(Ordering::Relaxed),
            peak_submits_per_sec: c.per_second.peak(),
        }
    }

    /// Bound client sessions.
    pub fn bound_sessions(&self) -> usize {
        self.server
            .bound_peers()
            .iter()
            .map(|p| p.sessions.len())
            .sum()
    }

    /// Sends an MO (GSM default alphabet, as ASCII) to a bound receiver and
    /// returns the client's answer.
    pub async fn send_mo(&self, from: &str, to: &str, text: &str) -> CommandStatus {
        let req = DeliverRequest {
            source_addr: from.to_owned(),
            dest_addr: to.to_owned(),
            esm_class: 0,
            data_coding: 0,
            registered_delivery: 0,
            short_message: Zeroizing::new(text.as_bytes().to_vec()),
            receipt: ReceiptTlvs::default(),
        };
        match self.server.deliver(SIM_LINK, req).await {
            Ok(()) => {
                self.counters.mo_sent.fetch_add(1, Ordering::Relaxed);
                CommandStatus::EsmeRok
            }
            Err(SmppError::Status(s)) => s,
            Err(_) => CommandStatus::EsmeRsyserr,
        }
    }

    /// Waits until the listener, sessions and receipt sender have ended.
    pub async fn wait(&self) {
        self.server.wait().await;
        self.tasks.wait().await;
    }
}
