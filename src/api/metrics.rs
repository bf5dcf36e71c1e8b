//! The metrics listener: `GET /metrics` in the Prometheus text format
//! (SPEC §7), and whatever admin routes the caller merges in
//! ([`serve_metrics_router`]; the appliance adds `crate::backup`'s).
//!
//! Owns: the metrics router and the rule that plain HTTP is served only on a
//! loopback address — anywhere else the listener must use TLS (the same
//! `[tls]` certificate as the API). The check is made on the *bound* address,
//! so it holds whatever the caller decided.
//!
//! Must not know: what the metrics mean; they are declared in
//! `crate::metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::server::{accept_loop, ConnLimits};
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Why the metrics listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServeError {
    #[error(
        "metrics.listen {0}: plain HTTP metrics are allowed only on a loopback address \
         (127.0.0.0/8 or ::1); use a loopback address or serve metrics over TLS"
    )]
    PlaintextNotLoopback(SocketAddr),
    #[error("metrics listener: cannot read the bound address: {0}")]
    Io(#[from] std::io::Error),
}

/// The router of the metrics listener.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut resp = metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    resp
}

/// Serves `/metrics` until `shutdown` fires: over TLS when `tls` is given,
/// else plain HTTP, which is refused unless `listener` is bound to loopback.
pub async fn serve_metrics(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), MetricsServeError> {
    serve_metrics_router(listener, tls, metrics_router(metrics), shutdown, tracker).await
}

/// As [`serve_metrics`] with a router of the caller's (the metrics router
/// merged with admin routes such as `crate::backup::admin_router`), under
/// the same loopback-or-TLS rule.
pub async fn serve_metrics_router(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), MetricsServeError> {
    let addr = listener.local_addr()?;
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(MetricsServeError::PlaintextNotLoopback(addr));
    }
    accept_loop(
        listener,
        tls,
        router.into(),
        ConnLimits::metrics(),
        shutdown,
        tracker,
        "metrics",
    )
    .await;
    Ok(())
}
