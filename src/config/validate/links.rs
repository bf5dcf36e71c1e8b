//! The links: `[[carriers]]`, `[[peers]]` (who may bind to our SMPP
//! server) and `[fleet]`.

use super::*;

/// `[fleet]`: TLS to Redis unless it is on this host, the password only
/// from a file, a key prefix that cannot collide with our hash tags.
pub(super) fn fleet(c: &mut Check<'_>, r: &RawFleet) -> Fleet {
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

pub(super) fn carriers(c: &mut Check<'_>, raw: &[RawCarrier]) -> Vec<Carrier> {
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

pub(super) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

pub(super) fn peers(
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
