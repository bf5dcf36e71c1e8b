//! SIGHUP semantics for carriers (SPEC §2): a reload rebinds only the
//! carriers whose settings changed; the others keep their sessions.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::Duration;

use support::relay::*;

const PW: &str = "rl-pw1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rebinds_changed_carriers_and_keeps_the_others() {
    let files = Files::new();
    let sim_a = files.sim(PW, |_| {}).await;
    let sim_b = files.sim(PW, |_| {}).await;
    let sim_c = files.sim(PW, |_| {}).await;
    let us = |port| CarrierCfg::new("carrier-us", port, PW).prefixes(&["+1"]);
    let uk = |port| CarrierCfg::new("carrier-uk", port, PW).prefixes(&["+44"]);
    let mut relay = Relay::start(files, Setup::new(vec![us(sim_a.port()), uk(sim_b.port())])).await;
    wait_until(Duration::from_secs(5), "both carriers bound", || {
        sim_a.handle.report().binds == 1 && sim_b.handle.report().binds == 1
    })
    .await;
    relay.wait_bound("carrier-us", 1).await;
    let v = relay.send_ok(&message("Before the reload.")).await;
    assert_eq!(v["carrier"], "carrier-us");
    assert_eq!(sim_a.submits(), 1);

    // carrier-us moves to another SMSC; carrier-uk is unchanged.
    relay
        .reload(Setup::new(vec![us(sim_c.port()), uk(sim_b.port())]))
        .await;
    wait_until(
        Duration::from_secs(5),
        "carrier-us bound to its new SMSC",
        || sim_c.handle.report().binds == 1,
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "the old carrier-us session unbound",
        || sim_a.handle.bound_sessions() == 0,
    )
    .await;
    // The simulator counts a bind before the relay has read its bind_resp:
    // wait for the relay's own view of carrier-us. (`/readyz` is not it: it
    // is 200 while any carrier is bound, and carrier-uk stayed bound; the
    // send below once met carrier-us not yet bound, and a 503.)
    relay.wait_bound("carrier-us", 1).await;
    let v = relay.send_ok(&message("After the reload.")).await;
    assert_eq!(v["carrier"], "carrier-us");
    assert_eq!(sim_c.submits(), 1, "sent through the new binding");
    assert_eq!(sim_a.submits(), 1, "nothing more through the old one");
    // The unchanged carrier kept its one session: no rebind.
    assert_eq!(sim_b.handle.report().binds, 1);
    assert_eq!(sim_b.handle.bound_sessions(), 1);
    let mut uk_msg = message("To London.");
    uk_msg["to"] = "+447700900123".into();
    let v = relay.send_ok(&uk_msg).await;
    assert_eq!(v["carrier"], "carrier-uk");
    assert!(relay.stop().await);
}

/// `store.commit_wait_max_ms` is set at start (5 ms by default) and a
/// reload applies a new value to the running store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_commit_wait_max() {
    let files = Files::new();
    let sim = files.sim(PW, |_| {}).await;
    let carrier = || vec![CarrierCfg::new("carrier-us", sim.port(), PW).prefixes(&["+1"])];
    let mut relay = Relay::start(files, Setup::new(carrier())).await;
    assert_eq!(
        relay.app().store.commit_wait_max(),
        Duration::from_millis(5)
    );
    let mut setup = Setup::new(carrier());
    setup.extra_toml = "[store]\ncommit_wait_max_ms = 12\n".into();
    relay.reload(setup).await;
    assert_eq!(
        relay.app().store.commit_wait_max(),
        Duration::from_millis(12)
    );
    relay.send_ok(&message("After the reload.")).await;
    assert!(relay.stop().await);
}
