//! Outbound pools against the simulated carrier and against our own server,
//! over real TLS on loopback.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sms_conduit::config::BindMode;
use sms_conduit::smpp::{
    start_server, CommandStatus, DeliverRequest, InboundKind, Pool, ReceiptTlvs, SmppError,
};
use sms_conduit::tls::{ClientAuth, ServerTls};
use sms_conduit::tools::sim::{start_sim, SimHandle, SimOptions};
use sms_conduit::tools::RecordingHandler;
use sms_conduit::tools::TempErrorHandler;
use support::*;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

async fn tls_sim(certs: &Certs, f: impl FnOnce(&mut SimOptions)) -> (SimHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut opts = SimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.tls = Some((certs.cert.clone(), certs.key.clone()));
    opts.system_id = Some("acme".into());
    opts.password = Some("secret1".into());
    opts.dlr_delay = Duration::from_millis(5);
    f(&mut opts);
    (start_sim(opts, shutdown.clone()).await.unwrap(), shutdown)
}

async fn submit_many(
    pool: &Pool,
    n: u32,
    conc: usize,
    receipt: bool,
) -> Vec<Result<String, SmppError>> {
    futures::stream::iter(0..n)
        .map(|i| {
            let p = pool.clone();
            async move { p.submit(submit(i, receipt)).await.map(|r| r.message_id) }
        })
        .buffer_unordered(conc)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transceiver_over_tls_1000_submits_and_receipts() {
    let certs = certs();
    let (sim, shutdown) = tls_sim(&certs, |_| {}).await;
    let (handler, mut rx) = RecordingHandler::new(2048);
    let pool = Pool::start(
        carrier(
            sim.local_addr(),
            Some(certs.cert.clone()),
            BindMode::Transceiver,
        ),
        metrics(),
        Arc::new(handler),
        shutdown.clone(),
    );
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 1).await);
    let ids: Vec<String> = submit_many(&pool, 1000, 64, true)
        .await
        .into_iter()
        .map(|r| r.expect("accepted"))
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 1000, "message ids are unique");
    let mut receipted = HashSet::new();
    while receipted.len() < 1000 {
        let (link, msg) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("receipt in time")
            .expect("channel open");
        assert_eq!(link, "carrier-a");
        assert_eq!(msg.kind, InboundKind::DeliverSm);
        assert!(msg.is_receipt());
        assert_eq!(msg.receipt.message_state, Some(2));
        let text = String::from_utf8_lossy(&msg.short_message).into_owned();
        assert!(text.contains("stat:DELIVRD") && text.contains("text:hello number"));
        receipted.insert(msg.receipt.receipted_message_id.clone().expect("tlv"));
    }
    assert_eq!(receipted, ids.iter().cloned().collect::<HashSet<_>>());
    shutdown.cancel();
    pool.wait().await;
    sim.wait().await;
    let r = sim.report();
    assert_eq!((r.submits, r.accepted, r.receipts_sent), (1000, 1000, 1000));
    assert_eq!(r.binds, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transmitter_plus_receiver_mode_and_mo() {
    let certs = certs();
    let (sim, shutdown) = tls_sim(&certs, |_| {}).await;
    let (handler, mut rx) = RecordingHandler::new(64);
    let pool = Pool::start(
        carrier(
            sim.local_addr(),
            Some(certs.cert.clone()),
            BindMode::TransmitterReceiver,
        ),
        metrics(),
        Arc::new(handler),
        shutdown.clone(),
    );
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 2).await);
    assert_eq!(pool.bound_transmitters(), 1);
    assert!(wait_until(Duration::from_secs(2), || sim.bound_sessions() == 2).await);
    for r in submit_many(&pool, 20, 8, true).await {
        r.expect("accepted");
    }
    for _ in 0..20 {
        let (_, m) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(m.is_receipt());
    }
    // An MO goes to the receiver session.
    assert_eq!(
        sim.send_mo("15557654321", "15551230001", "STOP").await,
        CommandStatus::EsmeRok
    );
    let (_, mo) = rx.recv().await.unwrap();
    assert!(!mo.is_receipt());
    assert_eq!(&mo.short_message[..], b"STOP");
    assert_eq!(mo.source_addr, "15557654321");
    shutdown.cancel();
    pool.wait().await;
    sim.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_backs_off_and_is_counted() {
    let certs = certs();
    let (sim, shutdown) = tls_sim(&certs, |_| {}).await;
    let m = metrics();
    let mut c = carrier(
        sim.local_addr(),
        Some(certs.cert.clone()),
        BindMode::Transceiver,
    );
    c.password = sms_conduit::types::Secret::new(b"wrong".to_vec());
    let pool = Pool::start(c, m.clone(), Arc::new(TempErrorHandler), shutdown.clone());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failures = sim.report().bind_failures;
    // Back-off starts at ~1 s and doubles: 2 or 3 attempts in 2.5 s, not a loop.
    assert!((1..=3).contains(&failures), "{failures} bind attempts");
    assert_eq!(pool.bound_sessions(), 0);
    // Our SMSC answers every bind failure ESME_RBINDFAIL (issue 20 item 5),
    // which the pool counts as `refused`.
    let counted = metric_sum(
        &m,
        "sms_conduit_smpp_bind_failures_total",
        &["carrier-a", "refused"],
    );
    assert_eq!(counted as u64, failures);
    match pool.submit(submit(1, false)).await {
        Err(SmppError::NotBound) => {}
        other => panic!("expected NotBound, got {other:?}"),
    }
    shutdown.cancel();
    pool.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_answers_slow_down_without_failing() {
    let certs = certs();
    let (sim, shutdown) = tls_sim(&certs, |o| o.throttle_tps = 100).await;
    let mut c = carrier(
        sim.local_addr(),
        Some(certs.cert.clone()),
        BindMode::Transmitter,
    );
    c.window = 16;
    let pool = Pool::start(c, metrics(), Arc::new(TempErrorHandler), shutdown.clone());
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 1).await);
    let start = Instant::now();
    let results = submit_many(&pool, 150, 16, false).await;
    let elapsed = start.elapsed();
    assert!(results.iter().all(|r| r.is_ok()), "no message fails");
    let r = sim.report();
    assert_eq!(r.accepted, 150);
    assert!(r.throttled > 0, "the sim did throttle");
    let rate = 150.0 / elapsed.as_secs_f64();
    eprintln!("throttle test: {elapsed:?} {r:?}");
    assert!(rate < 130.0, "observed {rate:.0}/s against a 100/s carrier");
    shutdown.cancel();
    pool.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_is_permanent_and_named() {
    let certs = certs();
    let (sim, shutdown) = tls_sim(&certs, |o| o.fail_rate = 1.0).await;
    let pool = Pool::start(
        carrier(
            sim.local_addr(),
            Some(certs.cert.clone()),
            BindMode::Transceiver,
        ),
        metrics(),
        Arc::new(TempErrorHandler),
        shutdown.clone(),
    );
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 1).await);
    let e = pool.submit(submit(1, true)).await.unwrap_err();
    assert_eq!(e.status_name().as_deref(), Some("ESME_RSUBMITFAIL"));
    assert!(!e.is_retryable());
    shutdown.cancel();
    pool.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_binds_to_our_server_over_tls_both_directions() {
    let certs = certs();
    let shutdown = CancellationToken::new();
    let tls_cfg = sms_conduit::config::Tls {
        cert_file: certs.cert.clone(),
        key_file: certs.key.clone(),
        client_ca_file: None,
    };
    let tls = ServerTls::load(&tls_cfg, &[], ClientAuth::RequireIfConfigured).unwrap();
    let (srv_handler, mut srv_rx) = RecordingHandler::new(16);
    let server = start_server(
        &server_cfg(true, Duration::from_secs(30)),
        Some(tls),
        vec![peer("carrierb", "pw-b", "127.0.0.0/8")],
        Arc::new(srv_handler),
        metrics(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    let (esme_handler, mut esme_rx) = RecordingHandler::new(16);
    let mut c = carrier(addr, Some(certs.cert.clone()), BindMode::Transceiver);
    c.system_id = "carrierb".into();
    c.password = sms_conduit::types::Secret::new(b"pw-b".to_vec());
    let pool = Pool::start(c, metrics(), Arc::new(esme_handler), shutdown.clone());
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 1).await);
    assert_eq!(server.bound_peers()[0].name, "carrier-b");

    // Peer → us: submit_sm reaches the handler and is answered with an id.
    let id = pool.submit(submit(7, false)).await.unwrap().message_id;
    assert_eq!(id.len(), 16);
    let (link, m) = srv_rx.recv().await.unwrap();
    assert_eq!(link, "carrier-b");
    assert_eq!(m.kind, InboundKind::SubmitSm);
    assert_eq!(m.message_id.as_deref(), Some(id.as_str()));

    // Us → peer: deliver_sm on the bound transceiver.
    let req = DeliverRequest {
        source_addr: "15557654321".into(),
        dest_addr: "15551230001".into(),
        esm_class: 0,
        data_coding: 0,
        registered_delivery: 0,
        short_message: Zeroizing::new(b"hi there".to_vec()),
        receipt: ReceiptTlvs::default(),
    };
    server.deliver("carrier-b", req).await.unwrap();
    let (_, mo) = esme_rx.recv().await.unwrap();
    assert_eq!(&mo.short_message[..], b"hi there");
    shutdown.cancel();
    pool.wait().await;
    server.wait().await;
}

/// A reload of `[[peers]]`: a peer whose password changed is unbound and
/// its old password refused from then on; an unchanged peer keeps its
/// session.
#[tokio::test]
async fn reloaded_peers_unbind_changed_ones_and_keep_the_rest() {
    let shutdown = CancellationToken::new();
    let (handler, _rx) = RecordingHandler::new(16);
    let mut other = peer("carrierc", "pw-c", "127.0.0.0/8");
    other.name = "carrier-c".into();
    let server = start_server(
        &server_cfg(false, Duration::from_secs(30)),
        None,
        vec![peer("carrierb", "pw-b", "127.0.0.0/8"), other.clone()],
        Arc::new(handler),
        metrics(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let addr = server.plaintext_addr().unwrap();
    let client = |system_id: &str, pw: &str| {
        let mut c = carrier(addr, None, BindMode::Transceiver);
        c.name = format!("to-{system_id}");
        c.system_id = system_id.into();
        c.password = sms_conduit::types::Secret::new(pw.as_bytes().to_vec());
        let (h, _rx) = RecordingHandler::new(4);
        Pool::start(c, metrics(), Arc::new(h), shutdown.clone())
    };
    let b = client("carrierb", "pw-b");
    let c = client("carrierc", "pw-c");
    assert!(
        wait_until(Duration::from_secs(5), || b.bound_sessions() == 1
            && c.bound_sessions() == 1)
        .await
    );
    let (ok_before, _) = server.bind_counts();

    // carrier-b's password changes; carrier-c is untouched.
    server.set_peers(vec![peer("carrierb", "pw-b-new", "127.0.0.0/8"), other]);
    assert!(
        wait_until(Duration::from_secs(5), || b.bound_sessions() == 0).await,
        "carrier-b unbound"
    );
    // Its reconnects with the old password are refused; carrier-c never rebound.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.bound_sessions(), 0);
    assert_eq!(c.bound_sessions(), 1);
    let (ok_after, failed_after) = server.bind_counts();
    assert_eq!(ok_after, ok_before, "no new successful bind");
    assert!(failed_after >= 1, "the old password was refused");
    shutdown.cancel();
    server.wait().await;
}

/// Issue 20 item 9: the segments of one message go to the carrier in
/// order on one session, even with two sessions bound and other traffic
/// balancing across them. A raw SMSC records, per session, the order the
/// submit_sm arrive in. Before: each segment took the least-loaded session
/// on its own, so a message's segments were spread over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_segments_go_in_order_on_one_session() {
    use futures::SinkExt;
    use rusmpp::{Command, CommandId, CommandStatus, Pdu};
    let (listener, addr) = raw_listener().await;
    type Seen = Arc<parking_lot::Mutex<Vec<(usize, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let smsc = {
        let seen = seen.clone();
        tokio::spawn(async move {
            for session in 0..2usize {
                let mut f = accept_bound(&listener).await;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut id = 0u32;
                    while let Some(Ok(cmd)) = f.next().await {
                        let seq = cmd.sequence_number();
                        let resp = match cmd.pdu() {
                            Some(Pdu::SubmitSm(sm)) => {
                                seen.lock()
                                    .push((session, sm.short_message().as_ref().to_vec()));
                                id += 1;
                                // A little latency, so requests overlap.
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                sms_conduit::smpp::pdu::message_resp(
                                    sms_conduit::smpp::InboundKind::SubmitSm,
                                    CommandStatus::EsmeRok,
                                    seq,
                                    Some(&format!("{session}-{id}")),
                                )
                            }
                            _ if cmd.id() == CommandId::EnquireLink => {
                                Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp)
                            }
                            _ => continue,
                        };
                        if f.send(resp).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    };
    let shutdown = CancellationToken::new();
    let mut cfg = carrier(addr, None, BindMode::Transceiver);
    cfg.binds = 2;
    let (handler, _rx) = RecordingHandler::new(64);
    let pool = Pool::start(cfg, metrics(), Arc::new(handler), shutdown.clone());
    assert!(wait_until(Duration::from_secs(5), || pool.bound_sessions() == 2).await);
    let start_by = std::time::Instant::now() + Duration::from_secs(10);
    let message = |m: u8| -> Vec<sms_conduit::smpp::SubmitRequest> {
        (0..6u8)
            .map(|i| {
                let mut r = submit(u32::from(i), false);
                r.short_message = Zeroizing::new(vec![b'M', m, b'S', i]);
                r
            })
            .collect()
    };
    // Four 6-segment messages at once, with single submits in between.
    let mut all = futures::stream::FuturesUnordered::new();
    for m in 0..4u8 {
        for f in pool.submit_in_order(message(m), start_by) {
            all.push(f);
        }
        for i in 0..3 {
            all.push(Box::pin(pool.submit_by(submit(100 + i, false), start_by)));
        }
    }
    while let Some(r) = all.next().await {
        r.unwrap();
    }
    let seen = seen.lock().clone();
    for m in 0..4u8 {
        let parts: Vec<&(usize, Vec<u8>)> = seen
            .iter()
            .filter(|(_, b)| b.len() == 4 && b[0] == b'M' && b[1] == m)
            .collect();
        assert_eq!(parts.len(), 6, "message {m}: {seen:?}");
        let sessions: HashSet<usize> = parts.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            sessions.len(),
            1,
            "message {m} spread over sessions: {parts:?}"
        );
        let order: Vec<u8> = parts.iter().map(|(_, b)| b[3]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5], "message {m} out of order");
    }
    shutdown.cancel();
    smsc.abort();
}
