//! The session engine over `tokio::io::duplex`: keep-alive, clean unbind on
//! shutdown, and answering the peer's enquire_link.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use sms_conduit::smpp::codec::SmppCodec;
use sms_conduit::smpp::pdu::MessageIds;
use sms_conduit::smpp::session::{self, BindKind, Role, SessionConfig, SessionDeps, SessionHandle};
use sms_conduit::smpp::SmppError;
use sms_conduit::tools::TempErrorHandler;
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

fn start(
    enquire: Option<Duration>,
) -> (
    SessionHandle,
    Framed<DuplexStream, CommandCodec>,
    CancellationToken,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let cfg = SessionConfig {
        link: Arc::from("test"),
        receipt_link: None,
        kind: BindKind::Transceiver,
        role: Role::Esme,
        window: 8,
        response_timeout: Duration::from_millis(200),
        enquire_link: enquire,
        idle_timeout: None,
        id: 0,
    };
    let deps = SessionDeps {
        handler: Arc::new(TempErrorHandler),
        metrics: support::metrics(),
        shutdown: shutdown.clone(),
        ids: Arc::new(MessageIds::new()),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    let h = session::spawn(Framed::new(a, SmppCodec::new()), 2, cfg, deps);
    (h, Framed::new(b, CommandCodec::new()), shutdown)
}

#[tokio::test]
async fn enquire_link_keeps_alive_and_a_dead_peer_is_detected() {
    let (h, mut peer, _shutdown) = start(Some(Duration::from_millis(100)));
    // The peer's enquire_link is answered.
    peer.send(Command::new(CommandStatus::EsmeRok, 9, Pdu::EnquireLink))
        .await
        .unwrap();
    let mut answered = false;
    let mut ours = 0;
    while !(answered && ours >= 2) {
        let c = tokio::time::timeout(Duration::from_secs(1), peer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match c.id() {
            CommandId::EnquireLinkResp => answered = c.sequence_number() == 9,
            CommandId::EnquireLink => {
                ours += 1;
                peer.send(Command::new(
                    CommandStatus::EsmeRok,
                    c.sequence_number(),
                    Pdu::EnquireLinkResp,
                ))
                .await
                .unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!h.is_closed());
    // Now the peer goes silent: the next enquire_link times out and the
    // session ends, failing what was outstanding.
    let t = Instant::now();
    let pending = {
        let h = h.clone();
        tokio::spawn(async move { h.request(Pdu::EnquireLink).await })
    };
    tokio::time::timeout(Duration::from_secs(2), h.closed())
        .await
        .expect("session ends");
    assert!(t.elapsed() < Duration::from_millis(800));
    match pending.await.unwrap() {
        Err(SmppError::Timeout) | Err(SmppError::SessionLost) => {}
        other => panic!("unexpected {other:?}"),
    }
    drop(peer);
}

#[tokio::test]
async fn shutdown_finishes_outstanding_then_unbinds() {
    let (h, mut peer, shutdown) = start(None);
    let pending = {
        let h = h.clone();
        tokio::spawn(async move { h.request(Pdu::EnquireLink).await })
    };
    let req = peer.next().await.unwrap().unwrap();
    assert_eq!(req.id(), CommandId::EnquireLink);
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The outstanding request is still answered...
    peer.send(Command::new(
        CommandStatus::EsmeRok,
        req.sequence_number(),
        Pdu::EnquireLinkResp,
    ))
    .await
    .unwrap();
    assert!(pending.await.unwrap().is_ok());
    // ...then the session unbinds and ends on unbind_resp.
    let unbind = tokio::time::timeout(Duration::from_secs(1), peer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(unbind.id(), CommandId::Unbind);
    peer.send(Command::new(
        CommandStatus::EsmeRok,
        unbind.sequence_number(),
        Pdu::UnbindResp,
    ))
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(1), h.closed())
        .await
        .expect("ended");
    // New requests are refused as retryable.
    assert!(matches!(
        h.request(Pdu::EnquireLink).await,
        Err(SmppError::SessionLost)
    ));
}

#[tokio::test]
async fn a_burst_is_written_in_order_within_the_window() {
    let (h, mut peer, _shutdown) = start(None);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.request(Pdu::EnquireLink).await })
        })
        .collect();
    // Window 8: exactly 8 arrive before we answer any.
    let mut seqs = Vec::new();
    for _ in 0..8 {
        seqs.push(peer.next().await.unwrap().unwrap().sequence_number());
    }
    assert!(tokio::time::timeout(Duration::from_millis(50), peer.next())
        .await
        .is_err());
    let mut answered = 0;
    while answered < 20 {
        let seq = match seqs.pop() {
            Some(s) => s,
            None => peer.next().await.unwrap().unwrap().sequence_number(),
        };
        peer.send(Command::new(
            CommandStatus::EsmeRok,
            seq,
            Pdu::EnquireLinkResp,
        ))
        .await
        .unwrap();
        answered += 1;
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
}
