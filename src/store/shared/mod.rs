//! The shared-state seam (SPEC §8).
//!
//! Owns: the one narrow interface behind which lives all state that several
//! appliances behind a load balancer must share:
//! (a) daily segment counters for brand/campaign caps,
//! (b) the opt-out list, keyed by campaign and number pseudonym,
//! (c) the (carrier, carrier message id) → message id index, because a
//!     delivery receipt may arrive at another node than the sender;
//! (d) documented consents (opt-ins), keyed like opt-outs, with the
//!     evidence's metadata (never PHI) as the value;
//! (e) receipts taken by one node for a message another node sent,
//!     forwarded to their owner ([`SharedState::forward_receipt`]), which
//!     applies them in its own store and only then acknowledges them;
//! (f) in fleet mode, idempotency keys and their outcomes, so a retry that
//!     lands on another node replays the first outcome instead of sending
//!     again ([`SharedState::idempotency_is_shared`]; one appliance keeps
//!     them in its store, `crate::relay::record`);
//! (g) in fleet mode, a projection of each message's status (its metadata
//!     record without the recipient's pseudonym), written by its owner, so
//!     `GET /v1/messages/{id}` answers on any node.
//!
//! [`LocalShared`] (`local.rs`) keeps them in the local redb file through
//! the group-commit writer; `super::redis_shared::RedisShared` keeps them in
//! Redis for a fleet. Callers only ever hold an `Arc<dyn SharedState>`.
//! Keep this trait narrow: anything that is not one of the above stays in
//! [`crate::store::Store`].
//!
//! Invariants: a number appears here only as its 32-byte keyed pseudonym
//! (SPEC §1.2), never in clear; every mutation is durable when its future
//! resolves `Ok`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use redb::ReadableTable;

use super::{tables, Store, StoreError, Tx};
use crate::types::E164;

mod local;

pub use local::{put_carrier_ids, put_consent, LocalShared, CONSENTS};
pub(crate) use local::{DailyMirror, OptOutMirror};

/// A boxed future, so the trait stays object-safe (`Arc<dyn SharedState>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A GCRA rate: `per_minute` cells a minute, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// Everything one send asks of the limits: owned, so a [`Reservation`]-style
/// guard can give it back from a background task.
///
/// [`Reservation`]: crate::relay
#[derive(Debug, Clone)]
pub struct Admission {
    pub campaign: String,
    /// The campaign's brand (its keys share one hash tag on Redis).
    pub brand: String,
    pub campaign_rate: Rate,
    /// Our own sender number (clear in Redis keys: it is not a patient's).
    pub from: E164,
    /// The sender number's rate, when the campaign limits numbers.
    pub number_rate: Option<Rate>,
    /// `(local day, cap)` when the brand has a daily cap.
    pub daily: Option<(String, u64)>,
    /// The recipient's pseudonym when the send must honour opt-outs.
    pub recipient: Option<[u8; 32]>,
    pub segments: u32,
}

/// What [`SharedState::admit`] decided. Anything but `Admitted` took nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    OptedOut,
    /// Over the campaign or number rate; retry after the duration.
    RateLimited(std::time::Duration),
    DailyCapReached,
}

/// The node's own campaign/number limiters, which the local
/// [`SharedState::admit`] uses (`crate::relay::limits::Limits`); a shared
/// backend keeps its cells itself and ignores them.
pub trait LocalCells: Send + Sync {
    /// Takes `segments` cells from the campaign and the number, both or
    /// neither; `Err(wait)` when refused.
    fn take_cells(
        &self,
        campaign: &str,
        from: &E164,
        segments: u32,
    ) -> Result<(), std::time::Duration>;
    /// Gives back cells taken by [`LocalCells::take_cells`].
    fn refund_cells(&self, campaign: &str, from: &E164, segments: u32);
}

/// Where the message of a receipt lives ([`SharedState::locate_carrier_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// Sent by this node: our message id.
    Here(String),
    /// Sent by another node of the fleet, which owns its record.
    Elsewhere { node: String, message_id: String },
}

/// A receipt's metadata on its way to the node that sent its message:
/// never its text (the `text:` snippet is cut by [`crate::smpp::dlr::parse`]),
/// never a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedReceipt {
    /// The carrier (link) it came from.
    pub carrier: String,
    /// The carrier's message id, as the receipt gave it.
    pub carrier_id: String,
    /// Our message id, from the index.
    pub message_id: String,
    /// The API status it puts the segment in (`delivered`, `expired`, …).
    pub state: String,
    /// The carrier's error code, if any.
    pub error: Option<String>,
}

/// State shared by every node of a deployment. See the module docs.
pub trait SharedState: Send + Sync {
    /// Atomically adds `amount` to the counter `(key, day)` unless that would
    /// take it over `cap`. `Ok(Ok(new_total))` when added, `Ok(Err(current))`
    /// when refused (nothing added). `cap == 0` means no cap.
    fn add_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
        cap: u64,
    ) -> BoxFuture<'a, Result<Result<u64, u64>, StoreError>>;

    /// Gives back `amount` taken by [`SharedState::add_daily`] for a send
    /// that then definitely did not happen (never below zero).
    fn release_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Current value of the counter `(key, day)`; 0 when never counted.
    fn daily<'a>(&'a self, key: &'a str, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Records that `pseudonym` opted out of `campaign`. Idempotent.
    fn opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes an opt-out. Idempotent.
    fn opt_in<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether `pseudonym` opted out of `campaign`.
    fn is_opted_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Indexes the carrier message ids of one message (one key per
    /// segment, see [`crate::smpp::dlr::index_key`]).
    fn index_carrier_ids<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// True when the index lives in the local store, so a caller may write
    /// it inside its own store op with [`put_carrier_ids`] (one commit for
    /// the message record and its index) instead of calling
    /// [`SharedState::index_carrier_ids`].
    fn index_is_local(&self) -> bool {
        false
    }

    /// The recorded consent of `pseudonym` to `campaign` (its evidence's
    /// metadata, JSON), if any.
    fn consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Records (`Some(evidence)`) or removes a consent in its own write.
    /// Returns whether anything changed. A local store's caller writes it
    /// with [`put_consent`] inside its own op instead, so the audit record
    /// commits with it (see [`SharedState::consent_is_local`]).
    fn set_consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
        evidence: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// True when consents live in the local store ([`put_consent`] may be
    /// used in the caller's transaction).
    fn consent_is_local(&self) -> bool {
        false
    }

    /// Our message id for the first of `keys` (a receipt's
    /// [`crate::smpp::dlr::lookup_keys`]) that is indexed.
    fn lookup_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Like [`SharedState::lookup_carrier_id`], but also tells a message
    /// another node sent (whose record lives there). The default is one
    /// appliance's: every indexed message is here.
    fn locate_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Located>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lookup_carrier_id(carrier, keys)
                .await?
                .map(Located::Here))
        })
    }

    /// Hands a receipt to `node`, the owner of its message, durably: `Ok`
    /// only once the owner will apply it even if it is down now. Only a
    /// shared backend can; the local one never locates a message elsewhere.
    fn forward_receipt<'a>(
        &'a self,
        node: &'a str,
        receipt: &'a ForwardedReceipt,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (node, receipt);
        Box::pin(async {
            Err(StoreError::Refused(
                "receipts are forwarded only in fleet mode".into(),
            ))
        })
    }

    /// True when idempotency keys live here (fleet mode) instead of in the
    /// local store's `idempotency` table, which one appliance uses (the
    /// default: then the three calls below are never made).
    fn idempotency_is_shared(&self) -> bool {
        false
    }

    /// Claims `(client, key)` with `claim` (the claim's record, JSON,
    /// never PHI) unless it is claimed: `Ok(None)` when this call claimed
    /// it, `Ok(Some(record))` with the existing record otherwise.
    fn claim_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        claim: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let _ = (client, key, claim);
        Box::pin(async { Err(StoreError::Refused("idempotency keys are local".into())) })
    }

    /// Marks a claimed key done: its message id and the outcome a retry
    /// replays. Nothing when the key is not claimed.
    fn finish_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
        message_id: &'a str,
        outcome: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (client, key, message_id, outcome);
        Box::pin(async { Err(StoreError::Refused("idempotency keys are local".into())) })
    }

    /// Forgets a claimed key (its send reached no carrier: the client may
    /// retry with it).
    fn forget_idempotency<'a>(
        &'a self,
        client: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (client, key);
        Box::pin(async { Err(StoreError::Refused("idempotency keys are local".into())) })
    }

    /// True when message statuses are projected here for every node
    /// (fleet mode); one appliance answers from its store alone.
    fn messages_are_shared(&self) -> bool {
        false
    }

    /// Writes the projection of message `id` (its record as JSON, without
    /// the recipient) unless a newer one (`updated_ms`) is there already.
    fn project_message<'a>(
        &'a self,
        id: &'a str,
        updated_ms: u64,
        projection: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (id, updated_ms, projection);
        Box::pin(async { Ok(()) })
    }

    /// The projection of message `id` another node wrote, if any.
    fn projected_message<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }

    /// True when [`SharedState::admit`] itself checks the recipient's
    /// opt-out (a shared backend, atomically with the limits), so the send
    /// path need not check it before routing.
    fn admission_checks_opt_out(&self) -> bool {
        false
    }

    /// Checks and takes one send's admission, all or nothing: opt-out (when
    /// `a.recipient` is set), campaign and number rate, brand daily cap.
    /// The default is one appliance's: the node's own `cells`, then
    /// [`SharedState::add_daily`].
    fn admit<'a>(
        &'a self,
        a: &'a Admission,
        cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<Verdict, StoreError>> {
        Box::pin(async move {
            if let Some(p) = &a.recipient {
                if self.is_opted_out(&a.campaign, p).await? {
                    return Ok(Verdict::OptedOut);
                }
            }
            let from = &a.from;
            if let Err(wait) = cells.take_cells(&a.campaign, from, a.segments) {
                return Ok(Verdict::RateLimited(wait));
            }
            if let Some((day, cap)) = &a.daily {
                let added = self
                    .add_daily(&a.brand, day, u64::from(a.segments), *cap)
                    .await;
                match added {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        cells.refund_cells(&a.campaign, from, a.segments);
                        return Ok(Verdict::DailyCapReached);
                    }
                    Err(e) => {
                        cells.refund_cells(&a.campaign, from, a.segments);
                        return Err(e);
                    }
                }
            }
            Ok(Verdict::Admitted)
        })
    }

    /// Gives back what an `Admitted` [`SharedState::admit`] took, for a
    /// send that then definitely did not happen.
    fn refund<'a>(
        &'a self,
        a: &'a Admission,
        cells: &'a dyn LocalCells,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let from = &a.from;
            cells.refund_cells(&a.campaign, from, a.segments);
            if let Some((day, _)) = &a.daily {
                self.release_daily(&a.brand, day, u64::from(a.segments))
                    .await?;
            }
            Ok(())
        })
    }

    /// Whether the backend answered its last call (a shared one; the local
    /// store has its own health, [`crate::store::Store::is_healthy`]).
    fn is_up(&self) -> bool {
        true
    }
}
