//! TLS of the listeners: protocol versions, ALPN, plaintext refusal,
//! certificate reload, and client certificates (for the SMPP listener).

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sms_conduit::api::NoRouteService;
use sms_conduit::tls::{ClientAuth, ServerTls};
use sms_conduit::tools::AlwaysReady;
use support::{client_trusting, start_api, write, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn roots(pem: &str) -> RootCertStore {
    let mut r = RootCertStore::empty();
    for c in certs(pem) {
        r.add(c).unwrap();
    }
    r
}

fn client_config(
    trust_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut cc = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots(trust_pem))
        .with_no_client_auth();
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cc)
}

/// Sends a raw HTTP/1.1 request over TLS limited to `version`; returns the
/// negotiated version and the response text.
async fn raw_https_get(
    addr: std::net::SocketAddr,
    trust_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> (rustls::ProtocolVersion, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(client_config(trust_pem, version, &[b"http/1.1"]));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let v = tls.get_ref().1.protocol_version().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    (v, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn tls13_handshake_serves_http() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let (v, resp) = raw_https_get(api.addr, &env.cert_pem, &rustls::version::TLS13).await;
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#"{"status":"ok"}"#), "{resp}");
    api.stop().await;
}

#[tokio::test]
async fn tls12_handshake_serves_http() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let (v, resp) = raw_https_get(api.addr, &env.cert_pem, &rustls::version::TLS12).await;
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    api.stop().await;
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http1_works() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let r = env.client().get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let h1 = client_trusting(&[&env.cert_pem], true);
    let r = h1.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    api.stop().await;
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_gets_no_http_response() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let mut tcp = TcpStream::connect(api.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The server closes the connection; a reset counts as closed too.
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("the server must close the connection");
    let _ = read;
    assert!(
        !out.starts_with(b"HTTP/"),
        "got {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(!String::from_utf8_lossy(&out).contains("ok"));
    api.stop().await;
}

fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[tokio::test]
async fn reload_applies_to_new_connections_and_keeps_old_ones() {
    let env = TestEnv::new();
    let api = start_api(&env, NoRouteService, Arc::new(AlwaysReady)).await;
    let cert_a = env.cert_pem.clone();
    let b = sms_conduit::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();

    let old = client_trusting(&[&cert_a, &b.cert_pem], true);
    let r = old.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(peer_cert(&r), certs(&cert_a)[0].to_vec());
    r.bytes().await.unwrap();

    write(env.dir.path(), "server.crt", &b.cert_pem);
    write(env.dir.path(), "server.key", &b.key_pem);
    api.tls.reload(&env.config.tls).unwrap();

    let new = client_trusting(&[&cert_a, &b.cert_pem], true);
    let r = new.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), certs(&b.cert_pem)[0].to_vec());

    // The kept-alive connection still works and still has certificate A.
    let r = old.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), certs(&cert_a)[0].to_vec());

    // A reload with a broken file keeps the current certificate.
    write(env.dir.path(), "server.key", "not a key");
    assert!(api.tls.reload(&env.config.tls).is_err());
    let r = client_trusting(&[&b.cert_pem], true)
        .get(api.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.stop().await;
}

/// A CA and a client certificate it signed, PEM.
struct Pki {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
}

fn pki(cn: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{cn} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![cn.to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        leaf_der: leaf_cert.der().clone(),
        leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    }
}

/// Runs one handshake against a `RequireIfConfigured` server; returns
/// whether the *server* accepted it.
async fn handshake_with_client_cert(
    server: &Arc<ServerTls>,
    server_cert_pem: &str,
    client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> bool {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut s) => {
                let _ = s.write_all(b"hello").await;
                let _ = s.shutdown().await;
                true
            }
            Err(_) => false,
        }
    });
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(server_cert_pem));
    let cc = match client_cert {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_ok = match TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        // With TLS 1.3 the client learns of a refusal only on its first read.
        Ok(mut s) => {
            let mut buf = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await,
                Ok(Ok(_))
            ) && buf == b"hello"
        }
        Err(_) => false,
    };
    let server_ok = srv.await.unwrap();
    assert_eq!(server_ok, client_ok, "client and server disagree");
    server_ok
}

#[tokio::test]
async fn client_ca_requires_a_certificate_signed_by_it() {
    let carriers = pki("carrier-b");
    let stranger = pki("stranger");
    let env = TestEnv::with(
        r#"client_ca_file = "carriers-ca.pem""#,
        &[("carriers-ca.pem", carriers.ca_pem.as_str())],
    );
    assert!(env.config.tls.client_ca_file.is_some());
    let server = ServerTls::load(&env.config.tls, &[], ClientAuth::RequireIfConfigured).unwrap();

    assert!(
        !handshake_with_client_cert(&server, &env.cert_pem, None).await,
        "no client certificate must be refused"
    );
    assert!(
        !handshake_with_client_cert(
            &server,
            &env.cert_pem,
            Some((stranger.leaf_der.clone(), stranger.leaf_key.clone_key()))
        )
        .await,
        "a certificate from another CA must be refused"
    );
    assert!(
        handshake_with_client_cert(
            &server,
            &env.cert_pem,
            Some((carriers.leaf_der.clone(), carriers.leaf_key.clone_key()))
        )
        .await,
        "a certificate signed by the configured CA must be accepted"
    );
    // The API listener (ClientAuth::None) ignores client_ca_file.
    let api = ServerTls::load(&env.config.tls, &[], ClientAuth::None).unwrap();
    assert!(handshake_with_client_cert(&api, &env.cert_pem, None).await);
}
