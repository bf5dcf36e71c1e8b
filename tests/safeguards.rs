//! Issue 22's safeguards over the real appliance (HTTPS API, SMPP simulator,
//! store): keys that expire, a client certificate as a second factor,
//! backup and restore, documented consent.

mod support;

use std::time::{Duration, Instant};

use support::expect_problem;
use support::relay::{message, Files, Relay, Setup, CAMPAIGN, FROM, TO};

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
    let _ = (FROM, TO);
    assert!(relay.stop().await);
}
