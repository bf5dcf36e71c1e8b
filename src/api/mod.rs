//! HTTPS API for client applications (SPEC §4) and the metrics listener
//! (SPEC §7).
//!
//! Code map:
//! * [`server`] — TCP accept loop, TLS (certificate taken per connection, so
//!   reloads apply to new connections), HTTP/1.1 + HTTP/2 by ALPN, timeouts,
//!   connection limit, graceful shutdown. Shared by both listeners.
//! * [`routes`] — the axum router: endpoints, body reading, request counting.
//! * [`auth`] — API keys: constant-time look-up, failure throttling, audit hook.
//! * [`problem`] — the one mapping of the relay's [`SendError`] to problem
//!   documents.
//! * [`service`] — request parsing into the relay's [`SendRequest`], and the
//!   placeholders until the relay exists; the seam traits
//!   ([`MessageService`], [`Readiness`]) and the request/answer types are
//!   the relay's (`relay::domain`), re-exported here.
//! * [`metrics`] — `GET /metrics`, plain on loopback or TLS.
//!
//! Must not know: how messages are routed, limited or sent; the relay does.
//! Conduit rule: no message text and no clear recipient number reaches a log
//! line or an error response from here.

pub(crate) mod auth;
pub(crate) mod metrics;
pub(crate) mod problem;
pub mod routes;
pub(crate) mod server;
pub(crate) mod service;

use std::sync::Arc;

pub use auth::{new_key, AuthAudit, AuthFailure, Authenticator, KeyTable, NoAudit};
pub use metrics::{metrics_router, serve_metrics, serve_metrics_router, MetricsServeError};
pub use problem::{Problem, SendError};
pub use server::{serve_api, ConnLimits};
pub use service::{
    CarrierState, ClientId, Encoding, MessageService, MessageStatus, MessageView, NoRouteService,
    OptOutChange, OptOutService, OptOutView, Readiness, SendAccepted, SendRequest,
};

use crate::metrics::Metrics;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// Sends and looks up messages (the relay; [`NoRouteService`] until then).
    pub service: Arc<dyn MessageService>,
    /// Behind `/readyz`.
    pub readiness: Arc<dyn Readiness>,
    /// API keys and the failed-authentication limit.
    pub auth: Arc<Authenticator>,
    /// Where `api_requests` and `auth_failures` are counted.
    pub metrics: Arc<Metrics>,
    /// Opt-out administration (the relay; none until then).
    pub opt_outs: Arc<dyn OptOutService>,
    /// Consent administration (the relay); `None`: the routes answer 404.
    pub consents: Option<Arc<dyn routes::ConsentService>>,
}

impl ApiState {
    /// Bundles the parts; `service` is any [`MessageService`].
    pub fn new(
        service: impl MessageService,
        readiness: Arc<dyn Readiness>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ApiState {
            service: Arc::new(service),
            readiness,
            auth,
            metrics,
            opt_outs: Arc::new(NoRouteService),
            consents: None,
        }
    }

    /// The same state with consent administration served by `consents`.
    pub fn with_consents(mut self, consents: Arc<dyn routes::ConsentService>) -> Self {
        self.consents = Some(consents);
        self
    }

    /// The same state with opt-out administration served by `opt_outs`.
    pub fn with_opt_outs(mut self, opt_outs: Arc<dyn OptOutService>) -> Self {
        self.opt_outs = opt_outs;
        self
    }
}
