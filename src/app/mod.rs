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
//! Code map: this file holds [`App`] (start, reload, stop); `live.rs` the
//! live configuration a reload swaps in one step (`Live`) and the settings
//! that need a restart (`Startup`); `start.rs` the start phases;
//! `drain.rs` the drain's phases; `parts.rs` the pieces it is assembled
//! from (readiness, fleet health, audit of key use, retention, pool
//! helpers); `process.rs` the process around it ([`run`], the reload
//! status file, [`request_reload`]).

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
use crate::live::Snapshot;
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
use crate::webhook::{Options as WebhookOptions, Webhooks};

mod drain;
mod live;
mod parts;
mod process;
mod start;

use live::*;
use parts::*;
pub use process::{request_reload, run_blocking, ReloadStatus, RELOAD_STATUS_FILE, RELOAD_WAIT};
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
    /// The startup-only settings of the last loaded file: a reload warns
    /// about each one it changes (once).
    startup: Startup,
    /// The live configuration, swapped whole by [`App::reload`].
    live: Snapshot<Live>,
    /// Which listeners have TLS (fixed at start).
    tls: TlsListeners,
    shutdown: Shutdown,
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
    /// The drain's background phase: audit writes, keyword answers and
    /// opt-out changes spawned off their requests.
    background: tokio_util::task::TaskTracker,
    /// Ends the relay's keyword-answer task (see [`App::stop`]).
    replies_stop: CancellationToken,
    webhooks: Webhooks,
    audit: Audit,
    smpp_server: Option<ServerHandle>,
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
    /// audit → the live configuration → shared state → webhooks → inbound
    /// handler → carrier pools → relay → SMPP server → listeners; the
    /// phases are in `start.rs`.
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

        // Every part of the live configuration that can fail, before any
        // task starts. The relay's view gets its pools once they exist.
        let tls = TlsListeners::of(&config);
        let (live, parts) = first_live(&config, tls, &metrics)?;

        let fleet = start_fleet(&config, parts.brands, &metrics, &shutdown)?;
        // Audit writes, keyword answers and opt-out changes spawned off
        // their requests; the drain waits for them before the store closes.
        let background = tokio_util::task::TaskTracker::new();

        // Carriers first: binds proceed while the listeners come up.
        let shared: Arc<dyn crate::store::shared::SharedState> = match &fleet {
            Some(r) => r.clone(),
            None => Arc::new(LocalShared::with_tasks(store.clone(), background.clone())),
        };
        let webhooks = Webhooks::start_in(
            parts.hooks,
            store.clone(),
            metrics.clone(),
            shutdown.token(),
            shutdown.tracker().clone(),
            WebhookOptions::default(),
        );
        let core = Core {
            config: &config,
            store: &store,
            shared: &shared,
            audit: &audit,
            metrics: &metrics,
            background: &background,
            shutdown: &shutdown,
        };
        let (handler, sent, reply_queue) = start_inbound(&core, &webhooks, parts.mo);
        let inbound: Arc<dyn smpp::InboundHandler> = handler.clone();
        let (pools, pool_tokens, pool_ca) = start_pools(&config, &metrics, &inbound);
        with_pools(&live, &config, &pools);
        let relay = Relay::new(
            &config,
            parts.relay,
            store.clone(),
            shared.clone(),
            audit.clone(),
            metrics.clone(),
            background.clone(),
            sent,
        );
        shutdown.spawn("limit-usage", limit_usage(relay.clone(), shutdown.token()));
        set_server_cert_expiry(&metrics, &config);
        let replies_stop = spawn_keyword_answers(&relay, reply_queue, &background);
        if let Some(r) = &fleet {
            spawn_fleet_receipts(r, &handler, &shutdown);
        }

        let smpp_tls = tls
            .smpp
            .then(|| ServerTls::reading(SMPP_ALPN, parts.smpp_tls));
        let smpp_server = start_smpp_server(&core, smpp_tls, parts.peers, &inbound).await?;

        let api_tls = ServerTls::reading(API_ALPN, parts.api_tls);
        let auth = Arc::new(Authenticator::reading(
            parts.keys,
            Arc::new(AuthToAudit(audit.clone(), background.clone())),
            metrics.clone(),
        ));
        let state = api_state(&core, &relay, fleet.clone(), auth.clone());
        let api_listener = listen("api.listen", config.api.listen).await?;
        let metrics_listener = listen("metrics.listen", config.metrics.listen).await?;
        let bound = Bound::of(&api_listener, &metrics_listener, smpp_server.as_ref())?;
        let metrics_tls = tls
            .metrics
            .then(|| ServerTls::reading(METRICS_ALPN, parts.metrics_tls));

        spawn_api(&core, api_listener, api_tls, state);
        spawn_metrics(&core, metrics_listener, metrics_tls);
        tracing::info!(api = %bound.api, metrics = %bound.metrics, node = %config.node.id, "listening");
        wait_first_binds(&pools).await;
        Ok(App {
            bound,
            metrics,
            store,
            startup: Startup::of(&config),
            config,
            live,
            tls,
            shutdown,
            auth,
            relay,
            inbound_handler: inbound,
            pool_tokens,
            replies_stop,
            pool_ca,
            background,
            webhooks,
            audit,
            smpp_server,
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

    /// Applies a new configuration: API keys, certificates, carriers,
    /// peers, campaigns, limits, webhooks — everything but the startup
    /// settings ([`Startup`]: listener addresses, the state dir, …, which
    /// need a restart and are reported, not applied). The whole live
    /// configuration is built first, every step that can fail before
    /// anything changes, then swapped in one step; a refused reload
    /// changes nothing.
    pub async fn reload(&mut self, new: Config) -> Result<(), AppError> {
        let errors = crate::preflight::check_tls_material(&new);
        if !errors.is_empty() {
            return Err(AppError::Config(ConfigErrors(errors)));
        }
        let prepared = Prepared::build(&new, self.tls, &WebhookOptions::default(), &self.metrics)?;
        // Nothing below can fail. Pools of changed carriers start binding
        // (and those of removed ones unbind) before the swap, as the
        // relay's new view holds them.
        let pools = self.reload_pools(&new);
        let old = self.live.load_full();
        self.live
            .store(prepared.with_relay(self.relay.next_view(&new, pools)));
        let now = self.live.load_full();
        // What follows the new configuration: the sessions of changed
        // peers, the webhook workers, gauges, audit records.
        if let Some(server) = &self.smpp_server {
            server.unbind_changed(&old.peers, &now.peers);
        }
        self.webhooks.apply(&now.hooks);
        drop((old, now));
        self.store.set_commit_wait_max(new.store.commit_wait_max);
        set_server_cert_expiry(&self.metrics, &new);
        self.auth.publish_expiry();
        self.audit_new_keys(&new).await;
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
        let startup = Startup::of(&new);
        let on_restart = startup.differing(&self.startup);
        if !on_restart.is_empty() {
            // Said, not silently ignored: these keep their running values.
            tracing::warn!(keys = ?on_restart, "these settings changed in the file but take effect only on restart");
        }
        tracing::info!(config_sha256 = %new.file_sha256, "configuration reloaded");
        self.startup = startup;
        self.config = new;
        Ok(())
    }

    /// Drains within `deadline` (one budget for all of it, so a stop fits
    /// the unit's `TimeoutStopSec`), walking the shutdown tree's phases in
    /// order ([`drain::Phase`]): stop accepting and end the listeners'
    /// work, let in-flight sends finish on still-bound carriers, then
    /// unbind the carriers (their windows answered first), then wait for
    /// the background writes, then flush and close the store. Returns
    /// whether every phase finished in time.
    pub async fn stop(self, deadline: Duration) -> bool {
        drain::Drain::new(deadline).run(&self).await
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
