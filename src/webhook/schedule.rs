//! A client worker's in-memory view of its outbox rows: which event may be
//! sent next, and when.
//!
//! Owns no data of its own (the outbox is the truth; this is rebuilt from it
//! on start) and only metadata: seq, message id, due time.
//!
//! Invariants:
//! - each message has a queue of its events in seq order; only the *head* of
//!   a queue can be due, so a message has at most one event in flight and its
//!   events go out in order;
//! - an event is in `due` exactly when it is a head and not in flight;
//! - the number of events held is bounded by the worker (it stops reading
//!   the outbox at a window), so memory stays bounded under a backlog.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
struct Entry {
    message: Arc<str>,
    next_ms: u64,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    entries: BTreeMap<u64, Entry>,
    queues: HashMap<Arc<str>, VecDeque<u64>>,
    due: BTreeSet<(u64, u64)>,
    /// Highest seq ever added (the outbox is read past it).
    last_seen: Option<u64>,
}

impl Schedule {
    /// Events held (queued or in flight).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Highest seq added so far.
    pub fn last_seen(&self) -> Option<u64> {
        self.last_seen
    }

    /// Marks `seq` as read without holding it (an unreadable row).
    pub fn skip(&mut self, seq: u64) {
        self.last_seen = Some(self.last_seen.map_or(seq, |l| l.max(seq)));
    }

    /// Adds an event read from the outbox. Seqs must arrive in increasing
    /// order; a seq already held is ignored.
    pub fn add(&mut self, seq: u64, message: &str, next_ms: u64) {
        self.skip(seq);
        if self.entries.contains_key(&seq) {
            return;
        }
        let message: Arc<str> = match self.queues.get_key_value(message) {
            Some((k, _)) => k.clone(),
            None => Arc::from(message),
        };
        let q = self.queues.entry(message.clone()).or_default();
        q.push_back(seq);
        if q.len() == 1 {
            self.due.insert((next_ms, seq));
        }
        self.entries.insert(seq, Entry { message, next_ms });
    }

    /// Takes the earliest event due at `now_ms`; it is in flight until
    /// [`Schedule::done`] or [`Schedule::retry`].
    pub fn take_due(&mut self, now_ms: u64) -> Option<u64> {
        let &(at, seq) = self.due.first()?;
        if at > now_ms {
            return None;
        }
        self.due.remove(&(at, seq));
        Some(seq)
    }

    /// When the next event falls due (unix ms), if any is waiting.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|&(at, _)| at)
    }

    /// The event in flight left the outbox (delivered, expired or gone): the
    /// next event of its message becomes due at its own time.
    pub fn done(&mut self, seq: u64) {
        let Some(e) = self.entries.remove(&seq) else {
            return;
        };
        self.due.remove(&(e.next_ms, seq));
        let Some(q) = self.queues.get_mut(&e.message) else {
            return;
        };
        q.retain(|&s| s != seq);
        match q.front() {
            Some(&head) => {
                if let Some(h) = self.entries.get(&head) {
                    self.due.insert((h.next_ms, head));
                }
            }
            None => {
                self.queues.remove(&e.message);
            }
        }
    }

    /// The event in flight failed; it stays the head of its message, due
    /// again at `next_ms`.
    pub fn retry(&mut self, seq: u64, next_ms: u64) {
        if let Some(e) = self.entries.get_mut(&seq) {
            e.next_ms = next_ms;
            self.due.insert((next_ms, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_message_in_flight_in_order() {
        let mut s = Schedule::default();
        s.add(0, "m1", 10);
        s.add(1, "m2", 10);
        s.add(2, "m1", 10);
        s.add(3, "m1", 10);
        assert_eq!(s.take_due(5), None, "nothing due before 10");
        assert_eq!(s.take_due(10), Some(0));
        assert_eq!(s.take_due(10), Some(1));
        assert_eq!(s.take_due(10), None, "m1's next waits for seq 0");
        s.retry(0, 50);
        assert_eq!(s.take_due(20), None);
        assert_eq!(s.next_due(), Some(50));
        assert_eq!(s.take_due(50), Some(0));
        s.done(0);
        assert_eq!(s.take_due(50), Some(2));
        s.done(2);
        s.done(1);
        assert_eq!(s.take_due(50), Some(3));
        s.done(3);
        assert_eq!(s.len(), 0);
        assert!(s.queues.is_empty() && s.due.is_empty());
        assert_eq!(s.last_seen(), Some(3));
    }

    #[test]
    fn a_later_event_waits_for_its_message_even_if_due_earlier() {
        let mut s = Schedule::default();
        s.add(0, "m1", 100);
        s.add(1, "m1", 0);
        assert_eq!(s.take_due(50), None);
        assert_eq!(s.take_due(100), Some(0));
        s.done(0);
        assert_eq!(s.take_due(100), Some(1));
    }

    #[test]
    fn duplicates_and_skips_are_ignored() {
        let mut s = Schedule::default();
        s.add(4, "m", 0);
        s.add(4, "m", 0);
        s.skip(7);
        assert_eq!(s.len(), 1);
        assert_eq!(s.last_seen(), Some(7));
    }
}
