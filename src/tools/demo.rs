//! `sms-conduit demo` (SPEC §2): the whole appliance on loopback in one
//! process, driven through its real interfaces.
//!
//! Owns: a temp dir with self-signed certificates and a relay config (two
//! campaigns with different limits, one client whose webhook points at the
//! sink), a simulated carrier over TLS that sends receipts after 50 ms, an
//! HTTPS webhook sink, the [`App`] itself; a send loop over the HTTPS API
//! (a mix of GSM-7, UCS-2 and multi-segment texts, ~32 in flight, a progress
//! bar on a terminal); the wait for every accepted message's delivery; an
//! opt-out by MO `STOP`; an audit-chain check; a metrics scrape; and the
//! summary whose totals decide the exit status.
//!
//! Every message must be accounted for: accepted and delivered, or refused
//! with a problem `code` (e.g. the slower campaign's `rate_limited`). A
//! transport error, an unknown outcome (`carrier_timeout`) or an accepted
//! message without a delivery fails the demo.
//!
//! Deliveries are counted from the sink's `message.status` events when the
//! relay sends them; a relay that does not (yet) emit them is read back
//! through `GET /v1/messages/{id}` instead, and the summary says which.
//!
//! Invariants: the demo prints counts, codes and ids only — never a text
//! (conduit rule 1), never a recipient in clear.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::sim::{start_sim, SimHandle, SimOptions};
use super::sink::{Sink, SinkError};
use crate::app::{App, AppError};
use crate::config::Config;
use crate::smpp::{status_name, CommandStatus, SmppError};
use crate::types::Secret;

/// The fast campaign: no refusals expected.
pub const FAST_CAMPAIGN: &str = "CDEMOFAST";
/// The slow campaign: its limit refuses part of its share with `rate_limited`.
pub const SLOW_CAMPAIGN: &str = "CDEMOSLOW";
const FAST_NUMBERS: [&str; 2] = ["+15550100001", "+15550100002"];
/// The slow campaign's `segments_per_minute`.
const SLOW_SEGMENTS_PER_MINUTE: u64 = 1200;
const SLOW_NUMBER: &str = "+15550100011";
const SYSTEM_ID: &str = "conduit-demo";
/// Receipts from the simulated carrier arrive this long after the submit.
const DLR_DELAY: Duration = Duration::from_millis(50);
/// How long the demo waits for every delivery.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);
/// How long after the last send the first `message.status` webhook may take
/// before deliveries are read from the store instead.
const WEBHOOK_GRACE: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Messages to send (default 2000).
    pub messages: u64,
    /// Keep the temp dir (config, state, certificates) and print how to look around.
    pub keep: bool,
    /// Requests in flight.
    pub concurrency: usize,
    /// Show a progress bar (only drawn when stdout is a terminal).
    pub progress: bool,
}

impl DemoOptions {
    pub fn new(messages: u64, keep: bool) -> Self {
        DemoOptions {
            messages,
            keep,
            concurrency: 32,
            progress: true,
        }
    }
}

/// Why the demo could not run (as opposed to ran and found a message unaccounted for).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo files: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS material: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("demo config is invalid:\n{0}")]
    Config(String),
    #[error("relay: {0}")]
    App(#[from] AppError),
    #[error("simulated carrier: {0}")]
    Sim(#[from] SmppError),
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error("HTTPS client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Step(String),
}

/// Logs to stderr; warnings and errors only unless `RUST_LOG` says otherwise,
/// so the demo's own output stays readable.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rusmpp=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The three kinds of text the demo sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Gsm7,
    Ucs2,
    Long,
}

impl Kind {
    /// 60% GSM-7, 25% UCS-2 with an emoji, 15% multi-segment.
    fn of(i: u64) -> Kind {
        match i % 20 {
            0..=11 => Kind::Gsm7,
            12..=16 => Kind::Ucs2,
            _ => Kind::Long,
        }
    }

    /// A made-up text of this kind (never printed).
    fn text(self, i: u64) -> String {
        match self {
            Kind::Gsm7 => format!(
                "Reminder: your appointment #{i} at Acme Clinic is tomorrow at 10:00. Reply STOP to opt out."
            ),
            Kind::Ucs2 => {
                format!("Acme Clinic \u{1F4C5} your visit #{i} is confirmed. Reply STOP to opt out.")
            }
            Kind::Long => {
                let mut t = format!("Acme Clinic, visit #{i}: ");
                while t.len() < 300 {
                    t.push_str("Please bring your insurance card and a list of current medications. ");
                }
                t.truncate(300);
                t
            }
        }
    }
}

/// Whether message `i` goes to the slow campaign: every fourth one.
fn is_slow(i: u64) -> bool {
    i % 4 == 3
}

/// Segments of message `i` (GSM-7 and UCS-2 texts fit one, long ones take two).
fn segments_of(i: u64) -> u64 {
    match Kind::of(i) {
        Kind::Long => 2,
        _ => 1,
    }
}

/// The slow campaign's burst: 70% of the segments the run sends on it, so
/// that, whatever the machine's speed, it refuses part of its share with
/// `rate_limited` (its sustained rate adds only 20 segments a second).
fn slow_burst(messages: u64) -> u64 {
    let segments: u64 = (0..messages).filter(|i| is_slow(*i)).map(segments_of).sum();
    (segments * 7 / 10).max(10)
}

/// The recipient of message `i` (fictional 555 numbers, 1000 of them).
fn recipient(i: u64) -> String {
    format!("+1555{:07}", 2_000_000 + i % 1000)
}

/// What one request came back with.
enum Outcome {
    Accepted {
        id: String,
        encoding: String,
        segments: u64,
    },
    /// A problem document with a definite refusal `code`; `detail` is the
    /// relay's own sentence (a fixed phrase, never a text or a number).
    Refused { key: String, detail: String },
    /// No definite outcome: transport error, no code, or `carrier_timeout`.
    Lost { why: String },
}

struct SendStats {
    accepted: Vec<(u64, String)>,
    encodings: BTreeMap<String, u64>,
    segments: u64,
    refused: BTreeMap<String, u64>,
    /// Per `(status code, campaign)`: how many, and the first refusal's
    /// `detail`, so the summary can say why.
    reasons: BTreeMap<(String, &'static str), (u64, String)>,
    /// The slow campaign's burst in this run (see [`slow_burst`]).
    slow_burst: u64,
    lost: BTreeMap<String, u64>,
    kinds: BTreeMap<Kind, u64>,
    hist: hdrhistogram::Histogram<u64>,
    elapsed: Duration,
}

fn new_hist() -> Result<hdrhistogram::Histogram<u64>, DemoError> {
    hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| DemoError::Step(format!("histogram: {e}")))
}

/// The files the relay, carrier and sink need, in `dir`.
struct Files {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    smpp_password: String,
    webhook_secret: Vec<u8>,
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, bytes)
}

fn make_files(dir: &Path) -> Result<Files, DemoError> {
    let ss = crate::tls::self_signed(&["localhost", "127.0.0.1"])?;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &ss.cert_pem)?;
    write_private(&key, ss.key_pem.as_bytes())?;
    write_private(
        &dir.join("pseudonym.key"),
        hex::encode(rand::random::<[u8; 32]>()).as_bytes(),
    )?;
    // SMPP passwords are at most 8 characters.
    let smpp_password = hex::encode(rand::random::<[u8; 4]>());
    write_private(&dir.join("carrier-sim.pass"), smpp_password.as_bytes())?;
    let webhook_secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>())).into_bytes();
    write_private(&dir.join("clinic-app.whsec"), &webhook_secret)?;
    Ok(Files {
        dir: dir.to_path_buf(),
        cert,
        key,
        cert_pem: ss.cert_pem,
        smpp_password,
        webhook_secret,
    })
}

fn config_toml(sim: SocketAddr, key_hash: &str, sink_url: &str, slow_burst: u64) -> String {
    format!(
        r#"# sms-conduit demo: relay on loopback, simulated carrier, webhook sink.
[node]
id = "demo"
state_dir = "state"
drain_secs = 15
pseudonym_key_file = "pseudonym.key"

[tls]
cert_file = "server.crt"
key_file = "server.key"

[api]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"

[smpp_server]

[[carriers]]
name = "carrier-sim"
host = "127.0.0.1"
port = {port}
tls = true
system_id = "{SYSTEM_ID}"
password_file = "carrier-sim.pass"
ca_file = "server.crt"
server_name = "localhost"
binds = 2
window = 64
prefixes = ["+1"]
priority = 1

[[brands]]
id = "BDEMO01"

[[campaigns]]
id = "{FAST_CAMPAIGN}"
brand = "BDEMO01"
numbers = ["{f0}", "{f1}"]
segments_per_minute = 600000
burst = 20000
help_text = "Acme Clinic: reply STOP to opt out. Help: 555-0100"
stop_text = "Acme Clinic: you are unsubscribed and will get no more messages."
start_text = "Acme Clinic: you are subscribed again. Reply STOP to opt out."

[[campaigns]]
id = "{SLOW_CAMPAIGN}"
brand = "BDEMO01"
numbers = ["{SLOW_NUMBER}"]
segments_per_minute = {SLOW_SEGMENTS_PER_MINUTE}
burst = {slow_burst}
help_text = "Acme Reminders: reply STOP to opt out."
stop_text = "Acme Reminders: you are unsubscribed."
start_text = "Acme Reminders: you are subscribed again."

[[clients]]
id = "clinic-app"
key_sha256 = ["{key_hash}"]
campaigns = ["{FAST_CAMPAIGN}", "{SLOW_CAMPAIGN}"]
webhook_url = "{sink_url}"
webhook_secret_file = "clinic-app.whsec"
webhook_ca_file = "sink.crt"
"#,
        port = sim.port(),
        f0 = FAST_NUMBERS[0],
        f1 = FAST_NUMBERS[1],
    )
}

/// The HTTPS client of the demo's "clinic app".
struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(cert_pem: &str, api: SocketAddr, key: String) -> Result<Api, DemoError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Api {
            client,
            base: format!("https://127.0.0.1:{}", api.port()),
            key,
        })
    }

    async fn wait_ready(&self, within: Duration) -> Result<(), DemoError> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!(
                    "{} {}",
                    r.status().as_u16(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => transport_kind(&e),
            };
            if Instant::now() >= deadline {
                return Err(DemoError::Step(format!(
                    "/readyz did not become ready within {} s: {last}",
                    within.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, from: &str, to: &str, text: &str, campaign: &str) -> Outcome {
        let body = serde_json::json!({
            "from": from,
            "to": to,
            "text": text,
            "campaign_id": campaign,
        });
        let resp = match self
            .client
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Lost {
                    why: transport_kind(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let json: Option<serde_json::Value> = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) => {
                return Outcome::Lost {
                    why: format!("{status} {}", transport_kind(&e)),
                }
            }
        };
        let field = |k: &str| {
            json.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        if status == 201 {
            return match field("id") {
                Some(id) => Outcome::Accepted {
                    id,
                    encoding: field("encoding").unwrap_or_else(|| "?".into()),
                    segments: json
                        .as_ref()
                        .and_then(|v| v.get("segments"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                },
                None => Outcome::Lost {
                    why: "201 without an id".into(),
                },
            };
        }
        match field("code") {
            // The carrier may or may not have taken it: not a definite outcome.
            Some(code) if code == "carrier_timeout" => Outcome::Lost {
                why: format!("{status} {code}"),
            },
            Some(code) => Outcome::Refused {
                key: format!("{status} {code}"),
                detail: field("detail").unwrap_or_default(),
            },
            None => Outcome::Lost {
                why: format!("{status} without a problem code"),
            },
        }
    }

    /// `status` of `GET /v1/messages/{id}`, if it could be read.
    async fn status_of(&self, id: &str) -> Option<String> {
        let r = self
            .client
            .get(format!("{}/v1/messages/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v.get("status")?.as_str().map(str::to_owned)
    }
}

/// A transport error's kind, without URLs or bodies.
fn transport_kind(e: &reqwest::Error) -> String {
    let k = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "transport error"
    };
    k.to_owned()
}

fn progress_bar(n: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled || !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stdout());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  sending {bar:40.cyan/blue} {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

struct Worker {
    accepted: Vec<(u64, String)>,
    encodings: BTreeMap<String, u64>,
    segments: u64,
    refused: BTreeMap<String, u64>,
    reasons: BTreeMap<(String, &'static str), (u64, String)>,
    lost: BTreeMap<String, u64>,
    kinds: BTreeMap<Kind, u64>,
    hist: hdrhistogram::Histogram<u64>,
}

async fn send_all(api: Arc<Api>, opts: &DemoOptions) -> Result<SendStats, DemoError> {
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(opts.messages, opts.progress);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (api, next, bar, n) = (api.clone(), next.clone(), bar.clone(), opts.messages);
        let mut w = Worker {
            accepted: Vec::new(),
            encodings: BTreeMap::new(),
            segments: 0,
            refused: BTreeMap::new(),
            reasons: BTreeMap::new(),
            lost: BTreeMap::new(),
            kinds: BTreeMap::new(),
            hist: new_hist()?,
        };
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let kind = Kind::of(i);
                *w.kinds.entry(kind).or_default() += 1;
                let (from, campaign) = if is_slow(i) {
                    (SLOW_NUMBER, SLOW_CAMPAIGN)
                } else {
                    (FAST_NUMBERS[(i % 2) as usize], FAST_CAMPAIGN)
                };
                let text = kind.text(i);
                let t0 = Instant::now();
                let outcome = api.send(from, &recipient(i), &text, campaign).await;
                drop(text);
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = w.hist.record(us.max(1));
                match outcome {
                    Outcome::Accepted {
                        id,
                        encoding,
                        segments,
                    } => {
                        w.accepted.push((i, id));
                        *w.encodings.entry(encoding).or_default() += 1;
                        w.segments += segments;
                    }
                    Outcome::Refused { key, detail } => {
                        let r = w
                            .reasons
                            .entry((key.clone(), campaign))
                            .or_insert((0, detail));
                        r.0 += 1;
                        *w.refused.entry(key).or_default() += 1;
                    }
                    Outcome::Lost { why } => *w.lost.entry(why).or_default() += 1,
                }
                bar.inc(1);
            }
            w
        }));
    }
    let mut stats = SendStats {
        accepted: Vec::new(),
        encodings: BTreeMap::new(),
        segments: 0,
        refused: BTreeMap::new(),
        reasons: BTreeMap::new(),
        slow_burst: slow_burst(opts.messages),
        lost: BTreeMap::new(),
        kinds: BTreeMap::new(),
        hist: new_hist()?,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let w = t
            .await
            .map_err(|e| DemoError::Step(format!("a send task failed: {e}")))?;
        stats.accepted.extend(w.accepted);
        merge(&mut stats.encodings, w.encodings);
        stats.segments += w.segments;
        merge(&mut stats.refused, w.refused);
        for (k, (n, detail)) in w.reasons {
            stats.reasons.entry(k).or_insert((0, detail)).0 += n;
        }
        merge(&mut stats.lost, w.lost);
        merge(&mut stats.kinds, w.kinds);
        stats
            .hist
            .add(&w.hist)
            .map_err(|e| DemoError::Step(format!("histogram: {e}")))?;
    }
    stats.elapsed = started.elapsed();
    bar.finish_and_clear();
    stats.accepted.sort_unstable();
    Ok(stats)
}

fn merge<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// Where the delivery count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliverySource {
    Webhook,
    Store,
}

struct Deliveries {
    delivered: u64,
    source: DeliverySource,
    webhook_events: u64,
    waited: Duration,
}

/// Ids of delivered messages according to the sink's `message.status` events,
/// and whether any status event arrived at all.
fn delivered_at_sink(sink: &Sink) -> (HashSet<String>, u64) {
    let mut ids = HashSet::new();
    let mut status_events = 0;
    for ev in sink.events() {
        if ev.get("type").and_then(|t| t.as_str()) != Some("message.status") {
            continue;
        }
        status_events += 1;
        let data = ev.get("data");
        let status = data.and_then(|d| d.get("status")).and_then(|s| s.as_str());
        let id = data.and_then(|d| d.get("id")).and_then(|s| s.as_str());
        if let (Some("delivered"), Some(id)) = (status, id) {
            ids.insert(id.to_owned());
        }
    }
    (ids, status_events)
}

/// Waits (bounded) until every accepted message is delivered: by the sink's
/// `message.status` events when they arrive, else by the store.
async fn wait_deliveries(api: &Api, sink: &Sink, accepted: &[String]) -> Deliveries {
    let started = Instant::now();
    let deadline = started + DELIVERY_WAIT;
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let mut from_store: HashSet<String> = HashSet::new();
    loop {
        let (at_sink, events) = delivered_at_sink(sink);
        let sink_count = want.iter().filter(|id| at_sink.contains(**id)).count() as u64;
        if events > 0 {
            // The relay emits status webhooks: they are the source of truth.
            if sink_count == want.len() as u64 || Instant::now() >= deadline {
                return Deliveries {
                    delivered: sink_count,
                    source: DeliverySource::Webhook,
                    webhook_events: events,
                    waited: started.elapsed(),
                };
            }
        } else if want.is_empty() {
            return Deliveries {
                delivered: 0,
                source: DeliverySource::Webhook,
                webhook_events: 0,
                waited: started.elapsed(),
            };
        } else if started.elapsed() >= WEBHOOK_GRACE {
            // No status webhook so far: read the outcomes back from the store.
            let pending: Vec<&str> = want
                .iter()
                .copied()
                .filter(|id| !from_store.contains(*id))
                .collect();
            let found: Vec<Option<String>> = futures::stream::iter(pending)
                .map(|id| async move {
                    (api.status_of(id).await.as_deref() == Some("delivered")).then(|| id.to_owned())
                })
                .buffer_unordered(32)
                .collect()
                .await;
            from_store.extend(found.into_iter().flatten());
            if from_store.len() == want.len() || Instant::now() >= deadline {
                return Deliveries {
                    delivered: from_store.len() as u64,
                    source: DeliverySource::Store,
                    webhook_events: 0,
                    waited: started.elapsed(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The opt-out step's result.
enum OptOut {
    Passed,
    Skipped(String),
    Failed(String),
}

/// MO `STOP` from a recipient of the run, then a send to it must be refused
/// 422 `recipient_opted_out`.
async fn opt_out_step(api: &Api, sim: &SimHandle, stats: &SendStats) -> OptOut {
    let Some(&(i, _)) = stats.accepted.iter().find(|(i, _)| !is_slow(*i)) else {
        return OptOut::Skipped("no accepted message on the fast campaign".into());
    };
    let (to, from) = (recipient(i), FAST_NUMBERS[(i % 2) as usize]);
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        sim.send_mo(&to[1..], &from[1..], "STOP"),
    )
    .await;
    match answer {
        Ok(CommandStatus::EsmeRok) => {}
        Ok(status) => {
            return OptOut::Skipped(format!(
                "MO not wired: the relay answered the carrier {}",
                status_name(status)
            ))
        }
        Err(_) => return OptOut::Skipped("MO not wired: no answer to the deliver_sm".into()),
    }
    match api
        .send(from, &to, &Kind::Gsm7.text(i), FAST_CAMPAIGN)
        .await
    {
        Outcome::Refused { key, .. } if key == "422 recipient_opted_out" => OptOut::Passed,
        Outcome::Refused { key, .. } => OptOut::Failed(format!(
            "after STOP the next send was refused {key}, not 422 recipient_opted_out"
        )),
        Outcome::Accepted { .. } => {
            OptOut::Failed("after STOP the next send was accepted (201)".into())
        }
        Outcome::Lost { why } => OptOut::Failed(format!("after STOP the next send: {why}")),
    }
}

/// `sms_conduit_` sample lines of one `/metrics` scrape.
async fn scrape_metrics(url: &str) -> Result<usize, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let text = resp.text().await.map_err(|e| transport_kind(&e))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("sms_conduit_"))
        .count())
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Runs the demo; `Ok(true)` when every message was accounted for (and the
/// opt-out step, when the relay handles MO, behaved).
pub async fn run(opts: DemoOptions) -> Result<bool, DemoError> {
    let tmp = tempfile::Builder::new()
        .prefix("sms-conduit-demo-")
        .tempdir()?;
    // Ctrl-C abandons the run but still removes the temp dir (unless --keep).
    let outcome = tokio::select! {
        r = run_in(tmp.path(), &opts) => r,
        _ = tokio::signal::ctrl_c() => Err(DemoError::Step("interrupted".into())),
    };
    if opts.keep {
        let dir = tmp.keep();
        println!();
        println!("kept {}:", dir.display());
        let cfg = dir.join("sms-conduit.toml");
        println!("  config          {}", cfg.display());
        println!("  state (redb)    {}", dir.join("state").display());
        println!("  look around:");
        println!("    sms-conduit check-config --config {}", cfg.display());
        println!("    sms-conduit audit verify --config {}", cfg.display());
        println!("    sms-conduit audit export --config {}", cfg.display());
        println!(
            "    sms-conduit number-id --config {} {}",
            cfg.display(),
            recipient(0)
        );
        println!("  remove it with: rm -r {}", dir.display());
    }
    outcome
}

async fn run_in(dir: &Path, opts: &DemoOptions) -> Result<bool, DemoError> {
    println!("sms-conduit demo: {} messages on loopback", opts.messages);
    let files = make_files(dir)?;

    let sim_stop = CancellationToken::new();
    let mut sim_opts = SimOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    sim_opts.tls = Some((files.cert.clone(), files.key.clone()));
    sim_opts.system_id = Some(SYSTEM_ID.into());
    sim_opts.password = Some(files.smpp_password.clone());
    sim_opts.dlr_delay = DLR_DELAY;
    let sim = start_sim(sim_opts, sim_stop.clone()).await?;
    println!(
        "  simulated carrier  smpps://{} (receipts after {} ms)",
        sim.local_addr(),
        DLR_DELAY.as_millis()
    );

    let sink = Sink::start_self_signed(dir, Secret::new(files.webhook_secret.clone())).await?;
    println!("  webhook sink       {}", sink.url());

    let (api_key, key_hash) = crate::api::new_key();
    let toml = config_toml(
        sim.local_addr(),
        &key_hash,
        &sink.url(),
        slow_burst(opts.messages),
    );
    let config_path = files.dir.join("sms-conduit.toml");
    std::fs::write(&config_path, &toml)?;
    let config =
        Config::from_toml(&toml, &files.dir, None).map_err(|e| DemoError::Config(e.to_string()))?;
    let state_dir = config.node.state_dir.clone();

    let result = drive(&files, config, &api_key, &sim, &sink, opts, &state_dir).await;

    sink.stop().await;
    sim_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.wait()).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    files: &Files,
    config: Config,
    api_key: &str,
    sim: &SimHandle,
    sink: &Sink,
    opts: &DemoOptions,
    state_dir: &Path,
) -> Result<bool, DemoError> {
    let app = App::start(config).await?;
    let api = Arc::new(Api::new(
        &files.cert_pem,
        app.bound.api,
        api_key.to_owned(),
    )?);
    let metrics_url = format!("http://{}/metrics", app.bound.metrics);
    println!("  relay API          https://{}", app.bound.api);
    let run = exercise(&api, sim, sink, opts, &metrics_url).await;
    // Stop the relay whatever happened, so the store is flushed and closed.
    let clean = app.stop(Duration::from_secs(10)).await;
    let run = run?;

    let audit = crate::audit::verify_file(state_dir);
    summarize(run, clean, audit, &metrics_url)
}

struct Run {
    stats: SendStats,
    deliveries: Deliveries,
    opt_out: OptOut,
    metrics_lines: Result<usize, String>,
    sent: u64,
}

async fn exercise(
    api: &Arc<Api>,
    sim: &SimHandle,
    sink: &Sink,
    opts: &DemoOptions,
    metrics_url: &str,
) -> Result<Run, DemoError> {
    api.wait_ready(Duration::from_secs(15)).await?;
    println!("  /readyz            200 (carrier bound)");
    println!();
    println!(
        "[1/4] sending {} messages ({} in flight; 60% GSM-7, 25% UCS-2 with emoji, 15% multi-segment; every fourth on the slower campaign)",
        opts.messages, opts.concurrency
    );
    let stats = send_all(api.clone(), opts).await?;
    let sent = opts.messages;
    println!(
        "      {} answered in {:.2} s",
        sent,
        stats.elapsed.as_secs_f64()
    );

    println!(
        "[2/4] waiting for delivery receipts (up to {} s)",
        DELIVERY_WAIT.as_secs()
    );
    let ids: Vec<String> = stats.accepted.iter().map(|(_, id)| id.clone()).collect();
    let deliveries = wait_deliveries(api, sink, &ids).await;
    let how = match deliveries.source {
        DeliverySource::Webhook => "message.status webhooks at the sink",
        DeliverySource::Store => {
            "read back with GET /v1/messages/{id}: no message.status webhook arrived"
        }
    };
    println!(
        "      {}/{} delivered after {:.2} s ({how})",
        deliveries.delivered,
        ids.len(),
        deliveries.waited.as_secs_f64()
    );

    println!("[3/4] opt-out: MO STOP from a recipient of the run, then one more send to it");
    let opt_out = opt_out_step(api, sim, &stats).await;
    match &opt_out {
        OptOut::Passed => println!("      refused 422 recipient_opted_out, as it must be"),
        OptOut::Skipped(why) => println!("      skipped ({why})"),
        OptOut::Failed(why) => println!("      FAILED: {why}"),
    }

    println!("[4/4] scraping metrics, stopping the relay, verifying the audit chain");
    let metrics_lines = scrape_metrics(metrics_url).await;
    Ok(Run {
        stats,
        deliveries,
        opt_out,
        metrics_lines,
        sent,
    })
}

fn summarize(
    run: Run,
    clean_stop: bool,
    audit: Result<crate::audit::VerifyReport, crate::audit::VerifyError>,
    metrics_url: &str,
) -> Result<bool, DemoError> {
    let Run {
        stats,
        deliveries,
        opt_out,
        metrics_lines,
        sent,
    } = run;
    let accepted = stats.accepted.len() as u64;
    let refused: u64 = stats.refused.values().sum();
    let lost: u64 = stats.lost.values().sum();
    let join = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = |k| stats.kinds.get(&k).copied().unwrap_or(0);

    println!();
    println!("summary");
    println!("  sent             {sent}");
    println!(
        "  texts            {} GSM-7, {} UCS-2 with emoji, {} multi-segment",
        kind(Kind::Gsm7),
        kind(Kind::Ucs2),
        kind(Kind::Long)
    );
    println!(
        "  accepted         {accepted}  ({} segments; {})",
        stats.segments,
        join(&stats.encodings)
    );
    let source = match deliveries.source {
        DeliverySource::Webhook => format!(
            "message.status webhooks at the sink ({} events)",
            deliveries.webhook_events
        ),
        DeliverySource::Store => {
            "GET /v1/messages/{id}: no message.status webhook arrived".to_owned()
        }
    };
    println!("  delivered        {}  ({source})", deliveries.delivered);
    if refused > 0 {
        println!("  refused by code  {refused}  ({})", join(&stats.refused));
        // Why: the code, the campaign and the relay's own detail.
        for ((key, campaign), (n, detail)) in &stats.reasons {
            let limit = if *campaign == SLOW_CAMPAIGN {
                format!(
                    " (the demo's deliberately slow campaign: segments_per_minute {SLOW_SEGMENTS_PER_MINUTE}, burst {})",
                    stats.slow_burst
                )
            } else {
                String::new()
            };
            println!("    why            {n} x {key} on {campaign}{limit}: \"{detail}\"");
        }
    } else {
        println!("  refused by code  0");
    }
    if lost > 0 {
        println!("  unaccounted      {lost}  ({})", join(&stats.lost));
    } else {
        println!("  unaccounted      0");
    }
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    println!(
        "  throughput       {:.0} msg/s accepted ({:.0} answers/s)",
        accepted as f64 / secs,
        sent as f64 / secs
    );
    println!(
        "  latency          p50 {}  p99 {}  max {}",
        ms(stats.hist.value_at_quantile(0.5)),
        ms(stats.hist.value_at_quantile(0.99)),
        ms(stats.hist.max())
    );
    let opt_line = match &opt_out {
        OptOut::Passed => "STOP honoured: next send refused 422 recipient_opted_out".to_owned(),
        OptOut::Skipped(why) => format!("skipped ({why})"),
        OptOut::Failed(why) => format!("FAILED: {why}"),
    };
    println!("  opt-out          {opt_line}");
    let audit_ok = match &audit {
        Ok(r) => {
            let head = r.head.as_ref().map_or_else(
                || "empty".to_owned(),
                |h| format!("seq {} hash {}", h.seq, h.hash.get(..16).unwrap_or(&h.hash)),
            );
            let records = if r.count == 1 { "record" } else { "records" };
            println!("  audit chain      ok, {} {records}, head {head}", r.count);
            true
        }
        Err(e) => {
            println!("  audit chain      BROKEN: {e}");
            false
        }
    };
    match &metrics_lines {
        Ok(n) => println!("  metrics          {metrics_url} (scraped: {n} sms_conduit_ lines)"),
        Err(e) => println!("  metrics          {metrics_url} (scrape failed: {e})"),
    }
    if !clean_stop {
        println!("  stop             drain deadline passed with work in flight");
    }

    let accounted = lost == 0 && accepted + refused == sent && deliveries.delivered == accepted;
    let ok = accounted && audit_ok && !matches!(opt_out, OptOut::Failed(_));
    println!();
    if ok {
        println!("result: ok, every message accounted for ({accepted} accepted and delivered + {refused} refused by code = {sent} sent)");
    } else {
        let mut why = Vec::new();
        if lost > 0 {
            why.push(format!("{lost} without a definite outcome"));
        }
        if accepted + refused + lost != sent {
            why.push(format!(
                "{} answers for {sent} sends",
                accepted + refused + lost
            ));
        }
        if deliveries.delivered != accepted {
            why.push(format!(
                "{} of {accepted} accepted not delivered within {} s",
                accepted.saturating_sub(deliveries.delivered),
                DELIVERY_WAIT.as_secs()
            ));
        }
        if !audit_ok {
            why.push("audit chain broken".into());
        }
        if matches!(opt_out, OptOut::Failed(_)) {
            why.push("opt-out not honoured".into());
        }
        println!("result: FAILED ({})", why.join("; "));
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_60_25_15() {
        let mut counts = BTreeMap::new();
        for i in 0..2000 {
            *counts.entry(Kind::of(i)).or_insert(0u64) += 1;
        }
        assert_eq!(counts[&Kind::Gsm7], 1200);
        assert_eq!(counts[&Kind::Ucs2], 500);
        assert_eq!(counts[&Kind::Long], 300);
    }

    #[test]
    fn texts_have_the_intended_encodings_and_lengths() {
        let gsm = Kind::Gsm7.text(7);
        assert!(gsm.is_ascii() && gsm.len() <= 160);
        let ucs = Kind::Ucs2.text(7);
        assert!(!ucs.is_ascii() && ucs.encode_utf16().count() <= 70);
        let long = Kind::Long.text(7);
        assert_eq!(long.len(), 300);
        assert!(long.is_ascii());
    }

    #[test]
    fn recipients_are_e164() {
        for i in [0, 1, 999, 1000, 123_456] {
            assert!(crate::types::E164::parse(&recipient(i)).is_ok());
        }
    }

    #[test]
    fn config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        make_files(dir.path()).unwrap();
        std::fs::write(dir.path().join("sink.crt"), "").unwrap();
        let (_, hash) = crate::api::new_key();
        let toml = config_toml(
            "127.0.0.1:2775".parse().unwrap(),
            &hash,
            "https://127.0.0.1:9/events",
            10,
        );
        let cfg = Config::from_toml(&toml, dir.path(), None);
        assert!(
            cfg.is_ok(),
            "{}",
            cfg.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    async fn post_event(
        client: &reqwest::Client,
        sink: &Sink,
        secret: &[u8],
        ev: serde_json::Value,
    ) {
        let body = ev.to_string();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let resp = client
            .post(sink.url())
            .header(
                crate::webhook::SIGNATURE_HEADER,
                crate::webhook::sign::sign(secret, t, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }

    /// The sink path (used once the relay emits `message.status`): only
    /// `delivered` status events of accepted ids count, and the store is not
    /// consulted (the API here points nowhere).
    #[tokio::test]
    async fn deliveries_come_from_status_webhooks_when_they_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"whsec_test".to_vec();
        let sink = Sink::start_self_signed(dir.path(), Secret::new(secret.clone()))
            .await
            .unwrap();
        let pem = std::fs::read(sink.ca_file().unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let status = |id: &str, st: &str| {
            serde_json::json!({"id": "evt_1", "type": "message.status",
                "created_at": "2025-01-01T00:00:00.000Z",
                "data": {"id": id, "status": st, "segments": 1}})
        };
        post_event(&client, &sink, &secret, status("msg_a", "accepted")).await;
        post_event(&client, &sink, &secret, status("msg_a", "delivered")).await;
        post_event(&client, &sink, &secret, status("msg_b", "delivered")).await;
        post_event(&client, &sink, &secret, status("msg_other", "delivered")).await;
        post_event(
            &client,
            &sink,
            &secret,
            serde_json::json!({"id": "evt_2", "type": "message.received", "data": {}}),
        )
        .await;
        let (ids, events) = delivered_at_sink(&sink);
        assert_eq!(events, 4);
        assert_eq!(ids.len(), 3);

        let api = Api::new(
            &String::from_utf8(pem).unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "k".into(),
        )
        .unwrap();
        let d = wait_deliveries(&api, &sink, &["msg_a".into(), "msg_b".into()]).await;
        assert_eq!(d.source, DeliverySource::Webhook);
        assert_eq!(d.delivered, 2);
        assert!(d.waited < WEBHOOK_GRACE);
        sink.stop().await;
    }
}
