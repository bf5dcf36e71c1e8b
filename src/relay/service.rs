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

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::RwLock;
use zeroize::Zeroizing;

use super::domain::{
    ClientId, MessageService, MessageStatus, MessageView, OptOutChange, OptOutService, OptOutView,
    SendAccepted, SendRequest,
};
use super::error::SendError;
use super::inflight::{InFlight, Registration};
use super::limits::{local_day, Limits};
use super::recent::SentIds;
use super::record::{self, Idem, MessageRecord};
use super::route::Routes;
use crate::audit::{Audit, AuditEvent, AuditNumber, OwnNumbers};
use crate::config::{Brand, Campaign, Config};
use crate::metrics::Metrics;
use crate::smpp::{dlr, Pool, SmppError, SubmitRequest};
use crate::store::shared::{put_carrier_ids, Admission, Rate, SharedState, Verdict};
use crate::store::Store;
use crate::text::{self as encoding, Encoding};
use crate::types::{Pseudonym, Secret, E164};

/// The answer to a store or shared-state failure before anything was sent:
/// the shared state (fleet mode, Redis) has its own code.
fn unavailable(e: &crate::store::StoreError) -> SendError {
    match e {
        crate::store::StoreError::Shared(_) => SendError::SharedStateUnavailable,
        _ => SendError::StoreUnavailable,
    }
}

/// An opt-out API failure: 503 when the shared state is down, else 500.
fn internal_or_shared(e: &crate::store::StoreError) -> SendError {
    match e {
        crate::store::StoreError::Shared(_) => SendError::SharedStateUnavailable,
        _ => SendError::Internal,
    }
}

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
    /// Carrier ids of recent sends, so most receipts skip a store read,
    /// and of messages being sent whose record is not committed yet
    /// (shared with the receipt path).
    sent: SentIds,
    /// How long after its arrival a request may still write a submit_sm
    /// (its deadline less the carriers' response timeout).
    start_budget: Duration,
    /// This start's id, written into idempotency claims.
    boot: String,
    /// `[node] id`, written into the fleet's idempotency claims.
    node: String,
    /// Sends in their own tasks (they run to their recorded end even when
    /// the client goes away); the drain waits for them before unbinding.
    sends: tokio_util::task::TaskTracker,
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

fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// How long a request may wait for its first submit_sm to be written:
/// `[api] send_deadline_secs` less the longest carrier response timeout (a
/// written submit is answered, or timed out, within that), at least 1 s.
fn start_budget(cfg: &Config) -> Duration {
    let answer = cfg
        .carriers
        .iter()
        .map(|c| c.response_timeout)
        .max()
        .unwrap_or_default();
    cfg.api
        .send_deadline
        .saturating_sub(answer)
        .max(Duration::from_secs(1))
}

/// What came back from the carrier for a whole message.
struct Sent {
    carrier: usize,
    ids: Vec<String>,
}

impl Relay {
    /// A relay over `pools` (one per `cfg.carriers` entry, same order).
    /// `sent` is shared with the inbound handler, built before either.
    // Each argument is a separately built part of the appliance (app.rs);
    // a parts struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        pools: Vec<Pool>,
        store: Store,
        shared: Arc<dyn SharedState>,
        audit: Audit,
        metrics: Arc<Metrics>,
        background: tokio_util::task::TaskTracker,
        sent: SentIds,
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
                sent,
                start_budget: start_budget(cfg),
                sends: tokio_util::task::TaskTracker::new(),
                boot: record::new_boot_id(),
                node: cfg.node.id.clone(),
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

    /// Waits until every send started so far has ended (the drain, before
    /// the carriers are unbound).
    pub async fn sends_done(&self) {
        self.inner.sends.close();
        self.inner.sends.wait().await;
        self.inner.sends.reopen();
    }

    /// The pools, in config order.
    pub fn pools(&self) -> Vec<Pool> {
        read(&self.inner.view).pools.clone()
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

    /// Submits every segment on `pool`; the first error wins, with how
    /// many segments were accepted and their carrier ids (empty where not
    /// accepted; a carrier may also answer an empty id). No segment's
    /// submit_sm is written after `start_by`. Accepted segments are entered
    /// in `registration` as they are answered, so their receipts find the
    /// message before it commits.
    async fn submit_all(
        pool: &Pool,
        req: &SendRequest,
        enc: &encoding::Encoded,
        start_by: Instant,
        registration: Option<&mut Registration>,
    ) -> Result<Vec<String>, (SmppError, usize, Vec<String>)> {
        let esm_class = enc.esm_class_bits();
        let submit = |part: &[u8]| {
            pool.submit_by(
                SubmitRequest {
                    source: req.from.clone(),
                    dest: req.to.clone(),
                    short_message: Zeroizing::new(part.to_vec()),
                    data_coding: enc.data_coding(),
                    esm_class,
                    registered_delivery: 1,
                    validity: req.validity,
                },
                start_by,
            )
        };
        // Most messages are one segment: awaited directly, without a set
        // of futures or a vector of results.
        let Some(registration) = registration.filter(|_| enc.segments() > 1) else {
            let Some(only) = enc.parts().next() else {
                return Ok(Vec::new());
            };
            return match submit(only).await {
                Ok(resp) => Ok(vec![resp.message_id]),
                Err(e) => Err((e, 0, Vec::new())),
            };
        };
        // Segments go out in order on one session (Pool::submit_in_order);
        // each is entered as soon as it is answered, in whatever order the
        // answers come.
        let reqs: Vec<SubmitRequest> = enc
            .parts()
            .map(|part| SubmitRequest {
                source: req.from.clone(),
                dest: req.to.clone(),
                short_message: Zeroizing::new(part.to_vec()),
                data_coding: enc.data_coding(),
                esm_class,
                registered_delivery: 1,
                validity: req.validity,
            })
            .collect();
        let mut pending: FuturesUnordered<_> = pool
            .submit_in_order(reqs, start_by)
            .into_iter()
            .enumerate()
            .map(|(i, f)| async move { (i, f.await) })
            .collect();
        let mut ids = vec![String::new(); enc.segments()];
        let (mut accepted, mut first_err) = (0, None);
        while let Some((i, r)) = pending.next().await {
            match r {
                Ok(resp) => {
                    registration.add(pool.name(), &resp.message_id);
                    accepted += 1;
                    if let Some(slot) = ids.get_mut(i) {
                        *slot = resp.message_id;
                    }
                }
                Err(e) => {
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
        start_by: Instant,
        mut registration: Option<&mut Registration>,
    ) -> Result<Sent, (SendError, Option<Sent>)> {
        let mut last = SendError::CarrierUnavailable {
            retry_after: CARRIER_RETRY_AFTER,
        };
        for &i in candidates {
            let Some(pool) = pools.get(i) else { continue };
            match Self::submit_all(pool, req, enc, start_by, registration.as_deref_mut()).await {
                Ok(ids) => return Ok(Sent { carrier: i, ids }),
                Err((e, accepted, ids)) => {
                    let mapped = send_error(&e);
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

/// The one mapping from an SMPP client error to the send path's error.
fn send_error(e: &SmppError) -> SendError {
    match e {
        SmppError::Status(_) => SendError::CarrierRejected {
            status_name: e.status_name().map(|s| s.into_owned()).unwrap_or_default(),
        },
        // The carrier may have the message: a session lost with it in the
        // window, no answer, or an answer we cannot read. Outcome unknown
        // (SPEC §4's 504), never a failover or a refund that invites a
        // resend.
        SmppError::Timeout | SmppError::LostInFlight | SmppError::Protocol(_) => {
            SendError::CarrierTimeout
        }
        // Nothing was written: the pool could not start the submit in the
        // request's time (paced, throttled, or no session).
        _ => SendError::CarrierUnavailable {
            retry_after: CARRIER_RETRY_AFTER,
        },
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

/// A keyword's answer (the campaign's STOP/START/HELP text) the MO path
/// asks the relay to send; see [`Relay::answer_keywords`].
#[derive(Debug)]
pub struct KeywordReply {
    pub campaign: String,
    /// Our number the MO was sent to: the answer's sender.
    pub from: E164,
    /// Who sent the keyword.
    pub to: E164,
    /// The configured answer (not a patient's text).
    pub text: String,
}

/// How many keyword answers may wait for the relay: far more than MO
/// arrive in the time one send task takes to start.
pub const KEYWORD_REPLY_QUEUE: usize = 1024;

impl Relay {
    /// Sends the keyword answers the MO path queues, each through the
    /// normal send path in a background task (the drain waits for them),
    /// until `stop`, and then the ones still queued. The channel breaks
    /// what would otherwise be a cycle: the relay needs the carrier pools,
    /// the pools need the inbound handler, and the handler answers
    /// keywords through the relay.
    pub async fn answer_keywords(
        self,
        mut queue: tokio::sync::mpsc::Receiver<KeywordReply>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                r = queue.recv() => r,
                () = stop.cancelled() => None,
            };
            let Some(reply) = next else { break };
            self.spawn_reply(reply);
        }
        queue.close();
        while let Ok(reply) = queue.try_recv() {
            self.spawn_reply(reply);
        }
    }

    fn spawn_reply(&self, r: KeywordReply) {
        let relay = self.clone();
        self.inner.background.spawn(async move {
            if let Err(e) = relay.auto_reply(&r.campaign, r.from, r.to, r.text).await {
                tracing::warn!(campaign = %r.campaign, "keyword answer not sent: {}", e.code());
            }
        });
    }
}

impl MessageService for Relay {
    /// The send runs in its own task: once a submit_sm is written it runs
    /// to its recorded end (record, audit, idempotency outcome) even if the
    /// client goes away and this future is dropped (SPEC §4).
    async fn send(
        &self,
        client: &ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> Result<SendAccepted, SendError> {
        let (relay, client) = (self.clone(), client.clone());
        let task = self.inner.sends.spawn(async move {
            relay
                .send_as(Origin::Client, client.as_str(), req, idempotency_key)
                .await
        });
        task.await.unwrap_or_else(|e| {
            tracing::error!("a send task failed: {e}");
            Err(SendError::Internal)
        })
    }

    async fn get(&self, client: &ClientId, id: &str) -> Result<MessageView, SendError> {
        let rec = record::get_message(&self.inner.store, id).map_err(|e| {
            tracing::error!("reading a message record: {e}");
            SendError::Internal
        })?;
        let rec = match rec {
            Some(rec) => Some(rec),
            None if self.inner.shared.messages_are_shared() => {
                // Fleet mode: another node sent it; its projection.
                let p = self.inner.shared.projected_message(id).await.map_err(|e| {
                    tracing::error!("reading a message projection: {e}");
                    unavailable(&e)
                })?;
                p.and_then(|b| record::decode_message(id, &b).ok())
            }
            None => None,
        };
        let rec = rec
            .filter(|r| r.client == client.as_str())
            .ok_or(SendError::NotFound)?;
        view_of(rec)
    }
}

impl Relay {
    /// The send path in phases: authorize → reserve → claim → deliver →
    /// commit. Each phase returns a typed value or the refusal; what the
    /// request holds of the limits and its idempotency key is a
    /// [`Reservation`] that gives everything back unless a carrier may have
    /// the message.
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
        let (campaign, info) = self.authorize(origin, cid, &req, &view).map_err(fail)?;
        let segments = info.segments as u32;
        let key = match idempotency_key {
            Some(k) => Some(IdempotencyKey::parse(k).map_err(fail)?),
            None => None,
        };
        // Nothing goes to a carrier from a node that cannot record it.
        if !self.inner.store.is_healthy() {
            return Err(fail(SendError::StoreUnavailable));
        }
        let to_p = Pseudonym::of(&self.inner.pseudonym_key, &req.to);
        // A shared backend checks it atomically with the limits (reserve).
        if origin == Origin::Client && !self.inner.shared.admission_checks_opt_out() {
            match self.inner.shared.is_opted_out(&campaign.id, &to_p.0).await {
                Ok(false) => {}
                Ok(true) => return Err(fail(SendError::RecipientOptedOut)),
                Err(e) => {
                    tracing::error!("opt-out check: {e}");
                    return Err(fail(unavailable(&e)));
                }
            }
            if campaign.require_opt_in {
                super::consent::require(&*self.inner.shared, &campaign.id, &to_p.0)
                    .await
                    .map_err(fail)?;
            }
        }
        let candidates = Self::route(&view, &req.to).map_err(fail)?;
        let mut reservation = self
            .reserve(
                cid,
                campaign,
                &view,
                &req.from,
                segments,
                (origin == Origin::Client).then_some(to_p.0),
            )
            .await
            .map_err(fail)?;
        let created = now_ms();
        let id = record::message_id_at(created);
        if let Some(k) = &key {
            match self.claim(cid, k, &req, &id, &mut reservation).await {
                Ok(Claimed::Fresh) => {}
                Ok(Claimed::Replay(a)) => {
                    reservation.release().await;
                    return Ok(a);
                }
                Err(e) => {
                    reservation.release().await;
                    return Err(fail(e));
                }
            }
        }
        let reference = self.inner.reference.fetch_add(1, Ordering::Relaxed);
        let Ok(enc) = encoding::encode(req.text.expose(), reference) else {
            reservation.release().await;
            return Err(fail(SendError::InvalidRequest(
                "`text` cannot be encoded".into(),
            )));
        };
        let mut registration =
            (segments > 1).then(|| InFlight::register(&self.inner.sent.inflight, &id));
        let start_by = t0 + self.inner.start_budget;
        let sent = Self::send_segments(
            &view.pools,
            &candidates,
            &req,
            &enc,
            start_by,
            registration.as_mut(),
        )
        .await;
        drop(enc);
        let (sent, error) = match sent {
            Ok(s) => (s, None),
            Err((e, None)) => {
                // Nothing reached a carrier: a definite refusal, which
                // consumes nothing. A timeout's outcome is unknown: the
                // carrier may have taken it, so its cells and the key stay
                // spent (the key's claim replays "outcome unknown").
                if e == SendError::CarrierTimeout {
                    reservation.keep();
                    self.finish_unknown(cid, &key, &id).await;
                } else {
                    reservation.release().await;
                }
                return Err(fail(e));
            }
            Err((e, Some(partial))) => (partial, Some(e)),
        };
        reservation.keep();
        let carrier = view.pools[sent.carrier].name().to_owned();
        let rec = MessageRecord {
            id: id.clone(),
            client: cid.to_owned(),
            campaign: campaign.id.clone(),
            from: req.from.as_str().to_owned(),
            to_pseudonym: to_p.to_hex(),
            carrier: Some(carrier.clone()),
            carrier_ids: sent.ids,
            encoding: info.encoding,
            segments,
            status: if error.is_some() {
                MessageStatus::Failed
            } else {
                MessageStatus::Accepted
            },
            part_states: vec![None; segments as usize],
            error_code: error.as_ref().map(|e| e.code().to_owned()),
            client_ref: req.client_ref.clone(),
            created_ms: created,
            updated_ms: created,
        };
        let accepted = error.is_none().then(|| AuditEvent::MessageAccepted {
            message_id: id.clone(),
            client: cid.to_owned(),
            campaign: campaign.id.clone(),
            from: AuditNumber::of(&req.from, &self.inner.pseudonym_key, &view.own),
            to: AuditNumber::from(to_p),
            carrier: carrier.clone(),
            segments,
        });
        let outcome = Arc::new(Outcome::new(rec, key, error.as_ref(), accepted, cid));
        let recorded = self.commit(&outcome).await;
        if let (Some(r), true) = (&registration, recorded.is_ok()) {
            r.pending.finish(true);
        }
        if let Err(e) = recorded {
            // The carrier has the message and this node could not record
            // it: the client must not be told 5xx-and-sent, so it gets the
            // unknown-outcome 504, and the record is retried in the
            // background until the store takes it (its receipts wait for
            // it, see `InFlight`).
            tracing::error!(message = %id, "recording a sent message: {e}; retrying in the background");
            self.record_later(outcome, registration);
            return Err(self.refuse(
                cid,
                campaign_id,
                Some(&req.to),
                SendError::CarrierTimeout,
                t0,
            ));
        }
        drop(registration);
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
            encoding: info.encoding,
            carrier,
            campaign_id: campaign.id.clone(),
            created_at: to_time(created),
        })
    }

    /// The first outcome of an idempotency key, replayed.
    fn replay(&self, client: &str, r: &record::IdempotencyRecord) -> Replay {
        let Some(outcome) = r.outcome.as_ref() else {
            return Replay::Other;
        };
        match outcome.get("error").and_then(|e| e.as_str()) {
            Some("carrier_timeout") => return Replay::Unknown,
            Some(_) => return Replay::Other,
            None => {}
        }
        let Some(id) = r.message_id.as_deref() else {
            return Replay::Other;
        };
        let rec = match record::get_message(&self.inner.store, id) {
            Ok(Some(rec)) => rec,
            // Fleet mode: the first attempt was another node's.
            Ok(None) => return Self::replay_outcome(id, outcome),
            Err(_) => return Replay::Other,
        };
        if rec.client != client {
            return Replay::Other;
        }
        Replay::Accepted(SendAccepted {
            id: rec.id,
            status: MessageStatus::Accepted,
            segments: rec.segments,
            encoding: rec.encoding,
            carrier: rec.carrier.unwrap_or_default(),
            campaign_id: rec.campaign,
            created_at: to_time(rec.created_ms),
        })
    }
}

impl Relay {
    /// Fleet mode: projects a record's status for the other nodes' `GET`
    /// ([`record::project`]).
    async fn project(&self, rec: &MessageRecord) {
        record::project(&*self.inner.shared, rec).await;
    }

    /// The 201 of a first attempt made at another node of the fleet, from
    /// its recorded outcome (see `Outcome::new`).
    fn replay_outcome(id: &str, o: &serde_json::Value) -> Replay {
        let (Some(segments), Some(encoding), Some(campaign), Some(created)) = (
            o.get("segments").and_then(|v| v.as_u64()),
            o.get("encoding").and_then(|v| v.as_str()),
            o.get("campaign_id").and_then(|v| v.as_str()),
            o.get("created_ms").and_then(|v| v.as_u64()),
        ) else {
            return Replay::Other;
        };
        Replay::Accepted(SendAccepted {
            id: id.to_owned(),
            status: MessageStatus::Accepted,
            segments: u32::try_from(segments).unwrap_or(u32::MAX),
            encoding: Encoding::parse(encoding),
            carrier: o
                .get("carrier")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            campaign_id: campaign.to_owned(),
            created_at: to_time(created),
        })
    }
}

/// A validated `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a header value; the error names the header, never the value.
    pub fn parse(k: String) -> Result<Self, SendError> {
        if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SendError::InvalidRequest(
                "`Idempotency-Key` must be 1 to 255 visible ASCII characters".into(),
            ));
        }
        Ok(IdempotencyKey(k))
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a send holds of the limits and of its idempotency key until it is
/// known whether a carrier may have the message. [`Reservation::release`]
/// gives it all back (a definite refusal consumes nothing);
/// [`Reservation::keep`] keeps it (a carrier may have the message). Dropped
/// with neither (a panic), it is given back from a background task.
struct Reservation<'a> {
    relay: &'a Relay,
    /// The node's own cells (the local shared state refunds them).
    limits: Arc<Limits>,
    client: &'a str,
    /// What the admission took; `None` once given back.
    admission: Option<Admission>,
    /// The idempotency key this request claimed.
    key: Option<String>,
    done: bool,
}

impl Reservation<'_> {
    fn keep(&mut self) {
        self.done = true;
    }

    /// Gives back the cells, the daily segments and the key, awaited, so a
    /// retry right after the refusal finds them free.
    async fn release(mut self) {
        self.done = true;
        let (admission, key) = (self.admission.take(), self.key.take());
        self.relay
            .give_back(self.client.to_owned(), admission, self.limits.clone(), key)
            .await;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (relay, client) = (self.relay.clone(), self.client.to_owned());
        let (admission, key, limits) =
            (self.admission.take(), self.key.take(), self.limits.clone());
        self.relay.inner.background.spawn(async move {
            relay.give_back(client, admission, limits, key).await;
        });
    }
}

/// Everything a sent message's record commits, kept so that a commit that
/// failed can be retried later ([`Relay::record_later`]).
struct Outcome {
    rec: MessageRecord,
    /// The carrier-id index keys of the accepted segments.
    keys: Arc<[String]>,
    /// (key, client, the outcome a retry with the key replays).
    idem: Option<(String, String, serde_json::Value)>,
    /// The accepted message's audit record, serialised off the writer.
    accepted: Option<crate::audit::Prepared>,
}

impl Outcome {
    fn new(
        rec: MessageRecord,
        key: Option<IdempotencyKey>,
        error: Option<&SendError>,
        accepted: Option<AuditEvent>,
        actor: &str,
    ) -> Self {
        let keys: Vec<String> = rec
            .carrier_ids
            .iter()
            .filter_map(|s| dlr::index_key(s))
            .collect();
        let idem = key.map(|k| {
            let outcome = match error {
                // What a retry at another node of a fleet replays (it
                // has no record of the message).
                None => serde_json::json!({
                    "message_id": rec.id,
                    "segments": rec.segments,
                    "encoding": rec.encoding,
                    "carrier": rec.carrier,
                    "campaign_id": rec.campaign,
                    "created_ms": rec.created_ms,
                }),
                Some(e) => serde_json::json!({ "message_id": rec.id, "error": e.code() }),
            };
            (k.0, rec.client.clone(), outcome)
        });
        // Serialised here, not in the op: the store's writer thread, which
        // every op waits on, then only links and hashes it.
        let accepted = match accepted.map(|ev| Audit::prepare(ev, actor)).transpose() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(message = %rec.id, "audit record of a sent message: {e}");
                None
            }
        };
        Outcome {
            rec,
            keys: keys.into(),
            idem,
            accepted,
        }
    }
}

/// What claiming an idempotency key found.
enum Claimed {
    /// The key is new: this request sends.
    Fresh,
    /// The key's first attempt was accepted: its answer, replayed.
    Replay(SendAccepted),
}

/// What a finished idempotency key's first outcome replays as.
enum Replay {
    Accepted(SendAccepted),
    /// The carrier may have had it (a timeout).
    Unknown,
    /// Anything else: a conflict, as before.
    Other,
}

/// First wait before a failed record is written again; doubles to
/// [`RECORD_RETRY_MAX`]. The store reopens itself with a similar back-off.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between tries of a failed record.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(10);

/// How long a client is asked to wait when no route's carrier is bound:
/// about what a pool's reconnect takes after a dropped session.
const CARRIER_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Relay {
    /// Phase 1: may this client send this message at all? Campaign,
    /// sender number, segment count. Changes nothing.
    fn authorize<'v>(
        &self,
        origin: Origin,
        cid: &str,
        req: &SendRequest,
        view: &'v View,
    ) -> Result<(&'v Campaign, encoding::TextInfo), SendError> {
        if origin == Origin::Client
            && !view
                .clients
                .get(cid)
                .is_some_and(|c| c.contains(&req.campaign_id))
        {
            return Err(SendError::CampaignNotAllowed);
        }
        let Some(campaign) = view.campaigns.get(&req.campaign_id) else {
            return Err(SendError::CampaignNotAllowed);
        };
        if !campaign.numbers.contains(&req.from) {
            return Err(SendError::SenderNotInCampaign);
        }
        let info = encoding::analyze(req.text.expose());
        if info.segments > MAX_SEGMENTS {
            return Err(SendError::InvalidRequest(format!(
                "`text` needs {} segments ({}); at most {MAX_SEGMENTS} are allowed",
                info.segments,
                info.encoding.as_str()
            )));
        }
        Ok((campaign, info))
    }

    /// The carriers that can take `to` now, best first: none configured is
    /// permanent (`no_route`), none bound is temporary
    /// (`carrier_unavailable`).
    fn route(view: &View, to: &E164) -> Result<Vec<usize>, SendError> {
        let pools = &view.pools;
        let candidates = view.routes.candidates(to, |i| {
            pools.get(i).is_some_and(|p| p.bound_transmitters() > 0)
        });
        if !candidates.is_empty() {
            return Ok(candidates);
        }
        if view.routes.candidates(to, |_| true).is_empty() {
            Err(SendError::NoRoute)
        } else {
            Err(SendError::CarrierUnavailable {
                retry_after: CARRIER_RETRY_AFTER,
            })
        }
    }

    /// Phase 2: takes the campaign and number cells and the brand's daily
    /// segments, all or none, in one call to the shared state (which also
    /// checks `recipient`'s opt-out when it does so atomically, see
    /// [`SharedState::admission_checks_opt_out`]).
    async fn reserve<'a>(
        &'a self,
        cid: &'a str,
        campaign: &'a Campaign,
        view: &View,
        from: &'a E164,
        segments: u32,
        recipient: Option<[u8; 32]>,
    ) -> Result<Reservation<'a>, SendError> {
        let limits = read(&self.inner.limits);
        let shared = &self.inner.shared;
        let (daily, left) = match view.brands.get(&campaign.brand).filter(|b| b.daily_cap > 0) {
            Some(b) => {
                let (day, left) = local_day(b.daily_reset_tz, chrono::Utc::now());
                (Some((day, b.daily_cap)), left)
            }
            None => (None, Duration::ZERO),
        };
        let nspm = campaign.number_segments_per_minute;
        let admission = Admission {
            campaign: campaign.id.clone(),
            brand: campaign.brand.clone(),
            campaign_rate: Rate {
                per_minute: campaign.segments_per_minute,
                burst: campaign.burst,
            },
            from: from.clone(),
            // A number's burst is at most the campaign burst (as `Limits`).
            number_rate: (nspm > 0).then(|| Rate {
                per_minute: nspm,
                burst: campaign.burst.min(nspm).max(1),
            }),
            daily,
            recipient: recipient.filter(|_| shared.admission_checks_opt_out()),
            segments,
        };
        match shared.admit(&admission, &*limits).await {
            Ok(Verdict::Admitted) => {}
            Ok(Verdict::OptedOut) => return Err(SendError::RecipientOptedOut),
            Ok(Verdict::RateLimited(retry_after)) => {
                return Err(SendError::RateLimited { retry_after })
            }
            Ok(Verdict::DailyCapReached) => {
                return Err(SendError::DailyCapReached { retry_after: left })
            }
            Err(e) => {
                tracing::error!("admission (opt-out, rate, daily cap): {e}");
                return Err(unavailable(&e));
            }
        }
        Ok(Reservation {
            relay: self,
            limits,
            client: cid,
            admission: Some(admission),
            key: None,
            done: false,
        })
    }

    /// Phase 3 (with an `Idempotency-Key`): claims the key durably before
    /// anything is sent, with the message id and this process's boot id, so
    /// that a retry (here or after a crash) can tell "in flight", "outcome
    /// known" and "may have reached the carrier" apart.
    async fn claim(
        &self,
        cid: &str,
        key: &IdempotencyKey,
        req: &SendRequest,
        id: &str,
        reservation: &mut Reservation<'_>,
    ) -> Result<Claimed, SendError> {
        let hash = self.request_hash(req);
        let found = if self.inner.shared.idempotency_is_shared() {
            // Fleet mode: one claim for every node (a retry may land on
            // another one); an unverifiable key fails closed.
            let claim = record::IdempotencyRecord::pending(
                &hash,
                id,
                &self.inner.boot,
                Some(&self.inner.node),
                now_ms(),
            );
            let claim = claim.to_json().map_err(|_| SendError::Internal)?;
            let shared = &self.inner.shared;
            match shared.claim_idempotency(cid, key.as_str(), &claim).await {
                Ok(None) => Idem::Fresh,
                Ok(Some(v)) => {
                    Idem::Existing(record::IdempotencyRecord::from_json(&v).map_err(|e| {
                        tracing::error!("shared idempotency record: {e}");
                        SendError::IdempotencyConflict
                    })?)
                }
                Err(e) => {
                    tracing::error!("idempotency claim: {e}");
                    return Err(unavailable(&e));
                }
            }
        } else {
            let (c, k, h, i, b) = (
                cid.to_owned(),
                key.as_str().to_owned(),
                hash.clone(),
                id.to_owned(),
                self.inner.boot.clone(),
            );
            self.inner
                .store
                .write(move |t| record::begin_idempotent(t, &c, &k, &h, &i, &b, now_ms()))
                .await
                .map_err(|e| {
                    tracing::error!("idempotency record: {e}");
                    SendError::StoreUnavailable
                })?
        };
        let r = match found {
            Idem::Fresh => {
                reservation.key = Some(key.as_str().to_owned());
                return Ok(Claimed::Fresh);
            }
            Idem::Existing(r) => r,
        };
        if r.request_hash != hash {
            return Err(SendError::IdempotencyConflict);
        }
        match r.phase_at(&self.inner.node, &self.inner.boot) {
            record::IdemPhase::InFlight => Err(SendError::IdempotencyConflict),
            record::IdemPhase::Interrupted => Err(SendError::IdempotencyOutcomeUnknown),
            record::IdemPhase::Done => match self.replay(cid, &r) {
                Replay::Accepted(a) => Ok(Claimed::Replay(a)),
                Replay::Unknown => Err(SendError::IdempotencyOutcomeUnknown),
                Replay::Other => Err(SendError::IdempotencyConflict),
            },
        }
    }

    /// Gives back what the admission took and forgets the claimed key of a
    /// send that reached no carrier.
    async fn give_back(
        &self,
        client: String,
        admission: Option<Admission>,
        limits: Arc<Limits>,
        key: Option<String>,
    ) {
        if let Some(a) = admission {
            if let Err(e) = self.inner.shared.refund(&a, &*limits).await {
                tracing::error!("giving back an admission: {e}");
            }
        }
        if let Some(k) = key {
            let forgot = if self.inner.shared.idempotency_is_shared() {
                self.inner.shared.forget_idempotency(&client, &k).await
            } else {
                self.inner
                    .store
                    .write(move |t| record::forget_idempotent(t, &client, &k))
                    .await
            };
            if let Err(e) = forgot {
                tracing::error!("forgetting an idempotency key: {e}");
            }
        }
    }

    /// Marks a claimed key's outcome unknown (no answer from the carrier).
    async fn finish_unknown(&self, cid: &str, key: &Option<IdempotencyKey>, id: &str) {
        let Some(k) = key else { return };
        let (c, k, i) = (cid.to_owned(), k.as_str().to_owned(), id.to_owned());
        let outcome = serde_json::json!({ "message_id": i, "error": "carrier_timeout" });
        let finished = if self.inner.shared.idempotency_is_shared() {
            let shared = &self.inner.shared;
            shared.finish_idempotency(&c, &k, &i, &outcome).await
        } else {
            self.inner
                .store
                .write(move |t| record::finish_idempotent(t, &c, &k, &i, outcome.clone()))
                .await
        };
        if let Err(e) = finished {
            // The claim stays in flight, which a retry also refuses.
            tracing::error!("recording an unknown outcome: {e}");
        }
    }

    /// Phase 5: the metadata, the idempotency outcome and the audit record
    /// commit in one transaction (no state change without its record); a
    /// local carrier-id index rides in it too (one op, one wake-up).
    async fn commit(&self, o: &Arc<Outcome>) -> Result<(), crate::store::StoreError> {
        let local_index = self.inner.shared.index_is_local();
        let carrier = o.rec.carrier.clone().unwrap_or_default();
        let op = {
            let o = o.clone();
            move |atx: &mut crate::audit::AuditTxn<'_, '_>| {
                record::put_message(atx.txn(), &o.rec)?;
                if local_index {
                    put_carrier_ids(
                        atx.txn(),
                        o.rec.carrier.as_deref().unwrap_or(""),
                        &o.keys,
                        &o.rec.id,
                    )?;
                }
                if let Some((k, c, outcome)) = &o.idem {
                    record::finish_idempotent(atx.txn(), c, k, &o.rec.id, outcome.clone())?;
                }
                if let Some(p) = &o.accepted {
                    atx.append_prepared(p)?;
                }
                Ok(())
            }
        };
        let write = self.inner.audit.write(op);
        if local_index {
            write.await?;
        } else {
            let index = self
                .inner
                .shared
                .index_carrier_ids(&carrier, &o.keys, &o.rec.id);
            let (w, x) = futures::join!(write, index);
            w.and(x)?;
        }
        // Only now, the index committed: a hit there is a hit in the store.
        self.inner.sent.recent.insert(&carrier, &o.keys, &o.rec.id);
        self.project(&o.rec).await;
        if let (true, Some((k, c, outcome))) = (self.inner.shared.idempotency_is_shared(), &o.idem)
        {
            // The message is recorded whatever happens here: a key left
            // pending makes a retry answer 409, never send again.
            let shared = &self.inner.shared;
            if let Err(e) = shared.finish_idempotency(c, k, &o.rec.id, outcome).await {
                tracing::error!(message = %o.rec.id, "idempotency outcome: {e}");
            }
        }
        Ok(())
    }

    /// Retries the record of a message a carrier accepted until the store
    /// takes it; the message's receipts wait for it meanwhile.
    fn record_later(&self, outcome: Arc<Outcome>, registration: Option<Registration>) {
        let relay = self.clone();
        self.inner.background.spawn(async move {
            let mut wait = RECORD_RETRY_FIRST;
            loop {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_RETRY_MAX);
                if !relay.inner.store.is_healthy() {
                    continue;
                }
                match relay.commit(&outcome).await {
                    Ok(()) => {
                        tracing::info!(message = %outcome.rec.id, "sent message recorded after the store recovered");
                        if let Some(r) = &registration {
                            r.pending.finish(true);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(message = %outcome.rec.id, "recording a sent message again: {e}"),
                }
            }
        });
    }
}

fn view_of(rec: MessageRecord) -> Result<MessageView, SendError> {
    let from = E164::parse(&rec.from).map_err(|_| SendError::Internal)?;
    Ok(MessageView {
        status: rec.status,
        encoding: rec.encoding,
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

impl OptOutService for Relay {
    fn opt_out_status<'a>(
        &'a self,
        client: &'a ClientId,
        campaign: &'a str,
        number: &'a E164,
    ) -> futures::future::BoxFuture<'a, Result<OptOutView, SendError>> {
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
                    internal_or_shared(&e)
                })?;
            Ok(OptOutView {
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
        change: OptOutChange,
    ) -> futures::future::BoxFuture<'a, Result<OptOutView, SendError>> {
        Box::pin(async move {
            self.own_campaign(client, campaign)?;
            let p = Pseudonym::of(&self.inner.pseudonym_key, number);
            let add = change == OptOutChange::Add;
            let shared = &self.inner.shared;
            let internal = |e: crate::store::StoreError| {
                tracing::error!("opt-out change: {e}");
                internal_or_shared(&e)
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
            Ok(OptOutView {
                campaign_id: campaign.to_owned(),
                number: number.clone(),
                opted_out: add,
            })
        })
    }
}

impl Relay {
    /// What [`super::consent`] needs: the shared state, the audit log and
    /// the pseudonym key.
    pub(crate) fn consent_parts(&self) -> (&Arc<dyn SharedState>, &Audit, &Secret) {
        (
            &self.inner.shared,
            &self.inner.audit,
            &self.inner.pseudonym_key,
        )
    }

    /// The client may administer only its own campaigns' opt-outs (and
    /// consents).
    pub(crate) fn own_campaign(&self, client: &ClientId, campaign: &str) -> Result<(), SendError> {
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
