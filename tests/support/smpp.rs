//! Shared test helpers: temp dirs, self-signed certificates, config values
//! with short timeouts, a raw-socket SMPP peer, and polling.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiver, BindTransceiverResp, SubmitSm};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use sms_conduit::config::{BindMode, Carrier, Peer, SmppServer};
use sms_conduit::types::{Secret, E164};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use zeroize::Zeroizing;

/// A temp dir with a self-signed certificate for localhost/127.0.0.1.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let ss = sms_conduit::tls::self_signed(&["localhost", "127.0.0.1"]).expect("rcgen");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, ss.cert_pem).expect("write cert");
    std::fs::write(&key, ss.key_pem).expect("write key");
    Certs { dir, cert, key }
}

/// A carrier entry pointing at `addr`, with short timeouts for tests.
pub fn carrier(addr: SocketAddr, ca: Option<PathBuf>, bind: BindMode) -> Carrier {
    Carrier {
        name: "carrier-a".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: ca.is_some(),
        system_id: "acme".into(),
        password: Secret::new(b"secret1\n".to_vec()),
        system_type: String::new(),
        ca_file: ca,
        server_name: "localhost".into(),
        bind,
        binds: 1,
        window: 64,
        max_tps: 0,
        prefixes: vec![],
        priority: 1,
        enquire_link: Duration::from_secs(30),
        response_timeout: Duration::from_secs(2),
        cert_sha256: None,
    }
}

pub fn peer(system_id: &str, password: &str, allow: &str) -> Peer {
    use sha2::Digest;
    Peer {
        name: "carrier-b".into(),
        system_id: system_id.into(),
        password_sha256: sha2::Sha256::digest(password.as_bytes()).into(),
        allow: vec![allow.parse().expect("cidr")],
        max_binds: 2,
        carrier: None,
        cert_sha256: None,
    }
}

pub fn server_cfg(tls: bool, idle: Duration) -> SmppServer {
    let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    SmppServer {
        listen: tls.then_some(lo),
        plaintext_listen: (!tls).then_some(lo),
        idle_timeout: idle,
        window: 64,
        max_connections: 256,
        max_unbound_per_address: 8,
        bind_timeout: Duration::from_secs(10),
        enquire_link: Duration::from_secs(30),
    }
}

pub fn submit(i: u32, receipt: bool) -> sms_conduit::smpp::SubmitRequest {
    sms_conduit::smpp::SubmitRequest {
        source: E164::parse("+15551230001").expect("e164"),
        dest: E164::parse(&format!("+1555{:07}", i % 10_000_000)).expect("e164"),
        short_message: Zeroizing::new(format!("hello number {i}").into_bytes()),
        data_coding: 0,
        esm_class: 0,
        registered_delivery: u8::from(receipt),
        validity: Some(Duration::from_secs(3600)),
    }
}

/// Polls `cond` every 10 ms until true or `within` passes.
pub async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub type Raw = Framed<TcpStream, CommandCodec>;

/// A raw fake SMSC: listens on loopback.
pub async fn raw_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Accepts one connection and answers its bind with ESME_ROK.
pub async fn accept_bound(l: &TcpListener) -> Raw {
    let (s, _) = l.accept().await.expect("accept");
    bound_on(s).await
}

/// Answers the bind that arrives on an accepted connection with ESME_ROK.
pub async fn bound_on(s: TcpStream) -> Raw {
    let mut f = Framed::new(s, CommandCodec::new());
    loop {
        let cmd = f.next().await.expect("bind pdu").expect("decodes");
        if matches!(
            cmd.id(),
            CommandId::BindTransceiver | CommandId::BindTransmitter | CommandId::BindReceiver
        ) {
            let sid = COctetString::from_str_checked("FAKE");
            let resp = match cmd.id() {
                CommandId::BindTransceiver => {
                    Pdu::BindTransceiverResp(BindTransceiverResp::new(sid, None))
                }
                CommandId::BindTransmitter => {
                    Pdu::BindTransmitterResp(rusmpp::pdus::BindTransmitterResp::new(sid, None))
                }
                _ => Pdu::BindReceiverResp(rusmpp::pdus::BindReceiverResp::new(sid, None)),
            };
            f.send(Command::new(
                CommandStatus::EsmeRok,
                cmd.sequence_number(),
                resp,
            ))
            .await
            .expect("send bind resp");
            return f;
        }
    }
}

/// Connects a raw ESME (no bind yet).
pub async fn raw_connect(addr: SocketAddr) -> Raw {
    let s = TcpStream::connect(addr).await.expect("connect");
    Framed::new(s, CommandCodec::new())
}

/// A bind_transceiver PDU.
pub fn bind_trx(seq: u32, system_id: &str, password: &str) -> Command {
    let b = BindTransceiver::builder()
        .system_id(COctetString::from_str_checked(system_id))
        .password(COctetString::from_str_checked(password))
        .build();
    Command::new(CommandStatus::EsmeRok, seq, Pdu::BindTransceiver(b))
}

/// A minimal submit_sm PDU.
pub fn raw_submit(seq: u32) -> Command {
    let sm = SubmitSm::builder()
        .source_addr(COctetString::from_str_checked("15551230001"))
        .destination_addr(COctetString::from_str_checked("15557654321"))
        .short_message(OctetString::from_static_slice(b"hi").expect("octets"))
        .build();
    Command::new(CommandStatus::EsmeRok, seq, Pdu::SubmitSm(sm))
}

/// The next command, or `None` on EOF / error / timeout.
pub async fn next_cmd(f: &mut Raw, within: Duration) -> Option<Command> {
    match tokio::time::timeout(within, f.next()).await {
        Ok(Some(Ok(c))) => Some(c),
        _ => None,
    }
}

trait FromStrChecked: Sized {
    fn from_str_checked(s: &str) -> Self;
}

impl<const MIN: usize, const MAX: usize> FromStrChecked for COctetString<MIN, MAX> {
    fn from_str_checked(s: &str) -> Self {
        <Self as std::str::FromStr>::from_str(s).expect("c-octet string")
    }
}

pub fn metrics() -> Arc<sms_conduit::metrics::Metrics> {
    Arc::new(sms_conduit::metrics::Metrics::new())
}

/// Reads a counter from the text exposition (sum over series matching all
/// `needles`).
pub fn metric_sum(m: &sms_conduit::metrics::Metrics, name: &str, needles: &[&str]) -> f64 {
    let text = String::from_utf8(m.render()).expect("utf8");
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
