//! `sms-conduit bench`: a load generator for the HTTPS API (SPEC §2).
//!
//! Owns: opening keep-alive TLS connections (HTTP/1.1, one request at a time
//! per connection) or one multiplexed HTTP/2 connection, pacing to a fixed
//! rate or running flat out, and the end table: msg/s, latency percentiles
//! (HdrHistogram), answers by status and problem `code`, and — given the
//! relay's PID — its CPU time per message from `/proc`; beside it the
//! carrier simulator's (given its PID) and the bench's own, the cost of the
//! same exchanges seen from the other end of each socket.
//!
//! It speaks hyper directly instead of reqwest so the generator itself costs
//! little CPU: on a 2-core machine it shares the cores with the relay it
//! measures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Base URL, e.g. `https://127.0.0.1:8443`.
    pub url: String,
    pub api_key: String,
    pub messages: u64,
    /// Concurrent HTTP/1.1 connections, or concurrent streams on HTTP/2.
    pub connections: usize,
    /// Messages per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub http2: bool,
    /// Each message with an `Idempotency-Key` of its own
    /// (`bench-<run>-<n>`).
    pub idempotency_keys: bool,
    /// PEM CA to trust (self-signed relays); else the public web roots.
    pub ca_file: Option<PathBuf>,
    pub from: String,
    pub campaign: String,
    /// Recipients are `to_prefix` followed by a counter, padded to 11 digits.
    pub to_prefix: String,
    pub text: String,
    /// PID of the relay, to report its CPU time per message.
    pub relay_pid: Option<u32>,
    /// PID of the carrier (`sim-carrier`), to report its CPU time per
    /// message too.
    pub carrier_pid: Option<u32>,
    pub progress: bool,
    /// Receive the relay's webhooks here, as a client would: the run ends
    /// when every accepted message's receipt was delivered (or after
    /// [`WEBHOOK_WAIT`]), and the relay's CPU is counted until then.
    pub webhook_sink: Option<BenchSink>,
}

/// Where and how `bench` receives webhooks (`--webhook-sink`).
#[derive(Debug, Clone)]
pub struct BenchSink {
    /// The address the relay's `webhook_url` points at.
    pub listen: std::net::SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The client's `webhook_secret_file`, to verify `Conduit-Signature`.
    pub secret_file: PathBuf,
}

/// How long `bench` waits, after its last answer, for the remaining
/// webhooks.
pub const WEBHOOK_WAIT: Duration = Duration::from_secs(60);

/// The measured outcome.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub sent: u64,
    pub accepted: u64,
    /// Answers other than 201, by `"<status> <code>"`.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Relay user+system CPU per message, when its PID was given (until
    /// the last webhook, with a sink).
    pub relay_cpu_per_msg: Option<Duration>,
    /// The carrier's, over the same window, when its PID was given.
    pub carrier_cpu_per_msg: Option<Duration>,
    /// The bench's own (load generator and webhook sink), over the same
    /// window.
    pub bench_cpu_per_msg: Option<Duration>,
    /// With a sink: verified webhook events received, and how long after
    /// the last answer the last of them came.
    pub webhooks: Option<(u64, Duration)>,
}

impl BenchReport {
    pub fn msgs_per_sec(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The end table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let us = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        s.push_str(&format!("sent          {}\n", self.sent));
        s.push_str(&format!("accepted      {}\n", self.accepted));
        for (k, v) in &self.errors {
            s.push_str(&format!("refused       {v}  ({k})\n"));
        }
        s.push_str(&format!(
            "elapsed       {:.3} s\n",
            self.elapsed.as_secs_f64()
        ));
        s.push_str(&format!("throughput    {:.0} msg/s\n", self.msgs_per_sec()));
        s.push_str(&format!(
            "latency       p50 {}  p90 {}  p99 {}  max {}\n",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max)
        ));
        if let Some((n, after)) = self.webhooks {
            s.push_str(&format!(
                "webhooks      {n} verified, the last {:.3} s after the last answer\n",
                after.as_secs_f64()
            ));
        }
        let lines = [
            ("relay CPU  ", self.relay_cpu_per_msg, "(user+sys)"),
            ("carrier CPU", self.carrier_cpu_per_msg, "(the simulator)"),
            (
                "bench CPU  ",
                self.bench_cpu_per_msg,
                "(load generator and webhook sink)",
            ),
        ];
        for (name, cpu, what) in lines {
            if let Some(c) = cpu {
                s.push_str(&format!(
                    "{name}   {:.1} µs/msg {what}\n",
                    c.as_secs_f64() * 1e6
                ));
            }
        }
        s
    }
}

/// Bench failures that stop the run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bad --url: {0}")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("webhook sink: {0}")]
    Sink(String),
}

async fn start_sink(s: &BenchSink) -> Result<crate::tools::sink::Sink, BenchError> {
    let raw = std::fs::read(&s.secret_file)
        .map_err(|e| BenchError::Sink(format!("{}: {e}", s.secret_file.display())))?;
    let secret = crate::types::Secret::new(raw);
    let trimmed = secret
        .trimmed_str()
        .ok_or_else(|| BenchError::Sink("the secret file is not UTF-8".into()))?;
    let secret = crate::types::Secret::new(trimmed.as_bytes().to_vec());
    let tls_cfg = crate::config::Tls {
        cert_file: s.cert_file.clone(),
        key_file: s.key_file.clone(),
        client_ca_file: None,
    };
    let tls = crate::tls::ServerTls::load(
        &tls_cfg,
        &[b"h2", b"http/1.1"],
        crate::tls::ClientAuth::None,
    )?;
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| BenchError::Sink(format!("listening on {}: {e}", s.listen)))?;
    crate::tools::sink::Sink::start_on(listener, tls, secret, false)
        .map_err(|e| BenchError::Sink(e.to_string()))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Target {
    host: String,
    port: u16,
    authority: String,
}

fn parse_url(url: &str) -> Result<Target, BenchError> {
    let u = reqwest::Url::parse(url).map_err(|e| BenchError::Url(e.to_string()))?;
    if u.scheme() != "https" {
        return Err(BenchError::Url(
            "the API is HTTPS only: use https://".into(),
        ));
    }
    let host = u
        .host_str()
        .ok_or_else(|| BenchError::Url("no host".into()))?
        .to_owned();
    let port = u.port().unwrap_or(443);
    Ok(Target {
        authority: format!("{host}:{port}"),
        host,
        port,
    })
}

async fn connect(t: &Target, opts: &BenchOptions) -> Result<Sender, BenchError> {
    let alpn: &[&[u8]] = if opts.http2 { &[b"h2"] } else { &[b"http/1.1"] };
    let cc = crate::tls::client_config(opts.ca_file.as_deref(), alpn)?;
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|source| BenchError::Connect {
            addr: t.authority.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| BenchError::Url(format!("bad host name: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(cc)
        .connect(name, tcp)
        .await
        .map_err(|source| BenchError::Connect {
            addr: t.authority.clone(),
            source,
        })?;
    let io = TokioIo::new(tls);
    if opts.http2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(send))
    }
}

/// CPU time (user + system) of a process so far, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)` part; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

struct Shared {
    /// Tells this run's idempotency keys from an earlier run's against the
    /// same relay (unix ns at its start).
    run_id: u128,
    next: AtomicU64,
    accepted: AtomicU64,
    errors: parking_lot::Mutex<BTreeMap<String, u64>>,
    hist: parking_lot::Mutex<hdrhistogram::Histogram<u64>>,
}

/// Runs the load and returns the report.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    let target = parse_url(&opts.url)?;
    let uri: hyper::Uri = format!("https://{}/v1/messages", target.authority)
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| BenchError::Url(e.to_string()))?;
    let hist = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Url(format!("histogram: {e}")))?;
    let shared = Arc::new(Shared {
        run_id: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        next: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        errors: Default::default(),
        hist: parking_lot::Mutex::new(hist),
    });
    let bar = progress_bar(&opts);
    let sink = match &opts.webhook_sink {
        Some(s) => Some(start_sink(s).await?),
        None => None,
    };
    let conns = opts.connections.max(1);
    let mut senders = Vec::with_capacity(conns);
    if opts.http2 {
        if let Sender::H2(h) = connect(&target, &opts).await? {
            senders.extend((0..conns).map(|_| Sender::H2(h.clone())));
        }
    } else {
        for _ in 0..conns {
            senders.push(connect(&target, &opts).await?);
        }
    }
    // Fixed rate: a pacer hands out one permit per interval.
    let pacer = opts.rate.filter(|r| *r > 0.0).map(|r| {
        let (tx, rx) = tokio::sync::mpsc::channel::<()>(conns * 2);
        let n = opts.messages;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..n {
                tick.tick().await;
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        Arc::new(Mutex::new(rx))
    });
    let me = std::process::id();
    let cpu_before = [opts.relay_pid, opts.carrier_pid, Some(me)].map(|p| p.and_then(process_cpu));
    let started = Instant::now();
    let opts = Arc::new(opts);
    let auth = Bytes::from(format!("Bearer {}", opts.api_key));
    let mut tasks = Vec::with_capacity(conns);
    for sender in senders {
        let (shared, opts, uri, auth, bar, pacer) = (
            shared.clone(),
            opts.clone(),
            uri.clone(),
            auth.clone(),
            bar.clone(),
            pacer.clone(),
        );
        tasks.push(tokio::spawn(send_loop(
            sender, shared, opts, uri, auth, bar, pacer,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let webhooks = match &sink {
        Some(sink) => {
            let wanted = usize::try_from(accepted).unwrap_or(usize::MAX);
            sink.wait_for(wanted, WEBHOOK_WAIT).await;
            let after = started.elapsed().saturating_sub(elapsed);
            let n = sink.count() as u64;
            sink.stop().await;
            Some((n, after))
        }
        None => None,
    };
    let n = shared
        .next
        .load(Ordering::Relaxed)
        .min(opts.messages)
        .max(1);
    let per_msg =
        |before: Option<Duration>, pid: Option<u32>| match (before, pid.and_then(process_cpu)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) / n as u32),
            _ => None,
        };
    let [relay_before, carrier_before, bench_before] = cpu_before;
    let relay_cpu_per_msg = per_msg(relay_before, opts.relay_pid);
    let carrier_cpu_per_msg = per_msg(carrier_before, opts.carrier_pid);
    let bench_cpu_per_msg = per_msg(bench_before, Some(me));
    let h = shared.hist.lock().clone();
    let q = |p: f64| Duration::from_micros(h.value_at_quantile(p));
    let errors = shared.errors.lock().clone();
    Ok(BenchReport {
        sent: accepted + errors.values().sum::<u64>(),
        accepted,
        errors,
        elapsed,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: Duration::from_micros(h.max()),
        relay_cpu_per_msg,
        carrier_cpu_per_msg,
        bench_cpu_per_msg,
        webhooks,
    })
}

/// One connection's (or stream's) sends until every message is taken.
async fn send_loop(
    mut sender: Sender,
    shared: Arc<Shared>,
    opts: Arc<BenchOptions>,
    uri: hyper::Uri,
    auth: Bytes,
    bar: indicatif::ProgressBar,
    pacer: Option<Arc<Mutex<tokio::sync::mpsc::Receiver<()>>>>,
) {
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= opts.messages {
            break;
        }
        if let Some(p) = &pacer {
            if p.lock().await.recv().await.is_none() {
                break;
            }
        }
        let width = 11usize.saturating_sub(opts.to_prefix.trim_start_matches('+').len());
        let body = serde_json::json!({
            "from": opts.from,
            "to": format!("{}{:0>width$}", opts.to_prefix, i % 10u64.pow(width.min(18) as u32)),
            "text": opts.text,
            "campaign_id": opts.campaign,
        });
        let mut req = Request::post(uri.clone())
            .header(hyper::header::AUTHORIZATION, auth.as_ref())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if opts.idempotency_keys {
            req = req.header("Idempotency-Key", format!("bench-{}-{i}", shared.run_id));
        }
        let req = req.body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else { break };
        let t0 = Instant::now();
        let resp = match &mut sender {
            Sender::H1(s) => {
                if s.ready().await.is_err() {
                    record_error(&shared, "connection closed".into());
                    break;
                }
                s.send_request(req).await
            }
            Sender::H2(s) => s.send_request(req).await,
        };
        match resp {
            Ok(r) => {
                let status = r.status();
                let bytes = r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let us = t0.elapsed().as_micros() as u64;
                let _ = shared.hist.lock().record(us.max(1));
                if status == hyper::StatusCode::CREATED {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                        .unwrap_or_default();
                    record_error(&shared, format!("{} {code}", status.as_u16()));
                }
            }
            Err(e) => {
                record_error(&shared, format!("transport: {e}"));
                if matches!(sender, Sender::H1(_)) {
                    break;
                }
            }
        }
        bar.inc(1);
    }
}

/// A progress bar on request, else a hidden one.
fn progress_bar(opts: &BenchOptions) -> indicatif::ProgressBar {
    if opts.progress {
        let b = indicatif::ProgressBar::new(opts.messages);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn record_error(shared: &Shared, key: String) {
    *shared.errors.lock().entry(key).or_insert(0) += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BenchReport {
        BenchReport {
            sent: 10,
            accepted: 10,
            errors: BTreeMap::new(),
            elapsed: Duration::from_secs(1),
            p50: Duration::from_millis(4),
            p90: Duration::from_millis(6),
            p99: Duration::from_millis(9),
            max: Duration::from_millis(30),
            relay_cpu_per_msg: Some(Duration::from_micros(212)),
            carrier_cpu_per_msg: Some(Duration::from_micros(90)),
            bench_cpu_per_msg: None,
            webhooks: None,
        }
    }

    /// `benches/ab.sh` finds these lines by their first words and takes the
    /// third field as the figure.
    #[test]
    fn the_cpu_lines_keep_the_form_the_scripts_read() {
        let table = report().table();
        let field = |prefix: &str| {
            table
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned())
        };
        assert_eq!(field("relay CPU").as_deref(), Some("212.0"), "{table}");
        assert_eq!(field("carrier CPU").as_deref(), Some("90.0"), "{table}");
        assert_eq!(field("bench CPU"), None, "no figure, no line: {table}");
    }

    /// The bench reads its own CPU time the way it reads the relay's.
    #[test]
    fn a_process_cpu_time_is_read_and_grows() {
        let me = std::process::id();
        let before = process_cpu(me).expect("own /proc stat");
        // Spin until a clock tick is counted (a field read wrongly would
        // stand still), for 5 s of wall time at most.
        let started = Instant::now();
        let mut x = 0u64;
        while process_cpu(me).expect("own /proc stat") <= before {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "CPU time stood still"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert_eq!(process_cpu(u32::MAX), None);
    }
}
