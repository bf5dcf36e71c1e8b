//! Fleet mode (SPEC §8, issue 18): two relays sharing one real
//! `redis-server` (started here on a unix socket in a temp dir, stopped by
//! its PID) and one carrier. Limits, daily caps and opt-outs hold across
//! both nodes; with Redis gone, sends fail closed with 503
//! `shared_state_unavailable` and recover without a restart. A receipt taken
//! by the node that did not send reaches the sender once (also after the
//! sender was down, and when one carrier simulator delivers every receipt
//! on the other node's bind), `GET` answers on both nodes (also for the
//! statuses the receipt rules set), and one `Idempotency-Key` at both
//! nodes sends once.
//!
//! Without `redis-server` installed the tests fail under `CI=true` and are
//! skipped (with the reason printed) otherwise.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::expect_problem;
use support::relay::*;

const PW: &str = "fleetpw";

/// A private `redis-server` on a unix socket, killed when dropped.
struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// `None` (test skipped) when `redis-server` is missing outside CI.
    fn start() -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("redis-server is not installed (CI=true): .ci/run installs it");
            }
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.run();
        Some(r)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Starts the server (again) on the same socket and waits for it.
    fn run(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server by its PID and reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A `[fleet]` table for this server; `prefix` separates tests.
    fn fleet(&self, prefix: &str) -> String {
        format!(
            "[fleet]\nredis_url = \"redis+unix://{}\"\nkey_prefix = \"{prefix}:\"\ntimeout_ms = 300\n",
            self.socket().display()
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two relays on one carrier simulator and (unless `fleet` is empty) one Redis.
async fn two_nodes(
    sim_files: Files,
    _sim: &Sim,
    setup: impl Fn() -> Setup,
    fleet: &str,
) -> (Relay, Relay) {
    let files_b = sim_files.sibling();
    let mut sa = setup();
    sa.fleet_extra = fleet.to_owned();
    let mut sb = setup();
    sb.fleet_extra = fleet.to_owned();
    let a = Relay::start(sim_files, sa).await;
    let b = Relay::start(files_b, sb).await;
    (a, b)
}

/// Sends as fast as one client can, alternating nodes, for `secs`; returns
/// (201s, 429s, elapsed seconds).
async fn hammer(a: &Relay, b: &Relay, secs: f64) -> (u32, u32, f64) {
    let t0 = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    let mut i = 0u32;
    while t0.elapsed().as_secs_f64() < secs {
        let node = if i % 2 == 0 { a } else { b };
        i += 1;
        let r = node
            .send(&message("Your appointment is tomorrow at 9."))
            .await;
        match r.status().as_u16() {
            201 => ok += 1,
            429 => limited += 1,
            s => panic!(
                "unexpected status {s}: {}",
                r.text().await.unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, limited, t0.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_rate_holds_across_two_nodes() {
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let (a, b) = two_nodes(
        files,
        &sim,
        || Setup::one(&sim, PW).limits(60, 5),
        &redis.fleet("rate"),
    )
    .await;
    let (ok, limited, t) = hammer(&a, &b, 3.0).await;
    // GCRA: burst 5 at once, then one segment a second.
    let bound = 5 + t.ceil() as u32;
    eprintln!("fleet: {ok} admitted, {limited} refused in {t:.2} s (bound {bound})");
    assert!(ok <= bound, "{ok} admitted across two nodes, bound {bound}");
    assert!(
        ok + 1 >= 5 + t.floor() as u32,
        "{ok} admitted: the limit is too tight"
    );
    assert!(limited > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_at_one_node_is_refused_at_the_other() {
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let (a, b) = two_nodes(files, &sim, || Setup::one(&sim, PW), &redis.fleet("stop")).await;
    b.send_ok(&message("Before the opt-out.")).await;
    let path = format!("/v1/campaigns/{CAMPAIGN}/opt-outs/{TO}");
    let r = a
        .client
        .put(a.url(&path))
        .bearer_auth(&a.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    loop {
        let r = b.send(&message("After the opt-out.")).await;
        if r.status() == 422 {
            expect_problem(r, 422, "recipient_opted_out").await;
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "node B still sends 1 s after the opt-out at A (status {})",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("fleet: opt-out at A refused at B after {:?}", t0.elapsed());
    // Node B's opt-out API sees it too.
    let r = b.get(&path, &b.api_key).await;
    assert_eq!(r.status(), 200);
    // And taking it back at B lets A send again.
    let r = b
        .client
        .delete(b.url(&path))
        .bearer_auth(&b.api_key)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    a.send_ok(&message("Subscribed again.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_daily_cap_is_reached_across_two_nodes() {
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let (a, b) = two_nodes(
        files,
        &sim,
        || Setup::one(&sim, PW).daily_cap(4, "America/Los_Angeles"),
        &redis.fleet("cap"),
    )
    .await;
    for node in [&a, &b, &a, &b] {
        node.send_ok(&message("Within the cap.")).await;
    }
    for node in [&a, &b] {
        let r = node.send(&message("Over the cap.")).await;
        let secs = retry_after(&r);
        assert!((1..=25 * 3600).contains(&secs), "Retry-After {secs}");
        expect_problem(r, 429, "daily_cap_reached").await;
    }
    assert_eq!(sim.submits(), 4, "the carrier saw only the capped sends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_and_recovers_without_a_restart() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let (a, b) = two_nodes(files, &sim, || Setup::one(&sim, PW), &redis.fleet("down")).await;
    a.send_ok(&message("Redis is up.")).await;
    b.send_ok(&message("Redis is up.")).await;
    let submits_before = sim.submits();

    redis.stop();
    let t0 = Instant::now();
    let mut refused = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        for node in [&a, &b] {
            let r = node.send(&message("Redis is down.")).await;
            assert_eq!(
                r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
                Some("2")
            );
            expect_problem(r, 503, "shared_state_unavailable").await;
            refused += 1;
        }
    }
    assert_eq!(sim.submits(), submits_before, "a send went out unchecked");
    // The load balancer is told after the grace.
    a.wait_not_ready().await;
    eprintln!("fleet: {refused} sends refused with 503 while Redis was down");

    redis.run();
    let t1 = Instant::now();
    for node in [&a, &b] {
        loop {
            let r = node.send(&message("Redis is back.")).await;
            match r.status().as_u16() {
                201 => break,
                503 => expect_problem(r, 503, "shared_state_unavailable").await,
                s => panic!("status {s} while Redis comes back"),
            };
            assert!(
                t1.elapsed() < Duration::from_secs(10),
                "sends did not resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "fleet: sends resumed {:?} after Redis restarted",
        t1.elapsed()
    );
    a.wait_ready().await;
    b.wait_ready().await;
}

const SECRET: &[u8] = b"whsec_fleet_receipts_0123456789";

/// The `status` of message `id` as `node` answers `GET /v1/messages/{id}`.
async fn status_at(node: &Relay, id: &str) -> String {
    let r = node.get(&format!("/v1/messages/{id}"), &node.api_key).await;
    assert_eq!(r.status(), 200, "GET /v1/messages/{id}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["status"].as_str().unwrap().to_owned()
}

/// Polls `GET` on `node` until message `id` is `want` (up to 10 s).
async fn wait_status(node: &Relay, id: &str, want: &str) {
    let t0 = Instant::now();
    loop {
        let s = status_at(node, id).await;
        if s == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "message {id} is still {s:?} after 10 s, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The carrier has two SMSC endpoints (one [`ManualSmsc`] each), node A
/// bound to the first and node B to the second; a receipt for A's message
/// comes back on B's bind, as carriers do. B forwards it to A through
/// Redis; A applies it: one status change, one webhook event, and `GET`
/// shows it on both nodes. With A stopped, B still takes the receipt and A
/// applies it after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_taken_by_the_other_node_reaches_the_sender_once() {
    use sms_conduit::smpp::CommandStatus;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let files = Files::new();
    let sink = sms_conduit::tools::Sink::start_self_signed(
        files.dir.path(),
        sms_conduit::types::Secret::new(SECRET.to_vec()),
    )
    .await
    .unwrap();
    let smsc_a = files.manual_smsc(PW).await;
    let smsc_b = files.manual_smsc(PW).await;
    let setup = |port: u16, node: &str| {
        let mut s = Setup::new(vec![CarrierCfg::new("carrier-a", port, PW)])
            .webhook(&sink.url(), SECRET, sink.ca_file())
            .node_id(node);
        s.fleet_extra = redis.fleet("rcpt");
        s
    };
    let files_b = files.sibling();
    let mut a = Relay::start(files, setup(smsc_a.port(), "node-a")).await;
    let b = Relay::start(files_b, setup(smsc_b.port(), "node-b")).await;

    let sent = a.send_ok(&message("See you at nine.")).await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let subs = smsc_a.submits();
    assert_eq!(subs.len(), 1);
    // `GET` answers on the node that did not send it too.
    assert_eq!(status_at(&b, &id).await, "accepted");
    // On B's bind: B has no record of it.
    assert_eq!(smsc_b.receipt(&subs[0]).await, CommandStatus::EsmeRok);
    wait_status(&a, &id, "delivered").await;
    wait_status(&b, &id, "delivered").await;
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
    // A redelivered receipt changes nothing: still one event.
    assert_eq!(smsc_b.receipt(&subs[0]).await, CommandStatus::EsmeRok);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e["type"] == "message.status")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["id"], id.as_str(), "{events:?}");
    assert_eq!(events[0]["data"]["status"], "delivered", "{events:?}");
    assert!(
        !b.metrics_text().await.contains("unknown_id"),
        "B counted the receipt as unknown"
    );

    // The owner is down: B still takes the receipt (it waits in A's
    // stream), and A applies it once it is back.
    let sent = a.send_ok(&message("See you at ten.")).await;
    let id2 = sent["id"].as_str().unwrap().to_owned();
    let subs = smsc_a.submits();
    assert_eq!(subs.len(), 2);
    assert!(a.stop().await, "node A did not drain cleanly");
    assert_eq!(smsc_b.receipt(&subs[1]).await, CommandStatus::EsmeRok);
    a.restart().await;
    wait_status(&a, &id2, "delivered").await;
    wait_status(&b, &id2, "delivered").await;
    assert!(sink.wait_for(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = sink
        .events()
        .iter()
        .filter(|e| e["type"] == "message.status")
        .count();
    assert_eq!(n, 2, "one event per message");

    // Redis gone: B can neither place nor forward a receipt; the carrier
    // is told to redeliver, never OK-and-dropped.
    a.send_ok(&message("See you at eleven.")).await;
    let subs = smsc_a.submits();
    redis.stop();
    assert_eq!(smsc_b.receipt(&subs[2]).await, CommandStatus::EsmeRxTAppn);
    eprintln!("fleet: receipts on B's bind applied at A: {id} and (after A's restart) {id2}");
}

/// The counter `sms_conduit_messages_total` of `carrier-a` for a
/// direction and outcome, 0 when absent.
async fn messages_total(node: &Relay, direction: &str, outcome: &str) -> u64 {
    let want = format!(
        "sms_conduit_messages_total{{carrier=\"carrier-a\",direction=\"{direction}\",outcome=\"{outcome}\"}} "
    );
    node.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Both nodes bound to ONE carrier simulator (one bind each, the same
/// system_id), which delivers every receipt on another bind than the one
/// that took the submit (`sim-carrier --dlr-on-other-bind`): here always
/// the other node's. Each receipt is forwarded through Redis to the node
/// that sent the message and applied there once: one webhook event per
/// message, and `GET` on both nodes shows `delivered`.
///
/// Without the forwarding this fails: run once with the node that took a
/// receipt for another node's message acknowledging and dropping it (as
/// before fleet mode), the first message stayed `accepted` at its owner
/// (`message … is still "accepted" after 10 s, not "delivered"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_on_the_other_nodes_bind_of_one_carrier_reach_the_sender_once() {
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let sink = sms_conduit::tools::Sink::start_self_signed(
        files.dir.path(),
        sms_conduit::types::Secret::new(SECRET.to_vec()),
    )
    .await
    .unwrap();
    let sim = files
        .sim(PW, |o| {
            o.dlr_delay = Duration::from_millis(50);
            o.dlr_on_other_bind = true;
        })
        .await;
    let setup = |node: &str| {
        let mut s = Setup::one(&sim, PW)
            .webhook(&sink.url(), SECRET, sink.ca_file())
            .node_id(node);
        s.fleet_extra = redis.fleet("other-bind");
        s
    };
    let files_b = files.sibling();
    let a = Relay::start(files, setup("node-a")).await;
    let b = Relay::start(files_b, setup("node-b")).await;
    wait_until(
        Duration::from_secs(10),
        "both nodes bound to the carrier",
        || sim.handle.bound_sessions() == 2,
    )
    .await;

    const EACH: usize = 3;
    let mut ids = Vec::new();
    for i in 0..2 * EACH {
        let node = if i % 2 == 0 { &a } else { &b };
        let sent = node.send_ok(&message("See you at nine.")).await;
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_status(&a, id, "delivered").await;
        wait_status(&b, id, "delivered").await;
    }
    assert!(sink.wait_for(ids.len(), Duration::from_secs(10)).await);
    // Late duplicates would show up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e["type"] == "message.status")
        .collect();
    assert_eq!(events.len(), ids.len(), "one event per message: {events:?}");
    for id in &ids {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["data"]["id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "message {id}: {events:?}");
        assert_eq!(mine[0]["data"]["status"], "delivered", "{events:?}");
    }
    let report = sim.handle.report();
    assert_eq!(report.receipts_sent, ids.len() as u64, "{report:?}");
    assert_eq!(
        report.receipts_on_other_bind,
        ids.len() as u64,
        "every receipt came on the other node's bind: {report:?}"
    );
    // Each node took the other's receipts and forwarded them; none was an
    // unknown id.
    for node in [&a, &b] {
        assert_eq!(messages_total(node, "dlr", "forwarded").await, EACH as u64);
        assert_eq!(messages_total(node, "dlr", "unknown_id").await, 0);
    }
    eprintln!(
        "fleet: {} receipts on the other node's bind, each applied once at its sender",
        ids.len()
    );
}

/// Statuses the receipt rules set at the owner (README "Receipts": rule 1,
/// one receipt for a two-segment message, then `receipt_window_secs`;
/// rule 2, no receipt at all, then `receipt_deadline_secs` → `unknown`)
/// are projected too: `GET` at the other node agrees. Without the
/// projection (checked once) the other node still answered `accepted`
/// 10 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_the_receipt_rules_set_are_seen_at_every_node() {
    use sms_conduit::smpp::CommandStatus;
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let smsc_a = files.manual_smsc(PW).await;
    let smsc_b = files.manual_smsc(PW).await;
    let setup = |port: u16, node: &str| {
        let mut s = Setup::new(vec![CarrierCfg::new("carrier-a", port, PW)]).node_id(node);
        s.node_extra = "receipt_window_secs = 2\nreceipt_deadline_secs = 4\n".into();
        s.fleet_extra = redis.fleet("settle");
        s
    };
    let files_b = files.sibling();
    let a = Relay::start(files, setup(smsc_a.port(), "node-a")).await;
    let b = Relay::start(files_b, setup(smsc_b.port(), "node-b")).await;

    let text = "appointment moved to thursday. ".repeat(8)[..220].to_owned();
    let one = a.send_ok(&message(&text)).await;
    let one = one["id"].as_str().unwrap().to_owned();
    let none = a.send_ok(&message("no receipt ever")).await;
    let none = none["id"].as_str().unwrap().to_owned();
    let subs = smsc_a.submits();
    assert_eq!(subs.len(), 3, "two segments and one");
    // A receipt for the first segment only.
    assert_eq!(smsc_a.receipt(&subs[0]).await, CommandStatus::EsmeRok);
    assert_eq!(status_at(&b, &one).await, "accepted");
    assert_eq!(status_at(&b, &none).await, "accepted");
    // Rule 1 after the window, rule 2 after the deadline: at the owner,
    // and through the projection at the other node.
    wait_status(&b, &one, "delivered").await;
    assert_eq!(status_at(&a, &one).await, "delivered");
    wait_status(&b, &none, "unknown").await;
    assert_eq!(status_at(&a, &none).await, "unknown");
}

/// A client's retry with the same `Idempotency-Key` that the load balancer
/// sends to the other node replays the first answer: one carrier submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_at_two_nodes_sends_once() {
    let Some(redis) = Redis::start() else { return };
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let fleet = redis.fleet("idem");
    let files_b = files.sibling();
    let mut sa = Setup::one(&sim, PW).node_id("node-a");
    sa.fleet_extra = fleet.clone();
    let mut sb = Setup::one(&sim, PW).node_id("node-b");
    sb.fleet_extra = fleet;
    let a = Relay::start(files, sa).await;
    let b = Relay::start(files_b, sb).await;

    let body = message("Your results are ready.");
    let r = a.send_idem("retry-1", &body).await;
    assert_eq!(r.status(), 201);
    let first: serde_json::Value = r.json().await.unwrap();
    let r = b.send_idem("retry-1", &body).await;
    assert_eq!(r.status(), 201, "the retry at B replays A's answer");
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(again["id"], first["id"], "{again} vs {first}");
    assert_eq!(again["segments"], first["segments"]);
    assert_eq!(again["carrier"], first["carrier"]);
    assert_eq!(again["created_at"], first["created_at"]);
    // And back at A, from its own store as before.
    let r = a.send_idem("retry-1", &body).await;
    assert_eq!(r.status(), 201);
    let at_a: serde_json::Value = r.json().await.unwrap();
    assert_eq!(at_a["id"], first["id"]);
    // The same key with another request is a conflict at either node.
    let r = b
        .send_idem("retry-1", &message("Another text altogether."))
        .await;
    expect_problem(r, 409, "idempotency_conflict").await;
    assert_eq!(sim.submits(), 1, "one carrier submit for one key");
    // Another key sends.
    let r = b.send_idem("retry-2", &body).await;
    assert_eq!(r.status(), 201);
    assert_eq!(sim.submits(), 2);
}
