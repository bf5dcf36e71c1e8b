//! The real binary killed with SIGKILL while a message is with the carrier
//! (issue 16 item 9): after the restart, a retry with the same
//! `Idempotency-Key` gets the documented "outcome unknown" answer and is
//! never sent a second time.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::{Duration, Instant};

use support::relay::{message, start_binary, toml_for, wait_until, CarrierCfg, Files, Setup};

const PW: &str = "crsh-pw1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_sigkill_with_the_message_at_the_carrier_is_never_sent_twice() {
    let files = Files::new();
    let smsc = files.manual_smsc(PW).await;
    // The carrier holds its answer past the kill.
    smsc.answer_after(&[Duration::from_secs(60)]);
    let setup = Setup::new(vec![
        CarrierCfg::new("carrier-a", smsc.port(), PW).response_timeout_secs(10)
    ]);
    let (key, hash) = sms_conduit::api::new_key();
    let (_, other_hash) = sms_conduit::api::new_key();
    let toml = toml_for(&files, &setup, &hash, &other_hash);
    std::fs::write(files.dir.path().join("sms-conduit.toml"), toml).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(files.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let post = |port: u16| {
        client
            .post(format!("https://localhost:{port}/v1/messages"))
            .bearer_auth(&key)
            .header("idempotency-key", "crash-1")
            .json(&message("your biopsy results are in"))
            .send()
    };
    let wait_ready = |port: u16| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = client
                    .get(format!("https://localhost:{port}/readyz"))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    return;
                }
                assert!(Instant::now() < deadline, "never ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let (mut child, port) = start_binary(files.dir.path());
    wait_ready(port).await;
    let pending = tokio::spawn(post(port));
    wait_until(Duration::from_secs(10), "the submit at the carrier", || {
        smsc.submits().len() == 1
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        pending.await.unwrap().is_err(),
        "no answer from a dead relay"
    );

    let (mut child, port) = start_binary(files.dir.path());
    wait_ready(port).await;
    let r = post(port).await.unwrap();
    assert_eq!(r.status(), 409);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["code"], "idempotency_conflict", "{doc}");
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("outcome is unknown"),
        "{doc}"
    );
    assert_eq!(smsc.submits().len(), 1, "never sent a second time");
    child.kill().unwrap();
    child.wait().unwrap();
}
