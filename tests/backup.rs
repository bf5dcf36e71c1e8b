//! `sms-conduit backup` / `restore` (issue 22 item 4): a backup taken by
//! the real binary while the appliance runs under load restores into an
//! empty state dir; the restored node answers `GET` for earlier messages
//! and its audit chain verifies; a tampered backup and a non-empty state
//! dir are refused; the backup holds no message text (canary).

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sms_conduit::audit::{self, AUDIT};
use support::capture::leaked;
use support::relay::{message, Files, Relay, Setup};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(args)
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn canary() -> String {
    format!("CANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_a_node_that_answers_and_verifies() {
    let files = Files::new();
    let sim = files
        .sim("pw", |o| o.dlr_delay = Duration::from_millis(5))
        .await;
    let relay = Relay::start(files, Setup::one(&sim, "pw")).await;
    let text = canary();

    // Earlier messages, to be found on the restored node.
    let mut earlier = Vec::new();
    for i in 0..20 {
        let doc = relay.send_ok(&message(&format!("{text} #{i}"))).await;
        earlier.push(doc["id"].as_str().unwrap().to_owned());
    }

    // Load while the backup is taken: a sender that never pauses.
    let relay = Arc::new(relay);
    let stop = Arc::new(AtomicBool::new(false));
    let sent_during = Arc::new(AtomicU64::new(0));
    let load = {
        let (relay, stop, sent, text) = (
            relay.clone(),
            stop.clone(),
            sent_during.clone(),
            text.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = relay.send(&message(&text)).await;
                assert_eq!(r.status().as_u16(), 201);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The admin route wants the token derived from the pseudonym key.
    let admin = format!(
        "http://127.0.0.1:{}/admin/backup",
        relay.app().bound.metrics.port()
    );
    let c = reqwest::Client::new();
    for auth in [None, Some("Bearer nope")] {
        let mut rb = c.get(&admin);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        assert_eq!(rb.send().await.unwrap().status().as_u16(), 401);
    }
    let out_dir = tempfile::tempdir().unwrap();
    let backup = out_dir.path().join("node.backup");
    let config = relay.files.dir.path().join("sms-conduit.toml");
    let metrics_url = format!("http://127.0.0.1:{}", relay.app().bound.metrics.port());
    let before = sent_during.load(Ordering::Relaxed);
    let o = tokio::task::spawn_blocking({
        let (config, backup) = (config.clone(), backup.clone());
        move || {
            cli(&[
                "backup",
                "--config",
                config.to_str().unwrap(),
                "--out",
                backup.to_str().unwrap(),
                "--metrics-url",
                &metrics_url,
            ])
        }
    })
    .await
    .unwrap();
    let after = sent_during.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(o.status.success(), "{}", show(&o));
    eprintln!("sends during the backup: {}\n{}", after - before, show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("audit chain ok"), "{}", show(&o));
    assert!(stdout.contains("messages: "), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the appliance is running"),
        "{}",
        show(&o)
    );
    // The appliance kept serving while the backup was made.
    assert!(
        after > before,
        "no send completed during the backup ({before} → {after})"
    );
    // Only the backup is left in the target dir (no temp files).
    let names: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node.backup")]);

    // Canary: the backup file holds no message text.
    let bytes = std::fs::read(&backup).unwrap();
    assert!(bytes.len() > 4096);
    assert_eq!(leaked(&bytes, &text), None, "message text in the backup");

    // Restore into a new node's (missing) state dir through the CLI.
    let files2 = Files::new();
    support::write(files2.dir.path(), "carrier-a.pass", "pw\n");
    let toml = std::fs::read_to_string(&config).unwrap();
    let config2 = support::write(files2.dir.path(), "restore.toml", &toml);
    let config2 = config2.to_str().unwrap();
    let o = cli(&[
        "restore",
        "--config",
        config2,
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    // A second restore finds the state dir non-empty and refuses.
    let o = cli(&[
        "restore",
        "--config",
        config2,
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{}",
        show(&o)
    );

    // The restored node answers GET for the earlier messages.
    let sim2 = files2.sim("pw", |_| {}).await;
    let relay2 = Relay::start(files2, Setup::one(&sim2, "pw")).await;
    for id in &earlier {
        let r = relay2
            .get(&format!("/v1/messages/{id}"), &relay2.api_key)
            .await;
        assert_eq!(
            r.status().as_u16(),
            200,
            "{id}: {}",
            r.text().await.unwrap()
        );
    }
    // …and its audit chain verifies (the CLI, while it runs).
    let config_run = relay2.files.dir.path().join("sms-conduit.toml");
    let o = cli(&["audit", "verify", "--config", config_run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", show(&o));
    drop(relay2);
    drop(relay);
}

#[tokio::test]
async fn a_stopped_node_is_backed_up_directly_and_a_tampered_backup_is_refused() {
    let files = Files::new();
    let sim = files.sim("pw", |_| {}).await;
    let mut relay = Relay::start(files, Setup::one(&sim, "pw")).await;
    for i in 0..5 {
        relay.send_ok(&message(&format!("hello {i}"))).await;
    }
    assert!(relay.stop().await);
    let config = relay.files.dir.path().join("sms-conduit.toml");
    let out = tempfile::tempdir().unwrap();
    let backup = out.path().join("b.redb");
    // Stopped: the CLI opens the store itself (no metrics listener to ask).
    let o = cli(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("running"));

    // Tamper: edit one audit record (its time) in a copy of the backup.
    let tampered = out.path().join("tampered.redb");
    std::fs::copy(&backup, &tampered).unwrap();
    {
        let db = redb::Database::open(&tampered).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(AUDIT).unwrap();
            let mut records = std::collections::BTreeMap::new();
            for item in redb::ReadableTable::iter(&t).unwrap() {
                let (k, v) = item.unwrap();
                let chunk = audit::decode_chunk(v.value()).unwrap();
                for (i, r) in audit::chunk_records(&chunk).enumerate() {
                    records.insert(k.value() + i as u64, r.to_vec());
                }
            }
            let r: &mut Vec<u8> = records.get_mut(&1).unwrap();
            let at = r.windows(8).position(|w| w == b"\"at\":\"20").unwrap();
            r[at + 6..at + 8].copy_from_slice(b"19");
            t.retain(|_, _| false).unwrap();
            audit::store_records(&mut t, records).unwrap();
        }
        txn.commit().unwrap();
    }
    let state2 = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        "state_dir = \"state\"",
        &format!(
            "state_dir = {:?}",
            state2.path().join("s").display().to_string()
        ),
    );
    let config2 = support::write(relay.files.dir.path(), "restore.toml", &toml);
    let o = cli(&[
        "restore",
        "--config",
        config2.to_str().unwrap(),
        "--from",
        tampered.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("audit chain does not verify: audit chain broken at seq 1"),
        "{}",
        show(&o)
    );
    assert!(!state2
        .path()
        .join("s")
        .join(sms_conduit::store::DB_FILE)
        .exists());
    // The untouched backup restores there.
    let o = cli(&[
        "restore",
        "--config",
        config2.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let o = cli(&["audit", "verify", "--config", config2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", show(&o));
}
