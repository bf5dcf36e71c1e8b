//! The `sms-conduit` command line (SPEC §2). Each command is a thin shell over
//! library code; `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Validate a config file; every error names its key. Exit 1 on any error.
    CheckConfig {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
    },
    /// Print the pseudonym of a number (HMAC-SHA256 with the deployment key), for audit look-ups.
    NumberId {
        #[arg(long, default_value = "/etc/sms-conduit/sms-conduit.toml")]
        config: PathBuf,
        /// The number in E.164 form, e.g. +15551234567.
        number: String,
    },
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { config } => Ok(check_config(&config)),
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
