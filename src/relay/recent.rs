//! Recently submitted carrier message ids, in memory.
//!
//! A delivery receipt usually arrives seconds after its submit_sm_resp, so
//! its look-up (carrier id → our message id) is served from here instead of
//! a store read transaction, which costs a table open and up to three B-tree
//! gets (~2 µs of a ~70 µs message). The store's `carrier_index` stays the
//! durable truth: a miss here — after a restart, once evicted, older than
//! [`MAX_AGE`], or sent by another node — falls back to it. An entry is added
//! only after the index entry it mirrors committed, so a hit here is always
//! a hit there.
//!
//! Hand-written rather than a cache crate because it needs exactly a bounded
//! FIFO ring with a per-entry age and a look-up by borrowed `(&str, &str)`
//! with no allocation; the ring is a few dozen lines.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::inflight::{Found, InFlight};

/// Entries kept: over a second of flat-out traffic, minutes at usual rates;
/// small enough (~2 MiB) to stay mostly in cache.
pub const CAPACITY: usize = 1 << 14;
/// An entry older than this is not trusted (retention may have pruned the
/// message); the store answers instead.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// The carrier ids of this process's sends, written by the send path and
/// read by the receipt path: built first and handed to both (the relay and
/// its inbound handler), so neither needs the other.
#[derive(Clone, Default)]
pub struct SentIds {
    /// Recently committed sends (see [`RecentIds`]).
    pub(crate) recent: std::sync::Arc<RecentIds>,
    /// Sends whose record has not committed yet (see [`InFlight`]).
    pub(crate) inflight: std::sync::Arc<InFlight>,
}

impl SentIds {
    /// The message a receipt's carrier id belongs to, if it was sent
    /// recently by this process; `keys` as `dlr::lookup_keys` gives them.
    /// `None` means "ask the store".
    pub fn recent_carrier_id(&self, carrier: &str, keys: &[String]) -> Option<String> {
        self.recent.get(carrier, keys)
    }

    /// The message being sent that a receipt's `keys` belong to, once its
    /// record's fate is known (see [`InFlight`]).
    pub async fn in_flight_message(&self, carrier: &str, keys: &[String]) -> Option<Found> {
        self.inflight.wait(carrier, keys).await
    }
}

struct Slot {
    /// carrier, key and message id end to end: one allocation per entry.
    text: Box<str>,
    /// Where the key and the message id start in `text`.
    key_at: usize,
    id_at: usize,
    hash: u64,
    at: Instant,
}

impl Slot {
    fn is(&self, carrier: &str, key: &str) -> bool {
        &self.text[..self.key_at] == carrier && &self.text[self.key_at..self.id_at] == key
    }

    fn message_id(&self) -> &str {
        &self.text[self.id_at..]
    }
}

struct Ring {
    slots: Vec<Option<Slot>>,
    next: usize,
    /// hash of (carrier, key) → slot. A colliding newer entry replaces the
    /// older one in the index: the older becomes a miss, never a wrong hit
    /// (the slot's own carrier and key are compared on look-up).
    index: HashMap<u64, usize>,
}

/// See the module docs.
pub struct RecentIds {
    hasher: RandomState,
    capacity: usize,
    max_age: Duration,
    ring: Mutex<Ring>,
}

impl Default for RecentIds {
    fn default() -> Self {
        Self::new(CAPACITY, MAX_AGE)
    }
}

impl RecentIds {
    /// A ring of `capacity` entries (at least 1) trusted for `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = capacity.max(1);
        RecentIds {
            hasher: RandomState::new(),
            capacity,
            max_age,
            ring: Mutex::new(Ring {
                slots: Vec::new(),
                next: 0,
                index: HashMap::with_capacity(capacity),
            }),
        }
    }

    fn hash(&self, carrier: &str, key: &str) -> u64 {
        self.hasher.hash_one((carrier, key))
    }

    /// Remembers that `message_id` was indexed under (`carrier`, each key).
    pub fn insert(&self, carrier: &str, keys: &[String], message_id: &str) {
        let now = Instant::now();
        let slots: Vec<Slot> = keys
            .iter()
            .map(|key| Slot {
                text: [carrier, key.as_str(), message_id].concat().into(),
                key_at: carrier.len(),
                id_at: carrier.len() + key.len(),
                hash: self.hash(carrier, key),
                at: now,
            })
            .collect();
        let mut ring = self.ring.lock();
        for slot in slots {
            let at = ring.next;
            ring.next = (at + 1) % self.capacity;
            let hash = slot.hash;
            let old = if at < ring.slots.len() {
                ring.slots[at].replace(slot)
            } else {
                ring.slots.push(Some(slot));
                None
            };
            if let Some(old) = old {
                if ring.index.get(&old.hash) == Some(&at) {
                    ring.index.remove(&old.hash);
                }
            }
            ring.index.insert(hash, at);
        }
    }

    /// The message id first of `keys` maps to for `carrier`, if one was
    /// remembered within [`MAX_AGE`]. `keys` in the store's look-up order.
    pub fn get(&self, carrier: &str, keys: &[String]) -> Option<String> {
        let ring = self.ring.lock();
        for key in keys {
            let Some(&at) = ring.index.get(&self.hash(carrier, key)) else {
                continue;
            };
            let Some(Some(slot)) = ring.slots.get(at) else {
                continue;
            };
            if slot.is(carrier, key) && slot.at.elapsed() <= self.max_age {
                return Some(slot.message_id().to_owned());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn remembers_each_key_of_a_message_per_carrier() {
        let r = RecentIds::default();
        r.insert("a", &keys(&["x1", "x2"]), "msg_1");
        assert_eq!(r.get("a", &keys(&["x2"])).as_deref(), Some("msg_1"));
        assert_eq!(r.get("a", &keys(&["x9", "x1"])).as_deref(), Some("msg_1"));
        assert_eq!(r.get("b", &keys(&["x1"])), None, "another carrier's id");
        assert_eq!(r.get("a", &keys(&["x3"])), None);
        assert_eq!(r.get("a", &[]), None);
        // Carrier and key are told apart even where their joins agree.
        r.insert("ab", &keys(&["c"]), "msg_2");
        assert_eq!(r.get("a", &keys(&["bc"])), None);
        assert_eq!(r.get("ab", &keys(&["c"])).as_deref(), Some("msg_2"));
    }

    #[test]
    fn the_oldest_entries_are_evicted_first() {
        let r = RecentIds::new(3, MAX_AGE);
        for i in 0..5 {
            r.insert("a", &keys(&[&format!("x{i}")]), &format!("msg_{i}"));
        }
        assert_eq!(r.get("a", &keys(&["x0"])), None);
        assert_eq!(r.get("a", &keys(&["x1"])), None);
        for i in 2..5 {
            let want = format!("msg_{i}");
            assert_eq!(r.get("a", &keys(&[&format!("x{i}")])), Some(want));
        }
        assert!(r.ring.lock().index.len() <= 3, "the index is bounded too");
    }

    #[test]
    fn a_reused_carrier_id_answers_the_latest_message() {
        let r = RecentIds::new(8, MAX_AGE);
        r.insert("a", &keys(&["x1"]), "msg_old");
        r.insert("a", &keys(&["x1"]), "msg_new");
        assert_eq!(r.get("a", &keys(&["x1"])).as_deref(), Some("msg_new"));
        // Evicting the older slot leaves the newer entry's index alone.
        for i in 0..6 {
            r.insert("a", &keys(&[&format!("y{i}")]), "filler");
        }
        assert_eq!(r.get("a", &keys(&["x1"])).as_deref(), Some("msg_new"));
    }

    #[test]
    fn entries_past_their_age_are_misses() {
        let r = RecentIds::new(8, Duration::ZERO);
        r.insert("a", &keys(&["x1"]), "msg_1");
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(r.get("a", &keys(&["x1"])), None);
    }
}
