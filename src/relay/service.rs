//! The send path: `POST /v1/messages` from an authenticated client to a
//! carrier's submit_sm_resp, and `GET /v1/messages/{id}`.
//!
//! Order of checks (cheapest and most specific first, nothing consumed by a
//! refusal): campaign allowed → sender in campaign → text fits 10 segments →
//! idempotency key → opt-out → a bound route → campaign/number rate →
//! brand daily cap → encode and submit every segment → metadata committed →
//! 201. The text lives only in the request's [`Body`] and the encoder's
//! zeroizing buffer, for the life of this call.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use parking_lot::RwLock;
use zeroize::Zeroizing;

use super::limits::{local_day, Limits, Refusal};
use super::recent::RecentIds;
use super::record::{self, Idem, MessageRecord};
use super::route::Routes;
use crate::api::{
    ClientId, Encoding as ApiEncoding, MessageService, MessageStatus, MessageView, SendAccepted,
    SendError, SendRequest,
};
use crate::audit::{Audit, AuditEvent, AuditNumber, OwnNumbers};
use crate::config::{Brand, Campaign, Config};
use crate::metrics::Metrics;
use crate::smpp::encoding::{self, Encoding};
use crate::smpp::{dlr, Pool, SmppError, SubmitRequest};
use crate::store::shared::{put_carrier_ids, SharedState};
use crate::store::Store;
use crate::types::{Pseudonym, Secret, E164};

/// At most this many segments per message (SPEC §4).
pub const MAX_SEGMENTS: usize = 10;

/// The config the send path reads, swapped whole on reload.
struct View {
    /// client id → campaign ids it may use.
    clients: HashMap<String, HashSet<String>>,
    campaigns: HashMap<String, Campaign>,
    brands: HashMap<String, Brand>,
    routes: Routes,
    /// One pool per `[[carriers]]` entry, in config order (as `routes`):
    /// swapped together with the routes so indices always agree.
    pools: Vec<Pool>,
    own: OwnNumbers,
}

impl View {
    fn new(cfg: &Config, pools: Vec<Pool>) -> Self {
        View {
            pools,
            clients: cfg
                .clients
                .iter()
                .map(|c| (c.id.clone(), c.campaigns.iter().cloned().collect()))
                .collect(),
            campaigns: cfg
                .campaigns
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            brands: cfg
                .brands
                .iter()
                .map(|b| (b.id.clone(), b.clone()))
                .collect(),
            routes: Routes::new(&cfg.carriers),
            own: OwnNumbers::from_config(cfg),
        }
    }
}

/// The relay: implements the API's [`MessageService`].
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    // std lock: read-and-clone only, never held across an await.
    view: RwLock<Arc<View>>,
    limits: RwLock<Arc<Limits>>,
    store: Store,
    shared: Arc<dyn SharedState>,
    audit: Audit,
    metrics: Arc<Metrics>,
    pseudonym_key: Secret,
    /// Background audit writes (refusals), waited for by the app's drain.
    background: tokio_util::task::TaskTracker,
    /// Concatenation reference for the next multi-part message.
    reference: AtomicU8,
    /// Carrier ids of recent sends, so most receipts skip a store read.
    recent: RecentIds,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read<T: ?Sized>(l: &RwLock<Arc<T>>) -> Arc<T> {
    l.read().clone()
}

fn api_encoding(e: &str) -> ApiEncoding {
    if e == Encoding::Ucs2.as_str() {
        ApiEncoding::Ucs2
    } else {
        ApiEncoding::Gsm7
    }
}

fn api_status(s: &str) -> MessageStatus {
    match s {
        "accepted" => MessageStatus::Accepted,
        "delivered" => MessageStatus::Delivered,
        "undeliverable" => MessageStatus::Undeliverable,
        "expired" => MessageStatus::Expired,
        "rejected" => MessageStatus::Rejected,
        "failed" => MessageStatus::Failed,
        _ => MessageStatus::Unknown,
    }
}

fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// What came back from the carrier for a whole message.
struct Sent {
    carrier: usize,
    ids: Vec<String>,
}

impl Relay {
    /// A relay over `pools` (one per `cfg.carriers` entry, same order).
    pub fn new(
        cfg: &Config,
        pools: Vec<Pool>,
        store: Store,
        shared: Arc<dyn SharedState>,
        audit: Audit,
        metrics: Arc<Metrics>,
        background: tokio_util::task::TaskTracker,
    ) -> Self {
        Relay {
            inner: Arc::new(Inner {
                view: RwLock::new(Arc::new(View::new(cfg, pools))),
                limits: RwLock::new(Arc::new(Limits::new(cfg))),
                store,
                shared,
                audit,
                metrics,
                pseudonym_key: cfg.node.pseudonym_key.clone(),
                background,
                reference: AtomicU8::new(rand::random()),
                recent: RecentIds::default(),
            }),
        }
    }

    /// Applies a reloaded config: clients, campaigns, brands and limits (the
    /// cells campaigns and numbers have spent carry over).
    /// `pools` are the carrier pools of `cfg`, in its order (the app keeps
    /// the pools of carriers whose settings did not change).
    pub fn reload(&self, cfg: &Config, pools: Vec<Pool>) {
        let v = Arc::new(View::new(cfg, pools));
        *self.inner.view.write() = v;
        let l = Limits::new(cfg);
        l.carry_over_from(&read(&self.inner.limits));
        *self.inner.limits.write() = Arc::new(l);
    }

    /// The message a receipt's carrier id belongs to, if it was sent
    /// recently by this process (see [`RecentIds`]); `keys` as
    /// [`dlr::lookup_keys`] gives them. `None` means "ask the store".
    pub fn recent_carrier_id(&self, carrier: &str, keys: &[String]) -> Option<String> {
        self.inner.recent.get(carrier, keys)
    }

    /// The pools, in config order.
    pub fn pools(&self) -> Vec<Pool> {
        read(&self.inner.view).pools.clone()
    }

    /// The pools of the priority-1 carriers (for `/readyz`).
    pub fn first_priority_pools(&self) -> Vec<Pool> {
        let view = read(&self.inner.view);
        view.pools
            .iter()
            .enumerate()
            .filter(|(i, _)| view.routes.get(*i).is_some_and(|r| r.priority == 1))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Keyed hash of everything that makes a request what it is, text
    /// included, so an idempotent retry can be told from a different request
    /// without storing anything that discloses the text.
    fn request_hash(&self, req: &SendRequest) -> String {
        use hmac::{Mac, SimpleHmac};
        let mut mac =
            <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(self.inner.pseudonym_key.expose())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [
            req.from.as_str().as_bytes(),
            req.to.as_str().as_bytes(),
            req.campaign_id.as_bytes(),
            req.validity
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string()
                .as_bytes(),
            req.client_ref.as_deref().unwrap_or("").as_bytes(),
            req.text.expose().as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn refuse(
        &self,
        client: &str,
        campaign: &str,
        to: Option<&E164>,
        e: SendError,
        t0: Instant,
    ) -> SendError {
        let view = read(&self.inner.view);
        // Label values come from config only.
        let known = view.campaigns.contains_key(campaign);
        let label = if known { campaign } else { "unknown" };
        // The refusal's audit record, off the request's path (a refusal
        // changes no state, so there is no transaction to share).
        let event = AuditEvent::MessageRefused {
            client: client.to_owned(),
            campaign: known.then(|| campaign.to_owned()),
            to: to.map(|n| AuditNumber::of(n, &self.inner.pseudonym_key, &view.own)),
            code: e.code(),
            detail: match &e {
                SendError::CarrierRejected { status_name } => Some(status_name.clone()),
                _ => None,
            },
        };
        let (audit, actor) = (self.inner.audit.clone(), client.to_owned());
        self.inner.background.spawn(async move {
            if let Err(err) = audit.record(event, &actor).await {
                tracing::error!("audit record of a refusal: {err}");
            }
        });
        let m = &self.inner.metrics;
        m.refusals.with_label_values(&[label, e.code()]).inc();
        m.messages.with_label_values(&["mt", e.code(), ""]).inc();
        m.latency
            .with_label_values(&["refused"])
            .observe(t0.elapsed().as_secs_f64());
        e
    }

    async fn forget(&self, client: &str, key: &Option<String>) {
        if let Some(k) = key {
            let (c, k) = (client.to_owned(), k.clone());
            if let Err(e) = self
                .inner
                .store
                .write(move |t| record::forget_idempotent(t, &c, &k))
                .await
            {
                tracing::error!("forgetting an idempotency key: {e}");
            }
        }
    }

    /// Submits every segment on carrier `i`; the first error wins, with
    /// how many segments were accepted and their carrier ids (empty where
    /// not accepted; a carrier may also answer an empty id).
    async fn submit_all(
        pool: &Pool,
        req: &SendRequest,
        enc: &encoding::Encoded,
    ) -> Result<Vec<String>, (SmppError, usize, Vec<String>)> {
        let esm_class = enc.esm_class_bits();
        let submit = |part: &[u8]| {
            pool.submit(SubmitRequest {
                source: req.from.clone(),
                dest: req.to.clone(),
                short_message: Zeroizing::new(part.to_vec()),
                data_coding: enc.data_coding(),
                esm_class,
                registered_delivery: 1,
                validity: req.validity,
            })
        };
        // Most messages are one segment: awaited directly, without
        // `join_all`'s boxed set of futures or a vector of results.
        if let (Some(only), 1) = (enc.parts().next(), enc.segments()) {
            return match submit(only).await {
                Ok(resp) => Ok(vec![resp.message_id]),
                Err(e) => Err((e, 0, Vec::new())),
            };
        }
        let results = join_all(enc.parts().map(submit)).await;
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        let mut ids = Vec::with_capacity(results.len());
        let mut first_err = None;
        for r in results {
            match r {
                Ok(resp) => ids.push(resp.message_id),
                Err(e) => {
                    ids.push(String::new());
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(ids),
            Some(e) => Err((e, accepted, ids)),
        }
    }

    /// Sends on the best bound carrier, failing over while nothing was
    /// accepted and the error says another carrier may take it.
    async fn send_segments(
        pools: &[Pool],
        candidates: &[usize],
        req: &SendRequest,
        enc: &encoding::Encoded,
    ) -> Result<Sent, (SendError, Option<Sent>)> {
        let mut last = SendError::NoRoute;
        for &i in candidates {
            let Some(pool) = pools.get(i) else { continue };
            match Self::submit_all(pool, req, enc).await {
                Ok(ids) => return Ok(Sent { carrier: i, ids }),
                Err((e, accepted, ids)) => {
                    let mapped = match &e {
                        SmppError::Status(_) => SendError::CarrierRejected {
                            status_name: e
                                .status_name()
                                .map(|s| s.into_owned())
                                .unwrap_or_default(),
                        },
                        // The carrier may have the message: a session lost
                        // with it in the window, no answer, or an answer we
                        // cannot read. Outcome unknown (SPEC §4's 504), never
                        // a failover or a refund that invites a resend.
                        SmppError::Timeout | SmppError::LostInFlight | SmppError::Protocol(_) => {
                            SendError::CarrierTimeout
                        }
                        _ => SendError::NoRoute,
                    };
                    if accepted > 0 || !e.is_retryable() {
                        // Some segment reached the carrier, or the carrier
                        // gave a final answer: no failover (no duplicates).
                        // The accepted segments' ids stay in the record, so
                        // their receipts still find it.
                        let partial = (accepted > 0).then_some(Sent { carrier: i, ids });
                        return Err((mapped, partial));
                    }
                    tracing::warn!(carrier = %pool.name(), "carrier failed before accepting; failing over: {e}");
                    last = mapped;
                }
            }
        }
        Err((last, None))
    }
}

/// Who a send is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// An API client: its campaigns and the recipient's opt-out apply.
    Client,
    /// The relay's own answer to a STOP/START/HELP keyword: sent on the
    /// campaign the keyword came in on, through the same limits and routes,
    /// and also to a recipient who just opted out (the STOP confirmation).
    AutoReply,
}

/// The actor name of auto-replies in metrics, records and the audit log.
pub const AUTO_REPLY_ACTOR: &str = "sms-conduit:auto-reply";

impl Relay {
    /// Sends a keyword answer (`help_text`, `stop_text`, `start_text`) from
    /// our number `from` to `to`, through the normal send path.
    pub async fn auto_reply(
        &self,
        campaign: &str,
        from: E164,
        to: E164,
        text: String,
    ) -> Result<SendAccepted, SendError> {
        let req = SendRequest {
            from,
            to,
            text: crate::types::Body::new(text),
            campaign_id: campaign.to_owned(),
            validity: None,
            client_ref: None,
        };
        self.send_as(Origin::AutoReply, AUTO_REPLY_ACTOR, req, None)
            .await
    }
}

impl MessageService for Relay {
    async fn send(
        &self,
        client: &ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> Result<SendAccepted, SendError> {
        self.send_as(Origin::Client, client.as_str(), req, idempotency_key)
            .await
    }

    async fn get(&self, client: &ClientId, id: &str) -> Result<MessageView, SendError> {
        let rec = record::get_message(&self.inner.store, id).map_err(|e| {
            tracing::error!("reading a message record: {e}");
            SendError::Internal
        })?;
        let rec = rec
            .filter(|r| r.client == client.as_str())
            .ok_or(SendError::NotFound)?;
        view_of(rec)
    }
}

impl Relay {
    async fn send_as(
        &self,
        origin: Origin,
        cid: &str,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> Result<SendAccepted, SendError> {
        let t0 = Instant::now();
        let view = read(&self.inner.view);
        let campaign_id = req.campaign_id.as_str();
        let fail = |e: SendError| self.refuse(cid, campaign_id, Some(&req.to), e, t0);
        if origin == Origin::Client
            && !view
                .clients
                .get(cid)
                .is_some_and(|c| c.contains(&req.campaign_id))
        {
            return Err(fail(SendError::CampaignNotAllowed));
        }
        let Some(campaign) = view.campaigns.get(&req.campaign_id) else {
            return Err(fail(SendError::CampaignNotAllowed));
        };
        if !campaign.numbers.contains(&req.from) {
            return Err(fail(SendError::SenderNotInCampaign));
        }
        let info = encoding::analyze(req.text.expose());
        if info.segments > MAX_SEGMENTS {
            return Err(fail(SendError::InvalidRequest(format!(
                "`text` needs {} segments ({}); at most {MAX_SEGMENTS} are allowed",
                info.segments,
                info.encoding.as_str()
            ))));
        }
        let segments = info.segments as u32;
        if let Some(k) = &idempotency_key {
            if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(fail(SendError::InvalidRequest(
                    "`Idempotency-Key` must be 1 to 255 visible ASCII characters".into(),
                )));
            }
            let hash = self.request_hash(&req);
            let (c, kk, h) = (cid.to_owned(), k.clone(), hash.clone());
            let found = self
                .inner
                .store
                .write(move |t| record::begin_idempotent(t, &c, &kk, &h, now_ms()))
                .await
                .map_err(|e| {
                    tracing::error!("idempotency record: {e}");
                    fail(SendError::Internal)
                })?;
            if let Idem::Existing(r) = found {
                if r.request_hash != hash || r.state != "done" {
                    return Err(fail(SendError::IdempotencyConflict));
                }
                return self
                    .replay(cid, &r)
                    .ok_or_else(|| fail(SendError::IdempotencyConflict));
            }
        }
        let refuse_fresh = |e: SendError| async {
            self.forget(cid, &idempotency_key).await;
            Err(self.refuse(cid, campaign_id, Some(&req.to), e, t0))
        };
        let to_p = Pseudonym::of(&self.inner.pseudonym_key, &req.to);
        let opted_out = match origin {
            Origin::Client => self.inner.shared.is_opted_out(&campaign.id, &to_p.0).await,
            Origin::AutoReply => Ok(false),
        };
        match opted_out {
            Ok(false) => {}
            Ok(true) => return refuse_fresh(SendError::RecipientOptedOut).await,
            Err(e) => {
                tracing::error!("opt-out check: {e}");
                return refuse_fresh(SendError::Internal).await;
            }
        }
        let pools = &view.pools;
        let candidates = view.routes.candidates(&req.to, |i| {
            pools.get(i).is_some_and(|p| p.bound_transmitters() > 0)
        });
        if candidates.is_empty() {
            return refuse_fresh(SendError::NoRoute).await;
        }
        let limits = read(&self.inner.limits);
        if let Err(Refusal::RateLimited(retry_after)) =
            limits.take(&campaign.id, &req.from, segments)
        {
            return refuse_fresh(SendError::RateLimited { retry_after }).await;
        }
        // What this request holds of the limits, given back if it ends in a
        // definite refusal (nothing reached a carrier).
        let mut daily_taken: Option<(String, String)> = None;
        if let Some(brand) = view.brands.get(&campaign.brand).filter(|b| b.daily_cap > 0) {
            let (day, left) = local_day(brand.daily_reset_tz, chrono::Utc::now());
            match self
                .inner
                .shared
                .add_daily(&brand.id, &day, u64::from(segments), brand.daily_cap)
                .await
            {
                Ok(Ok(_)) => daily_taken = Some((brand.id.clone(), day)),
                Ok(Err(_)) => {
                    limits.refund(&campaign.id, &req.from, segments);
                    return refuse_fresh(SendError::DailyCapReached { retry_after: left }).await;
                }
                Err(e) => {
                    limits.refund(&campaign.id, &req.from, segments);
                    tracing::error!("daily cap counter: {e}");
                    return refuse_fresh(SendError::Internal).await;
                }
            }
        }
        let release = || async {
            limits.refund(&campaign.id, &req.from, segments);
            if let Some((brand, day)) = &daily_taken {
                if let Err(e) = self
                    .inner
                    .shared
                    .release_daily(brand, day, u64::from(segments))
                    .await
                {
                    tracing::error!("releasing a daily cap reservation: {e}");
                }
            }
        };
        let reference = self.inner.reference.fetch_add(1, Ordering::Relaxed);
        let enc = match encoding::encode(req.text.expose(), reference) {
            Ok(e) => e,
            Err(_) => {
                release().await;
                return refuse_fresh(SendError::InvalidRequest("`text` cannot be encoded".into()))
                    .await;
            }
        };
        let sent = Self::send_segments(pools, &candidates, &req, &enc).await;
        drop(enc);
        let created = now_ms();
        let id = record::message_id_at(created);
        let (sent, error) = match sent {
            Ok(s) => (s, None),
            Err((e, None)) => {
                // Nothing reached a carrier: a definite refusal, which
                // consumes nothing. A timeout's outcome is unknown: the
                // carrier may have taken it, so its cells stay spent.
                return match e {
                    SendError::CarrierTimeout => {
                        Err(self.refuse(cid, campaign_id, Some(&req.to), e, t0))
                    }
                    e => {
                        release().await;
                        refuse_fresh(e).await
                    }
                };
            }
            Err((e, Some(partial))) => (partial, Some(e)),
        };
        let carrier = pools[sent.carrier].name().to_owned();
        let rec = MessageRecord {
            id: id.clone(),
            client: cid.to_owned(),
            campaign: campaign.id.clone(),
            from: req.from.as_str().to_owned(),
            to_pseudonym: to_p.to_hex(),
            carrier: Some(carrier.clone()),
            carrier_ids: sent.ids.clone(),
            encoding: info.encoding.as_str().to_owned(),
            segments,
            status: if error.is_some() {
                "failed".into()
            } else {
                "accepted".into()
            },
            part_states: vec![None; segments as usize],
            error_code: error.as_ref().map(|e| e.code().to_owned()),
            client_ref: req.client_ref.clone(),
            created_ms: created,
            updated_ms: created,
        };
        let keys: Vec<String> = sent.ids.iter().filter_map(|s| dlr::index_key(s)).collect();
        // The outcome an idempotent retry replays, built only for a request
        // that has a key.
        let idem = idempotency_key.clone().map(|k| {
            let outcome = match &error {
                None => serde_json::json!({ "message_id": id }),
                Some(e) => serde_json::json!({ "message_id": id, "error": e.code() }),
            };
            (k, cid.to_owned(), outcome)
        });
        // Serialised here, not in the op: the store's writer thread, which
        // every op waits on, then only links and hashes it.
        let accepted = error
            .is_none()
            .then(|| {
                let ev = AuditEvent::MessageAccepted {
                    message_id: id.clone(),
                    client: cid.to_owned(),
                    campaign: campaign.id.clone(),
                    from: AuditNumber::of(&req.from, &self.inner.pseudonym_key, &view.own),
                    to: AuditNumber::from(to_p),
                    carrier: carrier.clone(),
                    segments,
                };
                Audit::prepare(ev, cid)
            })
            .transpose();
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(message = %id, "audit record of a sent message: {e}");
                return Err(self.refuse(cid, campaign_id, Some(&req.to), SendError::Internal, t0));
            }
        };
        // The metadata, the idempotency outcome and the audit record commit
        // in one transaction: no state change without its record. A local
        // carrier-id index rides in it too (one op, one wake-up).
        let local_index = self.inner.shared.index_is_local();
        let keys: Arc<[String]> = keys.into();
        let in_op = if local_index {
            keys.clone()
        } else {
            Arc::from([])
        };
        let op_carrier = carrier.clone();
        let write = self.inner.audit.write(move |atx| {
            record::put_message(atx.txn(), &rec)?;
            put_carrier_ids(atx.txn(), &op_carrier, &in_op, &rec.id)?;
            if let Some((k, c, outcome)) = &idem {
                record::finish_idempotent(atx.txn(), c, k, &rec.id, outcome.clone())?;
            }
            if let Some(p) = &accepted {
                atx.append_prepared(p)?;
            }
            Ok(())
        });
        let outcome = if local_index {
            write.await
        } else {
            let index = self.inner.shared.index_carrier_ids(&carrier, &keys, &id);
            let (w, x) = futures::join!(write, index);
            w.and(x)
        };
        if let Err(e) = outcome {
            tracing::error!(message = %id, "recording a sent message: {e}");
            return Err(self.refuse(cid, campaign_id, Some(&req.to), SendError::Internal, t0));
        }
        // Only now, the index committed: a hit there is a hit in the store.
        self.inner.recent.insert(&carrier, &keys, &id);
        let m = &self.inner.metrics;
        if let Some(e) = error {
            m.messages
                .with_label_values(&["mt", e.code(), &carrier])
                .inc();
            m.latency
                .with_label_values(&["refused"])
                .observe(t0.elapsed().as_secs_f64());
            return Err(e);
        }
        m.messages
            .with_label_values(&["mt", "accepted", &carrier])
            .inc();
        m.segments
            .with_label_values(&["mt", &carrier])
            .inc_by(u64::from(segments));
        m.latency
            .with_label_values(&["accepted"])
            .observe(t0.elapsed().as_secs_f64());
        Ok(SendAccepted {
            id,
            status: MessageStatus::Accepted,
            segments,
            encoding: api_encoding(info.encoding.as_str()),
            carrier,
            campaign_id: campaign.id.clone(),
            created_at: to_time(created),
        })
    }

    /// The first outcome of an idempotency key, replayed.
    fn replay(&self, client: &str, r: &record::IdempotencyRecord) -> Option<SendAccepted> {
        let outcome = r.outcome.as_ref()?;
        if outcome.get("error").is_some() {
            return None;
        }
        let id = r.message_id.as_deref()?;
        let rec = record::get_message(&self.inner.store, id).ok()??;
        if rec.client != client {
            return None;
        }
        Some(SendAccepted {
            id: rec.id,
            status: MessageStatus::Accepted,
            segments: rec.segments,
            encoding: api_encoding(&rec.encoding),
            carrier: rec.carrier.unwrap_or_default(),
            campaign_id: rec.campaign,
            created_at: to_time(rec.created_ms),
        })
    }
}

fn view_of(rec: MessageRecord) -> Result<MessageView, SendError> {
    let from = E164::parse(&rec.from).map_err(|_| SendError::Internal)?;
    Ok(MessageView {
        status: api_status(&rec.status),
        encoding: api_encoding(&rec.encoding),
        id: rec.id,
        campaign_id: rec.campaign,
        from,
        segments: rec.segments,
        carrier: rec.carrier,
        error_code: rec.error_code,
        client_ref: rec.client_ref,
        created_at: to_time(rec.created_ms),
        updated_at: to_time(rec.updated_ms),
    })
}

impl crate::api::OptOutService for Relay {
    fn opt_out_status<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> futures::future::BoxFuture<'a, Result<crate::api::OptOutView, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let p = Pseudonym::of(&self.inner.pseudonym_key, number);
            let opted_out = self
                .inner
                .shared
                .is_opted_out(campaign, &p.0)
                .await
                .map_err(|e| {
                    tracing::error!("opt-out look-up: {e}");
                    SendError::Internal
                })?;
            Ok(crate::api::OptOutView {
                campaign_id: campaign.to_owned(),
                number: number.clone(),
                opted_out,
            })
        })
    }

    fn opt_out_change<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
        change: crate::api::OptOutChange,
    ) -> futures::future::BoxFuture<'a, Result<crate::api::OptOutView, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let p = Pseudonym::of(&self.inner.pseudonym_key, number);
            let add = change == crate::api::OptOutChange::Add;
            let shared = &self.inner.shared;
            let internal = |e: crate::store::StoreError| {
                tracing::error!("opt-out change: {e}");
                SendError::Internal
            };
            let was = shared
                .is_opted_out(campaign, &p.0)
                .await
                .map_err(internal)?;
            if was != add {
                let r = if add {
                    shared.opt_out(campaign, &p.0).await
                } else {
                    shared.opt_in(campaign, &p.0).await
                };
                r.map_err(internal)?;
                let number_field = AuditNumber::from(p);
                let ev = if add {
                    AuditEvent::OptOutAdded {
                        campaign: campaign.to_owned(),
                        number: number_field,
                        via: "api",
                    }
                } else {
                    AuditEvent::OptOutRemoved {
                        campaign: campaign.to_owned(),
                        number: number_field,
                        via: "api",
                    }
                };
                if let Err(e) = self.inner.audit.record(ev, client.as_str()).await {
                    tracing::error!("audit record of an opt-out change: {e}");
                }
            }
            Ok(crate::api::OptOutView {
                campaign_id: campaign.to_owned(),
                number: number.clone(),
                opted_out: add,
            })
        })
    }
}

impl Relay {
    /// The client may administer only its own campaigns' opt-outs.
    fn own_campaign(&self, client: &ClientId, campaign: &str) -> Result<(), SendError> {
        let view = read(&self.inner.view);
        if view
            .clients
            .get(client.as_str())
            .is_some_and(|c| c.contains(campaign))
        {
            Ok(())
        } else {
            Err(SendError::CampaignNotAllowed)
        }
    }
}
