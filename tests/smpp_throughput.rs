//! One TLS session, window 256, against the simulator on loopback.
//! Run: `cargo test --release --test smpp_throughput -- --ignored --nocapture`

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::Duration;

use sms_conduit::config::BindMode;
use sms_conduit::tools::sim::{start_sim, SimOptions};
use sms_conduit::tools::smpp_bench::bench_session;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run in release"]
async fn one_tls_session_window_256_submit_rate() {
    let n: u64 = std::env::var("SMPP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let certs = certs();
    let shutdown = CancellationToken::new();
    let mut opts = SimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.tls = Some((certs.cert.clone(), certs.key.clone()));
    let sim = start_sim(opts, shutdown.clone()).await.unwrap();
    let mut c = carrier(
        sim.local_addr(),
        Some(certs.cert.clone()),
        BindMode::Transmitter,
    );
    c.window = 256;
    c.response_timeout = Duration::from_secs(10);
    let r = bench_session(c, n, 256).await.unwrap();
    println!(
        "smpp_throughput: {} submit_sm round trips over one TLS session (window 256) in {:.2?}: {:.0}/s, {} failed",
        r.accepted,
        r.elapsed,
        r.per_second(),
        r.failed
    );
    assert_eq!(r.failed, 0);
    shutdown.cancel();
    sim.wait().await;
    assert_eq!(sim.report().accepted, n);
}
