//! The tenants: `[[brands]]`, `[[campaigns]]` and `[[clients]]` (API keys,
//! webhooks), each checked against the others.

use super::*;

pub(super) fn brands(c: &mut Check<'_>, raw: &[RawBrand]) -> Vec<Brand> {
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

pub(super) fn campaigns(
    c: &mut Check<'_>,
    raw: &[RawCampaign],
    brands: &[RawBrand],
) -> Vec<Campaign> {
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

pub(super) fn clients(
    c: &mut Check<'_>,
    raw: &[RawClient],
    campaigns: &[RawCampaign],
) -> Vec<Client> {
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
