//! Checks that need more than the config text: certificates and keys parse,
//! CA files hold certificates, our own leaf is not a CA certificate (which
//! every webpki client refuses). Shared by `check-config` and `run`, so the
//! appliance refuses to start on exactly what `check-config` reports.

use crate::config::{Config, ConfigError};
use crate::tls::{self, ClientAuth};

/// Every problem with the TLS material a valid config names.
pub fn check_tls_material(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut push = |key: String, e: tls::TlsError| {
        errors.push(ConfigError {
            key,
            problem: e.to_string(),
        })
    };
    if let Err(e) = tls::server_config(&cfg.tls, &[], ClientAuth::RequireIfConfigured) {
        let key = match &e {
            tls::TlsError::NoKey { .. } => "tls.key_file",
            tls::TlsError::Invalid { path, .. } | tls::TlsError::Read { path, .. }
                if Some(path) == cfg.tls.client_ca_file.as_ref() =>
            {
                "tls.client_ca_file"
            }
            tls::TlsError::Invalid { path, .. } | tls::TlsError::Read { path, .. }
                if *path == cfg.tls.key_file =>
            {
                "tls.key_file"
            }
            _ => "tls.cert_file",
        };
        push(key.to_owned(), e);
    } else if let Err(e) = tls::check_leaf_not_ca(&cfg.tls.cert_file) {
        push("tls.cert_file".to_owned(), e);
    }
    for (i, c) in cfg.carriers.iter().enumerate() {
        if let Some(ca) = &c.ca_file {
            if let Err(e) = tls::client_config(Some(ca), &[]) {
                push(format!("carriers[{i}].ca_file"), e);
            }
        }
    }
    for (i, c) in cfg.clients.iter().enumerate() {
        if let Some(ca) = c.webhook.as_ref().and_then(|w| w.ca_file.as_ref()) {
            if let Err(e) = tls::client_config(Some(ca), &[]) {
                push(format!("clients[{i}].webhook_ca_file"), e);
            }
        }
    }
    errors
}
