//! Bounded fuzzing of the two doors an outsider with credentials reaches
//! (issue 20, "Must show"):
//!
//! * the inbound SMPP session: a peer binds to our real server over a real
//!   socket, then sends a stream of arbitrary and mutated PDUs (valid
//!   frames with random bodies, random command ids and statuses, truncated
//!   and oversized lengths); after each case the server must still answer
//!   an enquire_link on a fresh session, and must never have crashed;
//! * the API body parser (`SendRequest::from_json`): any bytes give a
//!   request or a clear `invalid_request`, never a panic.
//!
//! Case counts fit a debug build on 2 cores; raise `PROPTEST_CASES` to
//! search harder. The figures (executions, crashes) are in README
//! "Security".

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::SinkExt;
use proptest::prelude::*;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use sms_conduit::api::SendRequest;
use sms_conduit::smpp::{start_server, InboundHandler, InboundMessage};
use support::*;
use tokio::io::AsyncWriteExt;

struct Acks;

impl InboundHandler for Acks {
    fn deliver<'a>(&'a self, _link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        drop(msg);
        Box::pin(async { CommandStatus::EsmeRok })
    }
}

const SYSTEM_ID: &str = "fuzzer";
const PASSWORD: &str = "fz-pw1";

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// One frame the fuzzer writes after binding.
#[derive(Debug, Clone)]
enum Frame {
    /// A well-framed PDU: this command id, status, sequence and body bytes.
    Pdu(u32, u32, u32, Vec<u8>),
    /// Raw bytes, framing and all.
    Raw(Vec<u8>),
}

fn command_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        // The ids a session understands, requests and responses.
        prop::sample::select(vec![
            0x0000_0004u32, // submit_sm
            0x0000_0005,    // deliver_sm
            0x0000_0103,    // data_sm
            0x0000_0015,    // enquire_link
            0x0000_0006,    // unbind
            0x0000_0009,    // bind_transceiver (again)
            0x8000_0004,    // submit_sm_resp
            0x8000_0005,    // deliver_sm_resp
            0x8000_0015,    // enquire_link_resp
            0x8000_0000,    // generic_nack
            0x0000_0003,    // query_sm
            0x0000_0008,    // cancel_sm
        ]),
        any::<u32>(),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        6 => (command_id(), any::<u32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(id, st, seq, body)| Frame::Pdu(id, st, seq, body)),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Raw),
    ]
}

fn bytes_of(f: &Frame) -> Vec<u8> {
    match f {
        Frame::Raw(b) => b.clone(),
        Frame::Pdu(id, st, seq, body) => {
            let mut v = Vec::with_capacity(16 + body.len());
            v.extend_from_slice(&((16 + body.len()) as u32).to_be_bytes());
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&st.to_be_bytes());
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(body);
            v
        }
    }
}

/// A connection from loopback address `from`: every case uses addresses of
/// its own, so the server's per-address throttle of failed binds (which a
/// fuzzed bind_transceiver trips, as it should) does not refuse the next.
async fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> Raw {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let s = sock.connect(to).await.unwrap();
    tokio_util::codec::Framed::new(s, rusmpp::tokio_codec::CommandCodec::new())
}

/// A fresh session binds and gets an enquire_link answered: the server is
/// alive and serving.
async fn alive(from: std::net::Ipv4Addr, addr: SocketAddr) -> bool {
    let mut f = connect_from(from, addr).await;
    if f.send(bind_trx(1, SYSTEM_ID, PASSWORD)).await.is_err() {
        return false;
    }
    match next_cmd(&mut f, Duration::from_secs(5)).await {
        Some(c) if c.status() == CommandStatus::EsmeRok => {}
        _ => return false,
    }
    let el = Command::new(CommandStatus::EsmeRok, 2, Pdu::EnquireLink);
    if f.send(el).await.is_err() {
        return false;
    }
    loop {
        match next_cmd(&mut f, Duration::from_secs(5)).await {
            Some(c) if c.id() == CommandId::EnquireLinkResp => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

#[test]
fn the_inbound_session_survives_arbitrary_pdus_after_bind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, token) = rt.block_on(async {
        let token = tokio_util::sync::CancellationToken::new();
        let mut cfg = server_cfg(false, Duration::from_secs(30));
        cfg.max_unbound_per_address = 64;
        let mut p = peer(SYSTEM_ID, PASSWORD, "127.0.0.0/8");
        p.max_binds = 10_000;
        let s = start_server(
            &cfg,
            None,
            vec![p],
            Arc::new(Acks),
            metrics(),
            token.clone(),
        )
        .await
        .unwrap();
        (s.plaintext_addr().unwrap(), token)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let executed = std::sync::atomic::AtomicU64::new(0);
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&prop::collection::vec(frame(), 1..24), |frames| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let [hi, lo] = ((n % 60_000) as u16).to_be_bytes();
            let (fuzz_from, check_from) = (
                std::net::Ipv4Addr::new(127, 1, hi, lo),
                std::net::Ipv4Addr::new(127, 2, hi, lo),
            );
            rt.block_on(async {
                let mut f = connect_from(fuzz_from, addr).await;
                f.send(bind_trx(1, SYSTEM_ID, PASSWORD)).await.unwrap();
                let bound = next_cmd(&mut f, Duration::from_secs(5)).await;
                prop_assert!(bound.is_some_and(|c| c.status() == CommandStatus::EsmeRok));
                let mut io = f.into_inner();
                for fr in &frames {
                    // The server may close on a broken frame: that is fine.
                    if io.write_all(&bytes_of(fr)).await.is_err() {
                        break;
                    }
                    executed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                drop(io);
                prop_assert!(alive(check_from, addr).await, "the server stopped serving");
                Ok(())
            })
        })
        .unwrap();
    eprintln!(
        "inbound session fuzz: {} cases, {} PDUs written, 0 crashes",
        cases(),
        executed.load(std::sync::atomic::Ordering::Relaxed)
    );
    token.cancel();
}

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec![
        "from",
        "to",
        "text",
        "campaign_id",
        "validity_secs",
        "client_ref",
        "x",
    ]);
    let value = prop_oneof![
        "\"\\+1555[0-9]{7}\"".prop_map(|s| s.to_string()),
        "\"[^\"\\\\]{0,40}\"".prop_map(|s| s.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("null".to_string()),
        Just("[1,2]".to_string()),
        Just("{\"a\":1}".to_string()),
        Just("\"\\ud800\"".to_string()),
    ];
    prop::collection::vec((field, value), 0..8).prop_map(|kv| {
        let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() * 20, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_api_body_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = SendRequest::from_json(&bytes);
    }

    #[test]
    fn the_api_body_parser_answers_json_like_input(bytes in json_like()) {
        match SendRequest::from_json(&bytes) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.code(), "invalid_request"),
        }
    }
}
