//! The appliance: builds every part from a validated [`Config`], runs it, and
//! takes it down in order.
//!
//! Owns: start-up order (store before listeners, listeners before `READY=1`),
//! SIGHUP reload (config, keys, certificates, CA files — every file is read
//! again; binds whose settings and CA bytes did not change are kept) and its
//! outcome in `<state_dir>/reload-status`, which `sms-conduit reload` waits
//! for ([`request_reload`]), and the drain on SIGTERM (stop accepting, finish in-flight work,
//! unbind, flush and close the store) within `node.drain_secs`.
//!
//! [`App::start`] is what the integration tests run in-process on
//! `127.0.0.1:0`; [`run`] adds the process concerns (hardening, signals,
//! systemd notify) for `sms-conduit run`.
//!
//! Code map: this file holds [`App`] (start, reload, stop); `parts.rs`
//! the pieces it is assembled from (readiness, fleet health, audit of key
//! use, retention, pool helpers); `process.rs` the process around it
//! ([`run`], the reload status file, [`request_reload`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState, AuthFailure, Authenticator, ClientId, ConnLimits};
use crate::audit::{Audit, AuditEvent};
use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::relay::inbound::{Inbound, InboundLinks};
use crate::relay::recent::SentIds;
use crate::relay::Relay;
use crate::service::{self, notify, Event, Shutdown, Signals};
use crate::smpp::{self, Pool, ServerHandle};
use crate::store::redis_shared::RedisShared;
use crate::store::shared::LocalShared;
use crate::store::{Store, StoreError};
use crate::tls::{ClientAuth, ServerTls, TlsError};
use crate::webhook::Webhooks;

mod parts;
mod process;
mod start;

use parts::*;
pub use process::{request_reload, run, ReloadStatus, RELOAD_STATUS_FILE, RELOAD_WAIT};
use start::*;

/// Why the appliance could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // Not `#[from]`: that would also make it the `source`, and `{:#}`
    // would print every error twice.
    #[error("invalid configuration:\n{0}")]
    Config(ConfigErrors),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Service(#[from] service::ServiceError),
    #[error("{0}")]
    Other(String),
}

impl From<ConfigErrors> for AppError {
    fn from(e: ConfigErrors) -> Self {
        AppError::Config(e)
    }
}

/// Addresses the listeners actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    /// `[smpp_server] listen` (TLS), when configured.
    pub smpp: Option<SocketAddr>,
    /// `[smpp_server] plaintext_listen` (loopback), when configured.
    pub smpp_plaintext: Option<SocketAddr>,
}

/// A running appliance.
pub struct App {
    pub bound: Bound,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    config: Config,
    shutdown: Shutdown,
    api_tls: Arc<ServerTls>,
    metrics_tls: Option<Arc<ServerTls>>,
    auth: Arc<Authenticator>,
    relay: Relay,
    /// The handler every carrier pool hands receipts and MO to.
    inbound_handler: Arc<dyn smpp::InboundHandler>,
    /// One per carrier pool, in config order (see `reload`).
    pool_tokens: Vec<CancellationToken>,
    /// SHA-256 of each pool's `ca_file` as it was read when the pool
    /// started, in config order: a reload compares the file's bytes, not
    /// only its path, so a CA rotated in place rebuilds the pool.
    pool_ca: Vec<Option<[u8; 32]>>,
    background: tokio_util::task::TaskTracker,
    /// Ends the relay's keyword-answer task (see [`App::stop`]).
    replies_stop: CancellationToken,
    inbound: Arc<Inbound>,
    webhooks: Webhooks,
    audit: Audit,
    smpp_tls: Option<Arc<ServerTls>>,
    smpp_server: Option<ServerHandle>,
    /// Fleet mode's shared state, to hand it reloaded campaigns.
    fleet: Option<Arc<RedisShared>>,
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { what, addr, source })
}

/// How long [`App::start`] waits for every carrier's first bind attempt.
const FIRST_BINDS_WAIT: Duration = Duration::from_secs(10);

impl App {
    /// Opens the store, binds every listener and starts every task, and
    /// returns once every carrier bind has been tried (at most
    /// [`FIRST_BINDS_WAIT`]).
    pub async fn start(config: Config) -> Result<App, AppError> {
        Self::start_with(config, None).await
    }

    /// [`App::start`] over a store whose commits a test can make fail
    /// ([`crate::store::FaultSwitch`]).
    #[doc(hidden)]
    pub async fn start_with_store_faults(
        config: Config,
        faults: crate::store::FaultSwitch,
    ) -> Result<App, AppError> {
        Self::start_with(config, Some(faults)).await
    }

    /// The appliance's assembly order, read top to bottom: store and
    /// audit → shared state → webhooks → inbound handler → carrier pools
    /// → relay → SMPP server → listeners; the phases are in `start.rs`.
    async fn start_with(
        config: Config,
        faults: Option<crate::store::FaultSwitch>,
    ) -> Result<App, AppError> {
        let errors = crate::preflight::check_tls_material(&config);
        if !errors.is_empty() {
            return Err(AppError::Config(ConfigErrors(errors)));
        }
        let metrics = Arc::new(Metrics::new());
        let shutdown = Shutdown::new();
        let (store, audit) = open_store(&config, faults, &metrics, &shutdown).await?;

        let fleet = start_fleet(&config, &metrics, &shutdown)?;
        // Carriers first: binds proceed while the listeners come up.
        let shared: Arc<dyn crate::store::shared::SharedState> = match &fleet {
            Some(r) => r.clone(),
            None => Arc::new(LocalShared::new(store.clone())),
        };
        // Audit writes and keyword answers spawned by the relay; the drain
        // waits for them before the store closes.
        let background = tokio_util::task::TaskTracker::new();
        let webhooks = Webhooks::start(
            &config.clients,
            store.clone(),
            metrics.clone(),
            shutdown.token(),
            shutdown.tracker().clone(),
        )
        .map_err(|e| AppError::Other(format!("webhooks: {e}")))?;
        let core = Core {
            config: &config,
            store: &store,
            shared: &shared,
            audit: &audit,
            metrics: &metrics,
            background: &background,
            shutdown: &shutdown,
        };
        let (handler, sent, reply_queue) = start_inbound(&core, &webhooks);
        let inbound: Arc<dyn smpp::InboundHandler> = handler.clone();
        let (pools, pool_tokens, pool_ca) = start_pools(&config, &metrics, &inbound);
        let relay = Relay::new(
            &config,
            pools.clone(),
            store.clone(),
            shared.clone(),
            audit.clone(),
            metrics.clone(),
            background.clone(),
            sent,
        );
        shutdown.spawn("limit-usage", limit_usage(relay.clone(), shutdown.token()));
        set_server_cert_expiry(&metrics, &config);
        // Keyword answers: until the carriers' sessions have ended (no MO
        // after that), on the background tracker the drain waits for.
        let replies_stop = CancellationToken::new();
        background.spawn(
            relay
                .clone()
                .answer_keywords(reply_queue, replies_stop.clone()),
        );
        if let Some(r) = &fleet {
            spawn_fleet_receipts(r, &handler, &shutdown);
        }

        let (smpp_tls, smpp_server) = start_smpp_server(&core, &inbound).await?;

        let api_tls =
            ServerTls::load(&config.tls, &[b"h2", b"http/1.1"], api_client_auth(&config))?;
        let auth = Arc::new(Authenticator::new(
            &config.clients,
            Arc::new(AuthToAudit(audit.clone())),
            metrics.clone(),
        ));
        let state = api_state(&core, &relay, fleet.clone(), auth.clone());
        let api_listener = listen("api.listen", config.api.listen).await?;
        let metrics_listener = listen("metrics.listen", config.metrics.listen).await?;
        let bound = Bound::of(&api_listener, &metrics_listener, smpp_server.as_ref())?;
        let metrics_tls = config
            .metrics
            .tls
            .then(|| ServerTls::load(&config.tls, &[b"http/1.1"], ClientAuth::None))
            .transpose()?;

        let limits = ConnLimits::from_api(&config.api);
        let (token, tracker) = (shutdown.token(), shutdown.tracker().clone());
        let tls = api_tls.clone();
        shutdown.spawn("api", async move {
            api::serve_api(api_listener, tls, state, limits, token, tracker).await
        });
        spawn_metrics(&core, metrics_listener, metrics_tls.clone());
        tracing::info!(api = %bound.api, metrics = %bound.metrics, node = %config.node.id, "listening");
        wait_first_binds(&pools).await;
        Ok(App {
            bound,
            metrics,
            store,
            config,
            shutdown,
            api_tls,
            metrics_tls,
            auth,
            relay,
            inbound_handler: inbound,
            pool_tokens,
            replies_stop,
            pool_ca,
            background,
            inbound: handler,
            webhooks,
            audit,
            smpp_tls,
            smpp_server,
            fleet,
        })
    }

    /// Carrier pools for `new`: a carrier whose settings did not change
    /// keeps its pool and its binds; a changed or new one gets a new pool;
    /// the pools of removed or changed carriers unbind.
    fn reload_pools(&mut self, new: &Config) -> Vec<Pool> {
        set_configured_sessions(&self.metrics, Some(&self.config), new);
        let old_pools = self.relay.pools();
        let mut kept = vec![false; self.config.carriers.len()];
        let mut pools = Vec::with_capacity(new.carriers.len());
        let mut tokens = Vec::with_capacity(new.carriers.len());
        let mut cas = Vec::with_capacity(new.carriers.len());
        for c in &new.carriers {
            // Same settings *and* the same bytes in its CA file: a CA
            // rotated at the same path must reach new sessions.
            let ca = ca_digest(c);
            let same = self.config.carriers.iter().enumerate().position(|(j, o)| {
                !kept[j] && o == c && j < old_pools.len() && self.pool_ca.get(j) == Some(&ca)
            });
            cas.push(ca);
            match same {
                Some(j) => {
                    kept[j] = true;
                    pools.push(old_pools[j].clone());
                    tokens.push(self.pool_tokens[j].clone());
                }
                None => {
                    tracing::info!(carrier = %c.name, "carrier settings or CA file changed, or carrier added: binding anew");
                    let t = CancellationToken::new();
                    pools.push(Pool::start(
                        c.clone(),
                        self.metrics.clone(),
                        self.inbound_handler.clone(),
                        t.clone(),
                    ));
                    tokens.push(t);
                }
            }
        }
        for (j, t) in self.pool_tokens.iter().enumerate() {
            if !kept[j] {
                t.cancel();
            }
        }
        self.pool_tokens = tokens;
        self.pool_ca = cas;
        pools
    }

    /// `key.created` for every API key hash a reload brings (keys are made
    /// offline by `sms-conduit keys new`; they come into force here).
    async fn audit_new_keys(&self, new: &Config) {
        for c in &new.clients {
            let old = self.config.clients.iter().find(|o| o.id == c.id);
            for k in &c.key_sha256 {
                if old.is_some_and(|o| o.key_sha256.contains(k)) {
                    continue;
                }
                let ev = AuditEvent::KeyCreated {
                    client: c.id.clone(),
                    key_sha256: *k,
                };
                if let Err(e) = self.audit.record(ev, crate::audit::SYSTEM).await {
                    tracing::error!("audit record of a new key: {e}");
                }
            }
        }
    }

    /// The relay (send path), e.g. for in-process tests.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies a new configuration: API keys and TLS certificates now;
    /// listener addresses and the state dir need a restart (reported, not
    /// applied).
    pub async fn reload(&mut self, new: Config) -> Result<(), AppError> {
        let errors = crate::preflight::check_tls_material(&new);
        if !errors.is_empty() {
            return Err(AppError::Config(ConfigErrors(errors)));
        }
        // Everything that can still fail is built before anything changes,
        // so a refused reload changes nothing: the webhook clients (URL,
        // CA, HTTP client) here, the listeners' TLS configs next.
        let hooks = self
            .webhooks
            .prepare(&new.clients)
            .map_err(|e| AppError::Other(format!("webhooks: {e}")))?;
        let api_sc = self.api_tls.prepare(&new.tls, api_client_auth(&new))?;
        let metrics_sc = match &self.metrics_tls {
            Some(t) => Some(t.prepare(&new.tls, ClientAuth::None)?),
            None => None,
        };
        let smpp_sc = match &self.smpp_tls {
            Some(t) => Some(t.prepare(&new.tls, ClientAuth::RequireIfConfigured)?),
            None => None,
        };
        self.api_tls
            .install(api_sc, &new.tls, api_client_auth(&new));
        if let (Some(t), Some(sc)) = (&self.metrics_tls, metrics_sc) {
            t.install(sc, &new.tls, ClientAuth::None);
        }
        if let (Some(t), Some(sc)) = (&self.smpp_tls, smpp_sc) {
            t.install(sc, &new.tls, ClientAuth::RequireIfConfigured);
        }
        set_server_cert_expiry(&self.metrics, &new);
        self.auth.reload(&new.clients);
        self.audit_new_keys(&new).await;
        let pools = self.reload_pools(&new);
        if let Some(server) = &self.smpp_server {
            server.set_peers(new.peers.clone());
        }
        self.relay.reload(&new, pools);
        if let Some(f) = &self.fleet {
            f.set_campaigns(&new);
        }
        self.inbound.reload(&new);
        self.webhooks.apply(hooks);
        if let Err(e) = self
            .audit
            .record(
                AuditEvent::ConfigReloaded {
                    sha256: new.file_sha256.clone(),
                },
                crate::audit::SYSTEM,
            )
            .await
        {
            tracing::error!("audit record of the reload: {e}");
        }
        let (old, mut on_restart) = (&self.config, Vec::new());
        let mut changed = |key: &'static str, differs: bool| {
            if differs {
                on_restart.push(key);
            }
        };
        changed("api.listen", new.api.listen != old.api.listen);
        changed("metrics.listen", new.metrics.listen != old.metrics.listen);
        changed("node.state_dir", new.node.state_dir != old.node.state_dir);
        changed("node.id", new.node.id != old.node.id);
        changed("node.drain_secs", new.node.drain != old.node.drain);
        changed(
            "node.receipt_window_secs",
            new.node.receipt_window != old.node.receipt_window,
        );
        changed(
            "node.receipt_deadline_secs",
            new.node.receipt_deadline != old.node.receipt_deadline,
        );
        changed(
            "node.lock_memory",
            new.node.lock_memory != old.node.lock_memory,
        );
        changed(
            "node.pseudonym_key_file",
            new.node.pseudonym_key.expose() != old.node.pseudonym_key.expose(),
        );
        let (a, b) = (&new.smpp_server, &old.smpp_server);
        changed(
            "smpp_server",
            a.listen != b.listen
                || a.plaintext_listen != b.plaintext_listen
                || a.idle_timeout != b.idle_timeout
                || a.window != b.window,
        );
        changed(
            "audit.retention_days",
            new.audit.retention_days != old.audit.retention_days,
        );
        changed(
            "store.metadata_retention_days",
            new.store.metadata_retention_days != old.store.metadata_retention_days,
        );
        if !on_restart.is_empty() {
            // Said, not silently ignored: these keep their running values.
            tracing::warn!(keys = ?on_restart, "these settings changed in the file but take effect only on restart");
        }
        tracing::info!(config_sha256 = %new.file_sha256, "configuration reloaded");
        self.config = new;
        Ok(())
    }

    /// Drains within `deadline` (one budget for all of it, so a stop fits
    /// the unit's `TimeoutStopSec`): stop accepting, let in-flight requests
    /// finish on still-bound carriers, then unbind the carriers (their
    /// windows answered first), then flush and close the store. Returns
    /// whether every task finished in time.
    pub async fn stop(self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        let clean = self.shutdown.drain(deadline).await;
        // Sends whose client went away run in their own tasks: they end
        // (answered, recorded) before their carriers are unbound.
        let sends_done = tokio::time::timeout_at(end, self.relay.sends_done())
            .await
            .is_ok();
        let clean = clean && sends_done;
        for t in &self.pool_tokens {
            t.cancel();
        }
        let sessions = async {
            for p in self.relay.pools() {
                p.wait().await;
            }
            if let Some(s) = &self.smpp_server {
                s.wait().await;
            }
        };
        let sessions_done = tokio::time::timeout_at(end, sessions).await.is_ok();
        // No MO after the sessions: the keyword answers queued so far are
        // spawned, then the task ends.
        self.replies_stop.cancel();
        // Audit records of the last refusals and of the binds going down.
        self.background.close();
        let background_done = tokio::time::timeout_at(end, self.background.wait())
            .await
            .is_ok();
        let clean = clean && sessions_done && background_done;
        log_head("audit log head at stop", &self.audit);
        if let Err(e) = self.store.close().await {
            tracing::error!("closing the store: {e}");
        }
        clean
    }
}

impl Drop for App {
    /// An app dropped without [`App::stop`] (a failed start, a test) still
    /// unbinds its carriers instead of leaving their pools reconnecting.
    fn drop(&mut self) {
        for t in &self.pool_tokens {
            t.cancel();
        }
        self.replies_stop.cancel();
    }
}
