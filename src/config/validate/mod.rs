//! From [`RawConfig`] to [`Config`]: every rule, every error with its key path.
//!
//! Code map: this file holds the checker ([`Check`]), the order of the
//! sections and the node, TLS, API and SMPP-server rules; [`links`] the
//! carriers, peers and fleet; [`tenants`] the brands, campaigns and
//! clients.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

mod links;
mod tenants;

use links::{carriers, fleet, is_loopback_host, peers};
use tenants::{brands, campaigns, clients};

/// Resolves `*_file` values: absolute paths as they are; relative ones in the
/// systemd credentials directory first, then beside the config file.
pub(super) struct FileResolver<'a> {
    pub base: &'a Path,
    pub credentials_dir: Option<&'a Path>,
}

impl FileResolver<'_> {
    fn resolve(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Some(dir) = self.credentials_dir {
            let c = dir.join(p);
            if c.exists() {
                return c;
            }
        }
        self.base.join(p)
    }
}

/// Accumulates errors while building the typed config.
struct Check<'a> {
    errors: Vec<ConfigError>,
    files: &'a FileResolver<'a>,
}

impl Check<'_> {
    fn err(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            problem: problem.into(),
        });
    }

    /// Path of an existing, readable file named by `key`.
    fn existing_file(&mut self, key: &str, value: &str) -> PathBuf {
        let path = self.files.resolve(value);
        if let Err(e) = std::fs::metadata(&path) {
            self.err(
                key,
                format!("cannot read {:?} ({}): {e}", value, path.display()),
            );
        }
        path
    }

    /// Contents of a secret file named by `key`; empty files are errors.
    fn secret(&mut self, key: &str, value: &str) -> Secret {
        let path = self.files.resolve(value);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                self.err(key, format!("secret file {} is empty", path.display()));
                Secret::new(Vec::new())
            }
            Ok(bytes) => Secret::new(bytes),
            Err(e) => {
                self.err(
                    key,
                    format!("cannot read {:?} ({}): {e}", value, path.display()),
                );
                Secret::new(Vec::new())
            }
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    format!("{value:?} is not an address:port (e.g. \"127.0.0.1:8443\")"),
                );
                None
            }
        }
    }

    fn id(&mut self, key: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            self.err(
                key,
                format!("{value:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
            );
        }
    }

    fn unique<'v>(&mut self, seen: &mut HashSet<&'v str>, key: &str, value: &'v str, what: &str) {
        if !seen.insert(value) {
            self.err(key, format!("duplicate {what} {value:?}"));
        }
    }

    /// A certificate fingerprint: 64 hex digits, colons allowed (as
    /// `openssl x509 -noout -fingerprint -sha256` prints it).
    fn fingerprint(&mut self, key: &str, value: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        let digits: String = value.trim().chars().filter(|c| *c != ':').collect();
        match hex::decode(&digits) {
            Ok(v) if v.len() == 32 => out.copy_from_slice(&v),
            _ => self.err(
                key,
                "must be the certificate's SHA-256 fingerprint: 64 hex digits, colons allowed (openssl x509 -noout -fingerprint -sha256)",
            ),
        }
        out
    }

    fn sha256_hex(&mut self, key: &str, value: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        match hex::decode(value.trim()) {
            Ok(v) if v.len() == 32 => out.copy_from_slice(&v),
            _ => self.err(key, "must be 64 hex characters (a SHA-256 digest)"),
        }
        out
    }

    fn positive(&mut self, key: &str, value: u64, max: u64) {
        self.between(key, value, 1, max);
    }

    fn between(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.err(key, format!("must be between {min} and {max}, got {value}"));
        }
    }
}

pub(super) fn validate(raw: RawConfig, files: &FileResolver<'_>) -> Result<Config, ConfigErrors> {
    let mut c = Check {
        errors: Vec::new(),
        files,
    };

    // [node]
    c.id("node.id", &raw.node.id);
    if raw.node.state_dir.is_empty() {
        c.err("node.state_dir", "must not be empty");
    }
    let state_dir = {
        let p = Path::new(&raw.node.state_dir);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            files.base.join(p)
        }
    };
    c.positive("node.drain_secs", raw.node.drain_secs, 3600);
    c.positive("node.worker_threads", raw.node.worker_threads, 256);
    c.positive(
        "node.receipt_window_secs",
        raw.node.receipt_window_secs,
        7 * 86_400,
    );
    c.positive(
        "node.receipt_deadline_secs",
        raw.node.receipt_deadline_secs,
        30 * 86_400,
    );
    let key = c.secret("node.pseudonym_key_file", &raw.node.pseudonym_key_file);
    let pseudonym_key = pseudonym_key(&mut c, key);

    let tls = tls(&mut c, raw.tls.as_ref());
    let api = api(&mut c, raw.api.as_ref());

    // [metrics]
    let metrics_listen = c
        .addr("metrics.listen", &raw.metrics.listen)
        .unwrap_or_else(unspecified);
    let metrics = Metrics {
        listen: metrics_listen,
        tls: !metrics_listen.ip().is_loopback(),
    };

    let smpp_server = smpp_server(&mut c, &raw.smpp_server);

    let carriers = carriers(&mut c, &raw.carriers);
    let api = send_deadline(&mut c, api, &carriers, raw.node.drain_secs);
    let peers = peers(&mut c, &raw.peers, &carriers, raw.tls.as_ref());
    let brands = brands(&mut c, &raw.brands);
    let campaigns = campaigns(&mut c, &raw.campaigns, &raw.brands);
    let clients = clients(&mut c, &raw.clients, &raw.campaigns);

    c.positive(
        "audit.retention_days",
        u64::from(raw.audit.retention_days),
        36_500,
    );
    c.positive(
        "store.metadata_retention_days",
        u64::from(raw.store.metadata_retention_days),
        36_500,
    );
    c.between(
        "store.commit_wait_max_ms",
        u64::from(raw.store.commit_wait_max_ms),
        0,
        50,
    );

    let fleet = raw.fleet.as_ref().map(|f| fleet(&mut c, f));

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        path: PathBuf::new(),
        file_sha256: String::new(),
        node: Node {
            id: raw.node.id,
            state_dir,
            drain: Duration::from_secs(raw.node.drain_secs),
            lock_memory: raw.node.lock_memory,
            pseudonym_key,
            receipt_window: Duration::from_secs(raw.node.receipt_window_secs),
            receipt_deadline: Duration::from_secs(raw.node.receipt_deadline_secs),
            worker_threads: usize::try_from(raw.node.worker_threads).unwrap_or(1),
        },
        tls,
        api,
        metrics,
        smpp_server,
        carriers,
        peers,
        brands,
        campaigns,
        clients,
        audit: Audit {
            retention_days: raw.audit.retention_days,
        },
        store: Store {
            metadata_retention_days: raw.store.metadata_retention_days,
            commit_wait_max: Duration::from_millis(u64::from(raw.store.commit_wait_max_ms)),
        },
        fleet,
    })
}

/// `[tls]`: the certificate every listener presents.
fn tls(c: &mut Check<'_>, t: Option<&RawTls>) -> Tls {
    match t {
        Some(t) => Tls {
            cert_file: c.existing_file("tls.cert_file", &t.cert_file),
            key_file: c.existing_file("tls.key_file", &t.key_file),
            client_ca_file: t
                .client_ca_file
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|f| c.existing_file("tls.client_ca_file", f)),
        },
        None => {
            c.err(
                "tls",
                "missing table: every listener uses TLS, so cert_file and key_file are required",
            );
            Tls {
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
                client_ca_file: None,
            }
        }
    }
}

/// `[api]`: the HTTPS listener and its limits (`send_deadline` is checked
/// against the carriers later, [`send_deadline`]).
fn api(c: &mut Check<'_>, a: Option<&RawApi>) -> Api {
    match a {
        Some(a) => {
            c.positive("api.header_timeout_secs", a.header_timeout_secs, 300);
            c.positive("api.idle_timeout_secs", a.idle_timeout_secs, 3600);
            c.positive("api.max_connections", a.max_connections as u64, 1_000_000);
            c.positive("api.handshake_timeout_secs", a.handshake_timeout_secs, 60);
            c.positive(
                "api.max_connections_per_address",
                a.max_connections_per_address as u64,
                1_000_000,
            );
            Api {
                listen: c.addr("api.listen", &a.listen).unwrap_or_else(unspecified),
                header_timeout: Duration::from_secs(a.header_timeout_secs),
                idle_timeout: Duration::from_secs(a.idle_timeout_secs),
                max_connections: a.max_connections,
                handshake_timeout: Duration::from_secs(a.handshake_timeout_secs),
                max_connections_per_address: a.max_connections_per_address,
                // Checked against the carriers below.
                send_deadline: Duration::from_secs(a.send_deadline_secs.unwrap_or(0)),
            }
        }
        None => {
            c.err("api", "missing table: api.listen is required");
            Api {
                listen: unspecified(),
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: 1,
                handshake_timeout: Duration::from_secs(3),
                max_connections_per_address: 1,
                send_deadline: Duration::ZERO,
            }
        }
    }
}

/// `[smpp_server]`: the listener carriers and peers bind to.
fn smpp_server(c: &mut Check<'_>, s: &RawSmppServer) -> SmppServer {
    let smpp_listen = (!s.listen.is_empty())
        .then(|| c.addr("smpp_server.listen", &s.listen))
        .flatten();
    let plaintext_listen = if s.plaintext_listen.is_empty() {
        None
    } else {
        let a = c.addr("smpp_server.plaintext_listen", &s.plaintext_listen);
        if let Some(a) = a {
            if !a.ip().is_loopback() {
                c.err(
                    "smpp_server.plaintext_listen",
                    format!("{a} is not a loopback address: plaintext SMPP is allowed only on 127.0.0.0/8 or ::1; carriers use smpp_server.listen (TLS)"),
                );
            }
        }
        a
    };
    c.positive("smpp_server.idle_timeout_secs", s.idle_timeout_secs, 86_400);
    c.positive("smpp_server.window", u64::from(s.window), 4096);
    c.positive(
        "smpp_server.max_connections",
        s.max_connections as u64,
        1_000_000,
    );
    c.positive(
        "smpp_server.max_unbound_per_address",
        s.max_unbound_per_address as u64,
        65_536,
    );
    c.positive("smpp_server.bind_timeout_secs", s.bind_timeout_secs, 300);
    c.positive("smpp_server.enquire_link_secs", s.enquire_link_secs, 3600);
    if s.enquire_link_secs >= s.idle_timeout_secs {
        c.err(
            "smpp_server.enquire_link_secs",
            format!(
                "{} must be less than smpp_server.idle_timeout_secs ({}), or a bound peer's session idles out between keep-alives",
                s.enquire_link_secs, s.idle_timeout_secs
            ),
        );
    }
    SmppServer {
        listen: smpp_listen,
        plaintext_listen,
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        window: s.window,
        max_connections: s.max_connections,
        max_unbound_per_address: s.max_unbound_per_address,
        bind_timeout: Duration::from_secs(s.bind_timeout_secs),
        enquire_link: Duration::from_secs(s.enquire_link_secs),
    }
}

/// The send deadline against the carriers' response timeouts, and the
/// drain against the deadline: a request in flight at SIGTERM has up to
/// the deadline left, and the drain must give it that (issue 16 item 8:
/// a drain shorter than a carrier's answer reset requests the carrier had).
fn send_deadline(c: &mut Check, mut api: Api, carriers: &[Carrier], drain_secs: u64) -> Api {
    let (answer_key, answer) = carriers
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                format!("carriers[{i}].response_timeout_secs"),
                k.response_timeout.as_secs(),
            )
        })
        .max_by_key(|(_, s)| *s)
        .unwrap_or_else(|| ("carriers[].response_timeout_secs".into(), 10));
    let deadline = if api.send_deadline.is_zero() {
        answer + 2
    } else {
        let d = api.send_deadline.as_secs();
        if d <= answer {
            c.err(
                "api.send_deadline_secs",
                format!("must be longer than {answer_key} ({answer}), got {d}: a submit_sm written just before the deadline must get its answer within it"),
            );
        }
        d
    };
    if drain_secs <= deadline {
        c.err(
            "node.drain_secs",
            format!("must be longer than api.send_deadline_secs ({deadline}; by default the longest carrier response_timeout_secs + 2), got {drain_secs}: a request in flight at SIGTERM must get its answer before the drain ends"),
        );
    }
    api.send_deadline = Duration::from_secs(deadline);
    api
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The pseudonym key file holds 32 raw bytes, or 64 hex characters.
fn pseudonym_key(c: &mut Check<'_>, key: Secret) -> Secret {
    let bytes = key.expose();
    if bytes.is_empty() {
        return key; // already reported
    }
    if bytes.len() == 32 {
        return key;
    }
    if let Some(text) = key.trimmed_str() {
        if let Ok(v) = hex::decode(text) {
            if v.len() == 32 {
                return Secret::new(v);
            }
        }
    }
    c.err(
        "node.pseudonym_key_file",
        format!(
            "must hold 32 random bytes (or 64 hex characters), found {} bytes",
            bytes.len()
        ),
    );
    key
}
