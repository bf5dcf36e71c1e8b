//! The send path: `POST /v1/messages` from an authenticated client to a
//! carrier's submit_sm_resp, and `GET /v1/messages/{id}`.
//!
//! Order of checks (cheapest and most specific first, nothing consumed by a
//! refusal): campaign allowed → sender in campaign → text fits 10 segments →
//! idempotency key → opt-out → a bound route → campaign/number rate →
//! brand daily cap → encode and submit every segment → metadata committed →
//! 201. The text lives only in the request's [`Body`] and the encoder's
//! zeroizing buffer, for the life of this call.
//!
//! Code map: this file holds the [`Relay`], its config view, and
//! [`Relay::send_as`] reading as its phases: **authorize** (here) →
//! **reserve** ([`reserve`]: the [`Reservation`] guard) → **claim**
//! ([`idempotency`]) → **deliver** ([`deliver`]) → **commit** ([`commit`]).
//! [`keywords`] sends the MO path's keyword answers; [`admin`] serves the
//! opt-out and consent administration.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use prometheus::core::Collector;
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
use crate::live::Part;
use crate::metrics::Metrics;
use crate::smpp::{dlr, Pool, SmppError, SubmitRequest};
use crate::store::shared::{put_carrier_ids, Admission, Rate, SharedState, Verdict};
use crate::store::Store;
use crate::text::{self as encoding, Encoding};
use crate::types::{Pseudonym, Secret, E164};

mod admin;
mod commit;
mod deliver;
mod idempotency;
mod keywords;
mod reserve;

use commit::Outcome;
use idempotency::Claimed;
pub use idempotency::IdempotencyKey;
pub use keywords::{KeywordReply, KEYWORD_REPLY_QUEUE};
use reserve::Reservation;

/// The answer to a store or shared-state failure before anything was sent:
/// the shared state (fleet mode, Redis) has its own code.
fn unavailable(e: &crate::store::StoreError) -> SendError {
    match e {
        crate::store::StoreError::Shared(_) => SendError::SharedStateUnavailable,
        _ => SendError::StoreUnavailable,
    }
}

/// An opt-out or consent API failure: 503 when the shared state is down,
/// else 500.
pub(super) fn internal_or_shared(e: &crate::store::StoreError) -> SendError {
    match e {
        crate::store::StoreError::Shared(_) => SendError::SharedStateUnavailable,
        _ => SendError::Internal,
    }
}

/// At most this many segments per message (SPEC §4).
pub const MAX_SEGMENTS: usize = 10;

/// The config the send path reads: the relay's part of the live
/// configuration, swapped with the whole snapshot on reload. A request
/// reads it once and uses that one value throughout.
pub struct View {
    /// client id → campaign ids it may use.
    clients: HashMap<String, HashSet<String>>,
    campaigns: HashMap<String, Campaign>,
    brands: HashMap<String, Brand>,
    routes: Routes,
    /// One pool per `[[carriers]]` entry, in config order (as `routes`):
    /// swapped together with the routes so indices always agree.
    pools: Vec<Pool>,
    own: OwnNumbers,
    /// The campaigns' and numbers' rate cells for these campaigns: in the
    /// same snapshot, so a request never sees new campaigns with old
    /// limits (a reload carries the spent cells over).
    limits: Arc<Limits>,
}

impl View {
    /// The view of `cfg` over `pools` (one per `cfg.carriers` entry, same
    /// order; the app keeps the pools of carriers whose settings did not
    /// change). With `carried`, the view it replaces, the cells campaigns
    /// and numbers have spent carry over.
    pub fn of(cfg: &Config, pools: Vec<Pool>, carried: Option<&View>) -> Self {
        let limits = Limits::new(cfg);
        if let Some(old) = carried {
            limits.carry_over_from(&old.limits);
        }
        Self::new(cfg, pools, limits)
    }

    /// The pools, in config order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    fn new(cfg: &Config, pools: Vec<Pool>, limits: Limits) -> Self {
        View {
            pools,
            limits: Arc::new(limits),
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
    /// The relay's part of the live configuration.
    view: Part<View>,
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
    /// A relay reading its configuration from `view` (the app: its part of
    /// the live snapshot; see [`View::of`]); `cfg` gives what is fixed for
    /// the life of the relay (the pseudonym key, the node id, the start
    /// budget). `sent` is shared with the inbound handler, built before
    /// either.
    // Each argument is a separately built part of the appliance (app.rs);
    // a parts struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        view: Part<View>,
        store: Store,
        shared: Arc<dyn SharedState>,
        audit: Audit,
        metrics: Arc<Metrics>,
        background: tokio_util::task::TaskTracker,
        sent: SentIds,
    ) -> Self {
        Relay {
            inner: Arc::new(Inner {
                view,
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

    /// The view a reload to `cfg` brings: clients, campaigns, brands,
    /// routes over `pools`, and limits with the cells spent so far carried
    /// over. Installed by the app with the whole live snapshot.
    pub fn next_view(&self, cfg: &Config, pools: Vec<Pool>) -> View {
        View::of(cfg, pools, Some(&self.inner.view.load()))
    }

    /// Sets the limit and cap-usage gauges from the running config and the
    /// brands' daily counters (shared ones in fleet mode): each campaign's
    /// `segments_per_minute`, each capped brand's cap and the segments it
    /// counted on its current local day. A counter that cannot be read
    /// keeps its last value (the shared-state metrics show why).
    pub async fn publish_limit_usage(&self) {
        let view = self.inner.view.load();
        let m = &self.inner.metrics;
        m.campaign_rate_limit.reset();
        for c in view.campaigns.values() {
            m.campaign_rate_limit
                .with_label_values(&[&c.id])
                .set(i64::from(c.segments_per_minute));
        }
        let capped: Vec<&Brand> = view.brands.values().filter(|b| b.daily_cap > 0).collect();
        m.brand_daily_cap.reset();
        for b in &capped {
            m.brand_daily_cap
                .with_label_values(&[&b.id])
                .set(i64::try_from(b.daily_cap).unwrap_or(i64::MAX));
        }
        let mut counted = Vec::with_capacity(capped.len());
        for b in &capped {
            let (day, _) = local_day(b.daily_reset_tz, chrono::Utc::now());
            match self.inner.shared.daily(&b.id, &day).await {
                Ok(n) => counted.push((b.id.as_str(), n)),
                Err(e) => tracing::debug!(brand = %b.id, "daily counter for the cap gauge: {e}"),
            }
        }
        // Series of brands no longer capped, or no longer configured (a
        // reload removed them), go; the others are set.
        let keep: HashSet<&str> = capped.iter().map(|b| b.id.as_str()).collect();
        let stale: Vec<String> = m
            .brand_daily_segments
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|series| series.get_label().first())
            .map(|label| label.value().to_owned())
            .filter(|id| !keep.contains(id.as_str()))
            .collect();
        for id in stale {
            let _ = m.brand_daily_segments.remove_label_values(&[&id]);
        }
        for (id, n) in counted {
            m.brand_daily_segments
                .with_label_values(&[id])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
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
        self.inner.view.load().pools.clone()
    }

    fn refuse(
        &self,
        view: &View,
        client: &str,
        campaign: &str,
        to: Option<&E164>,
        e: SendError,
        t0: Instant,
    ) -> SendError {
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

impl MessageService for Relay {
    /// The send runs in its own task: once a submit_sm is written it runs
    /// to its recorded end (record, audit, idempotency outcome) even if the
    /// client goes away and this future is dropped (SPEC §4).
    fn send<'a>(
        &'a self,
        client: &'a ClientId,
        req: SendRequest,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'a, Result<SendAccepted, SendError>> {
        Box::pin(async move {
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
        })
    }

    fn get<'a>(
        &'a self,
        client: &'a ClientId,
        id: &'a str,
    ) -> BoxFuture<'a, Result<MessageView, SendError>> {
        Box::pin(self.get_view(client, id))
    }
}

impl Relay {
    /// [`MessageService::get`]: the record, or in fleet mode another
    /// node's projection of it.
    async fn get_view(&self, client: &ClientId, id: &str) -> Result<MessageView, SendError> {
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
    /// The recipient's opt-out (and, with `require_opt_in`, consent) for
    /// a client's send. A shared backend checks the opt-out atomically with
    /// the limits instead (reserve).
    async fn admit_recipient(
        &self,
        campaign: &Campaign,
        to_p: &Pseudonym,
    ) -> Result<(), SendError> {
        if self.inner.shared.admission_checks_opt_out() {
            return Ok(());
        }
        match self.inner.shared.is_opted_out(&campaign.id, &to_p.0).await {
            Ok(false) => {}
            Ok(true) => return Err(SendError::RecipientOptedOut),
            Err(e) => {
                tracing::error!("opt-out check: {e}");
                return Err(unavailable(&e));
            }
        }
        if campaign.require_opt_in {
            super::consent::require(&*self.inner.shared, &campaign.id, &to_p.0).await?;
        }
        Ok(())
    }

    /// Nothing reached a carrier: a definite refusal, which consumes
    /// nothing. A timeout's outcome is unknown: the carrier may have taken
    /// it, so its cells and the key stay spent (the key's claim replays
    /// "outcome unknown").
    async fn undelivered(
        &self,
        e: &SendError,
        mut reservation: Reservation<'_>,
        cid: &str,
        key: &Option<IdempotencyKey>,
        id: &str,
    ) {
        if *e == SendError::CarrierTimeout {
            reservation.keep();
            self.finish_unknown(cid, key, id).await;
        } else {
            reservation.release().await;
        }
    }

    /// Counts a recorded message: accepted, or the error a segment met
    /// after others were accepted (then returned).
    fn count_sent(
        &self,
        carrier: &str,
        campaign_id: &str,
        segments: u32,
        error: Option<SendError>,
        t0: Instant,
    ) -> Result<(), SendError> {
        let m = &self.inner.metrics;
        if let Some(e) = error {
            m.messages
                .with_label_values(&["mt", e.code(), carrier])
                .inc();
            m.latency
                .with_label_values(&["refused"])
                .observe(t0.elapsed().as_secs_f64());
            return Err(e);
        }
        m.messages
            .with_label_values(&["mt", "accepted", carrier])
            .inc();
        m.segments
            .with_label_values(&["mt", carrier])
            .inc_by(u64::from(segments));
        m.campaign_segments
            .with_label_values(&[campaign_id])
            .inc_by(u64::from(segments));
        m.latency
            .with_label_values(&["accepted"])
            .observe(t0.elapsed().as_secs_f64());
        Ok(())
    }

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
        let view = self.inner.view.load();
        let campaign_id = req.campaign_id.as_str();
        let fail = |e: SendError| self.refuse(&view, cid, campaign_id, Some(&req.to), e, t0);
        let (campaign, info) = self.authorize(origin, cid, &req, &view).map_err(fail)?;
        let segments = info.segments as u32;
        let key = idempotency_key
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(fail)?;
        // Nothing goes to a carrier from a node that cannot record it.
        if !self.inner.store.is_healthy() {
            return Err(fail(SendError::StoreUnavailable));
        }
        let to_p = Pseudonym::of(&self.inner.pseudonym_key, &req.to);
        if origin == Origin::Client {
            self.admit_recipient(campaign, &to_p).await.map_err(fail)?;
        }
        let candidates = Self::route(&view, &req.to).map_err(fail)?;
        // Whose opt-out the admission may check: a client's sends only.
        let recipient = (origin == Origin::Client).then_some(to_p.0);
        let mut reservation = self
            .reserve(cid, campaign, &view, &req.from, segments, recipient)
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
        let (sent, registration) = match self
            .deliver(&view, &candidates, &req, &id, segments, t0)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                reservation.release().await;
                return Err(fail(e));
            }
        };
        let (sent, error) = match sent {
            Ok(s) => (s, None),
            Err((e, None)) => {
                self.undelivered(&e, reservation, cid, &key, &id).await;
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
            // A segment refused after others were accepted: `failed`.
            status: error
                .as_ref()
                .map_or(MessageStatus::Accepted, |_| MessageStatus::Failed),
            part_states: vec![None; segments as usize],
            error_code: error.as_ref().map(|e| e.code().to_owned()),
            client_ref: req.client_ref.clone(),
            created_ms: created,
            updated_ms: created,
        };
        let accepted = error
            .is_none()
            .then(|| self.accepted_event(&view, &rec, &req.from, to_p));
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
            return Err(fail(SendError::CarrierTimeout));
        }
        drop(registration);
        self.count_sent(&carrier, campaign_id, segments, error, t0)?;
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
}

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
