//! The shared-state seam (SPEC §8).
//!
//! Owns: the one narrow interface behind which lives all state that several
//! appliances behind a load balancer must share:
//! (a) daily segment counters for brand/campaign caps,
//! (b) the opt-out list, keyed by campaign and number pseudonym,
//! (c) the (carrier, carrier message id) → message id index, because a
//!     delivery receipt may arrive at another node than the sender.
//!
//! Today [`LocalShared`] keeps them in the local redb file through the
//! group-commit writer. A Redis backend (an existing engine, not a home-made
//! one) will implement the same [`SharedState`] trait later — `INCRBY` under a
//! Lua check for (a), a set per campaign for (b), plain keys with a TTL for
//! (c) — and callers, which only ever hold an `Arc<dyn SharedState>`, will not
//! change. Keep this trait narrow: anything that is not one of these three
//! stays in [`crate::store::Store`].
//!
//! Invariants: a number appears here only as its 32-byte keyed pseudonym
//! (SPEC §1.2), never in clear; every mutation is durable when its future
//! resolves `Ok`.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::ReadableTable;

use super::{tables, Store, StoreError};

/// A boxed future, so the trait stays object-safe (`Arc<dyn SharedState>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

    /// Our message id for the first of `keys` (a receipt's
    /// [`crate::smpp::dlr::lookup_keys`]) that is indexed.
    fn lookup_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
}

/// Writes index entries `(carrier, key)` → `message_id` in the caller's
/// transaction: what [`LocalShared::index_carrier_ids`] does in its own op.
pub fn put_carrier_ids(
    txn: &redb::WriteTransaction,
    carrier: &str,
    keys: &[String],
    message_id: &str,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut t = tables::open(txn, tables::CARRIER_IDS)?;
    for key in keys {
        t.insert((carrier, key.as_str()), message_id)?;
    }
    Ok(())
}

/// [`SharedState`] in the local redb file, for a single appliance.
///
/// Check-and-add is atomic because every write runs on the one writer
/// thread, one op after another. Reads are snapshots and never wait.
#[derive(Debug, Clone)]
pub struct LocalShared {
    store: Store,
}

impl LocalShared {
    /// Wraps a store handle.
    pub fn new(store: Store) -> Self {
        LocalShared { store }
    }

    /// Deletes daily counters of days before `day` (`YYYY-MM-DD` compares as
    /// text). Local housekeeping; a Redis backend uses key TTLs instead.
    pub async fn prune_daily_before(&self, day: &str) -> Result<u64, StoreError> {
        let day = day.to_owned();
        self.store
            .write(move |txn| {
                let mut t = tables::open(txn, tables::DAILY_COUNTERS)?;
                let removed = t.extract_if(|(_, d), _| d < day.as_str())?.count();
                Ok(removed as u64)
            })
            .await
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SharedState for LocalShared {
    fn add_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
        cap: u64,
    ) -> BoxFuture<'a, Result<Result<u64, u64>, StoreError>> {
        let (key, day) = (key.to_owned(), day.to_owned());
        Box::pin(self.store.write(move |txn| {
            let mut t = tables::open(txn, tables::DAILY_COUNTERS)?;
            let current = t
                .get((key.as_str(), day.as_str()))?
                .map(|v| v.value())
                .unwrap_or(0);
            let new = current.saturating_add(amount);
            if cap != 0 && new > cap {
                return Ok(Err(current));
            }
            t.insert((key.as_str(), day.as_str()), new)?;
            Ok(Ok(new))
        }))
    }

    fn release_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (key, day) = (key.to_owned(), day.to_owned());
        Box::pin(self.store.write(move |txn| {
            let mut t = tables::open(txn, tables::DAILY_COUNTERS)?;
            let current = t
                .get((key.as_str(), day.as_str()))?
                .map(|v| v.value())
                .unwrap_or(0);
            t.insert((key.as_str(), day.as_str()), current.saturating_sub(amount))?;
            Ok(())
        }))
    }

    fn daily<'a>(&'a self, key: &'a str, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            self.store.read(|rtxn| {
                let Some(t) = tables::open_read(rtxn, tables::DAILY_COUNTERS)? else {
                    return Ok(0);
                };
                Ok(t.get((key, day))?.map(|v| v.value()).unwrap_or(0))
            })
        })
    }

    fn opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (campaign, pseudonym) = (campaign.to_owned(), *pseudonym);
        Box::pin(self.store.write(move |txn| {
            let mut t = tables::open(txn, tables::OPT_OUTS)?;
            if t.get((campaign.as_str(), &pseudonym))?.is_none() {
                t.insert((campaign.as_str(), &pseudonym), unix_now())?;
            }
            Ok(())
        }))
    }

    fn opt_in<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (campaign, pseudonym) = (campaign.to_owned(), *pseudonym);
        Box::pin(self.store.write(move |txn| {
            tables::open(txn, tables::OPT_OUTS)?.remove((campaign.as_str(), &pseudonym))?;
            Ok(())
        }))
    }

    fn is_opted_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.store.read(|rtxn| {
                let Some(t) = tables::open_read(rtxn, tables::OPT_OUTS)? else {
                    return Ok(false);
                };
                Ok(t.get((campaign, pseudonym))?.is_some())
            })
        })
    }

    fn index_carrier_ids<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
        message_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (carrier, keys, message_id) =
            (carrier.to_owned(), keys.to_vec(), message_id.to_owned());
        Box::pin(
            self.store
                .write(move |txn| put_carrier_ids(txn, &carrier, &keys, &message_id)),
        )
    }

    fn index_is_local(&self) -> bool {
        true
    }

    fn lookup_carrier_id<'a>(
        &'a self,
        carrier: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            self.store.read(|rtxn| {
                let Some(t) = tables::open_read(rtxn, tables::CARRIER_IDS)? else {
                    return Ok(None);
                };
                for key in keys {
                    if let Some(v) = t.get((carrier, key.as_str()))? {
                        return Ok(Some(v.value().to_owned()));
                    }
                }
                Ok(None)
            })
        })
    }
}
