//! The families contrib/prometheus/alerts.yml needs beside the existing
//! ones (issue 19 item 5): configured sessions per carrier next to the
//! bound ones, the age of the oldest status event a client's webhook has
//! not taken, TLS certificate expiry (ours, the carrier's, the webhook
//! endpoint's) and rate-limit and daily-cap usage.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::Duration;

use sms_conduit::tools::Sink;
use sms_conduit::types::Secret;
use support::relay::*;

const PW: &str = "am-pw1";

fn gauge(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_sessions_follow_the_config_and_reloads() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let mut relay = Relay::start(
        files,
        Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]),
    )
    .await;
    let binds = i64::from(relay.config.carriers[0].binds);
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    assert_eq!(
        gauge(
            &text,
            r#"sms_conduit_smpp_configured_sessions{link="carrier-a"}"#
        ),
        Some(binds),
        "{text}"
    );
    assert_eq!(
        gauge(
            &text,
            r#"sms_conduit_smpp_sessions{link="carrier-a",state="bound"}"#
        ),
        Some(binds)
    );
    // Renamed carrier: the old name's series goes, the new one comes.
    relay
        .reload(Setup::new(vec![CarrierCfg::new(
            "carrier-b",
            sim.port(),
            PW,
        )]))
        .await;
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    assert_eq!(
        gauge(
            &text,
            r#"sms_conduit_smpp_configured_sessions{link="carrier-a"}"#
        ),
        None,
        "{text}"
    );
    assert_eq!(
        gauge(
            &text,
            r#"sms_conduit_smpp_configured_sessions{link="carrier-b"}"#
        ),
        Some(binds)
    );
    assert!(relay.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_outbox_age_grows_while_the_webhook_is_down() {
    let files = Files::new();
    // The receipt comes at once: its status event is what waits.
    let sim = files
        .sim(PW, |o| o.dlr_delay = Duration::from_millis(20))
        .await;
    let dead = closed_port().await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]).webhook(
        &format!("http://127.0.0.1:{dead}/events"),
        b"whsec_am",
        None,
    );
    let mut relay = Relay::start(files, setup).await;
    relay.send_ok(&message("Age me.")).await;
    wait_until(Duration::from_secs(5), "an event in the outbox", || {
        relay.outbox_depth() > 0
    })
    .await;
    let series = r#"sms_conduit_outbox_oldest_age_seconds{client="clinic-app"}"#;
    wait_until(Duration::from_secs(10), "the oldest event 2 s old", || {
        let text = String::from_utf8(relay.app().metrics.render()).unwrap();
        gauge(&text, series).is_some_and(|age| age >= 2)
    })
    .await;
    assert!(relay.outbox_depth() > 0);
    // Draining may leave the undeliverable event behind: that is the point.
    let _ = relay.stop().await;
}

/// The earliest notAfter of a PEM file's chain, as the relay reads it.
fn not_after(pem: &std::path::Path) -> i64 {
    let certs = sms_conduit::tls::load_certs(pem).unwrap();
    sms_conduit::tls::earliest_not_after(certs.iter().map(|c| c.as_ref())).unwrap()
}

/// A relay bound to a simulated carrier that answers receipts after 20 ms,
/// with a client whose webhook is a verifying sink.
async fn relay_with_sink() -> (Relay, Sink, Sim) {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(b"whsec_am".to_vec()))
        .await
        .unwrap();
    let sim = files
        .sim(PW, |o| o.dlr_delay = Duration::from_millis(20))
        .await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]).webhook(
        &sink.url(),
        b"whsec_am",
        sink.ca_file(),
    );
    (Relay::start(files, setup).await, sink, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_of_ours_the_carriers_and_the_webhook_endpoints() {
    let (mut relay, sink, _sim) = relay_with_sink().await;
    // The simulated carrier presents the relay's own certificate here.
    let ours = not_after(&relay.files.cert);
    let hook = not_after(sink.ca_file().unwrap());
    let now = chrono::Utc::now().timestamp();
    assert!(ours > now && hook > now);
    let series = |role: &str, name: &str| {
        format!(r#"sms_conduit_tls_cert_expiry_timestamp_seconds{{name="{name}",role="{role}"}}"#)
    };
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    assert_eq!(gauge(&text, &series("server", "tls")), Some(ours), "{text}");
    assert_eq!(gauge(&text, &series("carrier", "carrier-a")), Some(ours));
    // No series before the endpoint answered: 0 would read as expired.
    assert_eq!(gauge(&text, &series("webhook", "clinic-app")), None);

    relay.send_ok(&message("Expiry check.")).await;
    assert!(
        sink.wait_for(1, Duration::from_secs(10)).await,
        "no webhook"
    );
    wait_until(
        Duration::from_secs(5),
        "the webhook certificate's series",
        || {
            let text = String::from_utf8(relay.app().metrics.render()).unwrap();
            gauge(&text, &series("webhook", "clinic-app")) == Some(hook)
        },
    )
    .await;
    let _ = relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_daily_cap_usage_per_campaign_and_brand() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)])
        .limits(600, 100)
        .daily_cap(50, "America/Los_Angeles");
    let mut relay = Relay::start(files, setup).await;
    let one = message("Usage one.");
    let two = message(&"Two segments of usage. ".repeat(10)[..200]);
    relay.send_ok(&one).await;
    relay.send_ok(&two).await;
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    let c = format!(r#"{{campaign="{CAMPAIGN}"}}"#);
    assert_eq!(
        gauge(&text, &format!("sms_conduit_campaign_segments_total{c}")),
        Some(3),
        "{text}"
    );
    assert_eq!(
        gauge(
            &text,
            &format!("sms_conduit_campaign_rate_limit_segments_per_minute{c}")
        ),
        Some(600)
    );
    let b = format!(r#"{{brand="{BRAND}"}}"#);
    assert_eq!(
        gauge(&text, &format!("sms_conduit_brand_daily_cap_segments{b}")),
        Some(50)
    );
    // The uncapped brand has no cap series.
    assert!(!text.contains(r#"sms_conduit_brand_daily_cap_segments{brand="BOTHER1"}"#));
    // Refreshed from the daily counter every CAP_USAGE_EVERY.
    let within = sms_conduit::metrics::CAP_USAGE_EVERY * 2 + Duration::from_secs(2);
    wait_until(within, "the brand's 3 segments in the usage gauge", || {
        let text = String::from_utf8(relay.app().metrics.render()).unwrap();
        gauge(&text, &format!("sms_conduit_brand_daily_segments{b}")) == Some(3)
    })
    .await;
    assert!(relay.stop().await);
}

/// Issue 19 item 5's latencies: per-carrier submit latency, submit-to-
/// receipt latency, and webhook latency, each observed once per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_receipt_and_webhook_latencies_are_observed() {
    let (mut relay, sink, _sim) = relay_with_sink().await;
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    assert_eq!(
        gauge(
            &text,
            r#"sms_conduit_submit_seconds_count{carrier="carrier-a"}"#
        ),
        None
    );
    for i in 0..3 {
        relay.send_ok(&message(&format!("Latency {i}."))).await;
    }
    assert!(sink.wait_for(3, Duration::from_secs(10)).await, "webhooks");
    wait_until(Duration::from_secs(5), "every latency observed", || {
        let text = String::from_utf8(relay.app().metrics.render()).unwrap();
        gauge(
            &text,
            r#"sms_conduit_submit_seconds_count{carrier="carrier-a"}"#,
        ) == Some(3)
            && gauge(
                &text,
                r#"sms_conduit_receipt_seconds_count{carrier="carrier-a"}"#,
            ) == Some(3)
            && gauge(
                &text,
                r#"sms_conduit_webhook_seconds_count{client="clinic-app"}"#,
            )
            .is_some_and(|n| n >= 3)
    })
    .await;
    let _ = relay.stop().await;
}

/// A capped brand removed by a reload takes its daily-usage series with it
/// (it used to stay, frozen at its last value, for alerts to fire on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_brand_leaves_no_usage_series() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let carriers = || vec![CarrierCfg::new("carrier-a", sim.port(), PW)];
    let capped = || Setup::new(carriers()).daily_cap(50, "America/Los_Angeles");
    let mut setup = capped();
    setup.extra_toml = r#"
[[brands]]
id = "BGONE1"
daily_cap = 10

[[campaigns]]
id = "CGONE1"
brand = "BGONE1"
segments_per_minute = 600
burst = 10
"#
    .into();
    let mut relay = Relay::start(files, setup).await;
    let series = r#"sms_conduit_brand_daily_segments{brand="BGONE1"}"#;
    let within = sms_conduit::metrics::CAP_USAGE_EVERY * 2 + Duration::from_secs(2);
    wait_until(within, "the capped brand's usage series", || {
        let text = String::from_utf8(relay.app().metrics.render()).unwrap();
        gauge(&text, series) == Some(0)
    })
    .await;
    relay.reload(capped()).await;
    wait_until(within, "the removed brand's usage series gone", || {
        let text = String::from_utf8(relay.app().metrics.render()).unwrap();
        !text.contains(series)
    })
    .await;
    // The capped brand still configured keeps its series.
    let text = String::from_utf8(relay.app().metrics.render()).unwrap();
    let kept = format!(r#"sms_conduit_brand_daily_segments{{brand="{BRAND}"}}"#);
    assert_eq!(gauge(&text, &kept), Some(0), "{text}");
    assert!(relay.stop().await);
}
