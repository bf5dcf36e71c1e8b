//! Aggregated API key use: at most one `api.key_used` record per client per
//! minute, with a count.
//!
//! Why: every authenticated request uses a key. One record per request
//! would double the store's write load for no audit value; "client X used its
//! key N times in minute M" answers the same question (HIPAA 164.312(b) asks
//! for activity records, not per-request ones). Failed authentications are
//! *not* aggregated: each is its own `api.auth_failed` record.
//!
//! How: [`KeyUse::hit`] counts in memory under a short, never-awaited lock.
//! A minute is written once it is over, by the flusher task
//! ([`super::Audit::run_key_use_flusher`], every few seconds) or with the
//! next record written through the [`super::Audit`] handle; everything,
//! including the current minute, is written at a clean stop.
//!
//! Trade-offs: a crash loses at most the counts not yet written (about a
//! minute); a clock stepped back can give a (client, minute) pair a second
//! record.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::chain::format_at;
use super::event::Entry;

/// Counts per client per minute (unix minutes), not yet written.
#[derive(Debug, Default)]
pub(crate) struct KeyUse {
    counts: Mutex<HashMap<String, BTreeMap<i64, u64>>>,
}

/// One (client, minute) total ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Total {
    pub(crate) client: String,
    pub(crate) minute: i64,
    pub(crate) count: u64,
}

impl Total {
    pub(crate) fn entry(&self) -> Entry {
        let start = DateTime::from_timestamp(self.minute.saturating_mul(60), 0).unwrap_or_default();
        Entry::KeyUsed {
            client: self.client.clone(),
            count: self.count,
            minute: format_at(start),
        }
    }

    pub(crate) fn actor(&self) -> String {
        format!("client:{}", self.client)
    }
}

pub(crate) fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

impl KeyUse {
    /// Counts one use of `client`'s key at `now`.
    pub(crate) fn hit(&self, client: &str, now: DateTime<Utc>) {
        let minute = minute_of(now);
        let mut counts = self.counts.lock();
        let per_minute = match counts.get_mut(client) {
            Some(m) => m,
            None => counts.entry(client.to_owned()).or_default(),
        };
        *per_minute.entry(minute).or_default() += 1;
    }

    /// Takes the totals of minutes before `now`'s (all of them when `all`),
    /// oldest first.
    pub(crate) fn take(&self, now: DateTime<Utc>, all: bool) -> Vec<Total> {
        let current = minute_of(now);
        let mut counts = self.counts.lock();
        let mut out = Vec::new();
        counts.retain(|client, per_minute| {
            let keep = if all {
                BTreeMap::new()
            } else {
                per_minute.split_off(&current)
            };
            for (minute, count) in std::mem::replace(per_minute, keep) {
                out.push(Total {
                    client: client.clone(),
                    minute,
                    count,
                });
            }
            !per_minute.is_empty()
        });
        out.sort_by(|a, b| (a.minute, &a.client).cmp(&(b.minute, &b.client)));
        out
    }

    /// Whether a minute before `now`'s is waiting (cheap check on the write
    /// path).
    pub(crate) fn any_due(&self, now: DateTime<Utc>) -> bool {
        let current = minute_of(now);
        self.counts
            .lock()
            .values()
            .any(|m| m.first_key_value().is_some_and(|(k, _)| *k < current))
    }

    /// Puts totals back after a failed write, so no use is lost.
    pub(crate) fn restore(&self, totals: Vec<Total>) {
        let mut counts = self.counts.lock();
        for t in totals {
            *counts
                .entry(t.client)
                .or_default()
                .entry(t.minute)
                .or_default() += t.count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_040 + secs, 0).unwrap()
    }

    #[test]
    fn counts_per_client_per_minute_and_takes_finished_minutes() {
        let k = KeyUse::default();
        for _ in 0..3 {
            k.hit("a", at(0));
        }
        k.hit("b", at(1));
        k.hit("a", at(60));
        assert!(!k.any_due(at(2)));
        assert!(k.take(at(2), false).is_empty());
        assert!(k.any_due(at(61)));
        let due = k.take(at(61), false);
        assert_eq!(due.len(), 2);
        assert_eq!((due[0].client.as_str(), due[0].count), ("a", 3));
        assert_eq!((due[1].client.as_str(), due[1].count), ("b", 1));
        k.restore(due);
        k.hit("a", at(0));
        let all = k.take(at(61), true);
        let counts: Vec<u64> = all.iter().map(|t| t.count).collect();
        assert_eq!(counts, vec![4, 1, 1]);
        assert!(k.take(at(200), true).is_empty());
    }
}
