//! Session throughput measurement, callable from `sms-conduit bench` and the
//! ignored `smpp_throughput` test.
//!
//! Owns: driving one carrier pool with a fixed number of submit_sm kept in
//! flight and timing the round trips.
//!
//! Must not know: the HTTPS API, the relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::doubles::TempErrorHandler;
use crate::config::Carrier;
use crate::metrics::Metrics;
use crate::smpp::pdu::SubmitRequest;
use crate::smpp::pool::Pool;
use crate::smpp::SmppError;
use crate::types::E164;

/// The result of [`bench_session`].
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub submitted: u64,
    pub accepted: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl BenchReport {
    /// Accepted submit_sm round trips per second.
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Binds `carrier` (usually `binds = 1`), then sends `n` submit_sm of a
/// 20-byte text with `in_flight` outstanding at a time and reports the rate.
pub async fn bench_session(
    carrier: Carrier,
    n: u64,
    in_flight: usize,
) -> Result<BenchReport, SmppError> {
    let shutdown = CancellationToken::new();
    let pool = Pool::start(
        carrier,
        Arc::new(Metrics::new()),
        Arc::new(TempErrorHandler),
        shutdown.clone(),
    );
    let bind_deadline = Instant::now() + Duration::from_secs(10);
    while pool.bound_transmitters() == 0 {
        if Instant::now() > bind_deadline {
            shutdown.cancel();
            return Err(SmppError::NotBound);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let source = E164::parse("+15551230001").map_err(|_| SmppError::InvalidField {
        field: "source_addr",
        reason: "bench constant",
    })?;
    let dest = E164::parse("+15557654321").map_err(|_| SmppError::InvalidField {
        field: "destination_addr",
        reason: "bench constant",
    })?;
    let started = Instant::now();
    let results: Vec<bool> = futures::stream::iter(0..n)
        .map(|_| {
            let pool = pool.clone();
            let req = SubmitRequest {
                source: source.clone(),
                dest: dest.clone(),
                short_message: Zeroizing::new(b"benchmark text 12345".to_vec()),
                data_coding: 0,
                esm_class: 0,
                registered_delivery: 0,
                validity: None,
            };
            async move { pool.submit(req).await.is_ok() }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    shutdown.cancel();
    pool.wait().await;
    let accepted = results.iter().filter(|ok| **ok).count() as u64;
    Ok(BenchReport {
        submitted: n,
        accepted,
        failed: n - accepted,
        elapsed,
    })
}
