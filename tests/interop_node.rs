//! Interop with an SMPP implementation nobody here wrote: node-smpp (npm
//! `smpp`), over TLS on loopback.
//!
//! * Our outbound pool binds to a node-smpp SMSC and submits GSM-7,
//!   extension-table, UCS-2-with-emoji and 400-character concatenated texts;
//!   node-smpp decodes and reassembles them, and must print exactly those.
//! * A node-smpp ESME binds to our `[smpp_server]` over TLS and sends a
//!   deliver_sm, which reaches our handler with the same text; a wrong
//!   password is refused.
//!
//! The first run installs node-smpp into `tests/interop/node/node_modules`
//! from the npm registry (`npm install`); later runs reuse it.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod support;

use sms_conduit::config::{self, BindMode, Carrier, Peer, SmppServer};
use sms_conduit::metrics::Metrics;
use sms_conduit::smpp::{CommandStatus, Pool, SubmitRequest};
use sms_conduit::text as encoding;
use sms_conduit::tls::{self, ClientAuth, ServerTls};
use sms_conduit::tools::RecordingHandler;
use sms_conduit::types::{Secret, E164};
use support::node::NodeProc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ss = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, ss.cert_pem).unwrap();
    std::fs::write(&key, ss.key_pem).unwrap();
    Certs { dir, cert, key }
}

fn carrier(port: u16, ca: &Path, password: &str) -> Carrier {
    Carrier {
        name: "node-smsc".into(),
        host: "127.0.0.1".into(),
        port,
        tls: true,
        system_id: "acme".into(),
        password: Secret::new(password.as_bytes().to_vec()),
        system_type: String::new(),
        ca_file: Some(ca.to_path_buf()),
        server_name: "localhost".into(),
        bind: BindMode::Transceiver,
        binds: 1,
        window: 16,
        max_tps: 0,
        prefixes: vec![],
        priority: 1,
        enquire_link: Duration::from_secs(30),
        response_timeout: Duration::from_secs(5),
        cert_sha256: None,
    }
}

async fn bound(pool: &Pool) {
    for _ in 0..200 {
        if pool.bound_transmitters() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the pool never bound to node-smpp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_pool_submits_to_node_smpp_and_it_reassembles_exactly() {
    let c = certs();
    let smsc = NodeProc::spawn(
        "smsc.js",
        &[
            ("PORT", "0".into()),
            ("CERT", c.cert.display().to_string()),
            ("KEY", c.key.display().to_string()),
            ("SYSTEM_ID", "acme".into()),
            ("PASSWORD", "pw123".into()),
        ],
    );
    let port = smsc.next("listening")["port"].as_u64().unwrap() as u16;
    let stop = CancellationToken::new();
    let (handler, _rx) = RecordingHandler::new(16);
    let pool = Pool::start(
        carrier(port, &c.cert, "pw123"),
        Arc::new(Metrics::new()),
        Arc::new(handler),
        stop.clone(),
    );
    bound(&pool).await;
    assert_eq!(smsc.next("bind")["ok"], true);

    let long: String = "The clinic reminds you of your appointment tomorrow. "
        .repeat(8)
        .chars()
        .take(400)
        .collect();
    let texts = [
        "Hello from the clinic, your results are ready.".to_string(),
        "Extension table: [x] {y} ~z | back\\slash ^caret € euro".to_string(),
        "Здравствуйте! Запись подтверждена 👋🏽 ok".to_string(),
        long,
    ];
    let from = E164::parse("+15551230001").unwrap();
    let to = E164::parse("+15557654321").unwrap();
    for (i, text) in texts.iter().enumerate() {
        let enc = encoding::encode(text, i as u8 + 1).unwrap();
        for part in enc.parts() {
            pool.submit(SubmitRequest {
                source: from.clone(),
                dest: to.clone(),
                short_message: Zeroizing::new(part.to_vec()),
                data_coding: enc.data_coding(),
                esm_class: enc.esm_class_bits(),
                registered_delivery: 0,
                validity: None,
            })
            .await
            .unwrap();
        }
        let got = smsc.next("message");
        assert_eq!(
            got["text"].as_str().unwrap(),
            text,
            "text {i} as node-smpp decoded it"
        );
        assert_eq!(got["parts"].as_u64().unwrap() as usize, enc.segments());
        assert_eq!(got["destination"], "15557654321");
    }
    stop.cancel();
    pool.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_smpp_binds_to_our_server_over_tls_and_delivers() {
    let c = certs();
    let password = "peerpw";
    let peer = Peer {
        name: "node-esme".into(),
        system_id: "nodeesme".into(),
        password_sha256: {
            use sha2::Digest;
            sha2::Sha256::digest(password.as_bytes()).into()
        },
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        max_binds: 2,
        carrier: None,
        cert_sha256: None,
    };
    let server_cfg = SmppServer {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        plaintext_listen: None,
        idle_timeout: Duration::from_secs(30),
        window: 16,
        max_connections: 64,
        max_unbound_per_address: 8,
        bind_timeout: Duration::from_secs(10),
        enquire_link: Duration::from_secs(20),
    };
    let tls_cfg = config::Tls {
        cert_file: c.cert.clone(),
        key_file: c.key.clone(),
        client_ca_file: None,
    };
    let server_tls = ServerTls::load(&tls_cfg, &[], ClientAuth::RequireIfConfigured).unwrap();
    let (handler, mut rx) = RecordingHandler::new(16);
    let stop = CancellationToken::new();
    let server = sms_conduit::smpp::start_server(
        &server_cfg,
        Some(server_tls),
        vec![peer],
        Arc::new(handler),
        Arc::new(Metrics::new()),
        stop.clone(),
    )
    .await
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let text = "STOP please, no more reminders — merci ✓";
    let esme = |pw: &str| {
        NodeProc::spawn(
            "esme.js",
            &[
                ("PORT", port.to_string()),
                ("TLS", "1".into()),
                ("CA_FILE", c.cert.display().to_string()),
                ("SYSTEM_ID", "nodeesme".into()),
                ("PASSWORD", pw.into()),
                ("FROM", "15557654321".into()),
                ("TO", "15551230001".into()),
                ("TEXT", text.into()),
            ],
        )
    };
    let ok = esme(password);
    assert_eq!(ok.next("bind")["status"], 0);
    assert_eq!(ok.next("deliver_sm_resp")["status"], 0);
    let (link, msg) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link, "node-esme");
    let decoded = encoding::decode(msg.data_coding, msg.esm_class, msg.body_bytes()).unwrap();
    assert_eq!(decoded.text.expose(), text);
    assert_eq!(msg.source_addr, "15557654321");
    ok.next("done");

    let bad = esme("wrongpw");
    let status = bad.next("bind")["status"].as_u64().unwrap();
    assert_eq!(
        status,
        u32::from(CommandStatus::EsmeRbindfail) as u64,
        "wrong password refused with ESME_RBINDFAIL (one status for every bind failure)"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "nothing from the refused bind reached the handler"
    );
    stop.cancel();
    server.wait().await;
    drop(c.dir);
}
