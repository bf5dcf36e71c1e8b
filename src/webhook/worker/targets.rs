//! Every client's webhook target, built before anything is installed, and
//! the reload of the workers' configuration: the targets come with the
//! app's live snapshot, then [`Webhooks::apply`] starts and stops workers.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Notify;

use super::http::Target;
use super::{run_worker, Shared, Slot, Webhooks};
use crate::config;
use crate::metrics::Metrics;
use crate::webhook::{Options, WebhookError};

/// Every client's webhook target, built by [`PreparedWebhooks::build`]: the
/// webhook dispatcher's part of the live configuration.
#[derive(Default)]
pub struct PreparedWebhooks {
    pub(super) built: HashMap<String, Arc<Target>>,
}

impl PreparedWebhooks {
    /// Builds every client's webhook target (URL, TLS, HTTP client) and
    /// changes nothing, so the app can refuse a whole reload before any
    /// part of it is applied.
    pub fn build(
        clients: &[config::Client],
        options: &Options,
        metrics: &Arc<Metrics>,
    ) -> Result<PreparedWebhooks, WebhookError> {
        let mut built = HashMap::new();
        for c in clients {
            if let Some(hook) = &c.webhook {
                let t = Target::build(&c.id, hook, options, metrics)?;
                built.insert(c.id.clone(), Arc::new(t));
            }
        }
        Ok(PreparedWebhooks { built })
    }
}

impl Shared {
    pub(super) fn target_of(&self, slot: &Slot) -> Arc<Target> {
        match self.targets.load().built.get(&slot.id) {
            Some(t) => t.clone(),
            None => slot.target(),
        }
    }
}

impl Webhooks {
    /// Applies a new client list: swaps URLs, secrets, CAs and concurrency,
    /// starts workers for new webhooks and stops those of removed ones (their
    /// events stay in the outbox). All or nothing: if any webhook cannot be
    /// set up, nothing changes.
    pub fn reload(&self, clients: &[config::Client]) -> Result<(), WebhookError> {
        let prepared = Arc::new(PreparedWebhooks::build(
            clients,
            &self.shared.options,
            &self.shared.metrics,
        )?);
        self.shared.targets.set(prepared.clone());
        self.apply(&prepared);
        Ok(())
    }

    /// The second half of [`Webhooks::reload`], after the targets changed
    /// (in the app: with the live snapshot): starts workers for new webhooks
    /// and stops those of removed ones; cannot fail.
    pub fn apply(&self, prepared: &PreparedWebhooks) {
        let built = prepared.built.clone();
        let mut slots = self.shared.slots.lock();
        slots.retain(|id, slot| {
            let keep = built.contains_key(id);
            if !keep {
                tracing::info!(client = %id, "webhook removed; its worker stops");
                slot.stop.cancel();
                let _ = self
                    .shared
                    .metrics
                    .tls_cert_expiry
                    .remove_label_values(&["webhook", id]);
            }
            keep
        });
        for (id, target) in built {
            if let Some(slot) = slots.get(&id) {
                slot.set_target(target);
                slot.notify.notify_one();
                continue;
            }
            let slot = Arc::new(Slot {
                id: id.clone(),
                health: Arc::default(),
                target: RwLock::new(target),
                notify: Notify::new(),
                stop: self.shared.shutdown.child_token(),
            });
            slots.insert(id, slot.clone());
            let shared = self.shared.clone();
            self.shared.tracker.spawn(run_worker(shared, slot));
        }
    }
}
