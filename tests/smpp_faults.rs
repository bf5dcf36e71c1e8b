//! Fault behaviour: carriers that die, stall or send garbage (a raw-socket
//! fake SMSC written here), and peers that misbehave against our server.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use rusmpp::pdus::SubmitSmResp;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use sms_conduit::config::BindMode;
use sms_conduit::smpp::{start_server, Pool, ServerHandle, SmppError};
use sms_conduit::tools::RecordingHandler;
use sms_conduit::tools::TempErrorHandler;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

fn ok_resp(seq: u32) -> Command {
    let id: COctetString<1, 65> = "abc".parse().unwrap();
    Command::new(
        CommandStatus::EsmeRok,
        seq,
        Pdu::SubmitSmResp(SubmitSmResp::new(id, vec![])),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_that_drops_every_session_after_the_bind_gets_a_growing_back_off() {
    let shutdown = CancellationToken::new();
    let (l, addr) = raw_listener().await;
    let _pool = Pool::start(
        carrier(addr, None, BindMode::Transmitter),
        metrics(),
        Arc::new(TempErrorHandler),
        shutdown.clone(),
    );
    // Accept each bind, then hang up at once, for 2.5 s.
    let start = Instant::now();
    let mut sessions = 0;
    while let Ok(Ok((s, _))) = tokio::time::timeout(
        Duration::from_millis(2500).saturating_sub(start.elapsed()),
        l.accept(),
    )
    .await
    {
        sessions += 1;
        drop(bound_on(s).await);
    }
    // Reconnects wait 100–200, 200–400, 400–800, 800–1,600 ms…: at most 5
    // sessions in 2.5 s (a fixed 100–200 ms pause would make 12 or more).
    assert!((2..=5).contains(&sessions), "{sessions} sessions in 2.5 s");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_closing_with_50_outstanding_fails_them_fast_and_rebinds() {
    let shutdown = CancellationToken::new();
    let (l, addr) = raw_listener().await;
    let pool = Pool::start(
        carrier(addr, None, BindMode::Transmitter),
        metrics(),
        Arc::new(TempErrorHandler),
        shutdown.clone(),
    );
    let mut fake = accept_bound(&l).await;
    assert!(wait_until(Duration::from_secs(2), || pool.bound_sessions() == 1).await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let p = pool.clone();
            tokio::spawn(async move { p.submit(submit(i, false)).await })
        })
        .collect();
    let mut seen = 0;
    while seen < 50 {
        let c = next_cmd(&mut fake, Duration::from_secs(2))
            .await
            .expect("pdu");
        if c.id() == CommandId::SubmitSm {
            seen += 1;
        }
    }
    let closed_at = Instant::now();
    drop(fake);
    for t in tasks {
        match t.await.unwrap() {
            // Written, then the carrier went away: it may have them, so
            // they must not be retried elsewhere.
            Err(e @ SmppError::LostInFlight) => assert!(!e.is_retryable()),
            other => panic!("expected LostInFlight, got {other:?}"),
        }
    }
    assert!(
        closed_at.elapsed() < Duration::from_millis(500),
        "failed fast"
    );
    let _again = tokio::time::timeout(Duration::from_secs(3), accept_bound(&l))
        .await
        .expect("pool reconnects");
    assert!(wait_until(Duration::from_secs(2), || pool.bound_sessions() == 1).await);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_carrier_times_out_and_frees_the_window() {
    let shutdown = CancellationToken::new();
    let (l, addr) = raw_listener().await;
    let mut c = carrier(addr, None, BindMode::Transmitter);
    c.window = 2;
    c.response_timeout = Duration::from_millis(300);
    let pool = Pool::start(c, metrics(), Arc::new(TempErrorHandler), shutdown.clone());
    let mut fake = accept_bound(&l).await;
    let answer = Arc::new(AtomicBool::new(false));
    let answer2 = answer.clone();
    tokio::spawn(async move {
        while let Some(c) = next_cmd(&mut fake, Duration::from_secs(10)).await {
            if c.id() == CommandId::SubmitSm && answer2.load(Ordering::SeqCst) {
                fake.send(ok_resp(c.sequence_number())).await.unwrap();
            }
        }
    });
    assert!(wait_until(Duration::from_secs(2), || pool.bound_sessions() == 1).await);
    let t = Instant::now();
    let (a, b) = tokio::join!(pool.submit(submit(1, false)), pool.submit(submit(2, false)));
    for r in [a, b] {
        match r {
            Err(e @ SmppError::Timeout) => assert!(!e.is_retryable(), "outcome unknown"),
            other => panic!("expected Timeout, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_millis(1000));
    // The peer recovers: the window slots were freed, so this one goes out.
    answer.store(true, Ordering::SeqCst);
    let r = pool.submit(submit(3, false)).await.expect("accepted");
    assert_eq!(r.message_id, "abc");
    assert_eq!(
        pool.bound_sessions(),
        1,
        "a timeout does not drop the session"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_carrier_gets_generic_nack_and_session_survives() {
    let shutdown = CancellationToken::new();
    let (l, addr) = raw_listener().await;
    let pool = Pool::start(
        carrier(addr, None, BindMode::Transceiver),
        metrics(),
        Arc::new(TempErrorHandler),
        shutdown.clone(),
    );
    let mut fake = accept_bound(&l).await;
    assert!(wait_until(Duration::from_secs(2), || pool.bound_sessions() == 1).await);
    // deliver_sm whose body is three 0xff bytes, then an unknown command id.
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&19u32.to_be_bytes());
    garbage.extend_from_slice(&5u32.to_be_bytes());
    garbage.extend_from_slice(&0u32.to_be_bytes());
    garbage.extend_from_slice(&77u32.to_be_bytes());
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    for word in [16u32, 0x0000_0999, 0, 78] {
        garbage.extend_from_slice(&word.to_be_bytes());
    }
    fake.get_mut().write_all(&garbage).await.unwrap();
    let n1 = next_cmd(&mut fake, Duration::from_secs(2))
        .await
        .expect("nack");
    assert_eq!(
        (n1.id(), n1.sequence_number()),
        (CommandId::GenericNack, 77)
    );
    assert_eq!(n1.status(), CommandStatus::EsmeRinvcmdlen);
    let n2 = next_cmd(&mut fake, Duration::from_secs(2))
        .await
        .expect("nack");
    assert_eq!(
        (n2.id(), n2.sequence_number()),
        (CommandId::GenericNack, 78)
    );
    assert_eq!(n2.status(), CommandStatus::EsmeRinvcmdid);
    // Still bound and working.
    let p = pool.clone();
    let sub = tokio::spawn(async move { p.submit(submit(1, false)).await });
    let c = next_cmd(&mut fake, Duration::from_secs(2))
        .await
        .expect("submit");
    assert_eq!(c.id(), CommandId::SubmitSm);
    fake.send(ok_resp(c.sequence_number())).await.unwrap();
    assert_eq!(sub.await.unwrap().unwrap().message_id, "abc");
    shutdown.cancel();
}

async fn plain_server(
    peers: Vec<sms_conduit::config::Peer>,
    idle: Duration,
) -> (
    ServerHandle,
    tokio::sync::mpsc::Receiver<(String, sms_conduit::smpp::InboundMessage)>,
    Arc<sms_conduit::metrics::Metrics>,
    CancellationToken,
) {
    let shutdown = CancellationToken::new();
    let (h, rx) = RecordingHandler::new(16);
    let m = metrics();
    let s = start_server(
        &server_cfg(false, idle),
        None,
        peers,
        Arc::new(h),
        m.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (s, rx, m, shutdown)
}

#[tokio::test]
async fn oversized_command_length_closes_the_connection() {
    let (s, _rx, _m, shutdown) = plain_server(
        vec![peer("carrierb", "pw", "127.0.0.0/8")],
        Duration::from_secs(5),
    )
    .await;
    let mut f = raw_connect(s.plaintext_addr().unwrap()).await;
    f.send(bind_trx(1, "carrierb", "pw")).await.unwrap();
    assert_eq!(
        next_cmd(&mut f, Duration::from_secs(2))
            .await
            .unwrap()
            .status(),
        CommandStatus::EsmeRok
    );
    let mut huge = Vec::new();
    for word in [100_000u32, 4, 0, 9] {
        huge.extend_from_slice(&word.to_be_bytes());
    }
    f.get_mut().write_all(&huge).await.unwrap();
    let nack = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("nack");
    assert_eq!(nack.id(), CommandId::GenericNack);
    assert_eq!(nack.status(), CommandStatus::EsmeRinvcmdlen);
    assert!(
        next_cmd(&mut f, Duration::from_secs(2)).await.is_none(),
        "closed"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn garbage_after_bind_is_nacked_and_the_session_stays() {
    let (s, _rx, _m, shutdown) = plain_server(
        vec![peer("carrierb", "pw", "127.0.0.0/8")],
        Duration::from_secs(5),
    )
    .await;
    let mut f = raw_connect(s.plaintext_addr().unwrap()).await;
    f.send(bind_trx(1, "carrierb", "pw")).await.unwrap();
    assert_eq!(
        next_cmd(&mut f, Duration::from_secs(2))
            .await
            .unwrap()
            .status(),
        CommandStatus::EsmeRok
    );
    let mut garbage = Vec::new();
    for word in [20u32, 4, 0, 5, 0xdead_beef] {
        garbage.extend_from_slice(&word.to_be_bytes());
    }
    f.get_mut().write_all(&garbage).await.unwrap();
    let nack = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("nack");
    assert_eq!(
        (nack.id(), nack.sequence_number()),
        (CommandId::GenericNack, 5)
    );
    f.send(Command::new(CommandStatus::EsmeRok, 6, Pdu::EnquireLink))
        .await
        .unwrap();
    let r = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("alive");
    assert_eq!(
        (r.id(), r.sequence_number()),
        (CommandId::EnquireLinkResp, 6)
    );
    // A second bind on a bound session.
    f.send(bind_trx(7, "carrierb", "pw")).await.unwrap();
    let r = next_cmd(&mut f, Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.status(), CommandStatus::EsmeRalybnd);
    shutdown.cancel();
}

#[tokio::test]
async fn idle_inbound_peer_is_closed_after_the_idle_timeout() {
    let (s, _rx, _m, shutdown) = plain_server(
        vec![peer("carrierb", "pw", "127.0.0.0/8")],
        Duration::from_millis(300),
    )
    .await;
    let mut f = raw_connect(s.plaintext_addr().unwrap()).await;
    f.send(bind_trx(1, "carrierb", "pw")).await.unwrap();
    assert_eq!(
        next_cmd(&mut f, Duration::from_secs(2))
            .await
            .unwrap()
            .status(),
        CommandStatus::EsmeRok
    );
    let t = Instant::now();
    let unbind = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("unbind");
    assert_eq!(unbind.id(), CommandId::Unbind);
    assert!(
        next_cmd(&mut f, Duration::from_secs(2)).await.is_none(),
        "closed"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert!(wait_until(Duration::from_secs(1), || s.bound_peers().is_empty()).await);
    shutdown.cancel();
}

#[tokio::test]
async fn pdus_before_bind_are_refused_and_never_reach_the_handler() {
    let (s, mut rx, _m, shutdown) = plain_server(
        vec![peer("carrierb", "pw", "127.0.0.0/8")],
        Duration::from_secs(5),
    )
    .await;
    let mut f = raw_connect(s.plaintext_addr().unwrap()).await;
    f.send(raw_submit(1)).await.unwrap();
    let r = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("resp");
    assert_eq!(
        (r.id(), r.status()),
        (CommandId::SubmitSmResp, CommandStatus::EsmeRinvbndsts)
    );
    f.send(Command::new(CommandStatus::EsmeRok, 2, Pdu::EnquireLink))
        .await
        .unwrap();
    assert_eq!(
        next_cmd(&mut f, Duration::from_secs(2)).await.unwrap().id(),
        CommandId::EnquireLinkResp
    );
    f.send(bind_trx(3, "carrierb", "pw")).await.unwrap();
    assert_eq!(
        next_cmd(&mut f, Duration::from_secs(2))
            .await
            .unwrap()
            .status(),
        CommandStatus::EsmeRok
    );
    assert!(
        rx.try_recv().is_err(),
        "nothing reached the handler before the bind"
    );
    // After the bind, a submit_sm does reach it.
    f.send(raw_submit(4)).await.unwrap();
    let r = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .expect("resp");
    assert_eq!(r.status(), CommandStatus::EsmeRok);
    let (_, m) = rx.recv().await.unwrap();
    assert_eq!(&m.short_message[..], b"hi");
    shutdown.cancel();
}

async fn bind_status(s: &ServerHandle, sid: &str, pw: &str) -> (CommandStatus, bool) {
    let mut f = raw_connect(s.plaintext_addr().unwrap()).await;
    f.send(bind_trx(1, sid, pw)).await.unwrap();
    let st = next_cmd(&mut f, Duration::from_secs(2))
        .await
        .unwrap()
        .status();
    let closed =
        st != CommandStatus::EsmeRok && next_cmd(&mut f, Duration::from_secs(2)).await.is_none();
    if st == CommandStatus::EsmeRok {
        // Keep it bound for the max_binds check.
        tokio::spawn(async move {
            let _keep = f;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
    }
    (st, closed)
}

#[tokio::test]
async fn bind_authentication_failures_are_answered_counted_and_closed() {
    let (s, _rx, m, shutdown) = plain_server(
        vec![peer("carrierb", "pw", "127.0.0.0/8"), {
            let mut p = peer("faraway", "pw", "10.0.0.0/8");
            p.name = "carrier-c".into();
            p
        }],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        bind_status(&s, "nobody", "pw").await,
        (CommandStatus::EsmeRbindfail, true)
    );
    assert_eq!(
        bind_status(&s, "carrierb", "wrong").await,
        (CommandStatus::EsmeRbindfail, true)
    );
    assert_eq!(
        bind_status(&s, "faraway", "pw").await,
        (CommandStatus::EsmeRbindfail, true)
    );
    assert_eq!(
        bind_status(&s, "carrierb", "pw").await.0,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        bind_status(&s, "carrierb", "pw").await.0,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        bind_status(&s, "carrierb", "pw").await,
        (CommandStatus::EsmeRalybnd, true),
        "max_binds = 2"
    );
    let f = |link: &str, reason: &str| {
        metric_sum(&m, "sms_conduit_smpp_bind_failures_total", &[link, reason]) as u64
    };
    assert_eq!(f("unknown", "unknown_system_id"), 1);
    assert_eq!(f("carrier-b", "bad_password"), 1);
    assert_eq!(f("carrier-c", "ip_not_allowed"), 1);
    assert_eq!(f("carrier-b", "max_binds"), 1);
    assert!(!String::from_utf8(m.render()).unwrap().contains("wrong"));
    shutdown.cancel();
}
