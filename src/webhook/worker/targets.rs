//! Every client's webhook target, built before anything is installed.

use std::collections::HashMap;
use std::sync::Arc;

use super::http::Target;
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
