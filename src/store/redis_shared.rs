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
//!   read by NODE in the consumer group [`RECEIPT_GROUP`]; an entry is
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

use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::shared::{
    Admission, BoxFuture, ForwardedReceipt, LocalCells, Located, SharedState, Verdict,
};
use super::StoreError;
use crate::config::{Config, Fleet};
use crate::metrics::Metrics;

/// Daily counters expire after two days: a counter is read only on its own
/// local day, and two days cover every time zone's day plus a margin.
pub const DAILY_TTL_SECS: u64 = 2 * 86_400;

/// Checks opt-out, campaign GCRA, number GCRA and daily cap, then takes them
/// all, or nothing. Times in µs from Redis's `TIME`; TATs written with
/// `%.0f` (Lua 5.1 would print large numbers in exponent form).
/// Returns `{0,0}` admitted, `{1,0}` opted out, `{2,wait_us}` rate
/// limited, `{3,0}` daily cap reached.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
if ARGV[8] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[8]) == 1 then
  return {1, 0}
end
local function probe(key, interval, tol)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new = tat + interval * n
  local ahead = new - now
  if ahead <= tol then return new, 0 end
  if interval * n > tol then
    if tat <= now then return new, 0 end
    return nil, tat - now
  end
  return nil, ahead - tol
end
local c_new, c_wait = probe(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if not c_new then return {2, math.floor(c_wait)} end
local n_int = tonumber(ARGV[4])
local n_new = nil
if n_int > 0 then
  local w
  n_new, w = probe(KEYS[2], n_int, tonumber(ARGV[5]))
  if not n_new then return {2, math.floor(w)} end
end
local cap = tonumber(ARGV[6])
if cap > 0 then
  local cur = tonumber(redis.call('GET', KEYS[3])) or 0
  if cur + n > cap then return {3, 0} end
end
local function keep(key, new)
  redis.call('SET', key, string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
keep(KEYS[1], c_new)
if n_new then keep(KEYS[2], n_new) end
if cap > 0 then
  redis.call('INCRBY', KEYS[3], n)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
end
return {0, 0}
"#;

/// Gives back what [`ADMIT_LUA`] took: the TATs move back by the cells,
/// the daily counter down (never below zero); TTLs kept.
const REFUND_LUA: &str = r#"
local n = tonumber(ARGV[1])
local function back(key, interval)
  local tat = tonumber(redis.call('GET', key))
  if tat then
    redis.call('SET', key, string.format('%.0f', tat - interval * n), 'KEEPTTL')
  end
end
back(KEYS[1], tonumber(ARGV[2]))
if tonumber(ARGV[3]) > 0 then back(KEYS[2], tonumber(ARGV[3])) end
if ARGV[4] == '1' then
  local cur = tonumber(redis.call('GET', KEYS[3]))
  if cur then
    local new = cur - n
    if new < 0 then new = 0 end
    redis.call('SET', KEYS[3], string.format('%.0f', new), 'KEEPTTL')
  end
end
return 0
"#;

/// INCRBY under a cap: `{1,new}` added, `{0,current}` refused.
const ADD_DAILY_LUA: &str = r#"
local n = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1])) or 0
if cap > 0 and cur + n > cap then return {0, cur} end
local new = redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, new}
"#;

/// DECRBY that stops at zero and keeps the TTL.
const RELEASE_DAILY_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur then
  local new = cur - tonumber(ARGV[1])
  if new < 0 then new = 0 end
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'KEEPTTL')
end
return 0
"#;

/// The consumer group in which a node reads its receipt stream. One group
/// per stream (one owner); the consumer name is the node id, so a restarted
/// node re-reads the entries it had read but not acknowledged.
pub const RECEIPT_GROUP: &str = "owner";

/// How often the receipt consumer polls its stream while it is empty. A
/// poll, not `XREADGROUP BLOCK`: a blocking read would hold up every other
/// call on the shared multiplexed connection. 10 cheap calls a second per
/// node; a forwarded receipt waits at most this long.
const RECEIPT_POLL: Duration = Duration::from_millis(100);

/// How long the consumer waits after a failed read or apply before it
/// tries again (Redis or the store down).
const RECEIPT_RETRY: Duration = Duration::from_secs(1);

/// Entries read at once by the receipt consumer.
const RECEIPT_BATCH: usize = 64;

/// One read of the stream: entry ids with their fields (`None` for an
/// entry deleted while pending).
type StreamRead = Option<Vec<(String, Vec<(String, Option<HashMap<String, String>>)>)>>;

/// Marks a claimed idempotency key done (its JSON decoded and written back
/// with the message id and the outcome), keeping its TTL; 0 when the key
/// is not claimed (expired, or forgotten).
const FINISH_IDEM_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local r = cjson.decode(v)
r.state = 'done'
r.message_id = ARGV[1]
r.outcome = cjson.decode(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(r), 'KEEPTTL')
return 1
"#;

/// Writes a message's status projection unless the one there is newer
/// (`updated_ms`): a send's projection and its first receipt's may race.
const PROJECT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, old = pcall(cjson.decode, v)
  if ok and tonumber(old.updated_ms) and tonumber(old.updated_ms) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
return 1
"#;

struct Scripts {
    project: Script,
    finish_idem: Script,
    admit: Script,
    refund: Script,
    add_daily: Script,
    release_daily: Script,
}

/// [`SharedState`] on Redis, for several nodes behind a load balancer.
pub struct RedisShared {
    client: redis::Client,
    con: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    node: String,
    index_ttl_secs: u64,
    timeout: Duration,
    /// campaign id → brand id (the hash tag of its keys), from the config.
    brands: RwLock<HashMap<String, String>>,
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

fn gcra_us(per_minute: u32, burst: u32) -> (u64, u64) {
    let interval = 60_000_000 / u64::from(per_minute.max(1));
    (interval, interval * u64::from(burst.max(1)))
}

impl RedisShared {
    /// A client for `[fleet]`; connects on first use (and reconnects by
    /// itself), so a node starts even while Redis is down — it then
    /// refuses sends with 503 until Redis answers.
    pub fn new(cfg: &Config, fleet: &Fleet, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
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
            brands: RwLock::new(HashMap::new()),
            down_since: Mutex::new(None),
            scripts: Scripts {
                project: Script::new(PROJECT_LUA),
                finish_idem: Script::new(FINISH_IDEM_LUA),
                admit: Script::new(ADMIT_LUA),
                refund: Script::new(REFUND_LUA),
                add_daily: Script::new(ADD_DAILY_LUA),
                release_daily: Script::new(RELEASE_DAILY_LUA),
            },
            metrics,
            receipt_group: AtomicBool::new(false),
            idem_ttl_ms: u64::from(cfg.store.metadata_retention_days.max(1)) * 86_400_000,
            idem_key: cfg.node.pseudonym_key.clone(),
        };
        me.set_campaigns(cfg);
        Ok(me)
    }

    /// Takes the campaign → brand map of a (re)loaded config.
    pub fn set_campaigns(&self, cfg: &Config) {
        *self.brands.write() = cfg
            .campaigns
            .iter()
            .map(|c| (c.id.clone(), c.brand.clone()))
            .collect();
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
        let brand = self.brands.read().get(campaign).cloned().ok_or_else(|| {
            StoreError::Shared(format!("campaign {campaign:?} is not configured"))
        })?;
        Ok(format!("{}:o:{campaign}", self.tag(&brand)))
    }

    /// The hash of a campaign's consents (pseudonym hex → evidence JSON),
    /// under its brand's hash tag like the opt-outs.
    fn consent_key(&self, campaign: &str) -> Result<String, StoreError> {
        let brand = self.brands.read().get(campaign).cloned().ok_or_else(|| {
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

    /// The stream of receipts waiting for `node`.
    fn receipt_stream(&self, node: &str) -> String {
        format!("{}rs:{node}", self.prefix)
    }

    /// Reads up to [`RECEIPT_BATCH`] entries of this node's receipt stream:
    /// those read before and not acknowledged (`pending`, e.g. by the run
    /// before a restart), else new ones. Creates the group (from the
    /// stream's start, so entries added while no group existed are read)
    /// when missing.
    async fn read_receipts(
        &self,
        pending: bool,
    ) -> Result<Vec<(String, Option<ForwardedReceipt>)>, StoreError> {
        let key = self.receipt_stream(&self.node);
        let node = self.node.clone();
        let from = if pending { "0" } else { ">" };
        let read = |mut c: ConnectionManager| {
            let (key, node) = (key.clone(), node.clone());
            async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(RECEIPT_GROUP)
                    .arg(node)
                    .arg("COUNT")
                    .arg(RECEIPT_BATCH)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(from)
                    .query_async::<StreamRead>(&mut c)
                    .await
            }
        };
        if !self.receipt_group.load(Ordering::Relaxed) {
            // First read, or after an error (a Redis that lost the group):
            // create it; BUSYGROUP says it exists already.
            let k = key.clone();
            self.call("receipt_read", |mut c| async move {
                let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(k)
                    .arg(RECEIPT_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await;
                match r {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    r => r,
                }
            })
            .await?;
            self.receipt_group.store(true, Ordering::Relaxed);
        }
        let got = match self.call("receipt_read", read).await {
            Ok(v) => v,
            Err(e) => {
                self.receipt_group.store(false, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut out = Vec::new();
        for (_, entries) in got.into_iter().flatten() {
            for (id, fields) in entries {
                let r = fields.and_then(|mut f| {
                    Some(ForwardedReceipt {
                        carrier: f.remove("carrier")?,
                        carrier_id: f.remove("carrier_id")?,
                        message_id: f.remove("message_id")?,
                        state: f.remove("state")?,
                        error: f.remove("error").filter(|e| !e.is_empty()),
                    })
                });
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// Acknowledges and deletes applied entries of this node's stream, in
    /// one round trip.
    async fn ack_receipts(&self, ids: &[String]) -> Result<(), StoreError> {
        let key = self.receipt_stream(&self.node);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(RECEIPT_GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore();
        self.call("receipt_ack", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Applies the receipts other nodes forwarded to this one, until `stop`:
    /// first those read but not acknowledged before (a restart), then new
    /// ones, up to [`RECEIPT_BATCH`] at once. An entry is acknowledged only
    /// after `apply` returned `Ok` (the owner's store committed it); on an
    /// `Err` it stays pending and is read again after [`RECEIPT_RETRY`]. An entry that cannot be read
    /// (fields missing) is acknowledged: it would not get better.
    pub async fn consume_receipts<F, Fut>(
        self: Arc<Self>,
        apply: F,
        stop: tokio_util::sync::CancellationToken,
    ) where
        F: Fn(ForwardedReceipt) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut pending = true;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let mut wait = Duration::ZERO;
            match self.read_receipts(pending).await {
                Ok(entries) if entries.is_empty() => {
                    if !pending {
                        wait = RECEIPT_POLL;
                    }
                    pending = false;
                }
                Ok(entries) => {
                    // The batch is applied at once, so the store's group
                    // commit takes it in one commit (one fsync for the batch,
                    // not one per receipt: a sequential apply cost about
                    // 0.5 commits per message in a two-node run), and
                    // acknowledged in one call. Each op is queued in stream
                    // order; each re-reads its record, so a duplicate changes
                    // nothing. Only the applied entries are acknowledged.
                    let apply = &apply;
                    let (ids, applies): (Vec<String>, Vec<_>) = entries
                        .into_iter()
                        .map(|(id, r)| {
                            let applied = async move {
                                match r {
                                    Some(r) => apply(r).await,
                                    None => {
                                        tracing::warn!("unreadable forwarded receipt acknowledged");
                                        Ok(())
                                    }
                                }
                            };
                            (id, applied)
                        })
                        .unzip();
                    let results = futures::future::join_all(applies).await;
                    let mut failed = None;
                    let mut done = Vec::with_capacity(ids.len());
                    for (id, res) in ids.into_iter().zip(results) {
                        match res {
                            Ok(()) => done.push(id),
                            Err(e) => failed = Some(e),
                        }
                    }
                    let acked = if done.is_empty() {
                        Ok(())
                    } else {
                        self.ack_receipts(&done).await
                    };
                    if let Some(e) = failed.or(acked.err()) {
                        tracing::error!("forwarded receipt not applied yet: {e}");
                        pending = true;
                        wait = RECEIPT_RETRY;
                    }
                }
                Err(e) => {
                    tracing::warn!("reading forwarded receipts: {e}");
                    pending = true;
                    wait = RECEIPT_RETRY;
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
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

impl SharedState for RedisShared {
    fn add_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
        cap: u64,
    ) -> BoxFuture<'a, Result<Result<u64, u64>, StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            let (added, n): (i64, u64) = self
                .call("daily", |mut c| async move {
                    self.scripts
                        .add_daily
                        .key(k)
                        .arg(amount)
                        .arg(cap)
                        .arg(DAILY_TTL_SECS)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(if added == 1 { Ok(n) } else { Err(n) })
        })
    }

    fn release_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            self.call("daily", |mut c| async move {
                self.scripts
                    .release_daily
                    .key(k)
                    .arg(amount)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn daily<'a>(&'a self, key: &'a str, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let k = format!("{}:d:{day}", self.tag(key));
            let v: Option<u64> = self
                .call("daily", |mut c| async move { c.get(k).await })
                .await?;
            Ok(v.unwrap_or(0))
        })
    }

    fn opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call("opt_out", |mut c| async move {
                c.sadd::<_, _, i64>(k, member).await
            })
            .await
            .map(|_| ())
        })
    }

    fn opt_in<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call("opt_out", |mut c| async move {
                c.srem::<_, _, i64>(k, member).await
            })
            .await
            .map(|_| ())
        })
    }

    fn is_opted_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = self.opt_out_key(campaign)?;
            let member = hex::encode(pseudonym);
            self.call(
                "opt_out",
                |mut c| async move { c.sismember(k, member).await },
            )
            .await
        })
    }

    fn consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = self.consent_key(campaign)?;
            let field = hex::encode(pseudonym);
            self.call("consent", |mut c| async move {
                c.hget::<_, _, Option<Vec<u8>>>(k, field).await
            })
            .await
        })
    }

    fn set_consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
        evidence: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = self.consent_key(campaign)?;
            let field = hex::encode(pseudonym);
            self.call("consent", |mut c| async move {
                match evidence {
                    Some(e) => {
                        let before: Option<Vec<u8>> = c.hget(&k, &field).await?;
                        let changed = before.as_deref() != Some(e.as_slice());
                        let _: i64 = c.hset(&k, &field, e).await?;
                        Ok(changed)
                    }
                    None => c.hdel::<_, _, i64>(&k, &field).await.map(|n| n > 0),
                }
            })
            .await
        })
    }

    fn index_carrier_ids<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let value = format!("{} {message_id}", self.node);
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.set_ex(self.index_key(carrier, key), &value, self.index_ttl_secs)
                    .ignore();
            }
            self.call("index", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
        })
    }

    fn lookup_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            Ok(match self.locate_carrier_id(carrier, keys).await? {
                Some(Located::Here(id)) => Some(id),
                // Its record lives at its owner: see `forward_receipt`.
                Some(Located::Elsewhere { .. }) | None => None,
            })
        })
    }

    fn locate_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Located>, StoreError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(None);
            }
            let ks: Vec<String> = keys.iter().map(|k| self.index_key(carrier, k)).collect();
            let found: Vec<Option<String>> = self
                .call("index", |mut c| async move {
                    redis::cmd("MGET").arg(ks).query_async(&mut c).await
                })
                .await?;
            for v in found.into_iter().flatten() {
                let Some((node, id)) = v.split_once(' ') else {
                    continue;
                };
                return Ok(Some(if node == self.node {
                    Located::Here(id.to_owned())
                } else {
                    Located::Elsewhere {
                        node: node.to_owned(),
                        message_id: id.to_owned(),
                    }
                }));
            }
            Ok(None)
        })
    }

    fn forward_receipt<'a>(
        &'a self,
        node: &'a str,
        r: &'a ForwardedReceipt,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.receipt_stream(node);
            let fields = [
                ("carrier", r.carrier.as_str()),
                ("carrier_id", r.carrier_id.as_str()),
                ("message_id", r.message_id.as_str()),
                ("state", r.state.as_str()),
                ("error", r.error.as_deref().unwrap_or("")),
            ];
            self.call("receipt_forward", |mut c| async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(key).arg("*");
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
                cmd.query_async::<String>(&mut c).await
            })
            .await
            .map(|_| ())
        })
    }

    fn idempotency_is_shared(&self) -> bool {
        true
    }

    fn claim_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        claim: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            let ttl = self.idem_ttl_ms;
            self.call("idempotency", |mut c| async move {
                // SET NX GET (Redis 7): claims, or returns the claim there.
                let claimed: Option<Vec<u8>> = redis::cmd("SET")
                    .arg(&k)
                    .arg(claim)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await?;
                Ok(claimed)
            })
            .await
        })
    }

    fn finish_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        message_id: &'a str,
        outcome: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            let outcome = outcome.to_string();
            self.call("idempotency", |mut c| async move {
                self.scripts
                    .finish_idem
                    .key(k)
                    .arg(message_id)
                    .arg(outcome)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn forget_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.idem_redis_key(client, key);
            self.call(
                "idempotency",
                |mut c| async move { c.del::<_, i64>(k).await },
            )
            .await
            .map(|_| ())
        })
    }

    fn messages_are_shared(&self) -> bool {
        true
    }

    fn project_message<'a>(
        &'a self,
        id: &'a str,
        updated_ms: u64,
        projection: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = format!("{}m:{id}", self.prefix);
            let ttl = self.idem_ttl_ms;
            self.call("message", |mut c| async move {
                self.scripts
                    .project
                    .key(k)
                    .arg(projection)
                    .arg(updated_ms)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn projected_message<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let k = format!("{}m:{id}", self.prefix);
            self.call("message", |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(k).await
            })
            .await
        })
    }

    fn admission_checks_opt_out(&self) -> bool {
        true
    }

    fn admit<'a>(
        &'a self,
        a: &'a Admission,
        _cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<Verdict, StoreError>> {
        Box::pin(async move {
            let (c_int, c_tol) = gcra_us(a.campaign_rate.per_minute, a.campaign_rate.burst);
            let (n_int, n_tol) = a
                .number_rate
                .map_or((0, 0), |r| gcra_us(r.per_minute, r.burst));
            let cap = a.daily.as_ref().map_or(0, |(_, cap)| *cap);
            let member = a.recipient.map(hex::encode).unwrap_or_default();
            let keys = self.keys(a);
            let (code, wait_us): (i64, i64) = self
                .call("admit", |mut c| async move {
                    let mut inv = self.scripts.admit.prepare_invoke();
                    for k in keys {
                        inv.key(k);
                    }
                    inv.arg(a.segments)
                        .arg(c_int)
                        .arg(c_tol)
                        .arg(n_int)
                        .arg(n_tol)
                        .arg(cap)
                        .arg(DAILY_TTL_SECS)
                        .arg(member);
                    inv.invoke_async(&mut c).await
                })
                .await?;
            Ok(match code {
                0 => Verdict::Admitted,
                1 => Verdict::OptedOut,
                2 => Verdict::RateLimited(Duration::from_micros(wait_us.max(0) as u64)),
                _ => Verdict::DailyCapReached,
            })
        })
    }

    fn refund<'a>(
        &'a self,
        a: &'a Admission,
        _cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (c_int, _) = gcra_us(a.campaign_rate.per_minute, a.campaign_rate.burst);
            let n_int = a
                .number_rate
                .map_or(0, |r| gcra_us(r.per_minute, r.burst).0);
            let daily = if a.daily.is_some() { "1" } else { "0" };
            let [ck, nk, dk, _] = self.keys(a);
            self.call("refund", |mut c| async move {
                self.scripts
                    .refund
                    .key(ck)
                    .key(nk)
                    .key(dk)
                    .arg(a.segments)
                    .arg(c_int)
                    .arg(n_int)
                    .arg(daily)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn is_up(&self) -> bool {
        self.down_since.lock().is_none()
    }
}
