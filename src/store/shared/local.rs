//! [`SharedState`] in the local redb file (one appliance): the carrier-id
//! index and consents written in the caller's transaction, the opt-out
//! table and its in-memory mirror, daily counters.

use std::time::Duration;

use parking_lot::Mutex;

use super::*;

/// Writes index entries `(carrier, key)` → `message_id` in the caller's
/// transaction: what [`LocalShared::index_carrier_ids`] does in its own op.
pub fn put_carrier_ids(
    txn: &Tx<'_>,
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

/// `(campaign, pseudonym)` → the consent's evidence metadata (JSON: method,
/// time, client reference; never PHI, never the number).
pub const CONSENTS: redb::TableDefinition<(&str, &[u8; 32]), &[u8]> =
    redb::TableDefinition::new("consents");

/// Records (`Some`) or removes a consent in the caller's transaction;
/// returns whether it changed (the same evidence again is no change).
pub fn put_consent(
    txn: &Tx<'_>,
    campaign: &str,
    pseudonym: &[u8; 32],
    evidence: Option<&[u8]>,
) -> Result<bool, StoreError> {
    // Opened directly, not through the batch's table cache: consent
    // changes are rare, and the cache holds only the send path's shapes.
    let mut t = txn.txn().open_table(CONSENTS)?;
    let key = (campaign, pseudonym);
    match evidence {
        Some(e) => {
            if t.get(key)?.is_some_and(|v| v.value() == e) {
                return Ok(false);
            }
            t.insert(key, e)?;
            Ok(true)
        }
        None => Ok(t.remove(key)?.is_some()),
    }
}

/// The opt-out table held in memory as well, so the check every send makes
/// is a hash look-up instead of a read transaction (a table open and a
/// B-tree get, ~1.2 µs of a message's ~60 µs). 32 bytes and a little
/// overhead per opted-out number.
///
/// Coherence: loaded from a snapshot the first time it is needed; every
/// change goes through [`LocalShared`], which takes the mirror *before*
/// queueing its write and updates it once the write committed. A send that
/// checks in between sees the state before the commit, as a read
/// transaction begun at that moment would. Changes take turns (`changes`),
/// so a STOP and a START racing for one number reach the mirror in the
/// order they reached the file.
#[derive(Default)]
pub(crate) struct OptOutMirror {
    by_campaign: RwLock<HashMap<String, HashSet<[u8; 32]>>>,
    /// Held from queueing a change's write until the mirror has it. An async
    /// lock on purpose: opt-out changes are rare (keywords, the admin API)
    /// and must not overtake one another; sends never take it.
    changes: tokio::sync::Mutex<()>,
}

impl OptOutMirror {
    fn load(store: &Store) -> Result<Self, StoreError> {
        let mut by_campaign: HashMap<String, HashSet<[u8; 32]>> = HashMap::new();
        store.read(|rtxn| {
            let Some(t) = tables::open_read(rtxn, tables::OPT_OUTS)? else {
                return Ok(());
            };
            for row in t.iter()? {
                let (k, _) = row?;
                let (campaign, pseudonym) = k.value();
                by_campaign
                    .entry(campaign.to_owned())
                    .or_default()
                    .insert(*pseudonym);
            }
            Ok(())
        })?;
        Ok(OptOutMirror {
            by_campaign: RwLock::new(by_campaign),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn contains(&self, campaign: &str, pseudonym: &[u8; 32]) -> bool {
        let m = self.by_campaign.read();
        m.get(campaign).is_some_and(|s| s.contains(pseudonym))
    }

    fn set(&self, campaign: &str, pseudonym: &[u8; 32], opted_out: bool) {
        let mut m = self.by_campaign.write();
        if opted_out {
            m.entry(campaign.to_owned()).or_default().insert(*pseudonym);
        } else if let Some(s) = m.get_mut(campaign) {
            s.remove(pseudonym);
        }
    }
}

/// How long the write that persists a daily counter's change may wait for
/// company: it rides along with the send's own commit, which follows its
/// submit_sm_resp.
const DAILY_COMMIT_WAIT: Duration = Duration::from_millis(20);

/// The brands' daily counters held in memory: the truth while the process
/// runs, so a send's check-and-take is a hash update instead of a write it
/// waits on. Each change is persisted as a delta (added or given back) in a
/// write nobody waits for ([`Store::write_detached`]), which rides along
/// with the send's own commit. Deltas commute, so the file's count is the
/// sum of what committed whatever their order.
///
/// Waiting for that write before the submit_sm put a second commit on every
/// capped send's path: at a steady 1,000 msg/s its p99 doubled (8 → 16 ms,
/// BENCHMARKS.md, session 13). What it still guarantees: the writer commits
/// ops in the order they were queued, and a send queues its count before
/// its submit_sm and its record after the submit_sm_resp, so **a send
/// answered 201 has its count in the file**. A crash (not a graceful stop,
/// whose drain commits what is queued) forgets only the counts of sends
/// still in flight, whose records it forgets too; a restarted node may let
/// that many segments more through that day (fleet mode trades the same
/// with Redis).
///
/// Coherence: a counter is read from the file the first time a day of a
/// brand is used, then only changed here; only [`LocalShared`] changes the
/// table (and `prune_daily_before`, for days before today, drops the same
/// days here). A brand's earlier days leave memory when its next day is
/// first used: nothing checks a cap against them any more.
#[derive(Default)]
pub(crate) struct DailyMirror {
    /// Brand key → its days' counts: a day or two (see `update`), so a
    /// look-up is a hash of the key (no key built per send) and a short scan.
    counts: Mutex<HashMap<String, Vec<(String, u64)>>>,
}

impl DailyMirror {
    fn get(&self, key: &str, day: &str) -> Option<u64> {
        let m = self.counts.lock();
        m.get(key)?.iter().find(|(d, _)| d == day).map(|(_, n)| *n)
    }

    /// Applies `change` to the counter, loading it from the file with
    /// `stored` the first time; returns what `change` returns.
    fn update<R>(
        &self,
        key: &str,
        day: &str,
        stored: impl FnOnce() -> Result<u64, StoreError>,
        change: impl FnOnce(&mut u64) -> R,
    ) -> Result<R, StoreError> {
        {
            let mut m = self.counts.lock();
            let held = m
                .get_mut(key)
                .and_then(|days| days.iter_mut().find(|(d, _)| d == day));
            if let Some((_, count)) = held {
                return Ok(change(count));
            }
        }
        // Read outside the lock (a read transaction); two first uses may
        // both read, the first to insert wins and both change that one.
        let loaded = stored()?;
        let mut m = self.counts.lock();
        let days = m.entry(key.to_owned()).or_default();
        let i = match days.iter().position(|(d, _)| d == day) {
            Some(i) => i,
            None => {
                // A brand's new day: its earlier days are done with (a late
                // give-back for one reads the file again), so memory holds a
                // day or two per brand, not every day since the start.
                days.retain(|(d, _)| d.as_str() >= day);
                days.push((day.to_owned(), loaded));
                days.len() - 1
            }
        };
        Ok(change(&mut days[i].1))
    }

    fn prune_before(&self, day: &str) {
        let mut m = self.counts.lock();
        for days in m.values_mut() {
            days.retain(|(d, _)| d.as_str() >= day);
        }
        m.retain(|_, days| !days.is_empty());
    }
}

/// The stored value of the counter `(key, day)`; 0 when never counted.
fn stored_daily(store: &Store, key: &str, day: &str) -> Result<u64, StoreError> {
    store.read(|rtxn| {
        let Some(t) = tables::open_read(rtxn, tables::DAILY_COUNTERS)? else {
            return Ok(0);
        };
        Ok(t.get((key, day))?.map(|v| v.value()).unwrap_or(0))
    })
}

/// Adds `delta` (or takes it back, never below zero) to the stored counter.
fn apply_daily_delta(
    txn: &Tx<'_>,
    key: &str,
    day: &str,
    delta: u64,
    add: bool,
) -> Result<(), StoreError> {
    let mut t = tables::open(txn, tables::DAILY_COUNTERS)?;
    let current = t.get((key, day))?.map(|v| v.value()).unwrap_or(0);
    let new = if add {
        current.saturating_add(delta)
    } else {
        current.saturating_sub(delta)
    };
    t.insert((key, day), new)?;
    Ok(())
}

impl Store {
    /// The opt-out mirror, loaded now if this is its first use.
    pub(crate) fn opt_out_mirror(&self) -> Result<&OptOutMirror, StoreError> {
        if let Some(m) = self.inner.opt_outs.get() {
            return Ok(m);
        }
        let loaded = OptOutMirror::load(self)?;
        // Two first uses at once both load; one copy wins, both use it.
        Ok(self.inner.opt_outs.get_or_init(|| loaded))
    }
}

/// [`SharedState`] in the local redb file, for a single appliance.
///
/// Check-and-add is atomic because every write runs on the one writer
/// thread, one op after another. Reads are snapshots and never wait.
#[derive(Debug, Clone)]
pub struct LocalShared {
    store: Store,
    /// Opt-out changes run in their own tasks (see `change_opt_out`),
    /// tracked here; the app hands in the tracker its drain waits for
    /// before the store closes.
    tasks: tokio_util::task::TaskTracker,
}

impl LocalShared {
    /// Wraps a store handle.
    pub fn new(store: Store) -> Self {
        Self::with_tasks(store, tokio_util::task::TaskTracker::new())
    }

    /// As [`LocalShared::new`], its opt-out changes tracked by `tasks`.
    pub fn with_tasks(store: Store, tasks: tokio_util::task::TaskTracker) -> Self {
        LocalShared { store, tasks }
    }

    /// Adds (`opted_out`) or removes an opt-out, then mirrors it in memory.
    /// The write and the mirror update run as their own task: a caller that
    /// goes away mid-way (a client hanging up) cannot leave the store and the
    /// mirror disagreeing, since a queued write happens anyway.
    fn change_opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
        opted_out: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let store = self.store.clone();
        let (campaign, pseudonym) = (campaign.to_owned(), *pseudonym);
        let task = self.tasks.spawn(async move {
            let mirror = store.opt_out_mirror()?;
            let _turn = mirror.changes.lock().await;
            let c = campaign.clone();
            store
                .write(move |txn| {
                    let mut t = tables::open(txn, tables::OPT_OUTS)?;
                    let key = (c.as_str(), &pseudonym);
                    if !opted_out {
                        t.remove(key)?;
                    } else if t.get(key)?.is_none() {
                        t.insert(key, unix_now())?;
                    }
                    Ok(())
                })
                .await?;
            mirror.set(&campaign, &pseudonym, opted_out);
            Ok(())
        });
        Box::pin(async move { task.await.unwrap_or(Err(StoreError::OpPanicked)) })
    }

    /// Deletes daily counters of days before `day` (`YYYY-MM-DD` compares as
    /// text). Local housekeeping; a Redis backend uses key TTLs instead.
    pub async fn prune_daily_before(&self, day: &str) -> Result<u64, StoreError> {
        self.store.inner.daily.prune_before(day);
        let day = day.to_owned();
        self.store
            .write(move |txn| {
                let mut t = tables::open(txn, tables::DAILY_COUNTERS)?;
                let removed = t.extract_if(|(_, d), _| d < day.as_str())?.count();
                Ok(removed as u64)
            })
            .await
    }

    /// Queues the write of a daily counter's change without waiting for
    /// its commit (see [`DailyMirror`]). A store that refuses it (it turned
    /// unhealthy meanwhile) is logged: the count in memory stays right,
    /// the file's is short by `delta` until a restart reads it.
    async fn persist_daily(&self, key: &str, day: &str, delta: u64, add: bool) {
        let (k, d) = (key.to_owned(), day.to_owned());
        let queued = self
            .store
            .write_detached(DAILY_COMMIT_WAIT, move |txn| {
                apply_daily_delta(txn, &k, &d, delta, add)
            })
            .await;
        if let Err(e) = queued {
            tracing::warn!(brand = key, day, error = %e, "a daily counter change was not written");
        }
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
        Box::pin(async move {
            if !self.store.is_healthy() {
                return Err(self.store.inner.live.refusal());
            }
            let taken = self.store.inner.daily.update(
                key,
                day,
                || stored_daily(&self.store, key, day),
                |count| {
                    let new = count.saturating_add(amount);
                    if cap != 0 && new > cap {
                        return Err(*count);
                    }
                    *count = new;
                    Ok(new)
                },
            )?;
            if taken.is_ok() {
                self.persist_daily(key, day, amount, true).await;
            }
            Ok(taken)
        })
    }

    fn release_daily<'a>(
        &'a self,
        key: &'a str,
        day: &'a str,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store.inner.daily.update(
                key,
                day,
                || stored_daily(&self.store, key, day),
                |count| *count = count.saturating_sub(amount),
            )?;
            self.persist_daily(key, day, amount, false).await;
            Ok(())
        })
    }

    fn daily<'a>(&'a self, key: &'a str, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            match self.store.inner.daily.get(key, day) {
                Some(n) => Ok(n),
                None => stored_daily(&self.store, key, day),
            }
        })
    }

    fn opt_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.change_opt_out(campaign, pseudonym, true)
    }

    fn opt_in<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.change_opt_out(campaign, pseudonym, false)
    }

    fn is_opted_out<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.store.opt_out_mirror()?.contains(campaign, pseudonym)) })
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

    fn consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            self.store.read(|rtxn| {
                let Some(t) = tables::open_read(rtxn, CONSENTS)? else {
                    return Ok(None);
                };
                Ok(t.get((campaign, pseudonym))?.map(|v| v.value().to_vec()))
            })
        })
    }

    fn set_consent<'a>(
        &'a self,
        campaign: &'a str,
        pseudonym: &'a [u8; 32],
        evidence: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (campaign, pseudonym) = (campaign.to_owned(), *pseudonym);
        Box::pin(
            self.store
                .write(move |txn| put_consent(txn, &campaign, &pseudonym, evidence.as_deref())),
        )
    }

    fn consent_is_local(&self) -> bool {
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brands_new_day_drops_its_earlier_days_from_memory() {
        let m = DailyMirror::default();
        let none = || Ok(0);
        m.update("a", "2025-01-02", none, |c| *c += 3).unwrap();
        m.update("b", "2025-01-02", none, |c| *c += 1).unwrap();
        assert_eq!(m.get("a", "2025-01-02"), Some(3));
        // The stored value is read only the first time.
        m.update("a", "2025-01-02", || Ok(100), |c| *c += 1)
            .unwrap();
        assert_eq!(m.get("a", "2025-01-02"), Some(4));
        m.update("a", "2025-01-03", || Ok(7), |c| *c += 1).unwrap();
        assert_eq!(m.get("a", "2025-01-03"), Some(8));
        assert_eq!(m.get("a", "2025-01-02"), None, "a's day before is gone");
        assert_eq!(m.get("b", "2025-01-02"), Some(1), "b's day stays");
        // A late give-back for the day before reads the file again.
        let back = m.update(
            "a",
            "2025-01-02",
            || Ok(4),
            |c| {
                *c -= 1;
                *c
            },
        );
        assert_eq!(back.unwrap(), 3);
        m.prune_before("2025-01-03");
        assert_eq!(m.get("b", "2025-01-02"), None);
        assert_eq!(m.get("a", "2025-01-03"), Some(8));
    }
}
