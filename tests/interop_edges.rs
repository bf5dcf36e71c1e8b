//! The edges of issue 16 against a carrier nobody here wrote: node-smpp
//! (npm `smpp`, `tests/interop/node/smsc.js`) as the SMSC, over TLS on
//! loopback, with the whole relay in front (HTTPS API, store, webhooks).
//!
//! * A carrier that throttles above a rate: every message is accepted and
//!   the carrier sees about one submit_sm per message (item 6).
//! * A carrier that sends one receipt per concatenated message (for its
//!   first segment): the message is settled `delivered` with one webhook
//!   (item 4).

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sms_conduit::tools::Sink;
use sms_conduit::types::Secret;
use support::node::NodeProc;
use support::relay::{message, wait_until, CarrierCfg, Files, Relay, Setup, SYSTEM_ID};

const PW: &str = "node-pw1";
const SECRET: &[u8] = b"whsec_interop_edges_0123456789";

fn node_smsc(files: &Files, env: &[(&str, String)]) -> (NodeProc, u16) {
    let mut all = vec![
        ("PORT", "0".to_string()),
        ("CERT", files.cert.display().to_string()),
        ("KEY", files.key.display().to_string()),
        ("SYSTEM_ID", SYSTEM_ID.to_string()),
        ("PASSWORD", PW.to_string()),
    ];
    all.extend(env.iter().cloned());
    let node = NodeProc::spawn("smsc.js", &all);
    let port = node.next("listening")["port"].as_u64().unwrap() as u16;
    (node, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_node_smpp_carrier_sees_about_one_submit_per_message() {
    const MESSAGES: usize = 300;
    let files = Files::new();
    let (node, port) = node_smsc(&files, &[("THROTTLE_TPS", "50".into())]);
    let relay = Arc::new(
        Relay::start(
            files,
            Setup::new(vec![CarrierCfg::new("node-smsc", port, PW)]),
        )
        .await,
    );
    let statuses: Vec<u16> = futures::stream::iter(0..MESSAGES)
        .map(|i| {
            let relay = relay.clone();
            async move {
                // A 503 carrier_unavailable (the pacing could not start the
                // submit in the request's time) is retried, as a client
                // would after Retry-After; nothing was sent for it.
                loop {
                    let r = relay.send(&message(&format!("Reminder {i}"))).await;
                    if r.status() != 503 {
                        return r.status().as_u16();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    // The last stats line node printed (every 500 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut stats = node.next("stats");
    while let Ok(v) = node.lines.try_recv() {
        if v["event"] == "stats" {
            stats = v;
        }
    }
    let submits = stats["submits"].as_u64().unwrap();
    let per_message = submits as f64 / MESSAGES as f64;
    eprintln!("node-smpp throttling at 50/s: {stats} ({per_message:.2} submit_sm per message)");
    assert!(per_message <= 1.3, "{stats}");
    assert!(stats["peak"].as_u64().unwrap() <= 100, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_smpp_receipt_for_a_concatenated_message_settles_it() {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let (_node, port) = node_smsc(&files, &[("RECEIPTS", "one".into())]);
    let mut setup = Setup::new(vec![CarrierCfg::new("node-smsc", port, PW)]).webhook(
        &sink.url(),
        SECRET,
        sink.ca_file(),
    );
    setup.node_extra = "receipt_window_secs = 2\n".into();
    let relay = Relay::start(files, setup).await;
    let text = "your test results are ready to view. ".repeat(8)[..250].to_owned();
    let v = relay.send_ok(&message(&text)).await;
    assert_eq!(v["segments"], 2, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(10), "the message settled", || {
        sink.events().iter().any(|e| e["data"]["id"] == id.as_str())
    })
    .await;
    let r = relay
        .get(&format!("/v1/messages/{id}"), &relay.api_key)
        .await;
    let got: serde_json::Value = r.json().await.unwrap();
    assert_eq!(got["status"], "delivered", "{got}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = sink
        .events()
        .into_iter()
        .filter(|e| e["data"]["id"] == id.as_str())
        .count();
    assert_eq!(events, 1);
}
