//! The families contrib/prometheus/alerts.yml needs beside the existing
//! ones (issue 19 item 5): configured sessions per carrier next to the
//! bound ones, and the age of the oldest status event a client's webhook
//! has not taken.

mod support;

use std::time::Duration;

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
