//! The durable outbox of `message.status` events (SPEC §1 rule 4).
//!
//! Owns the table `webhook_outbox`: `(client id, seq)` → JSON of
//! [`OutboxRecord`], and the counter `webhook_outbox.next_seq` in the store's
//! `kv` table.
//!
//! Invariants:
//! - an event is written by [`enqueue`] *inside the store op that changes the
//!   message's status*, so the status and its event commit together or not
//!   at all: no status change without its event, no event without its change;
//! - `seq` is one counter for the whole table, incremented inside the op; the
//!   store runs ops one after another, so within a client the key order is
//!   the order the status changes were committed, and a message's events are
//!   in the order its statuses changed;
//! - a record holds ids, config names, counts and times only ([`StatusEvent`]
//!   has no field for a text or a number);
//! - a record leaves the table when the client answered 2xx, or when it is
//!   older than the maximum age (72 h); only the worker removes or rewrites
//!   records, and it checks the event id before it does.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::event::{new_event_id, StatusEvent};
use crate::store::{tables, Store, StoreError, Tx};

/// `(client id, seq)` → JSON of [`OutboxRecord`].
pub const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhook_outbox");

/// Key of the next sequence number in [`tables::KV`] (8 bytes, big endian).
const NEXT_SEQ: &str = "webhook_outbox.next_seq";

/// One pending status event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// `evt_…`, the same on every attempt so the client can de-duplicate.
    pub event_id: String,
    /// The message the event is about; its events are sent one at a time.
    pub message_id: String,
    /// Attempts made so far.
    pub attempt: u32,
    /// Not to be sent before this unix ms.
    pub next_attempt_ms: u64,
    /// When the event was enqueued, unix ms (its `created_at`, and the start
    /// of its maximum age).
    pub created_ms: u64,
    /// The event's `data` ([`StatusEvent::data`]), as JSON text: read and
    /// sent as it is, never parsed.
    pub payload: Box<serde_json::value::RawValue>,
}

fn to_json(rec: &OutboxRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec)
        .map_err(|e| StoreError::Refused(format!("serialising an outbox record: {e}")))
}

/// A stored record read as much as `T` needs ([`OutboxRecord`], [`EventId`]);
/// `None` when it does not parse.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// Removes `(client, seq)` if it still holds `event_id` (or cannot be read:
/// nothing could deliver it); returns whether it removed it.
fn remove_if_holds(
    t: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    client: &str,
    seq: u64,
    event_id: &str,
) -> Result<bool, StoreError> {
    // Removed first and put back in the rare case it holds another event:
    // one B-tree walk for the usual case instead of a get and a remove.
    let Some(old) = t.remove((client, seq))? else {
        return Ok(false);
    };
    if from_json::<EventId>(old.value()).is_none_or(|r| r.event_id == event_id) {
        return Ok(true);
    }
    let other = old.value().to_vec();
    drop(old);
    t.insert((client, seq), other.as_slice())?;
    Ok(false)
}

fn next_seq(txn: &Tx<'_>) -> Result<u64, StoreError> {
    let mut kv = tables::open(txn, tables::KV)?;
    let current = match kv.get(NEXT_SEQ)? {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| StoreError::Refused(format!("{NEXT_SEQ} is not an 8-byte counter")))?;
            u64::from_be_bytes(b)
        }
        None => 0,
    };
    kv.insert(NEXT_SEQ, current.wrapping_add(1).to_be_bytes().as_slice())?;
    Ok(current)
}

/// Adds a status event for `client` to the outbox, due at once.
///
/// Call it inside the store op that changes the status (same transaction),
/// and only for clients that have a webhook. After the op returned `Ok`,
/// [`super::Webhooks::notify`] wakes the client's worker; without it the
/// worker still finds the event at its next poll.
pub fn enqueue(
    txn: &Tx<'_>,
    client: &str,
    event: StatusEvent,
    now_ms: u64,
) -> Result<(), StoreError> {
    let seq = next_seq(txn)?;
    let rec = OutboxRecord {
        event_id: new_event_id(),
        payload: event.data(),
        message_id: event.message_id,
        attempt: 0,
        next_attempt_ms: now_ms,
        created_ms: now_ms,
    };
    tables::open(txn, OUTBOX)?.insert((client, seq), to_json(&rec)?.as_slice())?;
    Ok(())
}

impl OutboxRecord {
    /// The event's `data`, parsed (`Null` if it does not parse): for tests
    /// and tools; delivery sends [`OutboxRecord::payload`] as it is.
    pub fn data(&self) -> serde_json::Value {
        serde_json::from_str(self.payload.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// One row read by a scan; `record` is `None` when the row does not parse.
#[derive(Debug)]
pub(crate) struct Row<T = OutboxRecord> {
    pub seq: u64,
    pub record: Option<T>,
}

/// A record's event id alone (serde skips the rest without building it).
#[derive(Debug, Deserialize)]
struct EventId {
    event_id: String,
}

/// A record's enqueue time alone (see [`Outbox::oldest_created_ms`]).
#[derive(Debug, Deserialize)]
struct Created {
    created_ms: u64,
}

/// Read and maintenance access to the outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
}

impl Outbox {
    /// The outbox in `store`.
    pub fn new(store: Store) -> Self {
        Outbox { store }
    }

    /// The store holding the outbox.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Events waiting, over all clients.
    pub fn depth(&self) -> Result<u64, StoreError> {
        self.store
            .read(|rtxn| match tables::open_read(rtxn, OUTBOX)? {
                Some(t) => Ok(t.len()?),
                None => Ok(0),
            })
    }

    /// When the oldest readable event waiting for `client` was enqueued
    /// (unix ms); `None` when none waits.
    pub fn oldest_created_ms(&self, client: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .scan::<Created>(client, None, 1)?
            .into_iter()
            .find_map(|r| r.record.map(|rec| rec.created_ms)))
    }

    /// The events waiting for `client`, in sending order, with their seq.
    pub fn pending(&self, client: &str) -> Result<Vec<(u64, OutboxRecord)>, StoreError> {
        let rows = self.scan::<OutboxRecord>(client, None, usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.record.map(|rec| (r.seq, rec)))
            .collect())
    }

    /// Up to `limit` rows of `client` with seq greater than `after`, in
    /// order, each read as much as `T` needs ([`OutboxRecord`], or less).
    pub(crate) fn scan<T: serde::de::DeserializeOwned>(
        &self,
        client: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Row<T>>, StoreError> {
        let from = match after {
            Some(s) if s == u64::MAX => return Ok(Vec::new()),
            Some(s) => s + 1,
            None => 0,
        };
        self.store.read(|rtxn| {
            let Some(t) = tables::open_read(rtxn, OUTBOX)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for item in t.range((client, from)..=(client, u64::MAX))? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item?;
                out.push(Row {
                    seq: k.value().1,
                    record: from_json(v.value()),
                });
            }
            Ok(out)
        })
    }

    /// The record at `(client, seq)`, if still there and readable.
    pub(crate) fn get(&self, client: &str, seq: u64) -> Result<Option<OutboxRecord>, StoreError> {
        self.store.read(|rtxn| {
            let Some(t) = tables::open_read(rtxn, OUTBOX)? else {
                return Ok(None);
            };
            Ok(t.get((client, seq))?.and_then(|v| from_json(v.value())))
        })
    }

    /// Removes `(client, seq)` if it still holds `event_id` (durable on Ok).
    /// Returns whether a record was removed.
    pub(crate) async fn remove(
        &self,
        client: &str,
        seq: u64,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let (client, event_id) = (client.to_owned(), event_id.to_owned());
        self.store
            .write(move |txn| {
                remove_if_holds(&mut *tables::open(txn, OUTBOX)?, &client, seq, &event_id)
            })
            .await
    }

    /// Removes each `(seq, event_id)` of `client` that still holds its
    /// event, in one store op whose commit may wait up to `wait` for company
    /// (nobody waits on a removal but the worker's bookkeeping). Durable on
    /// Ok; returns how many records were removed.
    pub(crate) async fn remove_many(
        &self,
        client: &str,
        items: Vec<(u64, String)>,
        wait: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let client = client.to_owned();
        self.store
            .write_within(wait, move |txn| {
                let mut t = tables::open(txn, OUTBOX)?;
                let mut removed = 0;
                for (seq, event_id) in &items {
                    removed += usize::from(remove_if_holds(&mut t, &client, *seq, event_id)?);
                }
                Ok(removed)
            })
            .await
    }

    /// Records a failed attempt: `attempt` and `next_attempt_ms` of
    /// `(client, seq)`, if it still holds `event_id` (durable on Ok).
    pub(crate) async fn reschedule(
        &self,
        client: &str,
        seq: u64,
        event_id: &str,
        attempt: u32,
        next_attempt_ms: u64,
    ) -> Result<bool, StoreError> {
        let (client, event_id) = (client.to_owned(), event_id.to_owned());
        self.store
            .write(move |txn| {
                let mut t = tables::open(txn, OUTBOX)?;
                let rec = match t.get((client.as_str(), seq))? {
                    Some(v) => from_json::<OutboxRecord>(v.value()),
                    None => None,
                };
                let Some(mut rec) = rec.filter(|r| r.event_id == event_id) else {
                    return Ok(false);
                };
                rec.attempt = attempt;
                rec.next_attempt_ms = next_attempt_ms;
                t.insert((client.as_str(), seq), to_json(&rec)?.as_slice())?;
                Ok(true)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(msg: &str, status: &str) -> StatusEvent {
        StatusEvent {
            message_id: msg.into(),
            status: status.into(),
            error_code: None,
            carrier: Some("carrier-a".into()),
            campaign_id: Some("C1".into()),
            client_ref: None,
            segments: 1,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[tokio::test]
    async fn enqueue_keeps_order_per_client_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        for (i, (client, msg)) in [("a", "m1"), ("b", "m2"), ("a", "m1"), ("a", "m3")]
            .into_iter()
            .enumerate()
        {
            store
                .write(move |txn| enqueue(txn, client, ev(msg, "accepted"), 100 + i as u64))
                .await
                .unwrap();
        }
        let ob = Outbox::new(store.clone());
        assert_eq!(ob.depth().unwrap(), 4);
        let a = ob.pending("a").unwrap();
        let seqs: Vec<u64> = a.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [0, 2, 3]);
        assert_eq!(a[0].1.next_attempt_ms, 100);
        assert_eq!(a[0].1.data()["id"], "m1");
        assert_eq!(ob.scan::<Created>("a", Some(0), 10).unwrap().len(), 2);
        assert_eq!(ob.scan::<Created>("a", Some(2), 10).unwrap()[0].seq, 3);

        // Only the matching event id is touched.
        assert!(!ob.remove("a", 0, "evt_other").await.unwrap());
        let id = a[0].1.event_id.clone();
        assert!(ob.reschedule("a", 0, &id, 1, 999).await.unwrap());
        assert_eq!(ob.get("a", 0).unwrap().unwrap().next_attempt_ms, 999);
        assert!(ob.remove("a", 0, &id).await.unwrap());
        assert_eq!(ob.depth().unwrap(), 3);
        store.close().await.unwrap();
        drop(ob);
        drop(store);

        let store = Store::open(dir.path(), None).unwrap();
        store
            .write(|txn| enqueue(txn, "a", ev("m4", "accepted"), 5))
            .await
            .unwrap();
        let seqs: Vec<u64> = Outbox::new(store.clone())
            .pending("a")
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(seqs, [2, 3, 4], "the counter survives reopen");
    }

    #[tokio::test]
    async fn a_failed_op_rolls_back_its_event_and_counter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let r = store
            .write(|txn| {
                enqueue(txn, "a", ev("m1", "delivered"), 1)?;
                Err::<(), _>(StoreError::Refused("status change refused".into()))
            })
            .await;
        assert!(r.is_err());
        let ob = Outbox::new(store.clone());
        assert_eq!(ob.depth().unwrap(), 0);
        store
            .write(|txn| enqueue(txn, "a", ev("m1", "delivered"), 1))
            .await
            .unwrap();
        assert_eq!(ob.pending("a").unwrap()[0].0, 0);
    }
}
