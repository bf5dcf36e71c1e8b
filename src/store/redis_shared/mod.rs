//! Fleet mode: the shared-state seam on Redis (SPEC §8).
//!
//! Owns: the Redis key layout of a deployment, the Lua scripts that check
//! and take a send's admission atomically on Redis's clock, and the health
//! of the connection (up/down, since when) that `/readyz` and the metrics
//! read.
//!
//! Must not know: message bodies, clear recipient numbers, the send path's
//! phases. It only ever sees pseudonyms (hex), campaign/brand/carrier ids,
//! our own sender numbers and message ids.
//!
//! Key layout (`P` = `[fleet] key_prefix`): every rate, cap and opt-out key
//! of one brand shares the hash tag `{b:BRAND}`, so one script touches one
//! Redis Cluster shard (a campaign belongs to one brand for life):
//! - `P{b:BRAND}:c:CAMPAIGN` — campaign GCRA theoretical arrival time (µs),
//! - `P{b:BRAND}:n:NUMBER` — sender number GCRA TAT (our own number),
//! - `P{b:BRAND}:d:DAY` — the brand's daily segments, expire after 2 days,
//! - `P{b:BRAND}:o:CAMPAIGN` — set of hex pseudonyms that opted out (never
//!   expires: Redis must run with `maxmemory-policy noeviction`),
//! - `Px:CARRIER:KEY` — carrier-id index, `NODE MESSAGE_ID`, with a TTL,
//! - `Pi:CLIENT:KEYHASH` — an idempotency key's claim and outcome (JSON:
//!   request hash, state, message id, node, boot id; the key itself only as
//!   its keyed hash), expiring with the metadata retention,
//! - `Pm:MESSAGE_ID` — the message's status projection (its metadata
//!   record as JSON without the recipient's pseudonym), written by the node
//!   that owns it, expiring with the metadata retention,
//! - `Prs:NODE` — stream of receipts other nodes took for NODE's messages
//!   (carrier, carrier id, message id, status, error code; never text),
//!   read by NODE in the consumer group [`receipts::RECEIPT_GROUP`]; an entry is
//!   acknowledged and deleted only after NODE's store committed it, so it
//!   has no TTL: it waits while NODE is down.
//!
//! Invariants: a call that fails or times out is an `Err`
//! ([`StoreError::Shared`]), never a guess; the connection manager
//! reconnects by itself when Redis returns, and scripts reload themselves
//! (EVALSHA, then EVAL on NOSCRIPT).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::shared::{
    Admission, BoxFuture, ForwardedReceipt, LocalCells, Located, SharedState, Verdict,
};
use super::StoreError;
use crate::config::{Config, Fleet};
use crate::live::Part;
use crate::metrics::Metrics;

/// Daily counters expire after two days: a counter is read only on its own
/// local day, and two days cover every time zone's day plus a margin.
pub const DAILY_TTL_SECS: u64 = 2 * 86_400;

mod receipts;
mod scripts;
mod seam;

use scripts::{gcra_us, Scripts};

/// campaign id → brand id, for the keys' hash tags.
pub type CampaignBrands = HashMap<String, String>;

/// The campaign → brand map of `cfg`.
pub fn campaign_brands(cfg: &Config) -> CampaignBrands {
    cfg.campaigns
        .iter()
        .map(|c| (c.id.clone(), c.brand.clone()))
        .collect()
}

/// [`SharedState`] on Redis, for several nodes behind a load balancer.
pub struct RedisShared {
    client: redis::Client,
    con: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    node: String,
    index_ttl_secs: u64,
    timeout: Duration,
    /// campaign id → brand id (the hash tag of its keys): its part of the
    /// live configuration.
    brands: Part<CampaignBrands>,
    /// Since when calls fail; `None` while Redis answers.
    down_since: Mutex<Option<Instant>>,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// Whether this node's receipt consumer group is known to exist.
    receipt_group: AtomicBool,
    /// How long an idempotency key or a status projection lives: the
    /// metadata retention.
    idem_ttl_ms: u64,
    /// Keys the idempotency keys' hash (the deployment's pseudonym key).
    idem_key: crate::types::Secret,
}

impl RedisShared {
    /// A client for `[fleet]`; connects on first use (and reconnects by
    /// itself), so a node starts even while Redis is down — it then
    /// refuses sends with 503 until Redis answers. `brands` is its part of
    /// the live configuration ([`campaign_brands`]).
    pub fn new(
        cfg: &Config,
        fleet: &Fleet,
        brands: Part<CampaignBrands>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let bad =
            |e: redis::RedisError| StoreError::Shared(format!("redis_url: {}", e.kind_name()));
        let mut info: redis::ConnectionInfo = fleet.redis_url.as_str().parse().map_err(bad)?;
        if let Some(p) = &fleet.password {
            info.redis.password = p.trimmed_str().map(str::to_owned);
        }
        let client = match &fleet.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| StoreError::Shared(format!("fleet.ca_file: {e}")))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(bad)?
            }
            None => redis::Client::open(info).map_err(bad)?,
        };
        let me = RedisShared {
            client,
            con: tokio::sync::OnceCell::new(),
            prefix: fleet.key_prefix.clone(),
            node: cfg.node.id.clone(),
            index_ttl_secs: fleet.dlr_index_ttl.as_secs().max(1),
            timeout: fleet.timeout,
            brands,
            down_since: Mutex::new(None),
            scripts: Scripts::new(),
            metrics,
            receipt_group: AtomicBool::new(false),
            idem_ttl_ms: u64::from(cfg.store.metadata_retention_days.max(1)) * 86_400_000,
            idem_key: cfg.node.pseudonym_key.clone(),
        };
        Ok(me)
    }

    /// How long calls have been failing; `None` while Redis answers.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_since.lock().map(|t| t.elapsed())
    }

    /// One PING, to keep the health current while no send calls (the app
    /// runs it every second for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn con(&self) -> Result<ConnectionManager, redis::RedisError> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        self.con
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), cfg))
            .await
            .cloned()
    }

    /// Runs one Redis call under the timeout, recording health and metrics.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let t0 = Instant::now();
        let res = tokio::time::timeout(self.timeout, async {
            let c = self.con().await?;
            f(c).await
        })
        .await;
        let res = match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Shared(format!("{op}: {}", e.kind_name()))),
            Err(_) => Err(StoreError::Shared(format!("{op}: timed out"))),
        };
        let m = &self.metrics;
        m.shared_state_latency
            .with_label_values(&[op])
            .observe(t0.elapsed().as_secs_f64());
        match &res {
            Ok(_) => {
                *self.down_since.lock() = None;
                m.shared_state_up.set(1);
            }
            Err(_) => {
                self.down_since.lock().get_or_insert_with(Instant::now);
                m.shared_state_up.set(0);
                m.shared_state_errors.with_label_values(&[op]).inc();
            }
        }
        res
    }

    fn tag(&self, brand: &str) -> String {
        format!("{}{{b:{brand}}}", self.prefix)
    }

    fn opt_out_key(&self, campaign: &str) -> Result<String, StoreError> {
        let brand = self.brands.load().get(campaign).cloned().ok_or_else(|| {
            StoreError::Shared(format!("campaign {campaign:?} is not configured"))
        })?;
        Ok(format!("{}:o:{campaign}", self.tag(&brand)))
    }

    /// The hash of a campaign's consents (pseudonym hex → evidence JSON),
    /// under its brand's hash tag like the opt-outs.
    fn consent_key(&self, campaign: &str) -> Result<String, StoreError> {
        let brand = self.brands.load().get(campaign).cloned().ok_or_else(|| {
            StoreError::Shared(format!("campaign {campaign:?} is not configured"))
        })?;
        Ok(format!("{}:k:{campaign}", self.tag(&brand)))
    }

    fn keys(&self, a: &Admission) -> [String; 4] {
        let tag = self.tag(&a.brand);
        let number = a.from.as_str();
        let day = a.daily.as_ref().map_or("", |(d, _)| d.as_str());
        [
            format!("{tag}:c:{}", a.campaign),
            format!("{tag}:n:{number}"),
            format!("{tag}:d:{day}"),
            format!("{tag}:o:{}", a.campaign),
        ]
    }

    fn index_key(&self, carrier: &str, key: &str) -> String {
        format!("{}x:{carrier}:{key}", self.prefix)
    }

    /// An idempotency key's Redis key: the client's key only as its keyed
    /// hash (a client may choose anything as a key).
    fn idem_redis_key(&self, client: &str, key: &str) -> String {
        use hmac::{Mac, SimpleHmac};
        let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(self.idem_key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(key.as_bytes());
        let h = hex::encode(mac.finalize().into_bytes());
        format!("{}i:{client}:{h}", self.prefix)
    }
}

/// `kind_name` without the server's message (which could echo arguments).
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connection_refusal() {
            "connection refused".into()
        } else if self.is_connection_dropped() || self.is_io_error() {
            "connection lost".into()
        } else {
            format!("{:?}", self.kind())
        }
    }
}
