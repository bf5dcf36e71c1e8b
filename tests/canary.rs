//! The conduit rule (SPEC §1.1) checked from the outside: a unique canary
//! string sent as message text — GSM, UCS-2, multi-segment, and in refused
//! requests — must appear in no file the appliance wrote, in no log line (at
//! TRACE, every crate) and in no response body.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::Duration;

use sms_conduit::store::SharedState;
use support::capture::{capture, files_under, find, forms, leaked, line_at};
use support::expect_problem;
use support::relay::{message, Files, Relay, Setup, TO};

fn new_canary() -> String {
    format!("CANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF)
}

/// Answers kept for the final scan: (what, status, body).
type Answers = Vec<(String, u16, String)>;

async fn keep(answers: &mut Answers, what: &str, r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    answers.push((what.to_owned(), status, body.clone()));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_text_is_never_stored_logged_or_echoed() {
    let logs = capture();
    let canary = new_canary();
    // Self-check of the scanner: each form is found where it is.
    for (name, f) in forms(&canary) {
        let mut hay = b"xx".to_vec();
        hay.extend_from_slice(&f);
        assert_eq!(leaked(&hay, &canary).map(|l| l.0), Some(name));
    }

    let files = Files::new();
    // Receipts come back quickly, so their `text:` snippet (the first 20
    // characters, which hold the whole canary) passes through the relay too.
    let sim = files
        .sim("sim-pw1", |o| o.dlr_delay = Duration::from_millis(10))
        .await;
    let mut relay = Relay::start(files, Setup::one(&sim, "sim-pw1").limits(1, 5)).await;
    let key = relay.api_key.clone();
    let mut answers = Answers::new();

    // Accepted: GSM, UCS-2 with an emoji, multi-segment (400 chars, 3 parts).
    let gsm = format!("{canary} Your appointment is tomorrow at 09:30.");
    let ucs2 = format!("{canary} Ihr Termin ist morgen 😀");
    let long = format!("{canary} {}", "lab results follow. ".repeat(20))[..400].to_owned();
    for (what, text, segments, encoding) in [
        ("gsm", &gsm, 1, "gsm7"),
        ("ucs2", &ucs2, 1, "ucs2"),
        ("long", &long, 3, "gsm7"),
    ] {
        let (status, body) = keep(&mut answers, what, relay.send(&message(text)).await).await;
        assert_eq!(status, 201, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["segments"], segments, "{what}: {body}");
        assert_eq!(v["encoding"], encoding, "{what}: {body}");
        let id = v["id"].as_str().unwrap();
        let r = relay.get(&format!("/v1/messages/{id}"), &key).await;
        let (status, _) = keep(&mut answers, "get", r).await;
        assert_eq!(status, 200);
    }
    // With an Idempotency-Key (the request hash is keyed; never the text).
    let r = relay.send_idem("canary-key", &message(&gsm)).await;
    let (status, _) = keep(&mut answers, "idempotent", r).await;
    // The burst of 5 segments is spent by now (1 + 1 + 3; one earned back
    // per minute).
    assert_eq!(status, 429);

    // Refused, each carrying the canary somewhere in the request.
    let mut rate_limited = 0;
    for _ in 0..3 {
        let r = relay.send(&message(&gsm)).await;
        let (status, body) = keep(&mut answers, "rate limited", r).await;
        assert_eq!(status, 429, "{body}");
        rate_limited += 1;
    }
    assert_eq!(rate_limited, 3);
    let mut bad_to = message(&gsm);
    bad_to["to"] = canary.clone().into();
    let r = relay.send(&bad_to).await;
    keep(&mut answers, "to = canary", r).await;
    let mut bad_to = message(&gsm);
    bad_to["to"] = "5557654321".into();
    let r = relay.send(&bad_to).await;
    keep(&mut answers, "to not E.164", r).await;
    let bad_json =
        format!(r#"{{"from":"+15551230001","to":"{TO}","text":"{canary}" "campaign_id":"C"}}"#);
    let r = relay.post_raw(Some(&key), None, bad_json).await;
    keep(&mut answers, "bad JSON", r).await;
    let wrong_type = format!(
        r#"{{"from":"+15551230001","to":"{TO}","text":"x","campaign_id":"CTEST01","validity_secs":"{canary}"}}"#
    );
    let r = relay.post_raw(Some(&key), None, wrong_type).await;
    keep(&mut answers, "wrong type", r).await;
    let unknown_field = format!(r#"{{"{canary}":1}}"#);
    let r = relay.post_raw(Some(&key), None, unknown_field).await;
    keep(&mut answers, "unknown field", r).await;
    let r = relay.post_raw(None, None, message(&gsm).to_string()).await;
    keep(&mut answers, "no key", r).await;
    let r = relay
        .post_raw(Some(&canary), None, message(&gsm).to_string())
        .await;
    keep(&mut answers, "key = canary", r).await;
    let too_long = format!("{canary}{}", "x".repeat(1600));
    let r = relay.send(&message(&too_long)).await;
    keep(&mut answers, "11 segments", r).await;
    let r = relay.get(&format!("/v1/messages/{canary}"), &key).await;
    keep(&mut answers, "get canary id", r).await;

    // Metrics must not carry it either.
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        relay.app().bound.metrics.port()
    ))
    .await
    .unwrap();
    keep(&mut answers, "metrics", metrics).await;

    // Let the receipts reach the relay (it answers ESME_RX_T_APPN and the
    // simulator retries), then drain: the store is flushed and closed.
    wait_for_receipt_attempts(&sim).await;
    assert!(relay.stop().await, "the App drained cleanly");
    sim.stop().await;

    // 1. No file the appliance wrote (the store, anything in the dir).
    let mut paths = Vec::new();
    files_under(relay.files.dir.path(), &mut paths);
    assert!(
        paths.iter().any(|p| p.ends_with("state/sms-conduit.redb")),
        "{paths:?}"
    );
    for p in &paths {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(leaked(&bytes, &canary), None, "canary in {}", p.display());
        // The store keeps the recipient's pseudonym only (SPEC §1.2).
        assert_eq!(
            find(&bytes, &TO.as_bytes()[2..]),
            None,
            "recipient in {}",
            p.display()
        );
    }
    // 1b. The audit export of the run (what a SIEM receives) holds records of
    // it, but no canary and no clear recipient number.
    let mut export = Vec::new();
    let n = sms_conduit::audit::export_file(relay.state_dir(), None, None, &mut export).unwrap();
    assert!(n > 3, "the run left audit records ({n})");
    let export_text = String::from_utf8_lossy(&export);
    assert!(
        export_text.contains("\"message.accepted\""),
        "{export_text}"
    );
    // Bind changes are audited too: up at start, down at the drain.
    for event in ["\"smpp.bind_up\"", "\"smpp.bind_down\""] {
        assert!(export_text.contains(event), "no {event}: {export_text}");
    }
    assert_eq!(leaked(&export, &canary), None, "canary in the audit export");
    assert!(
        !export_text.contains(&TO[2..]),
        "recipient number in the audit export"
    );
    // 2. No log line. The capture works: the App's own lines are there.
    let log = logs.bytes();
    let log_text = String::from_utf8_lossy(&log);
    assert!(log_text.contains("SMPP bound"), "log capture is empty?");
    // Numbers in logs are masked (SPEC §1.2): the recipient never appears.
    assert!(
        !log_text.contains(&TO[2..]),
        "the recipient number is in the log"
    );
    if let Some((form, at)) = leaked(&log, &canary) {
        panic!("canary ({form}) in a log line: {}", line_at(&log, at));
    }
    // 3. No response body, error or not.
    for (what, status, body) in &answers {
        assert_eq!(
            leaked(body.as_bytes(), &canary),
            None,
            "{what} ({status}) echoed the canary: {body}"
        );
        assert!(
            !body.contains(&TO[2..]),
            "{what} ({status}) shows the recipient: {body}"
        );
    }
    // Sanity: every kind of refusal above really happened.
    let statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
    for s in [201, 400, 401, 404, 429] {
        assert!(statuses.contains(&s), "no {s} among {statuses:?}");
    }
}

/// Waits (at most 3 s) until the simulator has sent or given up on a receipt
/// for every accepted segment.
async fn wait_for_receipt_attempts(sim: &support::relay::Sim) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = sim.handle.report();
        if r.receipts_sent + r.receipts_failed >= r.accepted || std::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_problem_documents_never_echo_the_text() {
    let _logs = capture();
    let canary = new_canary();
    let files = Files::new();
    let sim = files.sim("sim-pw1", |o| o.fail_rate = 1.0).await;
    let relay = Relay::start(files, Setup::one(&sim, "sim-pw1")).await;
    let text = format!("{canary} please call the clinic");
    let mut m = message(&text);

    // Refused by the carrier (502): the detail names the SMPP status only.
    let doc = expect_problem(relay.send(&m).await, 502, "carrier_rejected").await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    // Refused by the relay for each reason it checks before the carrier.
    relay
        .shared()
        .opt_out(support::relay::CAMPAIGN, &relay.pseudonym(TO))
        .await
        .unwrap();
    let doc = expect_problem(relay.send(&m).await, 422, "recipient_opted_out").await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    m["from"] = support::relay::OTHER_FROM.into();
    let doc = expect_problem(relay.send(&m).await, 403, "sender_not_in_campaign").await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    m["campaign_id"] = "CNOPE99".into();
    let doc = expect_problem(relay.send(&m).await, 403, "campaign_not_allowed").await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    m["campaign_id"] = canary.clone().into();
    let doc = expect_problem(relay.send(&m).await, 403, "campaign_not_allowed").await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    let bad = format!(r#"{{"text":"{canary}","#);
    let doc = expect_problem(
        relay.post_raw(Some(&relay.api_key), None, bad).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
    let doc = expect_problem(
        relay
            .send(&message(&format!("{canary}{}", "y".repeat(1600))))
            .await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(leaked(doc.to_string().as_bytes(), &canary), None, "{doc}");
}
