//! Issue 22's safeguards over the real appliance (HTTPS API, SMPP simulator,
//! store): keys that expire, a client certificate as a second factor,
//! backup and restore, documented consent.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::{Duration, Instant};

use support::expect_problem;
use support::relay::{message, Files, Relay, Setup, CAMPAIGN};

/// The audit export of the running relay, as JSON records.
fn audit_records(relay: &Relay) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    sms_conduit::audit::export(&relay.app().store, None, None, &mut out).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Waits (up to 5 s) for an audit record with `event` and `field` = `value`.
async fn wait_audit(relay: &Relay, event: &str, field: &str, value: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = audit_records(relay)
            .into_iter()
            .find(|r| r["event"] == event && r[field] == value)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {event} record with {field} = {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A third client on [`CAMPAIGN`] with one expired and one current key.
fn expiring_client(expired_hash: &str, current_hash: &str) -> String {
    format!(
        r#"
[[clients]]
id = "rotating-app"
key_sha256 = [
  {{ sha256 = "{expired_hash}", not_after = "2020-01-01T00:00:00Z" }},
  {{ sha256 = "{current_hash}", not_after = 2099-01-01T00:00:00Z }},
]
campaigns = ["{CAMPAIGN}"]
"#
    )
}

#[tokio::test]
async fn an_expired_key_is_refused_with_its_own_detail_audited_and_its_expiry_is_a_metric() {
    let files = Files::new();
    let sim = files.sim("pw", |_| {}).await;
    let (expired, expired_hash) = sms_conduit::api::new_key();
    let (current, current_hash) = sms_conduit::api::new_key();
    let mut setup = Setup::one(&sim, "pw");
    setup.extra_toml = expiring_client(&expired_hash, &current_hash);
    let mut relay = Relay::start(files, setup).await;

    let r = relay
        .post_raw(Some(&expired), None, message("hello").to_string())
        .await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let doc = expect_problem(r, 401, "unauthorized").await;
    let detail = doc["detail"].as_str().unwrap();
    assert!(
        detail.contains("the key expired at 2020-01-01T00:00:00Z"),
        "{detail}"
    );
    assert_eq!(sim.submits(), 0);
    wait_audit(&relay, "api.auth_failed", "reason", "key_expired").await;

    // The client's other key, not yet expired, works.
    let r = relay
        .post_raw(Some(&current), None, message("hello").to_string())
        .await;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    let metrics = relay.metrics_text().await;
    let value = |key: &str| -> i64 {
        let prefix =
            format!("sms_conduit_api_key_expiry_seconds{{client=\"rotating-app\",key=\"{key}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no series for key {key}:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("0") < 0);
    assert!(value("1") > 365 * 86_400);
    // Keys without a not_after have no series.
    assert!(!metrics.contains("sms_conduit_api_key_expiry_seconds{client=\"clinic-app\""));
    assert!(relay.stop().await);
}

/// A client certificate (self-signed) as reqwest's identity, and its
/// SHA-256 fingerprint as `client_cert_sha256` takes it.
fn client_identity(dir: &std::path::Path, name: &str) -> (reqwest::Identity, String) {
    let ss = sms_conduit::tls::self_signed(&[name]).unwrap();
    let path = support::write(dir, &format!("{name}.crt"), &ss.cert_pem);
    let der = sms_conduit::tls::load_certs(&path).unwrap();
    let fp = hex::encode(sms_conduit::tls::cert_sha256(&der[0]));
    let pem = format!("{}{}", ss.cert_pem, ss.key_pem);
    (reqwest::Identity::from_pem(pem.as_bytes()).unwrap(), fp)
}

/// An HTTPS client for `relay` presenting `identity` (if any).
fn client_with(relay: &Relay, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(relay.files.cert_pem.as_bytes()).unwrap(),
        )
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn a_key_that_requires_a_client_certificate_is_refused_without_it_and_audited() {
    let files = Files::new();
    let sim = files.sim("pw", |_| {}).await;
    let (pinned, fp) = client_identity(files.dir.path(), "pinned-app");
    let (stranger, _) = client_identity(files.dir.path(), "stranger");
    let (key, hash) = sms_conduit::api::new_key();
    // Colon-separated upper case, as `openssl x509 -fingerprint -sha256` prints it.
    let fp_colons = fp
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let mut setup = Setup::one(&sim, "pw");
    setup.extra_toml = format!(
        r#"
[[clients]]
id = "pinned-app"
key_sha256 = ["{hash}"]
client_cert_sha256 = ["{fp_colons}"]
campaigns = ["{CAMPAIGN}"]
"#
    );
    let mut relay = Relay::start(files, setup).await;
    let post = |c: &reqwest::Client, k: &str| {
        c.post(relay.url("/v1/messages"))
            .header("content-type", "application/json")
            .bearer_auth(k)
            .body(message("hello").to_string())
            .send()
    };

    // The key alone: refused, with a detail that says what is missing.
    let r = post(&client_with(&relay, None), &key).await.unwrap();
    let doc = expect_problem(r, 401, "unauthorized").await;
    assert!(
        doc["detail"].as_str().unwrap().contains("TLS certificate"),
        "{doc}"
    );
    wait_audit(&relay, "api.auth_failed", "reason", "client_cert_missing").await;
    // The key with another certificate: refused.
    let r = post(&client_with(&relay, Some(stranger)), &key)
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    assert_eq!(sim.submits(), 0);
    // The key with its certificate: sent (also on the routed GET path).
    let c = client_with(&relay, Some(pinned));
    let r = post(&c, &key).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c
        .get(relay.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client_with(&relay, None)
        .get(relay.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "unauthorized").await;
    // A client without pins is unaffected: the certificate is asked for,
    // not required.
    let r = post(&client_with(&relay, None), &relay.api_key)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    assert!(relay.stop().await);
}

/// The sender number of the consent campaign.
const CONSENT_FROM: &str = "+15551230077";
const CONSENT_CAMPAIGN: &str = "CCONSENT";

fn consent_setup(sim: &support::relay::Sim, hash: &str) -> Setup {
    let mut setup = Setup::one(sim, "pw");
    setup.extra_toml = format!(
        r#"
[[brands]]
id = "BCONSENT"

[[campaigns]]
id = "{CONSENT_CAMPAIGN}"
brand = "BCONSENT"
numbers = ["{CONSENT_FROM}"]
segments_per_minute = 60000
burst = 1000
help_text = "Clinic: reply STOP to opt out."
stop_text = "Clinic: you are unsubscribed."
start_text = "Clinic: you are subscribed again."
require_opt_in = true
opt_in_keywords = ["YES", "join"]
opt_in_text = "Clinic: you will receive appointment reminders. Reply STOP to opt out."

[[clients]]
id = "consent-app"
key_sha256 = ["{hash}"]
campaigns = ["{CONSENT_CAMPAIGN}"]
"#
    );
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_required_recorded_by_api_and_keyword_withdrawn_and_stop_wins() {
    let files = Files::new();
    let sim = files.sim("pw", |_| {}).await;
    let (key, hash) = sms_conduit::api::new_key();
    let mut relay = Relay::start(files, consent_setup(&sim, &hash)).await;
    let canary = format!("CANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF);
    let to_api = "+15557650001";
    let to_kw = "+15557650002";
    let body = |to: &str| {
        serde_json::json!({
            "from": CONSENT_FROM, "to": to, "text": format!("{canary} reminder"),
            "campaign_id": CONSENT_CAMPAIGN,
        })
        .to_string()
    };
    let consent_url =
        |to: &str| relay.url(&format!("/v1/campaigns/{CONSENT_CAMPAIGN}/consents/{to}"));

    // No consent: refused, nothing sent, the text not echoed.
    let r = relay.post_raw(Some(&key), None, body(to_api)).await;
    let doc = expect_problem(r, 422, "consent_missing").await;
    assert!(!doc.to_string().contains(&canary));
    assert_eq!(sim.submits(), 0);
    let r = relay
        .client
        .get(consent_url(to_api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 404, "not_found").await;

    // Recorded through the API: the send goes.
    let evidence = serde_json::json!({"method": "web_form", "at": "2026-12-01T09:30:00+01:00", "client_ref": "intake-form-17"});
    let r = relay
        .client
        .put(consent_url(to_api))
        .bearer_auth(&key)
        .json(&evidence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["method"], "web_form");
    assert_eq!(v["at"], "2026-12-01T08:30:00Z");
    assert_eq!(v["client_ref"], "intake-form-17");
    let r = relay
        .client
        .get(consent_url(to_api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = relay.post_raw(Some(&key), None, body(to_api)).await;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    // Bad evidence is refused, naming the field, not echoing it.
    let r = relay
        .client
        .put(consent_url(to_api))
        .bearer_auth(&key)
        .json(&serde_json::json!({"method": "telepathy", "at": "now"}))
        .send()
        .await
        .unwrap();
    expect_problem(r, 400, "invalid_request").await;
    // Another client may not look at this campaign's consents.
    let r = relay
        .client
        .get(consent_url(to_api))
        .bearer_auth(&relay.api_key)
        .send()
        .await
        .unwrap();
    expect_problem(r, 403, "campaign_not_allowed").await;

    // Withdrawn: refused again.
    let r = relay
        .client
        .delete(consent_url(to_api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = relay.post_raw(Some(&key), None, body(to_api)).await;
    expect_problem(r, 422, "consent_missing").await;

    // Recorded through the campaign's keyword (any case, punctuation).
    let submits = sim.submits();
    sim.handle.send_mo(to_kw, CONSENT_FROM, "Join!").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let v: serde_json::Value = loop {
        let r = relay
            .client
            .get(consent_url(to_kw))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            break r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the keyword recorded no consent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["method"], "keyword");
    // The confirmation went out (an auto-reply through the carrier).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.submits() == submits {
        assert!(Instant::now() < deadline, "no opt-in confirmation sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = relay.post_raw(Some(&key), None, body(to_kw)).await;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    // STOP after consent: refused as opted out; the consent stays recorded.
    sim.handle.send_mo(to_kw, CONSENT_FROM, "STOP").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = relay.post_raw(Some(&key), None, body(to_kw)).await;
        if r.status().as_u16() == 422 {
            expect_problem(r, 422, "recipient_opted_out").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "STOP did not win over the consent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every change is in the audit export, numbers as pseudonyms only.
    let records = audit_records(&relay);
    let consent: Vec<_> = records
        .iter()
        .filter(|r| r["event"].as_str().unwrap_or("").starts_with("consent."))
        .collect();
    let shape: Vec<(String, String, String)> = consent
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["method"].as_str().unwrap_or("").to_owned(),
                r["via"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("consent.recorded".into(), "web_form".into(), "api".into()),
            ("consent.withdrawn".into(), "".into(), "api".into()),
            ("consent.recorded".into(), "keyword".into(), "mo".into()),
        ]
    );
    assert_eq!(consent[0]["actor"], "consent-app");
    let export = serde_json::to_string(&records).unwrap();
    for n in [to_api, to_kw] {
        assert!(
            !export.contains(&n[2..]),
            "a clear number in the audit export"
        );
    }
    assert!(relay.stop().await);
    // Canary: no message text and no clear number in any file of the node.
    let mut all = Vec::new();
    support::capture::files_under(relay.files.dir.path(), &mut all);
    let state: Vec<_> = all
        .iter()
        .filter(|f| f.starts_with(relay.state_dir()))
        .collect();
    assert!(!state.is_empty(), "no files under the state dir?");
    for f in state {
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(
            support::capture::leaked(&bytes, &canary),
            None,
            "{}",
            f.display()
        );
        for n in [to_api, to_kw] {
            assert!(
                support::capture::find(&bytes, &n.as_bytes()[2..]).is_none(),
                "{n} in {}",
                f.display()
            );
        }
    }
}

#[test]
fn keys_new_prints_a_line_with_a_default_expiry() {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    };
    let out = run(&["keys", "new", "--client", "clinic-app"]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("key_sha256"))
        .unwrap();
    let at = line.find("not_after = \"").unwrap() + "not_after = \"".len();
    let not_after = chrono::DateTime::parse_from_rfc3339(&line[at..at + 20]).unwrap();
    let days = (not_after.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days();
    assert!((364..=365).contains(&days), "{line}");
    let out = run(&["keys", "new", "--client", "clinic-app", "--days", "30"]);
    assert!(out.contains("it expires in 30 days"), "{out}");
    let out = run(&["keys", "new", "--client", "clinic-app", "--days", "0"]);
    assert!(!out.contains("not_after"), "{out}");
}
