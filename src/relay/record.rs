//! Message metadata and idempotency records in the store.
//!
//! Owns the tables `messages` (id → JSON metadata), `messages_by_time`
//! (created ms, id) for retention pruning, and `idempotency`
//! ((client, key) → JSON state). A record holds ids, config names, our own
//! sender number, the recipient's *pseudonym*, counts and statuses — never a
//! text and never a clear recipient number (SPEC §1).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::store::{tables, Store, StoreError};

/// id → JSON of [`MessageRecord`].
pub const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// (created unix ms, id) → (), for pruning by age.
pub const MESSAGES_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("messages_by_time");
/// (client id, idempotency key) → JSON of [`IdempotencyRecord`].
pub const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");

/// The metadata kept for one MT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: String,
    pub client: String,
    pub campaign: String,
    /// Our own sender number (not PHI).
    pub from: String,
    /// HMAC pseudonym of the recipient, hex.
    pub to_pseudonym: String,
    pub carrier: Option<String>,
    /// Carrier message id of each segment, in order (empty where unknown).
    pub carrier_ids: Vec<String>,
    pub encoding: String,
    pub segments: u32,
    /// One of the API statuses (`accepted`, `delivered`, …).
    pub status: String,
    /// Final receipts seen, per segment index (for multi-part status).
    #[serde(default)]
    pub part_states: Vec<Option<String>>,
    pub error_code: Option<String>,
    pub client_ref: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// The state of an idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Keyed hash (HMAC with the deployment key) of the request, hex. Keyed so
    /// that a stolen database cannot be used to guess short texts.
    pub request_hash: String,
    /// `pending` until the outcome is known; `done` after.
    pub state: String,
    /// The message id, once one was assigned.
    pub message_id: Option<String>,
    /// The first outcome to replay: the 201 body, or the problem `code`.
    pub outcome: Option<serde_json::Value>,
    pub created_ms: u64,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Refused(format!("serialising a record: {e}")))
}

/// Inserts or replaces a message record (inside a store op).
pub fn put_message(txn: &WriteTransaction, rec: &MessageRecord) -> Result<(), StoreError> {
    let bytes = json(rec)?;
    let mut t = tables::open(txn, MESSAGES)?;
    let old = t.insert(rec.id.as_str(), bytes.as_slice())?.is_some();
    drop(t);
    if !old {
        tables::open(txn, MESSAGES_BY_TIME)?.insert((rec.created_ms, rec.id.as_str()), ())?;
    }
    Ok(())
}

/// Reads a message record.
pub fn get_message(store: &Store, id: &str) -> Result<Option<MessageRecord>, StoreError> {
    store.read(|rtxn| {
        let Some(t) = tables::open_read(rtxn, MESSAGES)? else {
            return Ok(None);
        };
        let Some(v) = t.get(id)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Refused(format!("message record {id} is malformed: {e}")))
    })
}

/// Reads a message record inside a write op (for status updates).
pub fn get_message_in(
    txn: &WriteTransaction,
    id: &str,
) -> Result<Option<MessageRecord>, StoreError> {
    let t = tables::open(txn, MESSAGES)?;
    let Some(v) = t.get(id)? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|e| StoreError::Refused(format!("message record {id} is malformed: {e}")))
}

/// What `begin_idempotent` found.
#[derive(Debug)]
pub enum Idem {
    /// The key is new and is now recorded as pending.
    Fresh,
    /// The key exists.
    Existing(IdempotencyRecord),
}

/// Records `key` as pending for `client` unless it exists (inside a store op).
pub fn begin_idempotent(
    txn: &WriteTransaction,
    client: &str,
    key: &str,
    request_hash: &str,
    now_ms: u64,
) -> Result<Idem, StoreError> {
    let mut t = tables::open(txn, IDEMPOTENCY)?;
    if let Some(v) = t.get((client, key))? {
        let rec: IdempotencyRecord = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Refused(format!("idempotency record is malformed: {e}")))?;
        return Ok(Idem::Existing(rec));
    }
    let rec = IdempotencyRecord {
        request_hash: request_hash.to_owned(),
        state: "pending".into(),
        message_id: None,
        outcome: None,
        created_ms: now_ms,
    };
    t.insert((client, key), json(&rec)?.as_slice())?;
    Ok(Idem::Fresh)
}

/// Marks a key done with the outcome to replay (inside a store op).
pub fn finish_idempotent(
    txn: &WriteTransaction,
    client: &str,
    key: &str,
    message_id: &str,
    outcome: serde_json::Value,
) -> Result<(), StoreError> {
    let mut t = tables::open(txn, IDEMPOTENCY)?;
    let mut rec: IdempotencyRecord = match t.get((client, key))? {
        Some(v) => serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Refused(format!("idempotency record is malformed: {e}")))?,
        None => return Ok(()),
    };
    rec.state = "done".into();
    rec.message_id = Some(message_id.to_owned());
    rec.outcome = Some(outcome);
    t.insert((client, key), json(&rec)?.as_slice())?;
    Ok(())
}

/// Forgets a key whose request was refused before anything was sent, so the
/// client may retry with the same key.
pub fn forget_idempotent(
    txn: &WriteTransaction,
    client: &str,
    key: &str,
) -> Result<(), StoreError> {
    tables::open(txn, IDEMPOTENCY)?.remove((client, key))?;
    Ok(())
}

/// Deletes message records created before `cutoff_ms`, at most `limit` per
/// call (call again while it returns `limit`). Idempotency keys older than
/// the cutoff go too.
pub fn prune_before(
    txn: &WriteTransaction,
    cutoff_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let mut by_time = tables::open(txn, MESSAGES_BY_TIME)?;
    let mut old: Vec<(u64, String)> = Vec::new();
    for item in by_time.range((0u64, "")..(cutoff_ms, ""))? {
        let (k, _) = item?;
        let (ms, id) = k.value();
        old.push((ms, id.to_owned()));
        if old.len() >= limit {
            break;
        }
    }
    let mut messages = tables::open(txn, MESSAGES)?;
    for (ms, id) in &old {
        by_time.remove((*ms, id.as_str()))?;
        messages.remove(id.as_str())?;
    }
    drop(messages);
    if old.len() < limit {
        let mut idem = tables::open(txn, IDEMPOTENCY)?;
        idem.retain(|_, v| {
            serde_json::from_slice::<IdempotencyRecord>(v)
                .map(|r| r.created_ms >= cutoff_ms)
                .unwrap_or(false)
        })?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, created_ms: u64) -> MessageRecord {
        MessageRecord {
            id: id.into(),
            client: "c".into(),
            campaign: "C".into(),
            from: "+15551230001".into(),
            to_pseudonym: "ab".repeat(32),
            carrier: Some("a".into()),
            carrier_ids: vec!["1".into()],
            encoding: "gsm7".into(),
            segments: 1,
            status: "accepted".into(),
            part_states: vec![None],
            error_code: None,
            client_ref: None,
            created_ms,
            updated_ms: created_ms,
        }
    }

    #[tokio::test]
    async fn records_idempotency_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store
            .write(|t| {
                put_message(t, &rec("msg_old", 1_000))?;
                put_message(t, &rec("msg_new", 9_000))
            })
            .await
            .unwrap();
        assert_eq!(
            get_message(&store, "msg_new").unwrap().unwrap().created_ms,
            9_000
        );
        let first = store
            .write(|t| begin_idempotent(t, "c", "k1", "h1", 5))
            .await
            .unwrap();
        assert!(matches!(first, Idem::Fresh));
        let again = store
            .write(|t| begin_idempotent(t, "c", "k1", "h2", 6))
            .await
            .unwrap();
        match again {
            Idem::Existing(r) => {
                assert_eq!(r.request_hash, "h1");
                assert_eq!(r.state, "pending");
            }
            Idem::Fresh => panic!("key recorded twice"),
        }
        store
            .write(|t| {
                finish_idempotent(
                    t,
                    "c",
                    "k1",
                    "msg_new",
                    serde_json::json!({"id": "msg_new"}),
                )
            })
            .await
            .unwrap();
        let pruned = store.write(|t| prune_before(t, 5_000, 100)).await.unwrap();
        assert_eq!(pruned, 1);
        assert!(get_message(&store, "msg_old").unwrap().is_none());
        assert!(get_message(&store, "msg_new").unwrap().is_some());
        store.close().await.unwrap();
    }
}
