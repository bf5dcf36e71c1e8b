//! A reload that tells the truth (issue 19 item 2): it reads every file it
//! depends on again, not only those whose path changed, and a refused
//! reload reaches the caller (`sms-conduit reload`, the unit's ExecReload)
//! as a non-zero exit with the reason.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::client_trusting;
use support::relay::*;

const PW: &str = "rt-pw1";

/// The carrier's CA file is rewritten in place (same path, new bytes) and
/// the carrier now presents a certificate only the new CA vouches for: after
/// the reload the relay binds with the new CA and sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_ca_rotated_in_place_is_used_after_reload() {
    let files = Files::new();
    let sim_a = files.sim(PW, |_| {}).await;
    let port = sim_a.port();
    let setup = || Setup::new(vec![CarrierCfg::new("carrier-a", port, PW)]);
    let mut relay = Relay::start(files, setup()).await;
    relay.send_ok(&message("Before the rotation.")).await;

    // The carrier rotates: its old certificate is gone, the new one is
    // trusted through the same ca_file path (server.crt, which is also the
    // relay's own certificate here: it rotates with it).
    let old_pem = relay.files.cert_pem.clone();
    let new = sms_conduit::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    sim_a.stop().await;
    std::fs::write(&relay.files.cert, &new.cert_pem).unwrap();
    std::fs::write(&relay.files.key, &new.key_pem).unwrap();
    let (cert, key) = (relay.files.cert.clone(), relay.files.key.clone());
    let sim_b = relay
        .files
        .sim(PW, |o| {
            o.listen = format!("127.0.0.1:{port}").parse().unwrap();
            o.tls = Some((cert, key));
        })
        .await;
    relay.client = client_trusting(&[&old_pem, &new.cert_pem], false);

    relay.reload(setup()).await;
    wait_until(
        Duration::from_secs(10),
        "a bind to the carrier's new certificate",
        || sim_b.handle.report().binds >= 1,
    )
    .await;
    relay.wait_ready().await;
    relay.send_ok(&message("After the rotation.")).await;
    assert_eq!(sim_b.submits(), 1);
    assert!(relay.stop().await);
}

/// `sms-conduit run` on the config in `dir`, with its log drained.
fn start(dir: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["run", "--config"])
        .arg(dir.join("sms-conduit.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(err).lines().map_while(Result::ok) {});
    child
}

/// `sms-conduit reload --config …` (no --pid: found through the status
/// file): exit success, stdout and stderr.
fn reload(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["reload", "--config"])
        .arg(dir.join("sms-conduit.toml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_fails_the_reload_command_with_the_reason() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]);
    let (_key, hash) = sms_conduit::api::new_key();
    let (_, other_hash) = sms_conduit::api::new_key();
    let toml = toml_for(&files, &setup, &hash, &other_hash);
    let dir = files.dir.path();
    let cfg = dir.join("sms-conduit.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let mut child = start(dir);
    let status = dir.join("state").join(sms_conduit::app::RELOAD_STATUS_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sms_conduit::app::ReloadStatus::read(&status).is_none() {
        assert!(Instant::now() < deadline, "no {}", status.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A good reload: exit 0.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || reload(&dir)
    })
    .await
    .unwrap();
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("reloaded"), "{out}");

    // A config that does not validate: refused, with the key named.
    std::fs::write(&cfg, format!("{toml}\n[node2]\nx = 1\n")).unwrap();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || reload(&dir)
    })
    .await
    .unwrap();
    assert!(!ok, "a broken config reported success: {out}");
    assert!(err.contains("node2"), "the reason names the key: {err}");

    // A config that validates but whose certificate the running process
    // cannot load: the process refuses it, and the command reports its
    // reason (through the status file).
    std::fs::write(&cfg, &toml).unwrap();
    std::fs::write(dir.join("server.crt"), "not a certificate\n").unwrap();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || reload(&dir)
    })
    .await
    .unwrap();
    assert!(!ok, "a refused reload reported success: {out}");
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("server.crt"),
        "the reason names the file: {err}"
    );
    let s = sms_conduit::app::ReloadStatus::read(&status).unwrap();
    assert_eq!(s.pid, child.id());
    assert_eq!(
        s.generation, 2,
        "the broken config never reached the process"
    );
    assert!(s.outcome.is_err());

    // The process still runs on the configuration it had.
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}
