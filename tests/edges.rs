//! Definite outcomes at the edges (issue 16): a carrier that answers one
//! segment late, a client that hangs up mid-send, pacing that cannot start
//! a submit in the request's time, a claim left by a crash. Real TLS on
//! every hop on loopback, the crate's own SMPP server as the carrier
//! ([`ManualSmsc`], which holds answers as the test says).

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use sms_conduit::smpp::CommandStatus;
use sms_conduit::tools::Sink;
use sms_conduit::types::Secret;
use support::expect_problem;
use support::relay::{message, retry_after, wait_until, CarrierCfg, Files, Relay, Setup};

const PW: &str = "edge-pw1";
const SECRET: &[u8] = b"whsec_edges_0123456789abcdef";

async fn status_of(relay: &Relay, id: &str) -> String {
    let r = relay
        .get(&format!("/v1/messages/{id}"), &relay.api_key)
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["status"].as_str().unwrap().to_owned()
}

/// Item 3: the first segment's receipt arrives while the second segment is
/// still with the carrier (a throttling carrier, or `max_tps` pacing, can
/// put seconds between the answers). Before the fix the receipt was
/// acknowledged and dropped as "unknown message id" after ~2 s of retries,
/// and the message stayed `accepted` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_a_segment_answered_before_the_others_is_kept() {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![
        CarrierCfg::new("carrier-a", smsc.port(), PW).response_timeout_secs(10)
    ])
    .webhook(&sink.url(), SECRET, sink.ca_file());
    let relay = Relay::start(files, setup).await;
    // Segment 1 answered at once, segment 2 after 3.5 s.
    smsc.answer_after(&[Duration::ZERO, Duration::from_millis(3500)]);
    let text = "your lab results are ready. ".repeat(8)[..200].to_owned();
    let body = message(&text);
    let send = relay.send(&body);
    let receipts = async {
        wait_until(Duration::from_secs(5), "both segments submitted", || {
            smsc.submits().len() == 2
        })
        .await;
        let subs = smsc.submits();
        // Let segment 1's answer reach the relay, then its receipt.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let first = smsc.receipt(&subs[0]).await;
        (subs, first, t.elapsed())
    };
    let (resp, (subs, first, waited)) = tokio::join!(send, receipts);
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(first, CommandStatus::EsmeRok);
    assert!(
        waited > Duration::from_secs(2),
        "the receipt waited for the record ({waited:?})"
    );
    assert_eq!(status_of(&relay, &id).await, "accepted", "one of two");
    assert_eq!(smsc.receipt(&subs[1]).await, CommandStatus::EsmeRok);
    assert_eq!(status_of(&relay, &id).await, "delivered");
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
}

/// Item 12: the client gives up (its timeout is shorter than the
/// carrier's answer) after the submit_sm was written. The send runs to its
/// recorded end anyway, and a retry with the same key gets that outcome.
/// Before the fix the send was dropped with the request: the carrier had
/// the message, nothing was recorded, and the retry got 409 for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_send_gets_the_recorded_outcome_on_retry() {
    let files = Files::new();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]);
    let relay = Relay::start(files, setup).await;
    smsc.answer_after(&[Duration::from_millis(1200)]);
    let impatient = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(relay.url("/v1/messages"))
        .bearer_auth(&relay.api_key)
        .header("idempotency-key", "hang-up-1")
        .json(&message("see you at 3pm"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    assert_eq!(smsc.submits().len(), 1, "the carrier has it");
    // The carrier answers after 1.2 s; the send records it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = relay
        .send_idem("hang-up-1", &message("see you at 3pm"))
        .await;
    assert_eq!(r.status(), 201, "the recorded outcome, replayed");
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(status_of(&relay, &id).await, "accepted");
    assert_eq!(smsc.submits().len(), 1, "never sent twice");
}

/// Item 7: `max_tps` pacing cannot start every submit within the
/// request's deadline. Requests that cannot start get a fast, definite
/// refusal (503 `carrier_unavailable`, `Retry-After`, nothing sent)
/// instead of queueing without bound; before the fix all eight waited
/// their turn (the last ~7 s) and 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_requests_that_cannot_start_in_time_are_refused_fast() {
    let files = Files::new();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![
        CarrierCfg::new("carrier-a", smsc.port(), PW).max_tps(1)
    ]);
    let relay = Relay::start(files, setup).await;
    let t = Instant::now();
    let bodies: Vec<Value> = (0..8).map(|i| message(&format!("paced {i}"))).collect();
    let sends = bodies.iter().map(|b| relay.send(b));
    let answers = futures::future::join_all(sends).await;
    let took = t.elapsed();
    let mut accepted = 0;
    for r in answers {
        match r.status().as_u16() {
            201 => accepted += 1,
            503 => {
                assert!(retry_after(&r) >= 1);
                expect_problem(r, 503, "carrier_unavailable").await;
            }
            s => panic!("unexpected {s}"),
        }
    }
    // The default deadline is the response timeout (2 s) + 2 s: a submit
    // must start within 2 s, and 1/s pacing starts at most 3 in that time.
    assert!((1..=4).contains(&accepted), "{accepted} accepted");
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
    assert_eq!(smsc.submits().len(), accepted, "refused ones never sent");
}

/// Item 9: a key whose first attempt may have reached the carrier (no
/// answer in time, here across a restart of the relay) answers "outcome
/// unknown" and is never sent again; a key whose request was refused
/// before anything was sent is free for a normal send. (A claim left
/// pending by a crashed process is `IdemPhase::Interrupted`, unit-tested
/// in `relay::record`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_attempt_may_have_been_sent_is_never_sent_again() {
    let files = Files::new();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]).limits(60, 1);
    let mut relay = Relay::start(files, setup).await;
    // The answer comes after the response timeout (2 s): outcome unknown.
    smsc.answer_after(&[Duration::from_secs(4)]);
    let body = message("your prescription is ready");
    let r = relay.send_idem("unknown-1", &body).await;
    expect_problem(r, 504, "carrier_timeout").await;
    relay.restart().await;
    let r = relay.send_idem("unknown-1", &body).await;
    let doc = expect_problem(r, 409, "idempotency_conflict").await;
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("outcome is unknown"),
        "{doc}"
    );
    assert_eq!(smsc.submits().len(), 1, "never sent twice");

    // Refused before anything was sent (the burst of 1 is spent): the key
    // is forgotten, and the same request later sends normally.
    assert_eq!(relay.send(&message("spends the burst")).await.status(), 201);
    let other = message("refill reminder");
    let first = relay.send_idem("refused-1", &other).await;
    expect_problem(first, 429, "rate_limited").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = relay.send_idem("refused-1", &other).await;
    assert_eq!(again.status(), 201);
}

/// Item 4: a carrier that sends one receipt for a concatenated message
/// (for its first segment here), and one that sends none. The first is
/// decided by the receipt it sent once no other comes within
/// `receipt_window_secs`; the second becomes `unknown` after
/// `receipt_deadline_secs`; both with a webhook. Before the fix both stayed
/// `accepted` for ever, with no webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_whose_receipts_stop_coming_are_settled() {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let smsc = files.manual_smsc(PW).await;
    let mut setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]).webhook(
        &sink.url(),
        SECRET,
        sink.ca_file(),
    );
    setup.node_extra = "receipt_window_secs = 2\nreceipt_deadline_secs = 4\n".into();
    let relay = Relay::start(files, setup).await;
    let text = "appointment moved to thursday. ".repeat(8)[..220].to_owned();
    let one = relay.send_ok(&message(&text)).await;
    let one = one["id"].as_str().unwrap().to_owned();
    let none = relay.send_ok(&message("no receipt ever")).await;
    let none = none["id"].as_str().unwrap().to_owned();
    let subs = smsc.submits();
    assert_eq!(subs.len(), 3);
    assert_eq!(smsc.receipt(&subs[0]).await, CommandStatus::EsmeRok);
    assert_eq!(status_of(&relay, &one).await, "accepted", "one of two");
    wait_until(
        Duration::from_secs(8),
        "the one-receipt message settled",
        || {
            sink.events()
                .iter()
                .any(|e| e["data"]["id"] == one.as_str())
        },
    )
    .await;
    assert_eq!(status_of(&relay, &one).await, "delivered");
    wait_until(
        Duration::from_secs(10),
        "the receipt-less message settled",
        || {
            sink.events()
                .iter()
                .any(|e| e["data"]["id"] == none.as_str())
        },
    )
    .await;
    assert_eq!(status_of(&relay, &none).await, "unknown");
    let events: Vec<Value> = sink
        .events()
        .into_iter()
        .filter(|e| e["type"] == "message.status")
        .collect();
    assert_eq!(events.len(), 2, "one event each: {events:?}");
}

/// Items 1 and 2: a node whose store cannot commit (a full disk) sends
/// nothing: 503 `store_unavailable` with `Retry-After` before any
/// submit_sm, `/readyz` not ready; once the fault is gone it recovers by
/// itself and sends again. Before the fix the carrier got the message and
/// the client a 500 (nothing recorded), and the store stayed poisoned
/// until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_cannot_commit_sends_nothing_and_recovers() {
    let files = Files::new();
    let smsc = files.manual_smsc(PW).await;
    let faults = sms_conduit::store::FaultSwitch::new();
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]);
    let relay = Relay::start_with_store_faults(files, setup, faults.clone()).await;
    assert_eq!(relay.send(&message("before the fault")).await.status(), 201);
    faults.fail_writes(true);
    // The first send after the disk filled may be the one whose commit
    // finds it: the carrier has that one, and it is answered 504 (never a
    // 5xx-and-sent) and recorded once the store is back.
    let first = relay.send(&message("the disk just filled")).await;
    assert!(
        [503, 504].contains(&first.status().as_u16()),
        "{}",
        first.status()
    );
    let sent_before = smsc.submits().len();
    for i in 0..5 {
        let r = relay.send(&message(&format!("while full {i}"))).await;
        assert!(retry_after(&r) >= 1);
        expect_problem(r, 503, "store_unavailable").await;
    }
    assert_eq!(smsc.submits().len(), sent_before, "nothing sent while full");
    relay.wait_not_ready().await;
    faults.fail_writes(false);
    relay.wait_ready().await;
    assert_eq!(relay.send(&message("after the fault")).await.status(), 201);
}
