//! The return path end to end, over real TLS on every hop on loopback:
//! client → HTTPS API → relay → SMPP/TLS → simulated carrier, and back:
//! delivery receipts → status change → durable outbox → signed
//! `message.status` webhook to the sink; MO → keywords (STOP/START/HELP) →
//! `message.received` webhook while the carrier waits (SPEC §1 rule 4, §4,
//! §5). Nothing is mocked. The last test extends the canary check to MO
//! texts and to the `text:` snippet of receipts.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use sms_conduit::smpp::CommandStatus;
use sms_conduit::tools::{Mode, Sink};
use sms_conduit::types::Secret;
use support::capture::{capture, files_under, find, leaked, line_at};
use support::expect_problem;
use support::relay::{
    message, wait_until, CarrierCfg, Files, ManualSmsc, Relay, Setup, Sim, CAMPAIGN, FROM, TO,
};

const PW: &str = "rp-pw1";
const SECRET: &[u8] = b"whsec_return_path_0123456789";

/// The sim sends MO with SMPP addresses as digits (TON international).
fn digits(n: &str) -> &str {
    n.trim_start_matches('+')
}

/// An appliance whose `clinic-app` has a webhook pointing at `sink`, one
/// simulated carrier (receipts after `dlr_ms`).
struct World {
    relay: Relay,
    sim: Sim,
    sink: Sink,
}

async fn world(dlr_ms: u64) -> World {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let sim = files
        .sim(PW, |o| o.dlr_delay = Duration::from_millis(dlr_ms))
        .await;
    let setup = Setup::one(&sim, PW).webhook(&sink.url(), SECRET, sink.ca_file());
    let relay = Relay::start(files, setup).await;
    World { relay, sim, sink }
}

/// Like [`world`], but the carrier is a [`ManualSmsc`] the test drives by
/// hand (which receipt, when, in what form).
async fn manual_world() -> (Relay, ManualSmsc, Sink) {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]).webhook(
        &sink.url(),
        SECRET,
        sink.ca_file(),
    );
    let relay = Relay::start(files, setup).await;
    (relay, smsc, sink)
}

/// The sink's accepted events of one `type`, in arrival order.
fn events_of(sink: &Sink, kind: &str) -> Vec<Value> {
    sink.events()
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

async fn status_of(relay: &Relay, id: &str) -> String {
    let r = relay
        .get(&format!("/v1/messages/{id}"), &relay.api_key)
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    v["status"].as_str().unwrap().to_owned()
}

/// The value of an unlabelled gauge on the metrics page.
fn gauge(page: &str, name: &str) -> Option<i64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Checks the status events: exactly one per id of `ids`, each `delivered`,
/// no event id twice, per message in commit order (`updated_at`).
fn check_status_events(events: &[Value], ids: &HashSet<String>) {
    let mut event_ids = HashSet::new();
    let mut per_message: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in events {
        let eid = e["id"].as_str().unwrap();
        assert!(eid.starts_with("evt_"), "{e}");
        assert!(event_ids.insert(eid.to_owned()), "event sent twice: {e}");
        let d = &e["data"];
        assert_eq!(d["campaign_id"], CAMPAIGN, "{e}");
        assert_eq!(d["carrier"], "carrier-a", "{e}");
        per_message
            .entry(d["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    let got: HashSet<String> = per_message.keys().cloned().collect();
    assert_eq!(&got, ids, "status events for exactly the messages sent");
    for (id, evs) in &per_message {
        let times: Vec<&str> = evs
            .iter()
            .map(|e| e["data"]["updated_at"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{id}: {times:?}");
        assert_eq!(evs.len(), 1, "{id}: one status change, one event");
        assert_eq!(evs[0]["data"]["status"], "delivered", "{}", evs[0]);
    }
}

/// Sends `n` distinct messages, 10 at a time; returns their ids.
async fn send_many(relay: &Relay, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let sends = chunk.iter().map(|i| {
            let body = message(&format!("{tag} {i}: your appointment is tomorrow"));
            async move { relay.send_ok(&body).await }
        });
        for v in futures::future::join_all(sends).await {
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_gets_one_signed_delivered_webhook() {
    const N: usize = 50;
    let w = world(10).await;
    let ids = send_many(&w.relay, N, "e2e").await;
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), N);

    assert!(
        w.sink.wait_for(N, Duration::from_secs(15)).await,
        "{} of {N} status webhooks arrived",
        w.sink.count()
    );
    // A duplicate would show up within this.
    wait_until(Duration::from_secs(5), "an empty outbox", || {
        w.relay.outbox_depth() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The sink records only events whose Conduit-Signature verified.
    assert_eq!(w.sink.bad_signatures(), 0);
    let events = events_of(&w.sink, "message.status");
    assert_eq!(events.len(), N, "one status event per message");
    assert_eq!(w.sink.count(), N, "nothing but status events");
    check_status_events(&events, &set);
    for id in &ids {
        assert_eq!(status_of(&w.relay, id).await, "delivered", "{id}");
    }
}

/// Most receipts are matched from an in-memory ring of recent carrier ids;
/// after a restart that ring is empty and the durable index must answer: a
/// receipt for a message sent before the restart still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_after_a_restart_is_matched_from_the_store() {
    let (mut relay, smsc, sink) = manual_world().await;
    let before = relay.send_ok(&message("see you at nine")).await;
    let before_id = before["id"].as_str().unwrap().to_owned();
    relay.restart().await;
    let after = relay.send_ok(&message("see you at ten")).await;
    let after_id = after["id"].as_str().unwrap().to_owned();
    let subs = smsc.submits();
    assert_eq!(subs.len(), 2);
    for s in &subs {
        assert_eq!(smsc.receipt(s).await, CommandStatus::EsmeRok);
    }
    assert_eq!(status_of(&relay, &before_id).await, "delivered");
    assert_eq!(status_of(&relay, &after_id).await, "delivered");
    assert!(sink.wait_for(2, Duration::from_secs(10)).await);
    let metrics = relay.metrics_text().await;
    assert!(
        !metrics.contains("unknown_id"),
        "no receipt went unmatched:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_segment_message_is_delivered_only_after_every_receipt() {
    let (relay, smsc, sink) = manual_world().await;

    let text = "lab results follow. ".repeat(20)[..400].to_owned();
    let v = relay.send_ok(&message(&text)).await;
    assert_eq!(v["segments"], 3, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let subs = smsc.submits();
    assert_eq!(subs.len(), 3, "one submit_sm per segment");

    // The relay answers a receipt after its transaction committed, so what
    // follows each answer is deterministic.
    for (k, s) in subs[..2].iter().enumerate() {
        assert_eq!(smsc.receipt(s).await, CommandStatus::EsmeRok);
        assert_eq!(
            status_of(&relay, &id).await,
            "accepted",
            "after {} of 3 receipts",
            k + 1
        );
        assert_eq!(relay.outbox_depth(), 0, "no event before the last receipt");
    }
    // The carrier repeats a receipt: still not delivered.
    assert_eq!(smsc.receipt(&subs[0]).await, CommandStatus::EsmeRok);
    assert_eq!(status_of(&relay, &id).await, "accepted");

    assert_eq!(smsc.receipt(&subs[2]).await, CommandStatus::EsmeRok);
    assert_eq!(status_of(&relay, &id).await, "delivered");
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
    // A repeated final receipt changes nothing and sends nothing.
    assert_eq!(smsc.receipt(&subs[2]).await, CommandStatus::EsmeRok);
    wait_until(Duration::from_secs(5), "an empty outbox", || {
        relay.outbox_depth() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = events_of(&sink, "message.status");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["segments"], 3);
    check_status_events(&events, &HashSet::from([id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_wait_in_the_outbox_while_the_webhook_is_down() {
    const N: usize = 20;
    let w = world(10).await;
    w.sink.set_mode(Mode::Fail);
    let ids = send_many(&w.relay, N, "down").await;
    let set: HashSet<String> = ids.iter().cloned().collect();

    // Every receipt was committed with its event; none can leave yet.
    wait_until(Duration::from_secs(10), "every event in the outbox", || {
        w.relay.outbox_depth() == N as u64
    })
    .await;
    for id in &ids {
        assert_eq!(status_of(&w.relay, id).await, "delivered", "{id}");
    }
    // Down for a while: every event tried and refused, and retried.
    wait_until(Duration::from_secs(10), "a retry of every event", || {
        w.sink.attempts() >= 2 * N as u64
    })
    .await;
    assert_eq!(w.sink.count(), 0);
    let depth = gauge(&w.relay.metrics_text().await, "sms_conduit_outbox_depth");
    assert_eq!(depth, Some(N as i64), "outbox depth gauge while down");

    w.sink.set_mode(Mode::Ok);
    assert!(
        w.sink.wait_for(N, Duration::from_secs(15)).await,
        "{} of {N} status webhooks after the webhook came back",
        w.sink.count()
    );
    wait_until(Duration::from_secs(5), "an empty outbox", || {
        w.relay.outbox_depth() == 0
    })
    .await;
    // Gauge refreshed by the worker within its poll interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = w.relay.metrics_text().await;
        if gauge(&page, "sms_conduit_outbox_depth") == Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gauge never 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = events_of(&w.sink, "message.status");
    assert_eq!(events.len(), N, "none twice");
    check_status_events(&events, &set);
    assert_eq!(w.sink.bad_signatures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mo_is_refused_while_the_webhook_is_down_and_relayed_once_on_retry() {
    let w = world(10).await;
    let text = "Running 10 min late, sorry!";
    let (patient, ours) = (digits(TO), digits(FROM));

    w.sink.set_mode(Mode::Fail);
    let st = w.sim.handle.send_mo(patient, ours, text).await;
    assert_eq!(
        st,
        CommandStatus::EsmeRxTAppn,
        "webhook 503 → temporary error"
    );
    assert!(w.sink.attempts() >= 1);

    // A client that does not answer: the carrier is not kept waiting past
    // the MO deadline, and gets a temporary error.
    w.sink.set_mode(Mode::Hang(Duration::from_secs(30)));
    let t0 = std::time::Instant::now();
    let st = w.sim.handle.send_mo(patient, ours, text).await;
    assert_eq!(st, CommandStatus::EsmeRxTAppn, "webhook hanging");
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    assert_eq!(w.sink.count(), 0);

    // The carrier retries once the client is back.
    w.sink.set_mode(Mode::Ok);
    let st = w.sim.handle.send_mo(patient, ours, text).await;
    assert_eq!(st, CommandStatus::EsmeRok);
    let mo = events_of(&w.sink, "message.received");
    assert_eq!(mo.len(), 1, "{mo:?}");
    let d = &mo[0]["data"];
    assert_eq!(d["text"], text);
    assert_eq!(d["from"], TO);
    assert_eq!(d["to"], FROM);
    assert_eq!(d["campaign_id"], CAMPAIGN);
    assert!(d["keyword"].is_null(), "{d}");
    assert!(mo[0]["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(w.sink.bad_signatures(), 0);
    // Not a keyword: nothing is sent back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.sim.submits(), 0);
}

/// Part `seq` of `total` of a concatenated MO (8-bit reference UDH, GSM).
fn mo_part(reference: u8, seq: u8, total: u8, text: &str) -> sms_conduit::smpp::DeliverRequest {
    let mut bytes = vec![0x05, 0x00, 0x03, reference, total, seq];
    bytes.extend_from_slice(text.as_bytes());
    sms_conduit::smpp::DeliverRequest {
        source_addr: digits(TO).into(),
        dest_addr: digits(FROM).into(),
        esm_class: 0x40,
        data_coding: 0,
        registered_delivery: 0,
        short_message: zeroize::Zeroizing::new(bytes),
        receipt: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concatenated_mo_survives_a_webhook_failure_on_its_last_part() {
    let (_relay, smsc, sink) = manual_world().await;
    let (one, two) = ("Can I move my appointment ", "to Friday afternoon?");

    // The first part is held (and acknowledged); the last one completes the
    // text, whose delivery fails: the carrier must retry.
    sink.set_mode(Mode::Fail);
    assert_eq!(
        smsc.deliver(mo_part(7, 1, 2, one)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(mo_part(7, 2, 2, two)).await,
        CommandStatus::EsmeRxTAppn
    );
    // The carrier redelivers only what was refused: the last part.
    sink.set_mode(Mode::Ok);
    assert_eq!(
        smsc.deliver(mo_part(7, 2, 2, two)).await,
        CommandStatus::EsmeRok
    );
    let mo = events_of(&sink, "message.received");
    assert_eq!(mo.len(), 1, "the whole MO relayed once after the retry");
    assert_eq!(mo[0]["data"]["text"], format!("{one}{two}"));
    assert_eq!(mo[0]["data"]["from"], TO);

    // A part announcing another total (its own header says 3 of 3, the
    // first said 2) belongs to another message: held apart (so
    // acknowledged), it completes nothing (tests/mo_reassembly.rs).
    assert_eq!(
        smsc.deliver(mo_part(8, 1, 2, one)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(mo_part(8, 3, 3, two)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(events_of(&sink, "message.received").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_help_keywords_and_opt_out_survives_restart() {
    let mut w = world(10).await;
    let (patient, ours) = (digits(TO), digits(FROM));
    let body = message("Your results are ready in the portal.");

    // STOP while the webhook is down: the opt-out is recorded anyway, the
    // confirmation goes out, the carrier gets a temporary error.
    w.sink.set_mode(Mode::Fail);
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, "Stop").await,
        CommandStatus::EsmeRxTAppn
    );
    wait_until(Duration::from_secs(5), "the stop_text submit", || {
        w.sim.submits() == 1
    })
    .await;
    expect_problem(w.relay.send(&body).await, 422, "recipient_opted_out").await;
    assert_eq!(w.sim.submits(), 1, "a refused send reaches no carrier");

    // The carrier's retry once the webhook is back: relayed once, with its
    // keyword, and no second confirmation.
    w.sink.set_mode(Mode::Ok);
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, "Stop").await,
        CommandStatus::EsmeRok
    );
    let mo = events_of(&w.sink, "message.received");
    assert_eq!(mo.len(), 1, "{mo:?}");
    assert_eq!(mo[0]["data"]["keyword"], "STOP");
    assert_eq!(mo[0]["data"]["from"], TO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.sim.submits(), 1, "STOP confirmed once");

    // START re-enables: the start_text, then the API may send again.
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, "START").await,
        CommandStatus::EsmeRok
    );
    wait_until(Duration::from_secs(5), "the start_text submit", || {
        w.sim.submits() == 2
    })
    .await;
    w.relay.send_ok(&body).await;
    assert_eq!(w.sim.submits(), 3);

    // HELP: the help text goes out, and the client sees the MO with its
    // keyword.
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, "help").await,
        CommandStatus::EsmeRok
    );
    wait_until(Duration::from_secs(5), "the help_text submit", || {
        w.sim.submits() == 4
    })
    .await;
    let mo = events_of(&w.sink, "message.received");
    let last = mo.last().unwrap();
    assert_eq!(last["data"]["keyword"], "HELP", "{last}");
    assert_eq!(last["data"]["text"], "help");
    let kw: Vec<&Value> = mo.iter().map(|e| &e["data"]["keyword"]).collect();
    assert_eq!(kw, ["STOP", "START", "HELP"], "{mo:?}");

    // STOP again, then a restart on the same state dir: still opted out.
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, "STOP").await,
        CommandStatus::EsmeRok
    );
    wait_until(Duration::from_secs(5), "the second stop_text", || {
        w.sim.submits() == 5
    })
    .await;
    w.relay.restart().await;
    expect_problem(w.relay.send(&body).await, 422, "recipient_opted_out").await;
    // Other recipients are unaffected.
    let mut other = body.clone();
    other["to"] = "+15557650000".into();
    w.relay.send_ok(&other).await;
    assert_eq!(w.sim.submits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mo_to_a_number_of_no_campaign_is_refused_and_not_relayed() {
    let w = world(10).await;
    let st = w
        .sim
        .handle
        .send_mo(digits(TO), "15559990000", "hello?")
        .await;
    assert_eq!(st, CommandStatus::EsmeRinvdstadr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.sink.attempts(), 0, "nothing reached the webhook");
    assert_eq!(w.sim.submits(), 0, "nothing sent back");
}

// ---- canary -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_in_mo_texts_and_receipt_snippets_is_never_stored_or_logged() {
    let logs = capture();
    // 19 characters: all of it is inside a receipt's 20-character snippet.
    let canary = format!("CANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF);
    let mo_canary = format!("MOCANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF);
    let mut w = world(10).await;
    let (patient, ours) = (digits(TO), digits(FROM));

    // MT texts that start with the canary: the sim's receipts carry it back
    // in their `text:` field. One GSM, one multi-segment.
    let mt = w
        .relay
        .send_ok(&message(&format!("{canary} appointment at 9")))
        .await;
    let long = format!("{canary} {}", "lab results follow. ".repeat(20))[..400].to_owned();
    let mt_long = w.relay.send_ok(&message(&long)).await;
    assert_eq!(mt_long["segments"], 3);
    assert!(w.sink.wait_for(2, Duration::from_secs(10)).await);
    for v in [&mt, &mt_long] {
        let id = v["id"].as_str().unwrap();
        assert_eq!(status_of(&w.relay, id).await, "delivered");
    }

    // MO with a canary: refused while the webhook is down (the error path
    // logs), then relayed.
    let mo_text = format!("{mo_canary} cannot make it today");
    w.sink.set_mode(Mode::Fail);
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, &mo_text).await,
        CommandStatus::EsmeRxTAppn
    );
    w.sink.set_mode(Mode::Ok);
    assert_eq!(
        w.sim.handle.send_mo(patient, ours, &mo_text).await,
        CommandStatus::EsmeRok
    );
    let mo = events_of(&w.sink, "message.received");
    assert_eq!(mo.len(), 1);
    assert_eq!(mo[0]["data"]["text"], mo_text.as_str());
    // An MO to a number of no campaign, with the canary too.
    assert_eq!(
        w.sim.handle.send_mo(patient, "15559990000", &mo_text).await,
        CommandStatus::EsmeRinvdstadr
    );

    // Drain: the store is flushed and closed.
    wait_until(Duration::from_secs(5), "an empty outbox", || {
        w.relay.outbox_depth() == 0
    })
    .await;
    let r = w.sim.handle.report();
    assert!(r.receipts_sent >= 4, "{r:?}");
    assert!(w.relay.stop().await, "the App drained cleanly");
    w.sim.stop().await;
    w.sink.stop().await;

    let mut paths = Vec::new();
    files_under(w.relay.files.dir.path(), &mut paths);
    assert!(
        paths.iter().any(|p| p.ends_with("state/sms-conduit.redb")),
        "{paths:?}"
    );
    for p in &paths {
        let bytes = std::fs::read(p).unwrap();
        for c in [&canary, &mo_canary] {
            assert_eq!(leaked(&bytes, c), None, "{c} in {}", p.display());
        }
        assert_eq!(
            find(&bytes, &TO.as_bytes()[2..]),
            None,
            "the patient's number in {}",
            p.display()
        );
    }

    let log = logs.bytes();
    let text = String::from_utf8_lossy(&log);
    // The capture saw this path: receipts, the MO refusal and the webhook.
    assert!(text.contains("SMPP bound"), "log capture is empty?");
    assert!(
        text.contains("MO webhook failed"),
        "MO error path not logged?"
    );
    assert!(
        !text.contains(&TO[2..]),
        "the patient's number is in the log"
    );
    for c in [&canary, &mo_canary] {
        if let Some((form, at)) = leaked(&log, c) {
            panic!("{c} ({form}) in a log line: {}", line_at(&log, at));
        }
    }
}

/// An MO for a campaign no client receives (no webhook) is not taken and
/// dropped: a temporary error, so the carrier keeps it (SPEC §1.4). A
/// keyword is still handled (opt-out recorded) and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mo_nobody_receives_is_a_temporary_error_not_an_ack() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let relay = Relay::start(files, Setup::one(&sim, PW)).await;
    let (patient, ours) = (digits(TO), digits(FROM));
    assert_eq!(
        sim.handle
            .send_mo(patient, ours, "Running late, sorry")
            .await,
        CommandStatus::EsmeRxTAppn
    );
    assert_eq!(
        sim.handle.send_mo(patient, ours, "STOP").await,
        CommandStatus::EsmeRok
    );
    expect_problem(
        relay.send(&message("Your results are ready.")).await,
        422,
        "recipient_opted_out",
    )
    .await;
}

/// A receipt's `network_error_code` TLV is the message's error code (in the
/// API and the webhook), ahead of the text's `err:` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipts_network_error_code_tlv_is_the_error_code() {
    let (relay, smsc, sink) = manual_world().await;
    let v = relay.send_ok(&message("Your lab results are in.")).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let subs = smsc.submits();
    assert_eq!(subs.len(), 1);
    let sub = &subs[0];
    assert_eq!(
        smsc.receipt_with_network_error(
            sub,
            "UNDELIV",
            "000",
            Some(5),
            &sub.message_id,
            Some((3, 0x22))
        )
        .await,
        CommandStatus::EsmeRok
    );
    assert_eq!(status_of(&relay, &id).await, "undeliverable");
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
    let events = sink.events();
    let e = events
        .iter()
        .find(|e| e["data"]["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no webhook for {id}: {events:?}"));
    assert_eq!(e["data"]["error_code"], "3:34", "{e}");
}

/// SPEC §4 statuses from the receipts carriers send: DELIVRD, UNDELIV,
/// EXPIRED and REJECTD become `delivered`, `undeliverable`, `expired` and
/// `rejected` in the API and in the signed `message.status` webhook; a
/// receipt without TLVs whose `id:` is the decimal form of the carrier's hex
/// id still finds its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_states_map_to_api_statuses_and_webhooks() {
    let (relay, smsc, sink) = manual_world().await;
    let cases = [
        ("DELIVRD", "000", Some(2u8), "delivered"),
        ("UNDELIV", "034", Some(5), "undeliverable"),
        ("EXPIRED", "000", Some(3), "expired"),
        ("REJECTD", "0C1", Some(8), "rejected"),
        ("UNDELIV", "011", None, "undeliverable"),
    ];
    let mut ids = Vec::new();
    for (i, _) in cases.iter().enumerate() {
        let v = relay
            .send_ok(&message(&format!("Appointment {i} confirmed.")))
            .await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let subs = smsc.submits();
    assert_eq!(subs.len(), cases.len());
    for ((stat, err, state, _), sub) in cases.iter().zip(&subs) {
        // Without TLVs the carrier quotes the id in decimal.
        let id = match state {
            Some(_) => sub.message_id.clone(),
            None => u64::from_str_radix(&sub.message_id, 16)
                .unwrap()
                .to_string(),
        };
        assert_eq!(
            smsc.receipt_with(sub, stat, err, *state, &id).await,
            CommandStatus::EsmeRok
        );
    }
    for ((_, _, _, want), id) in cases.iter().zip(&ids) {
        assert_eq!(status_of(&relay, id).await, *want, "message {id}");
    }
    assert!(sink.wait_for(cases.len(), Duration::from_secs(10)).await);
    let events = sink.events();
    for ((_, err, _, want), id) in cases.iter().zip(&ids) {
        let e = events
            .iter()
            .find(|e| e["data"]["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no webhook for {id}: {events:?}"));
        assert_eq!(e["type"], "message.status");
        assert_eq!(e["data"]["status"], *want);
        if *want != "delivered" {
            assert_eq!(e["data"]["error_code"], *err, "{e}");
        }
    }
}
