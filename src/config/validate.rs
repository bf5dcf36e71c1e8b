//! From [`RawConfig`] to [`Config`]: every rule, every error with its key path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

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
        if value == 0 || value > max {
            self.err(key, format!("must be between 1 and {max}, got {value}"));
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

    // [tls]
    let tls = match &raw.tls {
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
    };

    // [api]
    let api = match &raw.api {
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
    };

    // [metrics]
    let metrics_listen = c
        .addr("metrics.listen", &raw.metrics.listen)
        .unwrap_or_else(unspecified);
    let metrics = Metrics {
        listen: metrics_listen,
        tls: !metrics_listen.ip().is_loopback(),
    };

    // [smpp_server]
    let s = &raw.smpp_server;
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
    let smpp_server = SmppServer {
        listen: smpp_listen,
        plaintext_listen,
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        window: s.window,
        max_connections: s.max_connections,
        max_unbound_per_address: s.max_unbound_per_address,
        bind_timeout: Duration::from_secs(s.bind_timeout_secs),
        enquire_link: Duration::from_secs(s.enquire_link_secs),
    };

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
        },
        fleet,
    })
}

/// `[fleet]`: TLS to Redis unless it is on this host, the password only
/// from a file, a key prefix that cannot collide with our hash tags.
fn fleet(c: &mut Check<'_>, r: &RawFleet) -> Fleet {
    let url = r.redis_url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match scheme {
        "rediss" | "redis" => {
            let authority = rest.split('/').next().unwrap_or("");
            if authority.contains('@') {
                c.err(
                    "fleet.redis_url",
                    "must not carry credentials: put the password in fleet.password_file",
                );
            }
            let hostport = authority.rsplit('@').next().unwrap_or("");
            let host = match hostport.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => hostport.split(':').next().unwrap_or(""),
            };
            if host.is_empty() {
                c.err("fleet.redis_url", "has no host");
            } else if scheme == "redis" && !is_loopback_host(host) {
                c.err(
                    "fleet.redis_url",
                    format!("plaintext redis:// to {host:?} is refused: use rediss:// (TLS) off loopback"),
                );
            }
        }
        "redis+unix" | "unix" => {
            if !rest.starts_with('/') {
                c.err(
                    "fleet.redis_url",
                    "a unix socket URL needs an absolute path (redis+unix:///run/redis/redis.sock)",
                );
            }
        }
        _ => c.err(
            "fleet.redis_url",
            format!("{url:?} must start with rediss://, or redis:// or redis+unix:// on this host"),
        ),
    }
    let password = r
        .password_file
        .as_deref()
        .filter(|f| !f.is_empty())
        .map(|f| {
            let raw = c.secret("fleet.password_file", f);
            let trimmed = raw.trimmed_str().map(|p| p.as_bytes().to_vec());
            if trimmed.is_none() && !raw.expose().is_empty() {
                c.err(
                    "fleet.password_file",
                    "the password is not valid UTF-8 text",
                );
            }
            Secret::new(trimmed.unwrap_or_default())
        });
    let ca_file = r
        .ca_file
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|f| c.existing_file("fleet.ca_file", f));
    if ca_file.is_some() && scheme != "rediss" {
        c.err("fleet.ca_file", "is only used with a rediss:// redis_url");
    }
    let prefix_ok = !r.key_prefix.is_empty()
        && r.key_prefix.len() <= 64
        && r.key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !prefix_ok {
        c.err(
            "fleet.key_prefix",
            format!(
                "{:?} must be 1-64 characters of letters, digits, '-', '_', '.' or ':' (e.g. \"smsc:prod:\")",
                r.key_prefix
            ),
        );
    }
    c.positive(
        "fleet.dlr_index_ttl_days",
        u64::from(r.dlr_index_ttl_days),
        90,
    );
    c.positive("fleet.timeout_ms", r.timeout_ms, 60_000);
    Fleet {
        redis_url: url.to_owned(),
        password,
        ca_file,
        key_prefix: r.key_prefix.clone(),
        dlr_index_ttl: Duration::from_secs(u64::from(r.dlr_index_ttl_days) * 86_400),
        timeout: Duration::from_millis(r.timeout_ms),
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

fn carriers(c: &mut Check<'_>, raw: &[RawCarrier]) -> Vec<Carrier> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |f: &str| format!("carriers[{i}].{f}");
        c.id(&k("name"), &r.name);
        c.unique(&mut names, &k("name"), &r.name, "carrier name");
        if r.host.is_empty() {
            c.err(k("host"), "must not be empty");
        }
        if r.port == 0 {
            c.err(k("port"), "must not be 0");
        }
        if r.system_id.is_empty() || r.system_id.len() > 15 {
            c.err(
                k("system_id"),
                "must be 1 to 15 characters (SMPP system_id limit)",
            );
        }
        if r.system_type.len() > 12 {
            c.err(
                k("system_type"),
                "must be at most 12 characters (SMPP limit)",
            );
        }
        let password = c.secret(&k("password_file"), &r.password_file);
        if let Some(p) = password.trimmed_str() {
            if p.len() > 8 {
                c.err(k("password_file"), "the password is longer than 8 characters, which SMPP 3.4 bind PDUs cannot carry");
            }
        } else if !password.expose().is_empty() {
            c.err(k("password_file"), "the password is not valid UTF-8 text");
        }
        let password = Secret::new(
            password
                .trimmed_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        );
        let bind = BindMode::parse(&r.bind).unwrap_or_else(|| {
            c.err(
                k("bind"),
                format!("{:?} is not one of \"transceiver\", \"transmitter\", \"receiver\", \"transmitter+receiver\"", r.bind),
            );
            BindMode::Transceiver
        });
        c.positive(&k("binds"), u64::from(r.binds), 64);
        c.positive(&k("window"), u64::from(r.window), 4096);
        c.positive(&k("enquire_link_secs"), r.enquire_link_secs, 3600);
        c.positive(&k("response_timeout_secs"), r.response_timeout_secs, 300);
        for (j, p) in r.prefixes.iter().enumerate() {
            let ok = p.len() >= 2
                && p.starts_with('+')
                && p[1..].bytes().all(|b| b.is_ascii_digit())
                && p.len() <= 16;
            if !ok {
                c.err(
                    format!("carriers[{i}].prefixes[{j}]"),
                    format!("{p:?} is not an E.164 prefix (+ and digits, e.g. \"+1\")"),
                );
            }
        }
        let ca_file = r
            .ca_file
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|f| c.existing_file(&k("ca_file"), f));
        let cert_sha256 = r
            .cert_sha256
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|f| c.fingerprint(&k("cert_sha256"), f));
        if cert_sha256.is_some() && ca_file.is_some() {
            c.err(
                k("cert_sha256"),
                "set either ca_file (a CA signs the carrier's certificate) or cert_sha256 (its self-signed certificate is pinned), not both",
            );
        }
        if cert_sha256.is_some() && !r.tls {
            c.err(k("cert_sha256"), "pins a TLS certificate, but tls = false");
        }
        if !r.tls && !is_loopback_host(&r.host) {
            c.err(
                k("tls"),
                format!("plaintext SMPP to {:?} is refused: only loopback carriers may have tls = false", r.host),
            );
        }
        out.push(Carrier {
            name: r.name.clone(),
            host: r.host.clone(),
            port: r.port,
            tls: r.tls,
            system_id: r.system_id.clone(),
            password,
            system_type: r.system_type.clone(),
            ca_file,
            server_name: r
                .server_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| r.host.clone()),
            bind,
            binds: r.binds,
            window: r.window,
            max_tps: r.max_tps,
            prefixes: r.prefixes.clone(),
            priority: r.priority,
            enquire_link: Duration::from_secs(r.enquire_link_secs),
            response_timeout: Duration::from_secs(r.response_timeout_secs),
            cert_sha256,
        });
    }
    out
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn peers(
    c: &mut Check<'_>,
    raw: &[RawPeer],
    carriers: &[Carrier],
    tls: Option<&RawTls>,
) -> Vec<Peer> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |f: &str| format!("peers[{i}].{f}");
        c.id(&k("name"), &r.name);
        c.unique(&mut names, &k("name"), &r.name, "peer name");
        if r.system_id.is_empty() || r.system_id.len() > 15 {
            c.err(
                k("system_id"),
                "must be 1 to 15 characters (SMPP system_id limit)",
            );
        }
        c.unique(&mut ids, &k("system_id"), &r.system_id, "peer system_id");
        let password_sha256 = c.sha256_hex(&k("password_sha256"), &r.password_sha256);
        if r.allow.is_empty() {
            c.err(k("allow"), "must list at least one address or CIDR range (\"0.0.0.0/0\" allows any IPv4 source)");
        }
        let mut allow = Vec::new();
        for (j, a) in r.allow.iter().enumerate() {
            let parsed = a
                .parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => allow.push(n),
                Err(_) => c.err(
                    format!("peers[{i}].allow[{j}]"),
                    format!("{a:?} is not an IP address or CIDR range"),
                ),
            }
        }
        c.positive(&k("max_binds"), u64::from(r.max_binds), 256);
        let carrier = r.carrier.clone().filter(|s| !s.is_empty());
        if let Some(name) = &carrier {
            if !carriers.iter().any(|cr| &cr.name == name) {
                c.err(
                    k("carrier"),
                    format!("{name:?} is not the name of a carriers[] entry"),
                );
            }
        }
        let cert_sha256 = r
            .cert_sha256
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|f| c.fingerprint(&k("cert_sha256"), f));
        let has_ca =
            tls.is_some_and(|t| t.client_ca_file.as_deref().is_some_and(|f| !f.is_empty()));
        if cert_sha256.is_some() && !has_ca {
            c.err(
                k("cert_sha256"),
                "needs tls.client_ca_file: client certificates are requested only when a CA to check them is set",
            );
        }
        out.push(Peer {
            name: r.name.clone(),
            system_id: r.system_id.clone(),
            password_sha256,
            allow,
            max_binds: r.max_binds,
            carrier,
            cert_sha256,
        });
    }
    out
}

fn brands(c: &mut Check<'_>, raw: &[RawBrand]) -> Vec<Brand> {
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |f: &str| format!("brands[{i}].{f}");
        c.id(&k("id"), &r.id);
        c.unique(&mut ids, &k("id"), &r.id, "brand id");
        let tz = r
            .daily_reset_tz
            .parse::<chrono_tz::Tz>()
            .unwrap_or_else(|_| {
                c.err(
                    k("daily_reset_tz"),
                    format!(
                        "{:?} is not an IANA time zone (e.g. \"America/Los_Angeles\")",
                        r.daily_reset_tz
                    ),
                );
                chrono_tz::UTC
            });
        out.push(Brand {
            id: r.id.clone(),
            daily_cap: r.daily_cap,
            daily_reset_tz: tz,
        });
    }
    out
}

fn campaigns(c: &mut Check<'_>, raw: &[RawCampaign], brands: &[RawBrand]) -> Vec<Campaign> {
    let mut ids = HashSet::new();
    let mut numbers_seen: std::collections::HashMap<String, String> = Default::default();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |f: &str| format!("campaigns[{i}].{f}");
        c.id(&k("id"), &r.id);
        c.unique(&mut ids, &k("id"), &r.id, "campaign id");
        if !brands.iter().any(|b| b.id == r.brand) {
            c.err(
                k("brand"),
                format!("unknown brand {:?} (not in [[brands]])", r.brand),
            );
        }
        let mut numbers = Vec::with_capacity(r.numbers.len());
        for (j, n) in r.numbers.iter().enumerate() {
            let key = format!("campaigns[{i}].numbers[{j}]");
            match E164::parse(n) {
                Ok(e) => {
                    if let Some(other) = numbers_seen.insert(n.clone(), r.id.clone()) {
                        c.err(key, format!("{n:?} is already bound to campaign {other:?}; a sender number belongs to one campaign"));
                    }
                    numbers.push(e);
                }
                Err(e) => c.err(key, e.to_string()),
            }
        }
        c.positive(
            &k("segments_per_minute"),
            u64::from(r.segments_per_minute),
            1_000_000,
        );
        let burst = r
            .burst
            .unwrap_or_else(|| (r.segments_per_minute / 60).max(1));
        c.positive(&k("burst"), u64::from(burst), 1_000_000);
        let mut text = |f: &str, v: &Option<String>| -> String {
            match v {
                Some(t) if !t.trim().is_empty() => {
                    // One segment as it will be encoded: 160 GSM-7 septets
                    // (extension characters count two), or 70 UCS-2 units
                    // once any character is outside GSM 03.38.
                    let info = crate::text::analyze(t);
                    if info.segments > 1 {
                        c.err(
                            k(f),
                            format!(
                                "must fit one SMS (at most 160 GSM-7 characters, or 70 when any character needs UCS-2); this one is {} characters in {} and needs {} segments",
                                t.chars().count(),
                                info.encoding.as_str(),
                                info.segments
                            ),
                        );
                    }
                    t.clone()
                }
                _ if !r.numbers.is_empty() => {
                    c.err(k(f), "is required when the campaign has numbers (carriers require STOP/HELP answers)");
                    String::new()
                }
                _ => String::new(),
            }
        };
        let help_text = text("help_text", &r.help_text);
        let stop_text = text("stop_text", &r.stop_text);
        let start_text = text("start_text", &r.start_text);
        let mut opt_in_keywords = Vec::new();
        for (j, w) in r.opt_in_keywords.iter().enumerate() {
            let key = format!("campaigns[{i}].opt_in_keywords[{j}]");
            let upper = w.trim().to_ascii_uppercase();
            if upper.is_empty()
                || upper.len() > 20
                || !upper.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                c.err(key, format!("{w:?} must be 1-20 letters or digits"));
            } else if crate::text::keyword(&upper) != crate::text::KeywordClass::Other {
                c.err(key, format!("{w:?} is already a STOP/START/HELP keyword"));
            } else {
                opt_in_keywords.push(upper);
            }
        }
        let opt_in_text = match &r.opt_in_text {
            Some(t) if !t.trim().is_empty() => {
                if crate::text::analyze(t).segments > 1 {
                    c.err(k("opt_in_text"), "must fit one SMS (at most 160 GSM-7 characters, or 70 when any character needs UCS-2)");
                }
                t.clone()
            }
            _ if !opt_in_keywords.is_empty() => {
                c.err(
                    k("opt_in_text"),
                    "is required when opt_in_keywords is set (the confirmation the sender gets)",
                );
                String::new()
            }
            _ => String::new(),
        };
        out.push(Campaign {
            id: r.id.clone(),
            brand: r.brand.clone(),
            numbers,
            segments_per_minute: r.segments_per_minute,
            burst,
            number_segments_per_minute: r.number_segments_per_minute,
            help_text,
            stop_text,
            start_text,
            require_opt_in: r.require_opt_in,
            opt_in_keywords,
            opt_in_text,
        });
    }
    out
}

fn clients(c: &mut Check<'_>, raw: &[RawClient], campaigns: &[RawCampaign]) -> Vec<Client> {
    let mut ids = HashSet::new();
    let mut keys_seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let k = |f: &str| format!("clients[{i}].{f}");
        c.id(&k("id"), &r.id);
        c.unique(&mut ids, &k("id"), &r.id, "client id");
        if r.key_sha256.is_empty() {
            c.err(
                k("key_sha256"),
                "must list at least one key hash (from `sms-conduit keys new`)",
            );
        }
        let mut keys = Vec::new();
        let mut not_after = Vec::new();
        for (j, entry) in r.key_sha256.iter().enumerate() {
            let key = format!("clients[{i}].key_sha256[{j}]");
            let (d, until) = client_key(c, &key, entry);
            not_after.push(until);
            if !keys_seen.insert(d) {
                c.err(
                    key,
                    "this key hash is already listed (a key belongs to one client)",
                );
            }
            keys.push(d);
        }
        let mut certs = Vec::new();
        for (j, h) in r.client_cert_sha256.iter().enumerate() {
            // `openssl x509 -fingerprint -sha256` prints `AB:CD:…`.
            let hex: String = h.chars().filter(|c| *c != ':').collect();
            certs.push(c.sha256_hex(&format!("clients[{i}].client_cert_sha256[{j}]"), &hex));
        }
        for (j, id) in r.campaigns.iter().enumerate() {
            if !campaigns.iter().any(|cp| &cp.id == id) {
                c.err(
                    format!("clients[{i}].campaigns[{j}]"),
                    format!("unknown campaign {id:?} (not in [[campaigns]])"),
                );
            }
        }
        c.positive(
            &k("webhook_concurrency"),
            u64::from(r.webhook_concurrency),
            1024,
        );
        let webhook = match (&r.webhook_url, &r.webhook_secret_file) {
            (Some(url), Some(secret)) => {
                check_webhook_url(c, &k("webhook_url"), url);
                Some(Webhook {
                    url: url.clone(),
                    // Trimmed like passwords: `echo secret > file` must not
                    // sign with "secret\n" while the client checks "secret".
                    secret: webhook_secret(c, &k("webhook_secret_file"), secret),
                    secret_next: r
                        .webhook_secret_next_file
                        .as_deref()
                        .filter(|s| !s.is_empty())
                        .map(|f| webhook_secret(c, &k("webhook_secret_next_file"), f)),
                    ca_file: r
                        .webhook_ca_file
                        .as_deref()
                        .filter(|s| !s.is_empty())
                        .map(|f| c.existing_file(&k("webhook_ca_file"), f)),
                    concurrency: r.webhook_concurrency,
                })
            }
            (Some(_), None) => {
                c.err(
                    k("webhook_secret_file"),
                    "is required when webhook_url is set (webhooks are signed)",
                );
                None
            }
            (None, Some(_)) => {
                c.err(
                    k("webhook_url"),
                    "is required when webhook_secret_file is set",
                );
                None
            }
            (None, None) => None,
        };
        if webhook.is_none()
            && r.webhook_secret_next_file.is_some()
            && r.webhook_secret_file.is_none()
        {
            c.err(
                k("webhook_secret_next_file"),
                "needs webhook_secret_file (the current secret) and webhook_url",
            );
        }
        out.push(Client {
            id: r.id.clone(),
            key_sha256: keys,
            key_not_after: not_after,
            client_cert_sha256: certs,
            campaigns: r.campaigns.clone(),
            webhook,
        });
    }
    out
}

/// One `key_sha256` entry: its digest and `not_after`. `key` is the entry's
/// path (`clients[0].key_sha256[1]`); a table's fields are named below it.
fn client_key(
    c: &mut Check<'_>,
    key: &str,
    entry: &RawKey,
) -> ([u8; 32], Option<chrono::DateTime<chrono::Utc>>) {
    let table = match entry {
        RawKey::Hash(h) => return (c.sha256_hex(key, h), None),
        RawKey::Table(t) => t,
    };
    let mut digest = None;
    let mut not_after = None;
    for (field, value) in table {
        let fkey = format!("{key}.{field}");
        match (field.as_str(), value) {
            ("sha256", toml::Value::String(h)) => digest = Some(c.sha256_hex(&fkey, h)),
            ("sha256", _) => c.err(fkey, "must be 64 hex characters (a SHA-256 digest)"),
            ("not_after", v) => {
                // Quoted or a bare TOML date-time: both are read as RFC 3339.
                let text = match v {
                    toml::Value::String(s) => Some(s.clone()),
                    toml::Value::Datetime(d) => Some(d.to_string()),
                    _ => None,
                };
                match text
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                {
                    Some(t) => not_after = Some(t.with_timezone(&chrono::Utc)),
                    None => c.err(
                        fkey,
                        "must be an RFC 3339 time with its offset, e.g. \"2027-06-30T00:00:00Z\"",
                    ),
                }
            }
            _ => c.err(fkey, "unknown key"),
        }
    }
    let digest = digest.unwrap_or_else(|| {
        c.err(
            format!("{key}.sha256"),
            "is required (the key's SHA-256 from `sms-conduit keys new`)",
        );
        [0u8; 32]
    });
    (digest, not_after)
}

/// Webhooks carry bodies (MO texts), so they must be HTTPS; plain `http://`
/// is accepted only to a loopback host (a local sidecar).
fn check_webhook_url(c: &mut Check<'_>, key: &str, url: &str) {
    let Ok(u) = reqwest::Url::parse(url) else {
        c.err(key, format!("{url:?} is not a URL"));
        return;
    };
    let host = u.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match u.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => c.err(
            key,
            "must be https:// (http:// only to a loopback host): webhooks carry message texts",
        ),
        s => c.err(key, format!("unsupported scheme {s:?}: use https://")),
    }
}

/// A webhook secret file's bytes, trimmed like passwords when UTF-8: `echo
/// secret > file` must not sign with "secret\n" while the client checks
/// "secret" (README "Webhooks").
fn webhook_secret(c: &mut Check<'_>, key: &str, value: &str) -> Secret {
    let raw = c.secret(key, value);
    match raw.trimmed_str() {
        Some(t) => Secret::new(t.as_bytes().to_vec()),
        None => raw,
    }
}
