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

mod checks;
mod client;
mod setup;
mod summary;

use checks::*;
use client::*;
use setup::*;
use summary::*;

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
