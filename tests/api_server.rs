//! The HTTPS listener's connection handling: limit, timeouts, graceful
//! shutdown. Real TLS over loopback.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use sms_conduit::api::{
    ClientId, ConnLimits, MessageService, MessageView, NoRouteService, SendAccepted, SendError,
    SendRequest,
};
use sms_conduit::tools::AlwaysReady;
use support::{start_api_with, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn limits(max: usize, header: u64, idle: u64) -> ConnLimits {
    ConnLimits {
        handshake_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        max_connections: max,
        max_per_address: max,
    }
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cc =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads until the server closes; returns what arrived and how long it took.
async fn read_until_closed(s: &mut TlsStream<TcpStream>) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server must close the connection");
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        limits(8, 2000, 300),
    )
    .await;
    let mut s = tls_connect(api.addr, &env.cert_pem).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (resp, took) = read_until_closed(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    api.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        limits(8, 300, 10_000),
    )
    .await;
    let mut s = tls_connect(api.addr, &env.cert_pem).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let (resp, took) = read_until_closed(&mut s).await;
    assert!(!resp.contains("200 OK"), "{resp}");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    api.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        limits(1, 5000, 10_000),
    )
    .await;
    let first = tls_connect(api.addr, &env.cert_pem).await.unwrap();
    assert!(
        tls_connect(api.addr, &env.cert_pem).await.is_err(),
        "a second connection over max_connections=1 must be closed"
    );
    drop(first);
    // The slot frees once the first connection's task ends.
    let mut ok = false;
    for _ in 0..50 {
        if tls_connect(api.addr, &env.cert_pem).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was not released");
    api.stop().await;
}

/// Answers after a delay, to have a request in flight during shutdown.
struct Slow;

impl MessageService for Slow {
    fn send<'a>(
        &'a self,
        _client: &'a ClientId,
        _req: SendRequest,
        _key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Err(SendError::CarrierTimeout)
        })
    }

    fn get<'a>(
        &'a self,
        _client: &'a ClientId,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>> {
        Box::pin(async { Err(SendError::NotFound) })
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        Slow,
        Arc::new(AlwaysReady),
        ConnLimits::from_api(&env.config.api),
    )
    .await;
    let c = env.client();
    let url = api.url("/v1/messages");
    let key = env.api_key.clone();
    let in_flight = tokio::spawn(async move {
        c.post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(r#"{"from":"+15551230001","to":"+15557654321","text":"hi","campaign_id":"CTEST01"}"#)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    api.shutdown.cancel();
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight request must complete");
    assert_eq!(r.status(), 504);
    // No new connections once shut down.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tls_connect(api.addr, &env.cert_pem).await.is_err());
    api.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), api.tracker.wait())
        .await
        .expect("connection tasks must end after shutdown");
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_before_it_is_all_sent() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        ConnLimits::from_api(&env.config.api),
    )
    .await;
    let mut s = tls_connect(api.addr, &env.cert_pem).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        env.api_key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // 80 KiB in 8 KiB chunks, no terminating chunk: the server must answer
    // without waiting for the end of the body.
    let chunk = format!("2000\r\n{}\r\n", "a".repeat(0x2000));
    for _ in 0..10 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer before the body ends")
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("application/problem+json"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");
    api.stop().await;
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body).
async fn read_response(s: &mut TlsStream<TcpStream>) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// Issue 16 item 8: a keep-alive request the client writes just as the
/// drain begins is answered (and told `Connection: close`), not met by a
/// closed connection. Before the fix the idle connection was closed at
/// once and the request got no answer.
#[tokio::test]
async fn a_keepalive_request_written_as_the_drain_begins_is_answered() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        ConnLimits::from_api(&env.config.api),
    )
    .await;
    let mut s = tls_connect(api.addr, &env.cert_pem).await.unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n";
    s.write_all(req).await.unwrap();
    let first = read_response(&mut s).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    api.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(req).await.unwrap();
    let second = read_response(&mut s)
        .await
        .expect("a request written as the drain began is answered");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    api.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), api.tracker.wait())
        .await
        .expect("connection tasks end after the grace");
}

/// Issue 20 item 3: one host holding bare sockets open (no TLS handshake)
/// cannot starve clients from other addresses. The attacker opens more
/// idle sockets from 127.0.0.2 than the listener has slots; a legitimate
/// client from 127.0.0.1 still gets its answers (>= 99 %). Before the fix
/// the idle sockets held every slot for the handshake timeout and the
/// legitimate client was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_host_do_not_starve_another() {
    let env = TestEnv::new();
    let api = start_api_with(
        &env,
        NoRouteService,
        Arc::new(AlwaysReady),
        limits(100, 10_000, 60_000),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..150 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(c) = s.connect(api.addr).await {
            idle.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut roots = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3));
    roots = roots
        .add_root_certificate(reqwest::Certificate::from_pem(env.cert_pem.as_bytes()).unwrap());
    let client = roots.build().unwrap();
    let (mut ok, tries) = (0, 100);
    for _ in 0..tries {
        if let Ok(r) = client.get(api.url("/healthz")).send().await {
            if r.status() == 200 {
                ok += 1;
            }
        }
    }
    eprintln!(
        "legitimate client during the attack: {ok}/{tries} answered; {} idle sockets open",
        idle.len()
    );
    assert!(ok * 100 >= tries * 99, "{ok}/{tries}");
    drop(idle);
    api.shutdown.cancel();
}
