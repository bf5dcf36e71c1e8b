//! The store against real redb files in a temp dir: group commit, durability
//! across reopen, isolation of failing ops, schema versions, and the
//! shared-state seam (SPEC §8).

use std::sync::Arc;
use std::time::Duration;

use redb::ReadableTable;
use sms_conduit::metrics::Metrics;
use sms_conduit::store::{tables, LocalShared, SharedState, Store, StoreError};

fn key(i: usize) -> String {
    format!("k{i:06}")
}

async fn put(store: &Store, k: String, v: u64) -> Result<(), StoreError> {
    store
        .write(move |txn| {
            tables::open(txn, tables::KV)?.insert(k.as_str(), v.to_be_bytes().as_slice())?;
            Ok(())
        })
        .await
}

fn get(store: &Store, k: &str) -> Option<u64> {
    store
        .read(|rtxn| {
            let t = tables::open_read(rtxn, tables::KV)?.expect("kv exists");
            Ok(t.get(k)?.map(|v| {
                let b: [u8; 8] = v.value().try_into().expect("8 bytes");
                u64::from_be_bytes(b)
            }))
        })
        .expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_group_committed_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(dir.path(), Some(metrics.clone())).unwrap();
    let (tasks, per_task) = (100usize, 100usize);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = t * per_task + i;
                put(&store, key(n), n as u64).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let writes = (tasks * per_task) as u64;
    let stats = store.stats();
    eprintln!("{writes} writes in {} durable commits", stats.commits);
    assert_eq!(stats.ops, writes);
    assert!(
        stats.commits < writes / 10,
        "{} commits for {writes} writes",
        stats.commits
    );
    assert_eq!(metrics.store_batch.get_sample_count(), stats.commits);
    assert_eq!(metrics.store_batch.get_sample_sum() as u64, writes);
    // Visible before reopen, too.
    assert_eq!(get(&store, &key(4242)), Some(4242));
    drop(store);
    // Dropping every handle lets the writer finish and release the file.
    let store = reopen(dir.path()).await;
    for n in 0..(tasks * per_task) {
        assert_eq!(get(&store, &key(n)), Some(n as u64), "key {n}");
    }
}

/// Reopens, retrying while the previous writer thread releases the file.
async fn put_within(store: &Store, wait: Duration, k: String, v: u64) -> Result<(), StoreError> {
    store
        .write_within(wait, move |txn| {
            tables::open(txn, tables::KV)?.insert(k.as_str(), v.to_be_bytes().as_slice())?;
            Ok(())
        })
        .await
}

/// A write that may wait (a receipt, an outbox removal) rides along with the
/// next write that may not (a send): one commit for both, and the waiting
/// one is answered with it, long before its own due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_may_wait_shares_the_next_urgent_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    put(&store, key(0), 0).await.unwrap();
    let before = store.stats().commits;
    let relaxed = {
        let store = store.clone();
        tokio::spawn(async move { put_within(&store, Duration::from_secs(30), key(1), 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !relaxed.is_finished(),
        "a write that may wait 30 s was committed alone"
    );
    assert_eq!(store.stats().commits, before, "nothing was due yet");
    put(&store, key(2), 2).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), relaxed)
        .await
        .expect("the waiting write was answered with the urgent one")
        .unwrap()
        .unwrap();
    assert_eq!(store.stats().commits, before + 1, "one commit carried both");
    assert_eq!(get(&store, &key(1)), Some(1));
    assert_eq!(get(&store, &key(2)), Some(2));
}

/// Alone, a write that may wait is committed when its wait is up (not
/// before it, not never), and so is every other waiting write queued with
/// it: one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_may_wait_commits_alone_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    put(&store, key(0), 0).await.unwrap();
    let before = store.stats().commits;
    let started = std::time::Instant::now();
    let a = put_within(&store, Duration::from_millis(300), key(1), 1);
    let b = put_within(&store, Duration::from_secs(30), key(2), 2);
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    b.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290),
        "committed before it was due: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the due write waited for the other: {took:?}"
    );
    assert_eq!(store.stats().commits, before + 1);
}

/// `flush` and `close` do not wait for writes that may wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_close_cut_the_wait_short() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let relaxed = {
        let store = store.clone();
        tokio::spawn(async move { put_within(&store, Duration::from_secs(60), key(1), 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), store.flush())
        .await
        .expect("flush is not held by a waiting write")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), relaxed)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { put_within(&store, Duration::from_secs(60), key(2), 2).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .expect("close is not held by a waiting write")
        .unwrap();
    waiting.await.unwrap().unwrap();
}

async fn reopen(dir: &std::path::Path) -> Store {
    for _ in 0..100 {
        match Store::open(dir, None) {
            Ok(s) => return s,
            Err(StoreError::Open { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("database still locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_op_does_not_lose_the_others_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    // Queue many writes at once so they share batches; every 7th writes and
    // then fails, every 11th writes and then panics.
    let mut handles = Vec::new();
    for n in 0..500usize {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let k = key(n);
            let res = store
                .write(move |txn| {
                    // The table stays borrowed through the failure: the
                    // batch's open table must not outlive it in a bad state.
                    let mut t = tables::open(txn, tables::KV)?;
                    t.insert(k.as_str(), b"x".as_slice())?;
                    if n % 7 == 0 {
                        return Err(StoreError::Refused("test refusal".into()));
                    }
                    if n % 11 == 0 {
                        panic!("test panic in op");
                    }
                    drop(t);
                    Ok(n)
                })
                .await;
            (n, res)
        }));
    }
    let mut batches_with_failure = 0;
    for h in handles {
        let (n, res) = h.await.unwrap();
        match res {
            Ok(v) => assert_eq!(v, n),
            Err(StoreError::Refused(_)) => {
                assert_eq!(n % 7, 0);
                batches_with_failure += 1;
            }
            Err(StoreError::OpPanicked) => assert_eq!(n % 11, 0),
            Err(e) => panic!("{n}: unexpected {e}"),
        }
    }
    assert!(batches_with_failure > 0);
    assert!(store.stats().commits < 500, "writes were batched");
    store.close().await.unwrap();
    drop(store);
    let store = reopen(dir.path()).await;
    let present = |n: usize| {
        store
            .read(|r| {
                Ok(tables::open_read(r, tables::KV)?
                    .expect("kv")
                    .get(key(n).as_str())?
                    .is_some())
            })
            .unwrap()
    };
    for n in 0..500usize {
        let failed = n % 7 == 0 || n % 11 == 0;
        assert_eq!(present(n), !failed, "key {n}");
    }
}

#[tokio::test]
async fn close_commits_everything_queued_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let mut pending = Vec::new();
    for n in 0..300usize {
        let s = store.clone();
        pending.push(tokio::spawn(async move { put(&s, key(n), n as u64).await }));
    }
    tokio::task::yield_now().await;
    store.flush().await.unwrap();
    for p in pending {
        p.await.unwrap().unwrap();
    }
    put(&store, "last".into(), 7).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap(); // idempotent
    assert!(matches!(
        put(&store, "after".into(), 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.read(|_| Ok(())), Err(StoreError::Closed)));
    // close() released the file even though this handle still exists.
    let again = Store::open(dir.path(), None).unwrap();
    assert_eq!(get(&again, "last"), Some(7));
    for n in 0..300usize {
        assert_eq!(get(&again, &key(n)), Some(n as u64));
    }
}

#[tokio::test]
async fn newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let path = store.path().to_path_buf();
    store.close().await.unwrap();
    drop(store);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(tables::SCHEMA_VERSION_TABLE).unwrap();
            let v = t.get(tables::SCHEMA_VERSION_KEY).unwrap().unwrap().value();
            assert_eq!(v, tables::SCHEMA_VERSION);
            t.insert(tables::SCHEMA_VERSION_KEY, tables::SCHEMA_VERSION + 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    match Store::open(dir.path(), None) {
        Err(
            e @ StoreError::SchemaTooNew {
                found, supported, ..
            },
        ) => {
            assert_eq!(found, supported + 1);
            assert!(e.to_string().contains("schema version"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn state_dir_and_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a/b");
    let store = Store::open(&state, None).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daily_cap_accepts_exactly_cap_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let shared: Arc<dyn SharedState> = Arc::new(LocalShared::new(store.clone()));
    let cap = 1000u64;
    let mut handles = Vec::new();
    for _ in 0..50 {
        let shared = shared.clone();
        handles.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            for _ in 0..30 {
                if shared
                    .add_daily("brand:BQ7A1Z0", "2025-01-02", 1, cap)
                    .await
                    .unwrap()
                    .is_ok()
                {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for h in handles {
        accepted += h.await.unwrap();
    }
    assert_eq!(accepted, cap);
    assert_eq!(
        shared.daily("brand:BQ7A1Z0", "2025-01-02").await.unwrap(),
        cap
    );
    assert_eq!(
        shared
            .add_daily("brand:BQ7A1Z0", "2025-01-02", 1, cap)
            .await
            .unwrap(),
        Err(cap)
    );
    // Another day, and an amount that would cross the cap, and no cap.
    assert_eq!(
        shared
            .add_daily("brand:BQ7A1Z0", "2025-01-03", 3, 4)
            .await
            .unwrap(),
        Ok(3)
    );
    assert_eq!(
        shared
            .add_daily("brand:BQ7A1Z0", "2025-01-03", 2, 4)
            .await
            .unwrap(),
        Err(3)
    );
    assert_eq!(
        shared
            .add_daily("brand:BQ7A1Z0", "2025-01-03", 500, 0)
            .await
            .unwrap(),
        Ok(503)
    );
    assert_eq!(shared.daily("nobody", "2025-01-03").await.unwrap(), 0);
    let local = LocalShared::new(store.clone());
    assert_eq!(local.prune_daily_before("2025-01-03").await.unwrap(), 1);
    assert_eq!(
        shared.daily("brand:BQ7A1Z0", "2025-01-02").await.unwrap(),
        0
    );
    assert_eq!(
        shared.daily("brand:BQ7A1Z0", "2025-01-03").await.unwrap(),
        503
    );
}

/// A daily count is taken in memory: the send goes on to its submit_sm
/// without waiting for a commit, and the change reaches the file with the
/// next commit (here: the close's).
#[tokio::test]
async fn a_daily_count_is_taken_at_once_and_written_with_a_later_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (brand, day) = ("brand:BQ7A1Z0", "2025-01-02");
    {
        let store = Store::open(dir.path(), None).unwrap();
        let shared = LocalShared::new(store.clone());
        let commits = store.stats().commits;
        assert_eq!(shared.add_daily(brand, day, 3, 4).await.unwrap(), Ok(3));
        assert_eq!(
            store.stats().commits,
            commits,
            "the count was taken without waiting for a commit"
        );
        // The count in memory is the truth at once.
        assert_eq!(shared.add_daily(brand, day, 2, 4).await.unwrap(), Err(3));
        shared.release_daily(brand, day, 1).await.unwrap();
        assert_eq!(shared.daily(brand, day).await.unwrap(), 2);
        // A graceful close commits what is queued.
        store.close().await.unwrap();
    }
    let store = Store::open(dir.path(), None).unwrap();
    let shared = LocalShared::new(store.clone());
    assert_eq!(shared.daily(brand, day).await.unwrap(), 2);
    assert_eq!(shared.add_daily(brand, day, 2, 4).await.unwrap(), Ok(4));
    assert_eq!(shared.add_daily(brand, day, 1, 4).await.unwrap(), Err(4));
    store.close().await.unwrap();
}

#[tokio::test]
async fn opt_out_survives_reopen_and_opt_in_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = ([1u8; 32], [2u8; 32]);
    {
        let store = Store::open(dir.path(), None).unwrap();
        let shared = LocalShared::new(store.clone());
        shared.opt_out("CX4K2M9", &alice).await.unwrap();
        shared.opt_out("CX4K2M9", &alice).await.unwrap(); // idempotent
        shared.opt_out("CX4K2M9", &bob).await.unwrap();
        shared.opt_in("CX4K2M9", &bob).await.unwrap();
        store.close().await.unwrap();
    }
    let store = Store::open(dir.path(), None).unwrap();
    let shared = LocalShared::new(store);
    assert!(shared.is_opted_out("CX4K2M9", &alice).await.unwrap());
    assert!(!shared.is_opted_out("CX4K2M9", &bob).await.unwrap());
    assert!(!shared.is_opted_out("OTHER", &alice).await.unwrap());
}

/// The opt-out check is answered from memory; every handle over the store
/// sees one copy, changes show at once, and a change whose caller went away
/// still reaches both the file and the memory copy.
#[tokio::test]
async fn opt_out_checks_agree_across_handles_and_abandoned_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, carol) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let store = Store::open(dir.path(), None).unwrap();
    let one = LocalShared::new(store.clone());
    let two = LocalShared::new(store.clone());
    // Loaded before any change, then changed through the other handle.
    assert!(!two.is_opted_out("CX4K2M9", &alice).await.unwrap());
    one.opt_out("CX4K2M9", &alice).await.unwrap();
    assert!(two.is_opted_out("CX4K2M9", &alice).await.unwrap());
    two.opt_out("CX4K2M9", &bob).await.unwrap();
    two.opt_in("CX4K2M9", &alice).await.unwrap();
    assert!(!one.is_opted_out("CX4K2M9", &alice).await.unwrap());
    assert!(one.is_opted_out("CX4K2M9", &bob).await.unwrap());
    assert!(!one.is_opted_out("OTHER", &bob).await.unwrap());

    // A caller that gives up right after asking: the change still lands,
    // in the file and in memory.
    {
        // Polled once (the write is queued), then dropped.
        use futures::FutureExt;
        assert!(one.opt_out("CX4K2M9", &carol).now_or_never().is_none());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !two.is_opted_out("CX4K2M9", &carol).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned opt-out never showed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.close().await.unwrap();
    drop((one, two, store));
    let store = Store::open(dir.path(), None).unwrap();
    let shared = LocalShared::new(store);
    assert!(shared.is_opted_out("CX4K2M9", &carol).await.unwrap());
    assert!(shared.is_opted_out("CX4K2M9", &bob).await.unwrap());
    assert!(!shared.is_opted_out("CX4K2M9", &alice).await.unwrap());
}

/// STOPs and STARTs racing for the same numbers: the in-memory answer ends
/// equal to the file's, number by number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_opt_out_changes_leave_memory_and_file_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let shared = Arc::new(LocalShared::new(store.clone()));
    let numbers: Vec<[u8; 32]> = (0..50u8).map(|i| [i; 32]).collect();
    let mut changes = Vec::new();
    for round in 0..20 {
        for n in &numbers {
            let (shared, n) = (shared.clone(), *n);
            changes.push(tokio::spawn(async move {
                if round % 2 == 0 {
                    shared.opt_out("CX4K2M9", &n).await
                } else {
                    shared.opt_in("CX4K2M9", &n).await
                }
            }));
        }
    }
    for c in changes {
        c.await.unwrap().unwrap();
    }
    for n in &numbers {
        let in_file = store
            .read(|rtxn| {
                let t = rtxn.open_table(tables::OPT_OUTS)?;
                Ok(t.get(("CX4K2M9", n))?.is_some())
            })
            .unwrap();
        let in_memory = shared.is_opted_out("CX4K2M9", n).await.unwrap();
        assert_eq!(in_memory, in_file, "number {}", n[0]);
    }
}

#[tokio::test]
async fn carrier_id_index_lookups() {
    use sms_conduit::smpp::dlr::{index_key, lookup_keys};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let shared = LocalShared::new(store.clone());
    let keys: Vec<String> = ["0a1b2c", "0A1B2D"]
        .iter()
        .filter_map(|id| index_key(id))
        .collect();
    shared
        .index_carrier_ids("carrier-a", &keys, "msg_1")
        .await
        .unwrap();
    shared
        .index_carrier_ids("carrier-b", &[index_key("0a1b2c").unwrap()], "msg_2")
        .await
        .unwrap();
    let look = |c: &'static str, id: &'static str| {
        let s = shared.clone();
        async move { s.lookup_carrier_id(c, &lookup_keys(id)).await.unwrap() }
    };
    assert_eq!(look("carrier-a", "0a1b2c").await.as_deref(), Some("msg_1"));
    assert_eq!(look("carrier-a", "a1b2d").await.as_deref(), Some("msg_1"));
    // The decimal rendering of 0x0a1b2d.
    assert_eq!(look("carrier-a", "662317").await.as_deref(), Some("msg_1"));
    assert_eq!(look("carrier-b", "0a1b2c").await.as_deref(), Some("msg_2"));
    assert_eq!(look("carrier-b", "0a1b2d").await, None);
    assert_eq!(look("carrier-a", "0a1b2e").await, None);
    store.close().await.unwrap();
    drop(shared);
    let store = Store::open(dir.path(), None).unwrap();
    let shared = LocalShared::new(store);
    assert_eq!(
        shared
            .lookup_carrier_id("carrier-a", &lookup_keys("0a1b2d"))
            .await
            .unwrap()
            .as_deref(),
        Some("msg_1")
    );
}
