//! Parts the appliance is assembled from: readiness (`/readyz`), the
//! fleet health check, API key use and failures to the audit log,
//! retention, and the carrier-pool helpers reload compares.

use super::*;

/// Sets `smpp_configured_sessions` from `new`'s carriers, removing the
/// series (and the certificate-expiry series) of carriers `old` had and
/// `new` has not.
pub(super) fn set_configured_sessions(metrics: &Metrics, old: Option<&Config>, new: &Config) {
    let g = &metrics.smpp_configured_sessions;
    for c in old.map_or(&[][..], |o| &o.carriers[..]) {
        if !new.carriers.iter().any(|n| n.name == c.name) {
            let _ = g.remove_label_values(&[&c.name]);
            let _ = metrics
                .tls_cert_expiry
                .remove_label_values(&["carrier", &c.name]);
        }
    }
    for c in &new.carriers {
        g.with_label_values(&[&c.name]).set(i64::from(c.binds));
    }
}

/// SHA-256 of a carrier's `ca_file` bytes; `None` without one (or when it
/// cannot be read: the reload's preflight has refused that already).
pub(super) fn ca_digest(c: &crate::config::Carrier) -> Option<[u8; 32]> {
    use sha2::Digest;
    let bytes = std::fs::read(c.ca_file.as_ref()?).ok()?;
    Some(sha2::Sha256::digest(bytes).into())
}

/// `/readyz`: this node can send now: its store commits and some carrier
/// has a bound session that can submit. One carrier's outage is not a
/// reason to be drained by a load balancer (every node would be); it shows
/// in the body and in the metrics.
pub(super) struct Ready {
    pub(super) store: Store,
    pub(super) relay: Relay,
    /// Fleet mode: not ready once Redis has failed for [`FLEET_READY_GRACE`].
    pub(super) fleet: Option<Arc<RedisShared>>,
}

/// How long Redis may fail before `/readyz` drains the node: long enough to
/// ride out a reconnect or a Sentinel failover's first seconds, short
/// enough that a load balancer moves traffic to nodes that can send.
pub(super) const FLEET_READY_GRACE: Duration = Duration::from_secs(3);

/// How often the fleet health task pings Redis, so `/readyz` knows even
/// while no send calls it.
pub(super) const FLEET_PING_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn fleet_health(r: Arc<RedisShared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLEET_PING_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = r.ping().await {
            tracing::warn!("fleet shared state: {e}");
        }
    }
}

impl api::Readiness for Ready {
    fn ready(&self) -> Result<(), String> {
        if !self.store.is_healthy() {
            return Err("the store cannot commit".into());
        }
        if let Some(d) = self.fleet.as_ref().and_then(|f| f.down_for()) {
            if d > FLEET_READY_GRACE {
                return Err(format!(
                    "the fleet's shared state (Redis) has not answered for {} s",
                    d.as_secs()
                ));
            }
        }
        self.store
            .read(|_| Ok(()))
            .map_err(|_| "store is not open".to_string())?;
        let pools = self.relay.pools();
        if pools.is_empty() || pools.iter().any(|p| p.bound_transmitters() > 0) {
            Ok(())
        } else {
            Err("no carrier has a bound session".into())
        }
    }

    fn carriers(&self) -> Vec<api::CarrierState> {
        self.relay
            .pools()
            .iter()
            .map(|p| api::CarrierState {
                name: p.name().to_owned(),
                bound_sessions: p.bound_sessions(),
            })
            .collect()
    }
}

/// Logs the audit chain head, so an operator can notice a rewritten history.
pub(super) fn log_head(what: &str, audit: &Audit) {
    match audit.head() {
        Ok(Some(h)) => tracing::info!(seq = h.seq, hash = %h.hash, "{what}"),
        Ok(None) => tracing::info!("{what}: empty"),
        Err(e) => tracing::error!("{what}: unreadable: {e}"),
    }
}

/// API key use and failures go to the audit log: use is aggregated per
/// client per minute by the audit module; failures arrive here at most at
/// the authenticator's per-address failure rate, plus once per lock-out
/// (requests during a lock-out are only counted).
/// The API asks for a client certificate only when a client pins one.
pub(super) fn api_client_auth(config: &Config) -> ClientAuth {
    if api::auth::any_client_cert(&config.clients) {
        ClientAuth::Optional
    } else {
        ClientAuth::None
    }
}

/// The authenticator's audit records, written off the request on the
/// background tracker the drain waits for.
pub(super) struct AuthToAudit(pub(super) Audit, pub(super) tokio_util::task::TaskTracker);

impl api::AuthAudit for AuthToAudit {
    fn key_used(&self, client: &ClientId, _key_index: usize, _peer: std::net::IpAddr) {
        self.0.key_used(client.as_str());
    }

    fn auth_failed(&self, peer: std::net::IpAddr, why: AuthFailure) {
        let audit = self.0.clone();
        self.1.spawn(async move {
            let ev = AuditEvent::AuthFailed {
                source: peer,
                reason: why.as_str(),
            };
            if let Err(e) = audit.record(ev, crate::audit::SYSTEM).await {
                tracing::error!("audit record of an authentication failure: {e}");
            }
        });
    }
}

/// Refreshes the rate-limit and daily-cap gauges (at once, then every
/// [`crate::metrics::CAP_USAGE_EVERY`]) until `stop`.
pub(super) async fn limit_usage(relay: Relay, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::metrics::CAP_USAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => relay.publish_limit_usage().await,
        }
    }
}

/// `sms_conduit_tls_cert_expiry_timestamp_seconds{role="server",name="tls"}`
/// from `[tls] cert_file` (the chain every TLS listener serves). A file
/// that cannot be read leaves the gauge as it was: start and reload have
/// refused such a file already.
pub(super) fn set_server_cert_expiry(metrics: &Metrics, config: &Config) {
    let Ok(certs) = crate::tls::load_certs(&config.tls.cert_file) else {
        return;
    };
    if let Some(t) = crate::tls::earliest_not_after(certs.iter().map(|c| c.as_ref())) {
        metrics
            .tls_cert_expiry
            .with_label_values(&["server", "tls"])
            .set(t);
    }
}

/// Prunes message metadata and audit records past their retention, and
/// the local daily counters of past days, hourly.
pub(super) async fn retention(
    config: Config,
    audit: Audit,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now();
        let cutoff = now - chrono::TimeDelta::days(i64::from(config.store.metadata_retention_days));
        let cutoff_ms = cutoff.timestamp_millis().max(0) as u64;
        loop {
            match audit
                .store()
                .write(move |t| crate::relay::record::prune_before(t, cutoff_ms, 10_000))
                .await
            {
                Ok(10_000) => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(pruned = n, "message metadata past retention pruned");
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!("pruning message metadata: {e}");
                    break;
                }
            }
        }
        if let Err(e) = audit.prune(config.audit.retention_days, now).await {
            tracing::error!("pruning the audit log: {e}");
        }
        // The local daily counters of days no zone is still in (every local
        // date is within a day of the UTC date): nothing reads them again.
        let done = (now - chrono::TimeDelta::days(2))
            .format("%Y-%m-%d")
            .to_string();
        let local = crate::store::LocalShared::new(audit.store().clone());
        if let Err(e) = local.prune_daily_before(&done).await {
            tracing::error!("pruning past daily counters: {e}");
        }
    }
}
