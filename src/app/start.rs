//! The phases of [`App::start`](super::App::start) that are more than a
//! line or two: each builds or starts one part of the appliance.

use super::*;

/// What most start phases read, built before them.
pub(super) struct Core<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub shared: &'a Arc<dyn crate::store::shared::SharedState>,
    pub audit: &'a Audit,
    pub metrics: &'a Arc<Metrics>,
    /// Audit writes and keyword answers; the drain waits for them before
    /// the store closes.
    pub background: &'a tokio_util::task::TaskTracker,
    pub shutdown: &'a Shutdown,
}

/// The store (with a fault switch in tests) and the audit log, with the
/// audit's key-use flusher and retention running.
pub(super) async fn open_store(
    config: &Config,
    faults: Option<crate::store::FaultSwitch>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<(Store, Audit), AppError> {
    let store = match faults {
        None => Store::open(&config.node.state_dir, Some(metrics.clone()))?,
        Some(f) => Store::open_with_faults(&config.node.state_dir, Some(metrics.clone()), f)?,
    };
    store.set_commit_wait_max(config.store.commit_wait_max);
    let audit = Audit::open(store.clone(), &config.node.id, Some(metrics.clone())).await?;
    log_head("audit log head at start", &audit);
    shutdown.spawn(
        "audit-key-use",
        audit.clone().run_key_use_flusher(shutdown.token()),
    );
    shutdown.spawn(
        "retention",
        retention(config.clone(), audit.clone(), shutdown.token()),
    );
    Ok((store, audit))
}

/// What the API's handlers use: the relay (sends, look-ups, opt-outs,
/// consents), readiness and the authenticator.
pub(super) fn api_state(
    core: &Core<'_>,
    relay: &Relay,
    fleet: Option<Arc<RedisShared>>,
    auth: Arc<Authenticator>,
) -> ApiState {
    let ready = Ready {
        store: core.store.clone(),
        relay: relay.clone(),
        fleet,
    };
    ApiState::new(relay.clone(), Arc::new(ready), auth, core.metrics.clone())
        .with_opt_outs(Arc::new(relay.clone()))
        .with_consents(Arc::new(relay.clone()))
}

/// Fleet mode: limits, caps, opt-outs and the index in Redis, with its
/// health check.
pub(super) fn start_fleet(
    config: &Config,
    brands: crate::live::Part<crate::store::redis_shared::CampaignBrands>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<Option<Arc<RedisShared>>, AppError> {
    let Some(f) = &config.fleet else {
        return Ok(None);
    };
    let r = RedisShared::new(config, f, brands, metrics.clone())
        .map_err(|e| AppError::Other(format!("fleet: {e}")))?;
    let r = Arc::new(r);
    shutdown.spawn("fleet-health", fleet_health(r.clone(), shutdown.token()));
    Ok(Some(r))
}

/// The inbound handler with its settler (running), the send path's carrier
/// ids it shares with the relay, and the queue of its keyword answers: the
/// handler and the relay share the ids, and the answers reach the relay
/// through the queue, so both are built before either and nothing is set
/// after the fact.
pub(super) fn start_inbound(
    core: &Core<'_>,
    webhooks: &Webhooks,
    view: crate::live::Part<crate::relay::inbound::MoView>,
) -> (
    Arc<Inbound>,
    SentIds,
    mpsc::Receiver<crate::relay::service::KeywordReply>,
) {
    let config = core.config;
    let settler = Arc::new(crate::relay::settle::Settler::new(
        core.audit.clone(),
        Some(webhooks.clone()),
        core.shared.clone(),
        config.node.receipt_window,
        config.node.receipt_deadline,
    ));
    let sent = SentIds::default();
    let (replies, reply_queue) = mpsc::channel(crate::relay::service::KEYWORD_REPLY_QUEUE);
    let handler = Arc::new(Inbound::new(
        config,
        core.shared.clone(),
        core.audit.clone(),
        core.metrics.clone(),
        Some(webhooks.clone()),
        core.background.clone(),
        InboundLinks {
            settler: settler.clone(),
            sent: sent.clone(),
            replies,
            view,
        },
    ));
    let token = core.shutdown.token();
    core.shutdown
        .spawn("receipt-rules", async move { settler.run(token).await });
    (handler, sent, reply_queue)
}

/// One pool per carrier, in config order, with its token and the digest of
/// its CA file (see `App::reload_pools`). Each pool has its own token, so
/// a reload can unbind one carrier without touching the others. Not a
/// child of the shutdown token: a drain unbinds the carriers only after
/// the in-flight requests that need them have finished (`App::stop`).
#[allow(clippy::type_complexity)]
pub(super) fn start_pools(
    config: &Config,
    metrics: &Arc<Metrics>,
    inbound: &Arc<dyn smpp::InboundHandler>,
) -> (Vec<Pool>, Vec<CancellationToken>, Vec<Option<[u8; 32]>>) {
    let pool_tokens: Vec<CancellationToken> = config
        .carriers
        .iter()
        .map(|_| CancellationToken::new())
        .collect();
    set_configured_sessions(metrics, None, config);
    let pool_ca: Vec<Option<[u8; 32]>> = config.carriers.iter().map(ca_digest).collect();
    let pools: Vec<Pool> = config
        .carriers
        .iter()
        .zip(&pool_tokens)
        .map(|(c, t)| Pool::start(c.clone(), metrics.clone(), inbound.clone(), t.clone()))
        .collect();
    (pools, pool_tokens, pool_ca)
}

/// Fleet mode: receipts other nodes took for this node's messages.
pub(super) fn spawn_fleet_receipts(
    r: &Arc<RedisShared>,
    handler: &Arc<Inbound>,
    shutdown: &Shutdown,
) {
    let h = handler.clone();
    shutdown.spawn(
        "fleet-receipts",
        r.clone().consume_receipts(
            move |rec| {
                let h = h.clone();
                async move { h.apply_forwarded(rec).await }
            },
            shutdown.token(),
        ),
    );
}

/// `[smpp_server]`, if either listener is configured, with its TLS (for
/// `listen`) and its peers read from the live snapshot.
pub(super) async fn start_smpp_server(
    core: &Core<'_>,
    smpp_tls: Option<Arc<ServerTls>>,
    peers: crate::live::Part<Vec<crate::config::Peer>>,
    inbound: &Arc<dyn smpp::InboundHandler>,
) -> Result<Option<ServerHandle>, AppError> {
    let config = core.config;
    if config.smpp_server.listen.is_none() && config.smpp_server.plaintext_listen.is_none() {
        return Ok(None);
    }
    let server = smpp::start_server_in(
        &config.smpp_server,
        smpp_tls,
        peers,
        inbound.clone(),
        core.metrics.clone(),
        core.shutdown.token(),
    )
    .await
    .map_err(|e| AppError::Other(format!("smpp_server: {e}")))?;
    Ok(Some(server))
}

impl Bound {
    /// The addresses the listeners are bound to.
    pub(super) fn of(
        api: &TcpListener,
        metrics: &TcpListener,
        smpp: Option<&ServerHandle>,
    ) -> Result<Bound, AppError> {
        Ok(Bound {
            api: api
                .local_addr()
                .map_err(|e| AppError::Other(e.to_string()))?,
            metrics: metrics
                .local_addr()
                .map_err(|e| AppError::Other(e.to_string()))?,
            smpp: smpp.and_then(|s| s.local_addr()),
            smpp_plaintext: smpp.and_then(|s| s.plaintext_addr()),
        })
    }
}

/// The metrics listener: `/metrics`, and `GET /admin/backup` for
/// `sms-conduit backup`.
pub(super) fn spawn_metrics(core: &Core<'_>, listener: TcpListener, tls: Option<Arc<ServerTls>>) {
    let config = core.config;
    let (token, tracker) = (core.shutdown.token(), core.shutdown.tracker().clone());
    let router = api::metrics_router(core.metrics.clone()).merge(crate::backup::admin_router(
        core.store.clone(),
        crate::backup::admin_token(&config.node.pseudonym_key),
        config.node.state_dir.clone(),
    ));
    core.shutdown.spawn("metrics", async move {
        if let Err(e) = api::serve_metrics_router(listener, tls, router, token, tracker).await {
            tracing::error!("metrics listener stopped: {e}");
        }
    });
}

/// Every carrier bind tried once (bound or failed) before the caller may
/// say READY=1 (SPEC §2), bounded so an unreachable carrier whose connect
/// hangs cannot hold up the start.
pub(super) async fn wait_first_binds(pools: &[Pool]) {
    let attempts = futures::future::join_all(pools.iter().map(Pool::first_bind_attempts));
    if tokio::time::timeout(FIRST_BINDS_WAIT, attempts)
        .await
        .is_err()
    {
        tracing::warn!(
            wait_secs = FIRST_BINDS_WAIT.as_secs(),
            "not every carrier bind finished its first attempt in time; starting anyway"
        );
    }
}

/// Keyword answers: until the carriers' sessions have ended (no MO after
/// that), on the background tracker the drain waits for. Returns the
/// token that ends the task.
pub(super) fn spawn_keyword_answers(
    relay: &Relay,
    reply_queue: mpsc::Receiver<crate::relay::service::KeywordReply>,
    background: &tokio_util::task::TaskTracker,
) -> CancellationToken {
    let stop = CancellationToken::new();
    background.spawn(relay.clone().answer_keywords(reply_queue, stop.clone()));
    stop
}

/// The API listener, on the shutdown tracker.
pub(super) fn spawn_api(
    core: &Core<'_>,
    listener: TcpListener,
    tls: Arc<ServerTls>,
    state: ApiState,
) {
    let limits = ConnLimits::from_api(&core.config.api);
    let (token, tracker) = (core.shutdown.token(), core.shutdown.tracker().clone());
    core.shutdown.spawn("api", async move {
        api::serve_api(listener, tls, state, limits, token, tracker).await
    });
}
