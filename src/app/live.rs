//! The appliance's live configuration ([`Live`]: one snapshot every part
//! reads, swapped whole by a reload) and the settings that take effect
//! only on restart ([`Startup`]).

use super::*;
use crate::api::KeyTable;
use crate::config::Peer;
use crate::live::{Part, Snapshot};
use crate::relay::inbound::MoView;
use crate::relay::service::View;
use crate::store::redis_shared::{campaign_brands, CampaignBrands};
use crate::tls::ListenerTls;
use crate::webhook::{Options as WebhookOptions, PreparedWebhooks};

/// Everything a reload changes, built in full (every step that can fail
/// first) and then stored in one step ([`Snapshot::store`]): the API keys,
/// the relay's view (clients, campaigns, brands, routes over the carrier
/// pools, limits with the cells spent so far), the inbound handler's view
/// (numbers, campaigns, MO receivers), the fleet's campaign → brand map,
/// the webhook targets, the SMPP peers, and the listeners' TLS. A request
/// reads its component's part once (one atomic load) and uses that value
/// throughout.
pub(super) struct Live {
    pub keys: Arc<KeyTable>,
    pub relay: Arc<View>,
    pub mo: Arc<MoView>,
    pub brands: Arc<CampaignBrands>,
    pub hooks: Arc<PreparedWebhooks>,
    pub peers: Arc<Vec<Peer>>,
    pub api_tls: Arc<ListenerTls>,
    /// Present when the listener was started with TLS (fixed at start).
    pub metrics_tls: Option<Arc<ListenerTls>>,
    /// Present when `[smpp_server] listen` was set at start.
    pub smpp_tls: Option<Arc<ListenerTls>>,
}

/// The live configuration at start, before the carrier pools exist (the
/// relay's view has none yet: nothing sends before [`with_pools`]), and
/// each component's part of it.
pub(super) fn first_live(
    config: &Config,
    tls: TlsListeners,
    metrics: &Arc<Metrics>,
) -> Result<(Snapshot<Live>, Parts), AppError> {
    let prepared = Prepared::build(config, tls, &WebhookOptions::default(), metrics)?;
    let live = Snapshot::new(prepared.with_relay(View::of(config, Vec::new(), None)));
    let parts = Parts::of(&live);
    Ok((live, parts))
}

/// The relay's view over the carrier pools, once they exist.
pub(super) fn with_pools(live: &Snapshot<Live>, config: &Config, pools: &[Pool]) {
    let first = live.load_full();
    let view = View::of(config, pools.to_vec(), Some(&first.relay));
    live.store(first.with_relay_view(view));
}

impl Live {
    /// This configuration with another relay view (the start: once the
    /// carrier pools exist).
    pub(super) fn with_relay_view(&self, relay: View) -> Live {
        Live {
            keys: self.keys.clone(),
            relay: Arc::new(relay),
            mo: self.mo.clone(),
            brands: self.brands.clone(),
            hooks: self.hooks.clone(),
            peers: self.peers.clone(),
            api_tls: self.api_tls.clone(),
            metrics_tls: self.metrics_tls.clone(),
            smpp_tls: self.smpp_tls.clone(),
        }
    }
}

/// The ALPN protocols of each TLS listener.
pub(super) const API_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
pub(super) const METRICS_ALPN: &[&[u8]] = &[b"http/1.1"];
pub(super) const SMPP_ALPN: &[&[u8]] = &[];

/// Which listeners have TLS (fixed at start).
#[derive(Clone, Copy)]
pub(super) struct TlsListeners {
    pub metrics: bool,
    pub smpp: bool,
}

impl TlsListeners {
    pub(super) fn of(config: &Config) -> Self {
        TlsListeners {
            metrics: config.metrics.tls,
            smpp: config.smpp_server.listen.is_some(),
        }
    }
}

/// The fallible half of a [`Live`]: what is built from the config alone.
/// Nothing is installed until the whole [`Live`] is stored.
pub(super) struct Prepared {
    keys: Arc<KeyTable>,
    mo: Arc<MoView>,
    brands: Arc<CampaignBrands>,
    hooks: Arc<PreparedWebhooks>,
    peers: Arc<Vec<Peer>>,
    api_tls: Arc<ListenerTls>,
    metrics_tls: Option<Arc<ListenerTls>>,
    smpp_tls: Option<Arc<ListenerTls>>,
}

impl Prepared {
    /// Builds every part that can fail: the webhook targets (URL, CA, HTTP
    /// client) and the listeners' TLS; then the tables.
    pub(super) fn build(
        config: &Config,
        tls: TlsListeners,
        webhook_options: &WebhookOptions,
        metrics: &Arc<Metrics>,
    ) -> Result<Prepared, AppError> {
        let hooks = PreparedWebhooks::build(&config.clients, webhook_options, metrics)
            .map_err(|e| AppError::Other(format!("webhooks: {e}")))?;
        let api_tls = ListenerTls::build(&config.tls, API_ALPN, api_client_auth(config))?;
        let metrics_tls = tls
            .metrics
            .then(|| ListenerTls::build(&config.tls, METRICS_ALPN, ClientAuth::None))
            .transpose()?;
        let smpp_tls = tls
            .smpp
            .then(|| ListenerTls::build(&config.tls, SMPP_ALPN, ClientAuth::RequireIfConfigured))
            .transpose()?;
        Ok(Prepared {
            keys: Arc::new(KeyTable::from_clients(&config.clients)),
            mo: Arc::new(MoView::new(config)),
            brands: Arc::new(campaign_brands(config)),
            hooks: Arc::new(hooks),
            peers: Arc::new(config.peers.clone()),
            api_tls: Arc::new(api_tls),
            metrics_tls: metrics_tls.map(Arc::new),
            smpp_tls: smpp_tls.map(Arc::new),
        })
    }

    /// The whole live configuration, with the relay's view.
    pub(super) fn with_relay(self, relay: View) -> Live {
        Live {
            keys: self.keys,
            relay: Arc::new(relay),
            mo: self.mo,
            brands: self.brands,
            hooks: self.hooks,
            peers: self.peers,
            api_tls: self.api_tls,
            metrics_tls: self.metrics_tls,
            smpp_tls: self.smpp_tls,
        }
    }
}

/// Each component's part of the live snapshot.
pub(super) struct Parts {
    pub keys: Part<KeyTable>,
    pub relay: Part<View>,
    pub mo: Part<MoView>,
    pub brands: Part<CampaignBrands>,
    pub hooks: Part<PreparedWebhooks>,
    pub peers: Part<Vec<Peer>>,
    pub api_tls: Part<ListenerTls>,
    pub metrics_tls: Part<ListenerTls>,
    pub smpp_tls: Part<ListenerTls>,
}

impl Parts {
    pub(super) fn of(live: &Snapshot<Live>) -> Parts {
        Parts {
            keys: live.part(|l| &l.keys),
            relay: live.part(|l| &l.relay),
            mo: live.part(|l| &l.mo),
            brands: live.part(|l| &l.brands),
            hooks: live.part(|l| &l.hooks),
            peers: live.part(|l| &l.peers),
            api_tls: live.part(|l| &l.api_tls),
            // Read only by a listener started with TLS, whose part is
            // always present (whether it has TLS is fixed at start).
            metrics_tls: live.part(|l| l.metrics_tls.as_ref().unwrap_or(&l.api_tls)),
            smpp_tls: live.part(|l| l.smpp_tls.as_ref().unwrap_or(&l.api_tls)),
        }
    }
}

/// Declares [`Startup`]: each field with the config key an operator sees
/// in the "take effect only on restart" warning.
macro_rules! startup_settings {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $key:literal,)*) => {
        /// The settings read once at start: a reload that changes them
        /// reports their keys ([`Startup::differing`]) and keeps the
        /// running values.
        #[derive(Debug, Clone, PartialEq)]
        pub(super) struct Startup {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Startup {
            /// The config keys whose values differ between `self` and
            /// `other`, in declaration order.
            pub(super) fn differing(&self, other: &Startup) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(if self.$field != other.$field {
                    keys.push($key);
                })*
                keys
            }
        }
    };
}

startup_settings! {
    api_listen: SocketAddr = "api.listen",
    metrics_listen: SocketAddr = "metrics.listen",
    state_dir: std::path::PathBuf = "node.state_dir",
    node_id: String = "node.id",
    drain: Duration = "node.drain_secs",
    receipt_window: Duration = "node.receipt_window_secs",
    receipt_deadline: Duration = "node.receipt_deadline_secs",
    lock_memory: bool = "node.lock_memory",
    worker_threads: usize = "node.worker_threads",
    /// The key's SHA-256, not the key: compared, never shown.
    pseudonym_key: [u8; 32] = "node.pseudonym_key_file",
    /// `listen`, `plaintext_listen`, `idle_timeout`, `window`.
    smpp_server: (Option<SocketAddr>, Option<SocketAddr>, Duration, u32) = "smpp_server",
    audit_retention_days: u32 = "audit.retention_days",
    metadata_retention_days: u32 = "store.metadata_retention_days",
}

impl Startup {
    pub(super) fn of(c: &Config) -> Startup {
        use sha2::Digest;
        let s = &c.smpp_server;
        Startup {
            api_listen: c.api.listen,
            metrics_listen: c.metrics.listen,
            state_dir: c.node.state_dir.clone(),
            node_id: c.node.id.clone(),
            drain: c.node.drain,
            receipt_window: c.node.receipt_window,
            receipt_deadline: c.node.receipt_deadline,
            lock_memory: c.node.lock_memory,
            worker_threads: c.node.worker_threads,
            pseudonym_key: sha2::Sha256::digest(c.node.pseudonym_key.expose()).into(),
            smpp_server: (s.listen, s.plaintext_listen, s.idle_timeout, s.window),
            audit_retention_days: c.audit.retention_days,
            metadata_retention_days: c.store.metadata_retention_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_names_each_changed_key_in_order() {
        let a = Startup {
            api_listen: "127.0.0.1:1".parse().unwrap(),
            metrics_listen: "127.0.0.1:2".parse().unwrap(),
            state_dir: "/a".into(),
            node_id: "n".into(),
            drain: Duration::from_secs(1),
            receipt_window: Duration::from_secs(1),
            receipt_deadline: Duration::from_secs(1),
            lock_memory: false,
            worker_threads: 1,
            pseudonym_key: [0; 32],
            smpp_server: (None, None, Duration::from_secs(1), 1),
            audit_retention_days: 1,
            metadata_retention_days: 1,
        };
        assert!(a.differing(&a.clone()).is_empty());
        let mut b = a.clone();
        b.node_id = "m".into();
        b.pseudonym_key = [1; 32];
        b.smpp_server.3 = 2;
        assert_eq!(
            a.differing(&b),
            ["node.id", "node.pseudonym_key_file", "smpp_server"]
        );
    }
}
