//! Receipts forwarded between nodes: a receipt taken by a node that did
//! not send the message is appended to the owner's stream (`Prs:NODE`),
//! which the owner reads in its consumer group and acknowledges after its
//! store committed each entry.

use super::*;

/// The consumer group in which a node reads its receipt stream. One group
/// per stream (one owner); the consumer name is the node id, so a restarted
/// node re-reads the entries it had read but not acknowledged.
pub const RECEIPT_GROUP: &str = "owner";

/// How often the receipt consumer polls its stream while it is empty. A
/// poll, not `XREADGROUP BLOCK`: a blocking read would hold up every other
/// call on the shared multiplexed connection. 10 cheap calls a second per
/// node; a forwarded receipt waits at most this long.
const RECEIPT_POLL: Duration = Duration::from_millis(100);

/// How long the consumer waits after a failed read or apply before it
/// tries again (Redis or the store down).
const RECEIPT_RETRY: Duration = Duration::from_secs(1);

/// Entries read at once by the receipt consumer.
const RECEIPT_BATCH: usize = 64;

/// One read of the stream: entry ids with their fields (`None` for an
/// entry deleted while pending).
type StreamRead = Option<Vec<(String, Vec<(String, Option<HashMap<String, String>>)>)>>;

impl RedisShared {
    /// The stream of receipts waiting for `node`.
    pub(super) fn receipt_stream(&self, node: &str) -> String {
        format!("{}rs:{node}", self.prefix)
    }

    /// Reads up to [`RECEIPT_BATCH`] entries of this node's receipt stream:
    /// those read before and not acknowledged (`pending`, e.g. by the run
    /// before a restart), else new ones. Creates the group (from the
    /// stream's start, so entries added while no group existed are read)
    /// when missing.
    async fn read_receipts(
        &self,
        pending: bool,
    ) -> Result<Vec<(String, Option<ForwardedReceipt>)>, StoreError> {
        let key = self.receipt_stream(&self.node);
        let node = self.node.clone();
        let from = if pending { "0" } else { ">" };
        let read = |mut c: ConnectionManager| {
            let (key, node) = (key.clone(), node.clone());
            async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(RECEIPT_GROUP)
                    .arg(node)
                    .arg("COUNT")
                    .arg(RECEIPT_BATCH)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(from)
                    .query_async::<StreamRead>(&mut c)
                    .await
            }
        };
        if !self.receipt_group.load(Ordering::Relaxed) {
            // First read, or after an error (a Redis that lost the group):
            // create it; BUSYGROUP says it exists already.
            let k = key.clone();
            self.call("receipt_read", |mut c| async move {
                let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(k)
                    .arg(RECEIPT_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await;
                match r {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    r => r,
                }
            })
            .await?;
            self.receipt_group.store(true, Ordering::Relaxed);
        }
        let got = match self.call("receipt_read", read).await {
            Ok(v) => v,
            Err(e) => {
                self.receipt_group.store(false, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut out = Vec::new();
        for (_, entries) in got.into_iter().flatten() {
            for (id, fields) in entries {
                let r = fields.and_then(|mut f| {
                    Some(ForwardedReceipt {
                        carrier: f.remove("carrier")?,
                        carrier_id: f.remove("carrier_id")?,
                        message_id: f.remove("message_id")?,
                        state: f.remove("state")?,
                        error: f.remove("error").filter(|e| !e.is_empty()),
                    })
                });
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// Acknowledges and deletes applied entries of this node's stream, in
    /// one round trip.
    async fn ack_receipts(&self, ids: &[String]) -> Result<(), StoreError> {
        let key = self.receipt_stream(&self.node);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(RECEIPT_GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore();
        self.call("receipt_ack", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Applies the receipts other nodes forwarded to this one, until `stop`:
    /// first those read but not acknowledged before (a restart), then new
    /// ones, up to [`RECEIPT_BATCH`] at once. An entry is acknowledged only
    /// after `apply` returned `Ok` (the owner's store committed it); on an
    /// `Err` it stays pending and is read again after [`RECEIPT_RETRY`]. An entry that cannot be read
    /// (fields missing) is acknowledged: it would not get better.
    pub async fn consume_receipts<F, Fut>(
        self: Arc<Self>,
        apply: F,
        stop: tokio_util::sync::CancellationToken,
    ) where
        F: Fn(ForwardedReceipt) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut pending = true;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let mut wait = Duration::ZERO;
            match self.read_receipts(pending).await {
                Ok(entries) if entries.is_empty() => {
                    if !pending {
                        wait = RECEIPT_POLL;
                    }
                    pending = false;
                }
                Ok(entries) => {
                    // The batch is applied at once, so the store's group
                    // commit takes it in one commit (one fsync for the batch,
                    // not one per receipt: a sequential apply cost about
                    // 0.5 commits per message in a two-node run), and
                    // acknowledged in one call. Each op is queued in stream
                    // order; each re-reads its record, so a duplicate changes
                    // nothing. Only the applied entries are acknowledged.
                    let apply = &apply;
                    let (ids, applies): (Vec<String>, Vec<_>) = entries
                        .into_iter()
                        .map(|(id, r)| {
                            let applied = async move {
                                match r {
                                    Some(r) => apply(r).await,
                                    None => {
                                        tracing::warn!("unreadable forwarded receipt acknowledged");
                                        Ok(())
                                    }
                                }
                            };
                            (id, applied)
                        })
                        .unzip();
                    let results = futures::future::join_all(applies).await;
                    let mut failed = None;
                    let mut done = Vec::with_capacity(ids.len());
                    for (id, res) in ids.into_iter().zip(results) {
                        match res {
                            Ok(()) => done.push(id),
                            Err(e) => failed = Some(e),
                        }
                    }
                    let acked = if done.is_empty() {
                        Ok(())
                    } else {
                        self.ack_receipts(&done).await
                    };
                    if let Some(e) = failed.or(acked.err()) {
                        tracing::error!("forwarded receipt not applied yet: {e}");
                        pending = true;
                        wait = RECEIPT_RETRY;
                    }
                }
                Err(e) => {
                    tracing::warn!("reading forwarded receipts: {e}");
                    pending = true;
                    wait = RECEIPT_RETRY;
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
