//! The `sms-conduit` command line (SPEC §2). Each command is a thin shell over
//! library code; `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc, with every block wiped before it is freed (SPEC §1.1: no copy
// of a body outlives its relay; see service::zero_alloc).
#[cfg(not(feature = "bench-system-alloc"))]
#[global_allocator]
static GLOBAL: sms_conduit::service::zero_alloc::ZeroOnFree<mimalloc::MiMalloc> =
    sms_conduit::service::zero_alloc::ZeroOnFree(mimalloc::MiMalloc);
use sms_conduit::config::Config;

#[derive(Parser)]
#[command(
    name = "sms-conduit",
    version,
    about = "Carrier-edge SMS relay: HTTPS in, SMPP over TLS out, bodies never stored"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded demo: relay, simulated carrier and webhook sink on
    /// loopback with self-signed TLS in a temp dir; sends N messages through
    /// the HTTPS API and prints a summary. Exit 0 only if every message was
    /// accounted for.
    Demo(DemoArgs),
    /// Run the appliance (what the systemd unit starts).
    Run {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
    },
    /// Reload the running appliance (what the systemd unit's ExecReload
    /// runs): validate the config, send SIGHUP, wait for the outcome. Exit 1
    /// with the reason when the reload is refused.
    Reload {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// The running process (systemd: $MAINPID); default: the one that
        /// wrote <state_dir>/reload-status.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// A simulated carrier SMSC for tests, demos and benchmarks.
    SimCarrier(SimArgs),
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate a config file; every error names its key. Exit 1 on any error.
    CheckConfig {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
    },
    /// Load generator for the HTTPS API: progress bar, msg/s, latency percentiles.
    Bench(BenchArgs),
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write a verified backup of the store (metadata, outbox, opt-outs,
    /// audit chain; never message text) to FILE atomically. While the
    /// appliance runs it is asked for the backup over its metrics listener;
    /// otherwise the store is read directly.
    Backup {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// The backup file to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Base URL of the running appliance's metrics listener; default:
        /// `metrics.listen` of the config (loopback when it is a wildcard).
        #[arg(long)]
        metrics_url: Option<String>,
    },
    /// Put a backup into the config's (empty or missing) state dir; refuses
    /// a non-empty one and a backup whose audit chain does not verify.
    Restore {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// The backup file (from `sms-conduit backup`).
        #[arg(long)]
        from: PathBuf,
    },
    /// Print the pseudonym of a number (HMAC-SHA256 with the deployment key), for audit look-ups.
    NumberId {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// The number in E.164 form, e.g. +15551234567.
        number: String,
    },
}

#[derive(clap::Args)]
// Without the `tools` feature the command only says it needs it.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
struct DemoArgs {
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Keep the temp dir (config, state, certificates) and print how to look around.
    #[arg(long)]
    keep: bool,
}

#[derive(clap::Args)]
// Without the `tools` feature the command only says it needs it.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:2775")]
    listen: std::net::SocketAddr,
    /// PEM certificate (with --tls-key: SMPP over TLS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Only this system_id may bind (with --password).
    #[arg(long, requires = "password")]
    system_id: Option<String>,
    #[arg(long, requires = "system_id")]
    password: Option<String>,
    /// Delay before the delivery receipt.
    #[arg(long, default_value_t = 100)]
    dlr_delay_ms: u64,
    /// Fraction (0 to 1) of submits refused with ESME_RSUBMITFAIL.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Above this many submits per second answer ESME_RTHROTTLED; 0 = never.
    #[arg(long, default_value_t = 0)]
    throttle_tps: u32,
    /// Deliver each receipt on another bound session of the same
    /// system_id than the one that took the submit (in turn), as a
    /// carrier may; on the same one only when no other is bound.
    #[arg(long)]
    dlr_on_other_bind: bool,
}

#[derive(clap::Args)]
// Without the `tools` feature the command only says it needs it.
#[cfg_attr(not(feature = "tools"), allow(dead_code))]
struct BenchArgs {
    /// Base URL of the API, e.g. https://127.0.0.1:8443
    #[arg(long)]
    url: String,
    #[arg(long, env = "SMS_CONDUIT_API_KEY")]
    api_key: String,
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Concurrent connections (HTTP/1.1) or streams (HTTP/2).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages per second; omitted = as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// One multiplexed HTTP/2 connection instead of HTTP/1.1 keep-alive connections.
    #[arg(long)]
    http2: bool,
    /// Send every message with an `Idempotency-Key` of its own, as a
    /// careful client does (the relay then claims the key durably before
    /// the submit_sm).
    #[arg(long)]
    idempotency_keys: bool,
    /// PEM CA to trust (a self-signed relay).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value = "+15551230001")]
    from: String,
    #[arg(long, default_value = "CX4K2M9")]
    campaign: String,
    /// Recipients are this prefix plus a counter.
    #[arg(long, default_value = "+1555")]
    to_prefix: String,
    #[arg(
        long,
        default_value = "Reminder: your appointment is tomorrow at 10:00. Reply STOP to opt out."
    )]
    text: String,
    /// PID of the relay, to report its CPU time per message.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// PID of the carrier (`sim-carrier`), to report its CPU time per
    /// message beside the relay's.
    #[arg(long)]
    carrier_pid: Option<u32>,
    /// Receive the relay's webhooks on this address (HTTPS, with
    /// --sink-cert/--sink-key, verified with --webhook-secret-file) and
    /// wait for every accepted message's receipt before reporting.
    #[arg(long, requires_all = ["sink_cert", "sink_key", "webhook_secret_file"])]
    webhook_sink: Option<std::net::SocketAddr>,
    #[arg(long)]
    sink_cert: Option<PathBuf>,
    #[arg(long)]
    sink_key: Option<PathBuf>,
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain (on a copy of the store, safe while the appliance runs).
    /// Exit 1 and the first broken record on tampering.
    Verify {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
    },
    /// Audit records as JSON lines in seq order, with their hashes, for a SIEM.
    Export {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// Records at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new API key once, and the line (its SHA-256) to put in the config.
    New {
        /// The `[[clients]] id` the key is for.
        #[arg(long)]
        client: String,
        /// Days until the key expires (its `not_after`); 0 = never.
        #[arg(long, default_value_t = DEFAULT_KEY_DAYS)]
        days: u32,
    },
}

/// `keys new` gives a key this many days by default: a yearly rotation,
/// the "regular change" of credentials the HIPAA guidance asks for.
const DEFAULT_KEY_DAYS: u32 = 365;

/// Logs go to stderr (journald under systemd). `RUST_LOG` filters; the
/// default keeps rusmpp's per-PDU tracing off.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rusmpp=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// Over 120 lines on purpose: the command line's one dispatch, one short
// arm per subcommand; each arm calls into the library.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => tools::demo(a),
        Command::SimCarrier(a) => tools::sim_carrier(a),
        Command::Bench(a) => tools::bench(a),
        Command::Run { config } => {
            init_logging();
            sms_conduit::app::run_blocking(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::New { client, days },
        } => {
            let (key, hash) = sms_conduit::api::new_key();
            println!("API key for client {client:?} (shown once; give it to the client, store it nowhere else):");
            println!("  {key}");
            println!("Add its hash to [[clients]] id = {client:?} in the config:");
            if days == 0 {
                println!("  key_sha256 = [\"{hash}\"]");
            } else {
                let not_after = (chrono::Utc::now() + chrono::Duration::days(i64::from(days)))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                println!("  key_sha256 = [{{ sha256 = \"{hash}\", not_after = \"{not_after}\" }}]");
                println!("(it expires in {days} days; --days 0 for a key that never expires)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::Reload { config, pid } => {
            match sms_conduit::app::request_reload(&config, pid, sms_conduit::app::RELOAD_WAIT) {
                Ok(s) => {
                    println!("reloaded (pid {}, reload {})", s.pid, s.generation);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => {
            let cfg = load_or_report(&config).ok_or_else(|| anyhow::anyhow!("invalid config"))?;
            match sms_conduit::audit::verify_file(&cfg.node.state_dir) {
                Ok(r) => {
                    let head = r
                        .head
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "empty".into());
                    println!("audit chain ok: {} records, head {head}", r.count);
                    if let Some(anchor) = r.anchor.filter(|_| r.first_seq.unwrap_or(0) > 0) {
                        println!(
                            "(starts at seq {} after retention pruning; anchor {anchor})",
                            r.first_seq.unwrap_or(0)
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    config,
                    since,
                    until,
                },
        } => {
            let cfg = load_or_report(&config).ok_or_else(|| anyhow::anyhow!("invalid config"))?;
            let t = |s: Option<String>, what: &str| -> anyhow::Result<_> {
                s.map(|s| {
                    sms_conduit::audit::parse_time(&s).map_err(|e| anyhow::anyhow!("--{what}: {e}"))
                })
                .transpose()
            };
            let (since, until) = (t(since, "since")?, t(until, "until")?);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = sms_conduit::audit::export_file(&cfg.node.state_dir, since, until, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("{n} records exported");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup {
            config,
            out,
            metrics_url,
        } => {
            use sms_conduit::backup;
            let cfg = load_or_report(&config).ok_or_else(|| anyhow::anyhow!("invalid config"))?;
            let report = match backup::backup_offline(&cfg.node.state_dir, &out) {
                Err(backup::BackupError::Running(_)) => {
                    let base = metrics_url.unwrap_or_else(|| {
                        let a = cfg.metrics.listen;
                        let ip = match a.ip() {
                            std::net::IpAddr::V4(v) if v.is_unspecified() => {
                                std::net::Ipv4Addr::LOCALHOST.into()
                            }
                            std::net::IpAddr::V6(v) if v.is_unspecified() => {
                                std::net::Ipv6Addr::LOCALHOST.into()
                            }
                            ip => ip,
                        };
                        let scheme = if cfg.metrics.tls { "https" } else { "http" };
                        format!("{scheme}://{}", std::net::SocketAddr::new(ip, a.port()))
                    });
                    eprintln!("the appliance is running; asking it for the backup at {base}");
                    let token = backup::admin_token(&cfg.node.pseudonym_key);
                    let ca = cfg.metrics.tls.then_some(cfg.tls.cert_file.as_path());
                    let rt = tokio::runtime::Runtime::new()?;
                    rt.block_on(backup::fetch_backup(&base, &token, ca, &out))?
                }
                other => other?,
            };
            print_backup(&out, &report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { config, from } => {
            let cfg = load_or_report(&config).ok_or_else(|| anyhow::anyhow!("invalid config"))?;
            let report = sms_conduit::backup::restore(&from, &cfg.node.state_dir)?;
            print_backup(&cfg.node.state_dir, &report);
            println!(
                "restored; start the appliance, then confirm with `sms-conduit audit verify --config {}`",
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::NumberId { config, number } => {
            let cfg = load_or_report(&config).ok_or_else(|| anyhow::anyhow!("invalid config"))?;
            let n = sms_conduit::types::E164::parse(&number)?;
            println!(
                "{}",
                sms_conduit::types::Pseudonym::of(&cfg.node.pseudonym_key, &n).to_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The subcommands of the tools that ship with the appliance (`src/tools/`,
/// the `tools` cargo feature). Without the feature they say they need it.
#[cfg(feature = "tools")]
mod tools {
    use super::*;

    /// The runtime of `sim-carrier` and `bench`: one thread, like the
    /// appliance's default. They share the cores with the relay they
    /// measure, and on the multi-thread runtime every network event also
    /// woke a second worker: measured on the 2-core VM (BENCHMARKS.md,
    /// session 15), one thread cost the simulator and the bench ~30% less
    /// CPU per message at 1,000 msg/s and flat out, and left the relay
    /// 8% more flat-out throughput. Nothing in either blocks its thread.
    fn instrument_runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }

    pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
        let DemoArgs { messages, keep } = a;
        sms_conduit::tools::demo::init_logging();
        let rt = tokio::runtime::Runtime::new()?;
        let ok = rt.block_on(sms_conduit::tools::demo::run(
            sms_conduit::tools::demo::DemoOptions::new(messages, keep),
        ))?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    pub fn sim_carrier(a: SimArgs) -> anyhow::Result<ExitCode> {
        let SimArgs {
            listen,
            tls_cert,
            tls_key,
            system_id,
            password,
            dlr_delay_ms,
            fail_rate,
            throttle_tps,
            dlr_on_other_bind,
        } = a;
        init_logging();
        if !(0.0..=1.0).contains(&fail_rate) {
            anyhow::bail!("--fail-rate must be between 0 and 1");
        }
        let mut opts = sms_conduit::tools::sim::SimOptions::new(listen);
        opts.tls = tls_cert.zip(tls_key);
        opts.system_id = system_id;
        opts.password = password;
        opts.dlr_delay = std::time::Duration::from_millis(dlr_delay_ms);
        opts.fail_rate = fail_rate;
        opts.throttle_tps = throttle_tps;
        opts.dlr_on_other_bind = dlr_on_other_bind;
        let rt = instrument_runtime()?;
        let report = rt.block_on(async {
            let stop = tokio_util::sync::CancellationToken::new();
            let sim = sms_conduit::tools::sim::start_sim(opts, stop.clone()).await?;
            eprintln!("sim-carrier listening on {}", sim.local_addr());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
            sim.wait().await;
            anyhow::Ok(sim.report())
        })?;
        println!(
                "binds {}  bind failures {}  submits {}  accepted {}  failed {}  throttled {}  receipts sent {}  mo sent {}",
                report.binds,
                report.bind_failures,
                report.submits,
                report.accepted,
                report.failed,
                report.throttled,
                report.receipts_sent,
                report.mo_sent
            );
        if dlr_on_other_bind {
            println!("receipts on another bind {}", report.receipts_on_other_bind);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
        let BenchArgs {
            url,
            api_key,
            messages,
            connections,
            rate,
            http2,
            idempotency_keys,
            ca_file,
            from,
            campaign,
            to_prefix,
            text,
            relay_pid,
            carrier_pid,
            webhook_sink,
            sink_cert,
            sink_key,
            webhook_secret_file,
        } = a;
        let opts = sms_conduit::tools::bench::BenchOptions {
            url,
            api_key,
            messages,
            connections,
            rate,
            http2,
            idempotency_keys,
            ca_file,
            from,
            campaign,
            to_prefix,
            text,
            relay_pid,
            carrier_pid,
            progress: true,
            webhook_sink: match (webhook_sink, sink_cert, sink_key, webhook_secret_file) {
                (Some(listen), Some(cert_file), Some(key_file), Some(secret_file)) => {
                    Some(sms_conduit::tools::bench::BenchSink {
                        listen,
                        cert_file,
                        key_file,
                        secret_file,
                    })
                }
                _ => None,
            },
        };
        let rt = instrument_runtime()?;
        let report = rt.block_on(sms_conduit::tools::bench::run(opts))?;
        print!("{}", report.table());
        Ok(ExitCode::SUCCESS)
    }
}

/// Built without the `tools` feature: the appliance alone.
#[cfg(not(feature = "tools"))]
mod tools {
    use super::*;

    fn needs(command: &str) -> anyhow::Result<ExitCode> {
        anyhow::bail!(
            "`{command}` needs sms-conduit built with the `tools` cargo feature (on by default)"
        )
    }

    pub fn demo(_: DemoArgs) -> anyhow::Result<ExitCode> {
        needs("demo")
    }

    pub fn sim_carrier(_: SimArgs) -> anyhow::Result<ExitCode> {
        needs("sim-carrier")
    }

    pub fn bench(_: BenchArgs) -> anyhow::Result<ExitCode> {
        needs("bench")
    }
}

/// One line per table and the audit chain's head.
fn print_backup(path: &std::path::Path, r: &sms_conduit::backup::BackupReport) {
    let head = r
        .audit
        .head
        .as_ref()
        .map(|h| h.to_string())
        .unwrap_or_else(|| "empty".into());
    println!(
        "{}: audit chain ok ({} records, head {head})",
        path.display(),
        r.audit.count
    );
    for (table, n) in &r.tables {
        println!("  {table}: {n}");
    }
}

/// Loads a config, printing every error to stderr when it is invalid.
fn load_or_report(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(cfg) => {
            let errors = sms_conduit::preflight::check_tls_material(&cfg);
            if errors.is_empty() {
                return Some(cfg);
            }
            for e in errors {
                eprintln!("{}: {e}", path.display());
            }
            None
        }
        Err(errors) => {
            for e in errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            None
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match load_or_report(path) {
        Some(cfg) => {
            println!(
                "{}: ok ({} carriers, {} peers, {} campaigns, {} clients)",
                path.display(),
                cfg.carriers.len(),
                cfg.peers.len(),
                cfg.campaigns.len(),
                cfg.clients.len()
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
