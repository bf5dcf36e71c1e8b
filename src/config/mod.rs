//! Configuration: parse the TOML file (SPEC §3), validate every key, and hand
//! the rest of the program typed, checked values.
//!
//! Owns: reading the file, resolving `*_file` secrets (systemd
//! `$CREDENTIALS_DIRECTORY` first, then relative to the config file), and every
//! rule about what a valid config is. Errors are collected, not returned at the
//! first one, and each names its key path (`campaigns[1].numbers[0]: …`).
//!
//! Unknown keys are errors. They are found with `serde_ignored` rather than
//! `#[serde(deny_unknown_fields)]`, because the latter stops at the first one and
//! an operator fixing a config wants all of them in one run; each names the
//! closest known key of its table when it looks like a typo ([`suggest`]).
//! A type error stops serde; the file is parsed again without the offending
//! key to find the others, so one run names them all.
//!
//! Must not know: sockets, TLS objects, the store. Later code never re-parses a
//! string from here.

mod raw;
mod suggest;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::RawConfig;

use crate::types::{Secret, E164};

/// One problem in a config file: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path with indices, e.g. `campaigns[1].numbers[0]`.
    pub key: String,
    /// What is wrong, in words an operator acts on.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            problem: problem.into(),
        }])
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for reloads and relative paths).
    pub path: PathBuf,
    /// SHA-256 of the file bytes, hex; audited on reload.
    pub file_sha256: String,
    pub node: Node,
    pub tls: Tls,
    pub api: Api,
    pub metrics: Metrics,
    pub smpp_server: SmppServer,
    pub carriers: Vec<Carrier>,
    pub peers: Vec<Peer>,
    pub brands: Vec<Brand>,
    pub campaigns: Vec<Campaign>,
    pub clients: Vec<Client>,
    pub audit: Audit,
    pub store: Store,
    /// `[fleet]`: shared state in Redis; `None` on a single appliance.
    pub fleet: Option<Fleet>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub state_dir: PathBuf,
    pub drain: Duration,
    pub lock_memory: bool,
    /// 32 bytes: the HMAC key for number pseudonyms (SPEC §1.2).
    pub pseudonym_key: Secret,
    /// Receipt rule 1: how long after a segment's final receipt the
    /// others' may come before the received ones decide (relay::settle).
    pub receipt_window: Duration,
    /// Receipt rule 2: a message with no final status this long after it
    /// was sent becomes `unknown`.
    pub receipt_deadline: Duration,
    /// Threads of the async runtime (the store's writer has its own).
    /// One by default: at a steady rate a second one costs more CPU per
    /// message than it gives (its wake-ups), see `run_runtime`.
    pub worker_threads: usize,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Api {
    pub listen: SocketAddr,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Time allowed for a client's TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// One request's whole time (SPEC §4): its submits must be written by
    /// this less the carriers' response timeout, so that an answer, or the
    /// unknown-outcome 504, comes within it.
    pub send_deadline: Duration,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub listen: SocketAddr,
    /// Plain HTTP is allowed only on loopback; otherwise the listener uses TLS.
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub struct SmppServer {
    pub listen: Option<SocketAddr>,
    pub plaintext_listen: Option<SocketAddr>,
    pub idle_timeout: Duration,
    pub window: u32,
    /// Connections on both listeners together, bound or not.
    pub max_connections: usize,
    /// Connections from one source address that have not bound yet.
    pub max_unbound_per_address: usize,
    /// From accept to a successful bind (TLS handshake included).
    pub bind_timeout: Duration,
    /// We send enquire_link on a bound peer's session this often.
    pub enquire_link: Duration,
}

/// How an outbound pool binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Transceiver,
    Transmitter,
    Receiver,
    /// One transmitter and one receiver session per configured bind.
    TransmitterReceiver,
}

impl BindMode {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "transceiver" => Some(BindMode::Transceiver),
            "transmitter" => Some(BindMode::Transmitter),
            "receiver" => Some(BindMode::Receiver),
            "transmitter+receiver" | "transmitter_receiver" => Some(BindMode::TransmitterReceiver),
            _ => None,
        }
    }
}

/// `PartialEq` tells a reload which carrier pools must be rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub struct Carrier {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub system_id: String,
    pub password: Secret,
    pub system_type: String,
    pub ca_file: Option<PathBuf>,
    pub server_name: String,
    pub bind: BindMode,
    pub binds: u32,
    pub window: u32,
    /// 0 = no limit.
    pub max_tps: u32,
    /// E.164 prefixes with `+` (`+1`, `+4420`); empty = every destination.
    pub prefixes: Vec<String>,
    pub priority: u32,
    pub enquire_link: Duration,
    pub response_timeout: Duration,
    /// Pinned SHA-256 of the carrier's end-entity certificate (DER): when
    /// set, that certificate is trusted instead of a CA chain.
    pub cert_sha256: Option<[u8; 32]>,
}

/// `PartialEq` tells a reload whose sessions must be unbound.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub name: String,
    pub system_id: String,
    /// SHA-256 of the password.
    pub password_sha256: [u8; 32],
    pub allow: Vec<ipnet::IpNet>,
    pub max_binds: u32,
    /// The carrier this peer speaks for: its receipts are looked up under
    /// that carrier's name (`None` = the peer's own name).
    pub carrier: Option<String>,
    /// SHA-256 of the client certificate (DER) the peer must present at
    /// bind, on the TLS listener.
    pub cert_sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub struct Brand {
    pub id: String,
    /// Segments per local day over all the brand's campaigns; 0 = none.
    pub daily_cap: u64,
    pub daily_reset_tz: chrono_tz::Tz,
}

/// `[fleet]` (SPEC §8): the Redis that several nodes share.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// `rediss://…` (or `redis://`/`redis+unix://` on loopback), without a
    /// password: that comes from `password`.
    pub redis_url: String,
    /// From `password_file`, trimmed; `None` when not set.
    pub password: Option<Secret>,
    /// PEM roots for `rediss://`; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key this deployment writes (e.g. `smsc:prod:`).
    pub key_prefix: String,
    /// How long a carrier-id index entry lives in Redis.
    pub dlr_index_ttl: Duration,
    /// Longest wait for one Redis call before it counts as failed.
    pub timeout: Duration,
}

/// `Default` is for tests that build a campaign by hand.
#[derive(Debug, Clone, Default)]
pub struct Campaign {
    pub id: String,
    pub brand: String,
    pub numbers: Vec<E164>,
    pub segments_per_minute: u32,
    pub burst: u32,
    /// 0 = no per-number limit.
    pub number_segments_per_minute: u32,
    pub help_text: String,
    pub stop_text: String,
    pub start_text: String,
    /// A send to a recipient without a recorded consent for this campaign
    /// is refused (`consent_missing`).
    pub require_opt_in: bool,
    /// MO keywords (upper case) that record a consent; answered with
    /// `opt_in_text`.
    pub opt_in_keywords: Vec<String>,
    pub opt_in_text: String,
}

/// `Default` is for tests that build a client by hand
/// (`..Default::default()`), so new optional fields do not break them.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub id: String,
    /// SHA-256 digests of the client's API keys.
    pub key_sha256: Vec<[u8; 32]>,
    /// Each key's `not_after`, in the order of `key_sha256` (same length):
    /// from that instant on the key is refused. `None` = never expires.
    pub key_not_after: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    /// SHA-256 of the DER certificates the client's TLS connection must
    /// present beside its key (a second factor); empty = key alone.
    pub client_cert_sha256: Vec<[u8; 32]>,
    pub campaigns: Vec<String>,
    pub webhook: Option<Webhook>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    /// From `webhook_secret_file`, trimmed (surrounding whitespace, a
    /// trailing newline) when it is UTF-8.
    pub secret: Secret,
    /// From `webhook_secret_next_file`, trimmed the same way: while set,
    /// every webhook is signed with both secrets (a rotation).
    pub secret_next: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub concurrency: u32,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub retention_days: u32,
}

/// `store.commit_wait_max_ms` when the file does not set it, and the
/// store's own wait until a config sets one (the reasons for 5 ms are at
/// `store::writer::LINGER_MAX`).
pub const COMMIT_WAIT_MAX_MS_DEFAULT: u32 = 5;

#[derive(Debug, Clone)]
pub struct Store {
    pub metadata_retention_days: u32,
    /// The longest a send's commit waits for other ops to share it, at a
    /// steady rate (0–50 ms, default [`COMMIT_WAIT_MAX_MS_DEFAULT`]): CPU
    /// per message against latency. 0: latency first (see
    /// `store::writer::floor_for`).
    pub commit_wait_max: Duration,
}

impl Config {
    /// Reads, parses and validates a config file. Every problem is reported.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let mut cfg = Self::from_toml(&text, &base, creds.as_deref())?;
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }

    /// Parses and validates config text. `base` resolves relative `*_file`
    /// paths; `credentials_dir` (systemd LoadCredential=) is searched first.
    pub fn from_toml(
        text: &str,
        base: &Path,
        credentials_dir: Option<&Path>,
    ) -> Result<Config, ConfigErrors> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
        let ignored = serde_ignored::Deserializer::new(de, &mut on_unknown);
        let raw: Result<RawConfig, _> = serde_path_to_error::deserialize(ignored);
        let mut errors: Vec<ConfigError> = unknown
            .iter()
            .map(|k| ConfigError {
                key: k.clone(),
                problem: suggest::unknown_key(k),
            })
            .collect();
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let msg = inner.message().to_string();
                let line = inner
                    .span()
                    .map(|s| {
                        format!(
                            " (line {})",
                            text[..s.start.min(text.len())].lines().count().max(1)
                        )
                    })
                    .unwrap_or_default();
                let key = if key == "." { String::new() } else { key };
                errors.push(ConfigError {
                    key,
                    problem: format!("{msg}{line}"),
                });
                more_type_errors(text, &mut errors);
                return Err(ConfigErrors(errors));
            }
        };
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        let files = validate::FileResolver {
            base,
            credentials_dir,
        };
        match validate::validate(raw, &files) {
            Ok(mut cfg) if errors.is_empty() => {
                cfg.file_sha256 = digest;
                Ok(cfg)
            }
            Ok(_) => Err(ConfigErrors(errors)),
            Err(mut more) => {
                errors.append(&mut more.0);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Campaigns by id.
    pub fn campaign(&self, id: &str) -> Option<&Campaign> {
        self.campaigns.iter().find(|c| c.id == id)
    }

    /// Brands by id.
    pub fn brand(&self, id: &str) -> Option<&Brand> {
        self.brands.iter().find(|b| b.id == id)
    }

    /// Map from each sender number to its campaign id.
    pub fn number_index(&self) -> HashMap<E164, String> {
        let mut m = HashMap::new();
        for c in &self.campaigns {
            for n in &c.numbers {
                m.insert(n.clone(), c.id.clone());
            }
        }
        m
    }
}

/// The most type errors [`more_type_errors`] looks for after the first: a
/// bound on its re-parses (each is a whole-file deserialization).
const MAX_TYPE_ERRORS: usize = 64;

/// After a type error, the others: the file is parsed as a TOML table, the
/// offending key removed and the rest deserialized again, until it parses or
/// an error cannot be removed (a missing key), appending each error and
/// every unknown key not named yet. The rules of `validate` need a file
/// that parses, so they run once these are fixed.
fn more_type_errors(text: &str, errors: &mut Vec<ConfigError>) {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return; // a syntax error: the first error says where
    };
    // The first error's key: removed before the first re-parse.
    let Some(first) = errors.last().map(|e| e.key.clone()) else {
        return;
    };
    let mut remove = first;
    for _ in 0..MAX_TYPE_ERRORS {
        if remove.is_empty() || !remove_key(&mut table, &remove) {
            return;
        }
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
        let value = toml::Value::Table(table.clone());
        let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let raw: Result<RawConfig, _> = serde_path_to_error::deserialize(ignored);
        for k in unknown {
            if !errors.iter().any(|e| e.key == k) {
                errors.push(ConfigError {
                    problem: suggest::unknown_key(&k),
                    key: k,
                });
            }
        }
        let Err(e) = raw else {
            return;
        };
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        if errors.iter().any(|x| x.key == key) {
            return; // removing it did not help: stop rather than loop
        }
        errors.push(ConfigError {
            key: key.clone(),
            problem: e.into_inner().message().to_string(),
        });
        remove = key;
    }
}

/// Removes the entry at `path` (`campaigns[1].burst`) from `table`; false
/// when there is none.
fn remove_key(table: &mut toml::Table, path: &str) -> bool {
    let mut parts: Vec<(&str, Vec<usize>)> = Vec::new();
    for seg in path.split('.') {
        let (name, rest) = seg.split_once('[').unwrap_or((seg, ""));
        let indices = rest
            .split('[')
            .filter_map(|i| i.trim_end_matches(']').parse().ok())
            .collect();
        parts.push((name, indices));
    }
    let Some(((last, last_idx), head)) = parts.split_last() else {
        return false;
    };
    let mut cur = table;
    for (name, indices) in head {
        let mut v = match cur.get_mut(*name) {
            Some(v) => v,
            None => return false,
        };
        for i in indices {
            v = match v.as_array_mut().and_then(|a| a.get_mut(*i)) {
                Some(v) => v,
                None => return false,
            };
        }
        cur = match v.as_table_mut() {
            Some(t) => t,
            None => return false,
        };
    }
    if last_idx.is_empty() {
        return cur.remove(*last).is_some();
    }
    // `numbers[1]`: drop the element (the array's other errors surface next).
    let mut v = match cur.get_mut(*last) {
        Some(v) => v,
        None => return false,
    };
    let (inner, tail) = last_idx.split_at(last_idx.len() - 1);
    for i in inner {
        v = match v.as_array_mut().and_then(|a| a.get_mut(*i)) {
            Some(v) => v,
            None => return false,
        };
    }
    match v.as_array_mut() {
        Some(a) if tail[0] < a.len() => {
            a.remove(tail[0]);
            true
        }
        _ => false,
    }
}

/// Formats a `serde_ignored` path the way every other error names keys:
/// `campaigns[0].burst`, skipping `Option` wrappers.
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let head = key_path(parent);
            if head.is_empty() {
                key.to_string()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

#[cfg(test)]
mod tests;
