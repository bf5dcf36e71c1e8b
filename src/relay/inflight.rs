//! Carrier ids of messages being sent whose record is not committed yet.
//!
//! A message's metadata record (and with it the carrier-id index) commits
//! once every segment has its submit_sm_resp. A carrier that throttles, or
//! the relay's own `max_tps` pacing, can put seconds between the segments'
//! answers, and a receipt for the first segment can arrive before the last
//! is answered. Such a receipt must not be acknowledged and dropped as
//! "unknown" (issue 16 item 3): its look-up finds the segment here, waits
//! until the message's record committed (or is known not to be recorded),
//! and then correlates as any other receipt.
//!
//! Owns: the map (carrier, index key) → [`Pending`] message.
//!
//! Must not know: the store, receipts' contents, HTTP.
//!
//! Invariants: an entry exists only while its send runs (the send's
//! [`Registration`] removes its entries when dropped, however the send
//! ends); a waiter is released when the send reports its outcome or when
//! the send is gone without one (the watch sender dropped = not recorded).
//! Every message is entered, one-segment ones too: under load a receipt
//! can overtake even a single segment's commit, and waiting here needs no
//! polling and none of the receipt path's few early-wait slots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::smpp::dlr;

/// Longest a receipt waits for its message's record to commit. The send's
/// own deadline bounds how long the segments take; this bounds the waiter
/// when the record's commit is itself held up (a store that cannot
/// commit), after which the carrier gets a temporary error and redelivers.
pub const RECORD_WAIT: Duration = Duration::from_secs(30);

/// One message being sent, as its receipts see it.
pub struct Pending {
    message_id: String,
    /// `None` while the send runs; `Some(recorded)` once it ended.
    outcome: watch::Sender<Option<bool>>,
}

impl Pending {
    /// Tells every waiting receipt whether the record committed.
    pub fn finish(&self, recorded: bool) {
        self.outcome.send_replace(Some(recorded));
    }
}

type Key = (Box<str>, String);

/// See the module docs.
#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<Key, Arc<Pending>>>,
}

/// What a receipt's look-up found here.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The message's record committed: its id.
    Recorded(String),
    /// The send ended without a record, or it did not end in
    /// [`RECORD_WAIT`]: the receipt cannot be applied now.
    NotRecorded,
}

/// The entries of one send; removes them when dropped.
pub struct Registration {
    inflight: Arc<InFlight>,
    pub pending: Arc<Pending>,
    keys: Vec<Key>,
}

impl Registration {
    /// Enters one accepted segment's carrier id.
    pub fn add(&mut self, carrier: &str, carrier_id: &str) {
        let Some(key) = dlr::index_key(carrier_id) else {
            return;
        };
        let key: Key = (carrier.into(), key);
        self.inflight
            .map
            .lock()
            .insert(key.clone(), self.pending.clone());
        self.keys.push(key);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut map = self.inflight.map.lock();
        for k in self.keys.drain(..) {
            // Only our own entry: a newer send may have reused the id.
            if map.get(&k).is_some_and(|p| Arc::ptr_eq(p, &self.pending)) {
                map.remove(&k);
            }
        }
    }
}

impl InFlight {
    /// Starts tracking the send of `message_id`.
    pub fn register(this: &Arc<InFlight>, message_id: &str) -> Registration {
        let (outcome, _) = watch::channel(None);
        Registration {
            inflight: this.clone(),
            pending: Arc::new(Pending {
                message_id: message_id.to_owned(),
                outcome,
            }),
            keys: Vec::new(),
        }
    }

    /// The in-flight message `keys` (as [`dlr::lookup_keys`] gives them)
    /// belong to, waited for until its record's fate is known. `None`: not
    /// a message being sent here.
    pub async fn wait(&self, carrier: &str, keys: &[String]) -> Option<Found> {
        // Only the receiver and the id are kept: the send's registration
        // holds the sole sender, so a send that ends without an outcome
        // releases us by dropping it.
        let (message_id, mut rx) = {
            let map = self.map.lock();
            if map.is_empty() {
                return None;
            }
            let p = keys.iter().find_map(|k| {
                // The map is keyed by owned strings; a look-up key is built
                // only on this rare path (a receipt that missed the ring).
                map.get(&(Box::<str>::from(carrier), k.clone()))
            })?;
            (p.message_id.clone(), p.outcome.subscribe())
        };
        let outcome = tokio::time::timeout(RECORD_WAIT, rx.wait_for(Option::is_some)).await;
        Some(match outcome {
            Ok(Ok(v)) if *v == Some(true) => Found::Recorded(message_id),
            _ => Found::NotRecorded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receipt_waits_for_the_record_then_finds_it() {
        let f = Arc::new(InFlight::default());
        let mut reg = InFlight::register(&f, "msg_1");
        reg.add("c", "AB12");
        let pending = reg.pending.clone();
        let keys = dlr::lookup_keys("ab12");
        let waiter = f.wait("c", &keys);
        let finisher = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            pending.finish(true);
        };
        let (found, ()) = tokio::join!(waiter, finisher);
        assert_eq!(found, Some(Found::Recorded("msg_1".into())));
        assert_eq!(f.wait("other", &keys).await, None);
        drop(reg);
        assert_eq!(f.wait("c", &keys).await, None, "entries go with the send");
    }

    #[tokio::test]
    async fn a_send_gone_without_an_outcome_releases_its_waiters() {
        let f = Arc::new(InFlight::default());
        let mut reg = InFlight::register(&f, "msg_2");
        reg.add("c", "7");
        let keys = dlr::lookup_keys("7");
        let waiter = f.wait("c", &keys);
        let (found, ()) = tokio::join!(waiter, async { drop(reg) });
        assert_eq!(found, Some(Found::NotRecorded));
    }
}
