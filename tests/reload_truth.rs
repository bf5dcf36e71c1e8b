//! A reload that tells the truth (issue 19 item 2): it reads every file it
//! depends on again, not only those whose path changed, and a refused
//! reload reaches the caller (`sms-conduit reload`, the unit's ExecReload)
//! as a non-zero exit with the reason.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

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

/// A reload whose webhook part fails is refused as a whole: the caller
/// gets the error and nothing of the new config is applied (here, a new
/// API key that came with it). The webhook URL is spoiled after parsing,
/// the one failure left once the config and its files validated; before,
/// the webhook error was only logged, after the keys, limits and carriers
/// had already been switched, and the reload reported success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_webhook_part_fails_changes_nothing_and_says_so() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let dead = closed_port().await;
    let url = format!("http://127.0.0.1:{dead}/events");
    let setup = || {
        Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]).webhook(
            &url,
            b"whsec_rt",
            None,
        )
    };
    let mut relay = Relay::start(files, setup()).await;
    relay.send_ok(&message("Before the reload.")).await;

    // The new config: a new key for clinic-app, and a webhook that cannot
    // be built.
    let (new_key, new_hash) = sms_conduit::api::new_key();
    let (_, other_hash) = sms_conduit::api::new_key();
    let toml = toml_for(&relay.files, &setup(), &new_hash, &other_hash);
    let mut config =
        sms_conduit::config::Config::from_toml(&toml, relay.files.dir.path(), None).unwrap();
    let hook = config.clients[0]
        .webhook
        .as_mut()
        .expect("clinic-app's webhook");
    hook.url = "https://[not a host/events".into();
    let err = relay
        .try_reload(config)
        .await
        .expect_err("a reload with a broken webhook was applied");
    let err = err.to_string();
    assert!(
        err.contains("webhook"),
        "the error names the webhook: {err}"
    );
    assert!(err.contains("clinic-app"), "and its client: {err}");

    // Nothing changed: the old key still sends, the new one is unknown.
    relay.send_ok(&message("After the refused reload.")).await;
    let r = relay
        .post_raw(Some(&new_key), None, message("new key").to_string())
        .await;
    assert_eq!(r.status().as_u16(), 401, "the new key was applied");
    assert!(relay.stop().await);
}

/// The same through the real binary: a webhook secret file that cannot be
/// read (a directory in its place) refuses the reload. `sms-conduit
/// reload` refuses it before signalling (the config does not load), and a
/// SIGHUP sent directly (`kill -HUP`) is refused by the process, which
/// writes the reason to its status file and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_webhook_secret_refuses_the_reload_with_the_reason() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let dead = closed_port().await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", sim.port(), PW)]).webhook(
        &format!("http://127.0.0.1:{dead}/events"),
        b"whsec_rt",
        None,
    );
    let (_key, hash) = sms_conduit::api::new_key();
    let (_, other_hash) = sms_conduit::api::new_key();
    let toml = toml_for(&files, &setup, &hash, &other_hash);
    let dir = files.dir.path();
    std::fs::write(dir.join("sms-conduit.toml"), &toml).unwrap();
    let mut child = start(dir);
    let status = dir.join("state").join(sms_conduit::app::RELOAD_STATUS_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sms_conduit::app::ReloadStatus::read(&status).is_none() {
        assert!(Instant::now() < deadline, "no {}", status.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let secret = dir.join("clinic-app.whsec");
    std::fs::remove_file(&secret).unwrap();
    std::fs::create_dir(&secret).unwrap();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || reload(&dir)
    })
    .await
    .unwrap();
    assert!(
        !ok,
        "a reload with an unreadable webhook secret succeeded: {out}"
    );
    assert!(
        err.contains("clinic-app.whsec"),
        "the reason names the file: {err}"
    );

    // Past the command: the process itself refuses it.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        match sms_conduit::app::ReloadStatus::read(&status) {
            Some(s) if s.generation >= 1 => break s,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no reload outcome");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = s.outcome.expect_err("the process applied the reload");
    assert!(reason.contains("clinic-app.whsec"), "{reason}");
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}
