//! Config validation tests: every rule that keeps a bad config from starting.

use super::*;

/// A temp dir holding the secret files a valid config names.
fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pseudonym.key"), [7u8; 32]).unwrap();
    std::fs::write(d.path().join("server.crt"), "cert").unwrap();
    std::fs::write(d.path().join("server.key"), "key").unwrap();
    std::fs::write(d.path().join("carrier-a.pass"), "secret1\n").unwrap();
    std::fs::write(d.path().join("clinic.whsec"), "whsec_abc").unwrap();
    d
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn valid() -> String {
    format!(
        r#"
[node]
id = "edge-1"
state_dir = "state"
pseudonym_key_file = "pseudonym.key"

[tls]
cert_file = "server.crt"
key_file = "server.key"

[api]
listen = "127.0.0.1:8443"

[smpp_server]
listen = "127.0.0.1:3550"
plaintext_listen = "127.0.0.1:2775"

[[carriers]]
name = "carrier-a"
host = "smsc.example"
port = 3550
system_id = "acme"
password_file = "carrier-a.pass"
prefixes = ["+1"]

[[peers]]
name = "carrier-b"
system_id = "carrierb"
password_sha256 = "{HASH}"
allow = ["203.0.113.0/24", "127.0.0.1"]

[[brands]]
id = "BQ7A1Z0"
daily_cap = 100

[[campaigns]]
id = "CX4K2M9"
brand = "BQ7A1Z0"
numbers = ["+15551230001"]
segments_per_minute = 240
burst = 20
help_text = "help"
stop_text = "stop"
start_text = "start"

[[clients]]
id = "clinic-app"
key_sha256 = ["{HASH}"]
campaigns = ["CX4K2M9"]
webhook_url = "https://app.example/sms-events"
webhook_secret_file = "clinic.whsec"
"#
    )
}

fn load(text: &str, d: &tempfile::TempDir) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, d.path(), None)
}

/// Asserts the config is refused with an error on `key` mentioning `what`.
fn refused(text: &str, key: &str, what: &str) {
    let d = dir();
    let errs = match load(text, &d) {
        Ok(_) => panic!("config accepted, expected an error on {key}"),
        Err(e) => e,
    };
    assert!(
        errs.0
            .iter()
            .any(|e| e.key == key && e.problem.contains(what)),
        "no error on {key} mentioning {what:?}; got:\n{errs}"
    );
}

#[test]
fn valid_config_loads_typed() {
    let d = dir();
    let cfg = load(&valid(), &d).unwrap();
    assert_eq!(cfg.node.id, "edge-1");
    assert_eq!(cfg.node.pseudonym_key.expose(), &[7u8; 32]);
    assert_eq!(cfg.carriers[0].password.expose(), b"secret1");
    assert_eq!(cfg.carriers[0].server_name, "smsc.example");
    assert_eq!(cfg.campaigns[0].numbers[0].as_str(), "+15551230001");
    assert!(!cfg.metrics.tls, "loopback metrics are plain HTTP");
    assert_eq!(cfg.node.state_dir, d.path().join("state"));
    assert_eq!(
        cfg.brands[0].daily_reset_tz,
        chrono_tz::America::Los_Angeles
    );
    assert_eq!(cfg.file_sha256.len(), 64);
}

#[test]
fn unknown_keys_are_all_named() {
    let text = valid()
        .replace("[api]\n", "[api]\nlsiten = \"x\"\n")
        .replace("burst = 20", "burst = 20\nburts = 3");
    let d = dir();
    let errs = load(&text, &d).unwrap_err();
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"api.lsiten"), "{errs}");
    assert!(keys.contains(&"campaigns[0].burts"), "{errs}");
}

#[test]
fn missing_secret_file_names_the_key() {
    refused(
        &valid().replace("carrier-a.pass", "nope.pass"),
        "carriers[0].password_file",
        "cannot read",
    );
}

#[test]
fn bad_e164_names_the_key() {
    refused(
        &valid().replace("\"+15551230001\"", "\"+1555\""),
        "campaigns[0].numbers[0]",
        "not an E.164",
    );
}

#[test]
fn duplicate_campaign_id() {
    let extra = r#"
[[campaigns]]
id = "CX4K2M9"
brand = "BQ7A1Z0"
segments_per_minute = 60
"#;
    refused(
        &format!("{}{extra}", valid()),
        "campaigns[1].id",
        "duplicate campaign id",
    );
}

#[test]
fn client_with_unknown_campaign() {
    refused(
        &valid().replace("campaigns = [\"CX4K2M9\"]", "campaigns = [\"NOPE\"]"),
        "clients[0].campaigns[0]",
        "unknown campaign",
    );
}

#[test]
fn plaintext_listener_must_be_loopback() {
    refused(
        &valid().replace("127.0.0.1:2775", "0.0.0.0:2775"),
        "smpp_server.plaintext_listen",
        "not a loopback",
    );
}

#[test]
fn plaintext_carrier_must_be_loopback() {
    refused(
        &valid().replace("port = 3550\n", "port = 3550\ntls = false\n"),
        "carriers[0].tls",
        "plaintext",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = valid()
        .replace("\"+15551230001\"", "\"+1555\"")
        .replace("127.0.0.1:2775", "0.0.0.0:2775")
        .replace(
            "daily_cap = 100",
            "daily_cap = 100\ndaily_reset_tz = \"Mars/Olympus\"",
        );
    let d = dir();
    let errs = load(&text, &d).unwrap_err();
    assert!(errs.0.len() >= 3, "{errs}");
}

#[test]
fn type_errors_name_the_key() {
    refused(
        &valid().replace("port = 3550", "port = \"x\""),
        "carriers[0].port",
        "invalid type",
    );
}

#[test]
fn campaign_texts_required_with_numbers() {
    refused(
        &valid().replace("help_text = \"help\"\n", ""),
        "campaigns[0].help_text",
        "required",
    );
}

#[test]
fn campaign_texts_must_fit_one_segment_as_encoded() {
    // 71 characters with one outside GSM 03.38: UCS-2, two segments.
    let ucs2 = format!("Reply STOP to opt out \u{2014} {}", "x".repeat(47));
    assert_eq!(ucs2.chars().count(), 71);
    refused(
        &valid().replace("help_text = \"help\"", &format!("help_text = \"{ucs2}\"")),
        "campaigns[0].help_text",
        "needs 2 segments",
    );
    // 160 GSM-7 characters fit; the same length as UCS-2 did not above.
    let d = dir();
    let gsm = "h".repeat(160);
    load(
        &valid().replace("help_text = \"help\"", &format!("help_text = \"{gsm}\"")),
        &d,
    )
    .expect("160 GSM-7 characters are one SMS");
}

#[test]
fn webhook_must_be_https() {
    refused(
        &valid().replace("https://app.example", "http://app.example"),
        "clients[0].webhook_url",
        "https",
    );
}

#[test]
fn credentials_directory_is_searched_first() {
    let d = dir();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("carrier-a.pass"), "fromcred").unwrap();
    let cfg = Config::from_toml(&valid(), d.path(), Some(creds.path())).unwrap();
    assert_eq!(cfg.carriers[0].password.expose(), b"fromcred");
}

#[test]
fn long_smpp_password_refused() {
    let d = dir();
    std::fs::write(d.path().join("carrier-a.pass"), "waytoolongpassword").unwrap();
    let errs = load(&valid(), &d).unwrap_err();
    assert!(
        errs.0.iter().any(|e| e.key == "carriers[0].password_file"),
        "{errs}"
    );
}

#[test]
fn bad_peer_cidr_and_hash() {
    refused(
        &valid().replace("203.0.113.0/24", "203.0.113.0/99"),
        "peers[0].allow[0]",
        "CIDR",
    );
    refused(
        &valid().replace(
            &format!("password_sha256 = \"{HASH}\""),
            "password_sha256 = \"abc\"",
        ),
        "peers[0].password_sha256",
        "64 hex",
    );
}

#[test]
fn number_bound_to_two_campaigns() {
    let extra = r#"
[[campaigns]]
id = "OTHER"
brand = "BQ7A1Z0"
numbers = ["+15551230001"]
segments_per_minute = 60
help_text = "h"
stop_text = "s"
start_text = "s"
"#;
    refused(
        &format!("{}{extra}", valid()),
        "campaigns[1].numbers[0]",
        "already bound",
    );
}

#[test]
fn optional_tables_take_their_defaults() {
    let d = dir();
    let text = valid().replace(
        "[smpp_server]\nlisten = \"127.0.0.1:3550\"\nplaintext_listen = \"127.0.0.1:2775\"\n",
        "",
    );
    assert!(!text.contains("[smpp_server]"));
    let cfg = load(&text, &d).unwrap();
    assert_eq!(cfg.smpp_server.window, 64);
    assert!(cfg.smpp_server.listen.is_none());
    assert_eq!(cfg.metrics.listen.port(), 9464);
    assert_eq!(cfg.audit.retention_days, 2190);
}

/// Issue 16 item 8: a drain shorter than a request's deadline reset
/// requests the carrier had; the config is refused, naming both keys.
#[test]
fn drain_shorter_than_the_send_deadline_is_refused() {
    let text = valid().replace("[node]\n", "[node]\ndrain_secs = 8\n");
    refused(&text, "node.drain_secs", "api.send_deadline_secs (12");
    let text = valid().replace("[api]\n", "[api]\nsend_deadline_secs = 10\n");
    refused(
        &text,
        "api.send_deadline_secs",
        "carriers[0].response_timeout_secs (10)",
    );
    let d = dir();
    let cfg = load(&valid(), &d).unwrap();
    assert_eq!(cfg.api.send_deadline, Duration::from_secs(12), "rt + 2");
}

fn with_fleet(section: &str) -> String {
    format!("{}\n[fleet]\n{section}\n", valid())
}

#[test]
fn fleet_absent_by_default_and_typed_when_set() {
    let d = dir();
    assert!(load(&valid(), &d).unwrap().fleet.is_none());
    std::fs::write(d.path().join("redis.pass"), "hunter2\n").unwrap();
    let cfg = load(
        &with_fleet(
            "redis_url = \"rediss://redis.internal:6380\"\npassword_file = \"redis.pass\"\nkey_prefix = \"smsc:prod:\"",
        ),
        &d,
    )
    .unwrap();
    let f = cfg.fleet.unwrap();
    assert_eq!(f.password.unwrap().expose(), b"hunter2");
    assert_eq!(f.key_prefix, "smsc:prod:");
    assert_eq!(f.dlr_index_ttl, std::time::Duration::from_secs(7 * 86_400));
    assert_eq!(f.timeout, std::time::Duration::from_millis(500));
    // Plaintext on loopback and a unix socket are fine.
    for url in ["redis://127.0.0.1:6379", "redis+unix:///run/redis.sock"] {
        let text = with_fleet(&format!("redis_url = \"{url}\"\nkey_prefix = \"t:\""));
        assert!(load(&text, &d).is_ok(), "{url}");
    }
}

#[test]
fn fleet_keys_are_validated_and_named() {
    refused(
        &with_fleet("redis_url = \"redis://redis.internal:6379\"\nkey_prefix = \"p:\""),
        "fleet.redis_url",
        "rediss://",
    );
    refused(
        &with_fleet("redis_url = \"http://127.0.0.1\"\nkey_prefix = \"p:\""),
        "fleet.redis_url",
        "must start with",
    );
    refused(
        &with_fleet("redis_url = \"rediss://u:pw@redis.internal\"\nkey_prefix = \"p:\""),
        "fleet.redis_url",
        "password_file",
    );
    refused(
        &with_fleet("redis_url = \"rediss://r.internal\"\nkey_prefix = \"{b}\""),
        "fleet.key_prefix",
        "must be",
    );
    refused(
        &with_fleet(
            "redis_url = \"rediss://r.internal\"\nkey_prefix = \"p:\"\npassword_file = \"nope\"",
        ),
        "fleet.password_file",
        "cannot read",
    );
    refused(
        &with_fleet("redis_url = \"rediss://r.internal\"\nkey_prefix = \"p:\"\ntimeout_ms = 0"),
        "fleet.timeout_ms",
        "between",
    );
    refused(
        &with_fleet(
            "redis_url = \"rediss://r.internal\"\nkey_prefix = \"p:\"\ndlr_index_ttl_days = 0",
        ),
        "fleet.dlr_index_ttl_days",
        "between",
    );
    refused(
        &with_fleet(
            "redis_url = \"redis://127.0.0.1\"\nkey_prefix = \"p:\"\nca_file = \"server.crt\"",
        ),
        "fleet.ca_file",
        "rediss://",
    );
    refused(
        &with_fleet("redis_url = \"rediss://r.internal\""),
        "fleet",
        "missing field `key_prefix`",
    );
}

#[test]
fn key_entries_may_carry_not_after_quoted_or_bare() {
    let d = dir();
    let other = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
    let text = valid().replace(
        &format!("key_sha256 = [\"{HASH}\"]"),
        &format!(
            "key_sha256 = [\"{HASH}\", {{ sha256 = \"{other}\", not_after = \"2027-06-30T00:00:00Z\" }}, {{ sha256 = \"{}\", not_after = 2028-01-01T00:00:00+01:00 }}]",
            "a".repeat(64)
        ),
    );
    let cfg = load(&text, &d).unwrap();
    let c = &cfg.clients[0];
    assert_eq!(c.key_sha256.len(), 3);
    assert_eq!(c.key_not_after.len(), 3);
    assert_eq!(c.key_not_after[0], None);
    assert_eq!(
        c.key_not_after[1].map(|t| t.to_rfc3339()),
        Some("2027-06-30T00:00:00+00:00".into())
    );
    assert_eq!(
        c.key_not_after[2].map(|t| t.to_rfc3339()),
        Some("2027-12-31T23:00:00+00:00".into())
    );
}

#[test]
fn key_tables_name_their_bad_fields() {
    let with = |entry: &str| valid().replace(&format!("[\"{HASH}\"]"), &format!("[{entry}]"));
    refused(
        &with(&format!(
            "{{ sha256 = \"{HASH}\", not_after = \"next year\" }}"
        )),
        "clients[0].key_sha256[0].not_after",
        "RFC 3339",
    );
    refused(
        &with(&format!(
            "{{ sha256 = \"{HASH}\", expires = \"2027-01-01T00:00:00Z\" }}"
        )),
        "clients[0].key_sha256[0].expires",
        "unknown key",
    );
    refused(
        &with("{ not_after = \"2027-01-01T00:00:00Z\" }"),
        "clients[0].key_sha256[0].sha256",
        "is required",
    );
    refused(
        &with("{ sha256 = \"abc\" }"),
        "clients[0].key_sha256[0].sha256",
        "64 hex",
    );
    refused(
        &with("42"),
        "clients[0].key_sha256[0]",
        "SHA-256 hex string",
    );
}

#[test]
fn client_cert_fingerprints_take_hex_with_or_without_colons() {
    let d = dir();
    let colons = "AB:".repeat(31) + "AB";
    let text = valid().replace(
        "campaigns = [\"CX4K2M9\"]\nwebhook_url",
        &format!("client_cert_sha256 = [\"{HASH}\", \"{colons}\"]\ncampaigns = [\"CX4K2M9\"]\nwebhook_url"),
    );
    let cfg = load(&text, &d).unwrap();
    assert_eq!(cfg.clients[0].client_cert_sha256.len(), 2);
    assert_eq!(cfg.clients[0].client_cert_sha256[1], [0xAB; 32]);
    refused(
        &valid().replace(
            "campaigns = [\"CX4K2M9\"]\nwebhook_url",
            "client_cert_sha256 = [\"nope\"]\ncampaigns = [\"CX4K2M9\"]\nwebhook_url",
        ),
        "clients[0].client_cert_sha256[0]",
        "64 hex",
    );
}

#[test]
fn opt_in_keywords_need_a_confirmation_and_must_not_be_stop_words() {
    let with = |extra: &str| {
        valid().replace(
            "start_text = \"start\"\n",
            &format!("start_text = \"start\"\nrequire_opt_in = true\n{extra}\n"),
        )
    };
    let d = dir();
    let cfg = load(
        &with("opt_in_keywords = [\"yes\", \"JOIN\"]\nopt_in_text = \"You are in.\""),
        &d,
    )
    .unwrap();
    assert!(cfg.campaigns[0].require_opt_in);
    assert_eq!(cfg.campaigns[0].opt_in_keywords, ["YES", "JOIN"]);
    refused(
        &with("opt_in_keywords = [\"YES\"]"),
        "campaigns[0].opt_in_text",
        "is required",
    );
    refused(
        &with("opt_in_keywords = [\"START\"]\nopt_in_text = \"x\""),
        "campaigns[0].opt_in_keywords[0]",
        "STOP/START/HELP",
    );
    refused(
        &with("opt_in_keywords = [\"YES PLEASE\"]\nopt_in_text = \"x\""),
        "campaigns[0].opt_in_keywords[0]",
        "letters or digits",
    );
}

#[test]
fn webhook_secrets_are_trimmed_and_the_next_one_is_read() {
    let d = dir();
    std::fs::write(d.path().join("clinic.whsec"), "  whsec_abc\n").unwrap();
    std::fs::write(d.path().join("clinic-next.whsec"), "whsec_next\r\n").unwrap();
    let text = valid().replace(
        "webhook_secret_file = \"clinic.whsec\"",
        "webhook_secret_file = \"clinic.whsec\"\nwebhook_secret_next_file = \"clinic-next.whsec\"",
    );
    let cfg = load(&text, &d).unwrap();
    let hook = cfg.clients[0].webhook.as_ref().unwrap();
    assert_eq!(hook.secret.expose(), b"whsec_abc");
    assert_eq!(
        hook.secret_next.as_ref().map(|s| s.expose().to_vec()),
        Some(b"whsec_next".to_vec())
    );
    let errs = load(&text.replace("clinic-next.whsec\"", "missing.whsec\""), &d).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.key == "clients[0].webhook_secret_next_file"),
        "{errs}"
    );
}

#[test]
fn every_type_error_and_typo_is_named_in_one_run() {
    let text = valid()
        .replace("id = \"edge-1\"", "id = \"edge-1\"\ndrain_secs = \"20\"")
        .replace("burst = 20", "burst = \"twenty\"\nburts = 3")
        .replace("[api]\n", "[api]\nlsiten = \"x\"\n");
    let d = dir();
    let errs = load(&text, &d).unwrap_err();
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"node.drain_secs"), "{errs}");
    assert!(keys.contains(&"campaigns[0].burst"), "{errs}");
    assert!(keys.contains(&"campaigns[0].burts"), "{errs}");
    assert!(keys.contains(&"api.lsiten"), "{errs}");
    let burts = errs.0.iter().find(|e| e.key == "campaigns[0].burts");
    assert!(
        burts.is_some_and(|e| e.problem.contains("did you mean `burst`")),
        "{errs}"
    );
    assert_eq!(keys.len(), 4, "each named once: {errs}");
}

/// `node.worker_threads`: one by default, a count within 1–256 when set.
#[test]
fn worker_threads_default_to_one_and_must_be_a_count() {
    let d = dir();
    assert_eq!(load(&valid(), &d).unwrap().node.worker_threads, 1);
    let text = valid().replace("[node]\n", "[node]\nworker_threads = 4\n");
    assert_eq!(load(&text, &d).unwrap().node.worker_threads, 4);
    for bad in ["0", "257"] {
        let text = valid().replace("[node]\n", &format!("[node]\nworker_threads = {bad}\n"));
        refused(&text, "node.worker_threads", "must be between 1 and 256");
    }
}

/// `store.commit_wait_max_ms`: 5 ms by default, 0–50 when set, and a typo
/// of it is named.
#[test]
fn commit_wait_max_defaults_to_five_ms_and_is_bounded() {
    let d = dir();
    let five = std::time::Duration::from_millis(5);
    assert_eq!(load(&valid(), &d).unwrap().store.commit_wait_max, five);
    let with = |v: &str| format!("{}\n[store]\ncommit_wait_max_ms = {v}\n", valid());
    assert_eq!(
        load(&with("2"), &d).unwrap().store.commit_wait_max,
        std::time::Duration::from_millis(2)
    );
    assert_eq!(
        load(&with("0"), &d).unwrap().store.commit_wait_max,
        std::time::Duration::ZERO
    );
    refused(
        &with("51"),
        "store.commit_wait_max_ms",
        "must be between 0 and 50",
    );
    let typo = format!("{}\n[store]\ncommit_wait_ms = 2\n", valid());
    refused(
        &typo,
        "store.commit_wait_ms",
        "did you mean `commit_wait_max_ms`",
    );
}
