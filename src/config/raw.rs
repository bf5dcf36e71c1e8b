//! The configuration file as written (SPEC §3): serde structs, one per TOML
//! table. Nothing here is checked beyond TOML types; `validate` turns these into
//! the typed [`super::Config`]. Field names are the contract; defaults match
//! `config/sms-conduit.example.toml`.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub node: RawNode,
    pub tls: Option<RawTls>,
    pub api: Option<RawApi>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub smpp_server: RawSmppServer,
    #[serde(default)]
    pub carriers: Vec<RawCarrier>,
    #[serde(default)]
    pub peers: Vec<RawPeer>,
    #[serde(default)]
    pub brands: Vec<RawBrand>,
    #[serde(default)]
    pub campaigns: Vec<RawCampaign>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub store: RawStore,
    /// Fleet mode (SPEC §8): absent on a single appliance.
    pub fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
pub struct RawNode {
    pub id: String,
    pub state_dir: String,
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    #[serde(default)]
    pub lock_memory: bool,
    pub pseudonym_key_file: String,
    #[serde(default = "default_receipt_window")]
    pub receipt_window_secs: u64,
    #[serde(default = "default_receipt_deadline")]
    pub receipt_deadline_secs: u64,
    #[serde(default = "default_worker_threads")]
    pub worker_threads: u64,
}

fn default_worker_threads() -> u64 {
    1
}

fn default_receipt_window() -> u64 {
    600
}
/// 72 h, the longest validity carriers keep, plus an hour.
fn default_receipt_deadline() -> u64 {
    73 * 3600
}

fn default_drain_secs() -> u64 {
    20
}

#[derive(Debug, Deserialize)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawApi {
    pub listen: String,
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Default: the longest carrier `response_timeout_secs` + 2.
    pub send_deadline_secs: Option<u64>,
}

fn default_header_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_handshake_timeout() -> u64 {
    3
}
fn default_max_connections_per_address() -> usize {
    512
}
fn default_max_connections() -> usize {
    4096
}

#[derive(Debug, Deserialize)]
pub struct RawMetrics {
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

#[derive(Debug, Deserialize)]
pub struct RawSmppServer {
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub plaintext_listen: String,
    #[serde(default = "default_smpp_idle")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default = "default_smpp_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_unbound_per_address")]
    pub max_unbound_per_address: usize,
    #[serde(default = "default_bind_timeout")]
    pub bind_timeout_secs: u64,
    #[serde(default = "default_enquire_link")]
    pub enquire_link_secs: u64,
}

impl Default for RawSmppServer {
    fn default() -> Self {
        RawSmppServer {
            listen: String::new(),
            plaintext_listen: String::new(),
            idle_timeout_secs: default_smpp_idle(),
            window: default_window(),
            max_connections: default_smpp_max_connections(),
            max_unbound_per_address: default_max_unbound_per_address(),
            bind_timeout_secs: default_bind_timeout(),
            enquire_link_secs: default_enquire_link(),
        }
    }
}

/// Far more than any carrier's binds, far below the unit's `LimitNOFILE`.
fn default_smpp_max_connections() -> usize {
    1024
}
/// A carrier opens its binds one or a few at a time; a host with more
/// connections waiting to bind than this is not binding.
fn default_max_unbound_per_address() -> usize {
    8
}
/// TLS handshake and bind PDU together; carriers bind in well under a second.
fn default_bind_timeout() -> u64 {
    10
}

fn default_smpp_idle() -> u64 {
    90
}
fn default_window() -> u32 {
    64
}

#[derive(Debug, Deserialize)]
pub struct RawCarrier {
    pub name: String,
    pub host: String,
    pub port: u16,
    #[serde(default = "default_true")]
    pub tls: bool,
    pub system_id: String,
    pub password_file: String,
    #[serde(default)]
    pub system_type: String,
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
    #[serde(default = "default_bind")]
    pub bind: String,
    #[serde(default = "default_one_u32")]
    pub binds: u32,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default)]
    pub max_tps: u32,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default = "default_one_u32")]
    pub priority: u32,
    #[serde(default = "default_enquire_link")]
    pub enquire_link_secs: u64,
    #[serde(default = "default_response_timeout")]
    pub response_timeout_secs: u64,
    /// SHA-256 of the carrier's certificate (DER), hex, colons allowed.
    pub cert_sha256: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_bind() -> String {
    "transceiver".into()
}
fn default_one_u32() -> u32 {
    1
}
fn default_enquire_link() -> u64 {
    30
}
fn default_response_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
pub struct RawPeer {
    pub name: String,
    pub system_id: String,
    pub password_sha256: String,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_one_u32")]
    pub max_binds: u32,
    /// The `carriers[].name` whose receipts this peer delivers.
    pub carrier: Option<String>,
    /// SHA-256 of the client certificate (DER) the peer must present.
    pub cert_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawBrand {
    pub id: String,
    #[serde(default)]
    pub daily_cap: u64,
    #[serde(default = "default_tz")]
    pub daily_reset_tz: String,
}

fn default_tz() -> String {
    "America/Los_Angeles".into()
}

#[derive(Debug, Deserialize)]
pub struct RawCampaign {
    pub id: String,
    pub brand: String,
    #[serde(default)]
    pub numbers: Vec<String>,
    pub segments_per_minute: u32,
    pub burst: Option<u32>,
    #[serde(default)]
    pub number_segments_per_minute: u32,
    pub help_text: Option<String>,
    pub stop_text: Option<String>,
    pub start_text: Option<String>,
    /// Sends need a recorded consent (opt-in) of the recipient.
    #[serde(default)]
    pub require_opt_in: bool,
    /// MO keywords that record a consent (e.g. `["YES", "JOIN"]`).
    #[serde(default)]
    pub opt_in_keywords: Vec<String>,
    /// The answer to an opt-in keyword.
    pub opt_in_text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawClient {
    pub id: String,
    #[serde(default)]
    pub key_sha256: Vec<RawKey>,
    /// SHA-256 fingerprints of the client's TLS certificates (DER), hex,
    /// colons allowed: when set, a key of this client is accepted only on a
    /// connection that presented one of them.
    #[serde(default)]
    pub client_cert_sha256: Vec<String>,
    #[serde(default)]
    pub campaigns: Vec<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret_file: Option<String>,
    /// During a secret rotation: the next secret; both sign every webhook
    /// (two `v1=` entries in `Conduit-Signature`).
    pub webhook_secret_next_file: Option<String>,
    pub webhook_ca_file: Option<String>,
    #[serde(default = "default_webhook_concurrency")]
    pub webhook_concurrency: u32,
}

/// One entry of `[[clients]].key_sha256`: the bare hex digest (a key that
/// never expires, the original form), or a table
/// `{ sha256 = "…", not_after = "2027-06-30T00:00:00Z" }`. The table's keys
/// are checked in `validate` (so an unknown one is named, not swallowed).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a SHA-256 hex string, or a table { sha256 = \"<hex>\", not_after = \"<RFC 3339 time>\" }"
)]
pub enum RawKey {
    Hash(String),
    Table(std::collections::BTreeMap<String, toml::Value>),
}

fn default_webhook_concurrency() -> u32 {
    8
}

#[derive(Debug, Deserialize)]
pub struct RawAudit {
    #[serde(default = "default_audit_retention")]
    pub retention_days: u32,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            retention_days: default_audit_retention(),
        }
    }
}

fn default_audit_retention() -> u32 {
    2190
}

#[derive(Debug, Deserialize)]
pub struct RawStore {
    #[serde(default = "default_metadata_retention")]
    pub metadata_retention_days: u32,
    #[serde(default = "default_commit_wait_max")]
    pub commit_wait_max_ms: u32,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            metadata_retention_days: default_metadata_retention(),
            commit_wait_max_ms: default_commit_wait_max(),
        }
    }
}

fn default_commit_wait_max() -> u32 {
    super::COMMIT_WAIT_MAX_MS_DEFAULT
}

fn default_metadata_retention() -> u32 {
    30
}

#[derive(Debug, Deserialize)]
pub struct RawFleet {
    pub redis_url: String,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub key_prefix: String,
    #[serde(default = "default_dlr_index_ttl_days")]
    pub dlr_index_ttl_days: u32,
    #[serde(default = "default_fleet_timeout_ms")]
    pub timeout_ms: u64,
}

/// A week: receipts come within the carriers' 72 h validity; the rest is margin.
fn default_dlr_index_ttl_days() -> u32 {
    7
}

/// Half a second: a Redis round trip is ~0.1 ms on a LAN; longer means trouble.
fn default_fleet_timeout_ms() -> u64 {
    500
}
