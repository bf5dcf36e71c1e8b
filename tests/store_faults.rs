//! The store when its disk fails (issue 16): a real redb file in a temp dir
//! behind the fault-injecting backend ([`FaultSwitch`]), whose writes fail as
//! on a full disk while switched on. A failed commit turns the store
//! unhealthy, writes are refused at once while it is, and the store reopens
//! its database by itself once the fault is gone. The webhook worker does
//! not resend a delivered event while the store cannot record the delivery.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sms_conduit::config;
use sms_conduit::metrics::Metrics;
use sms_conduit::store::{tables, FaultSwitch, Store, StoreError};
use sms_conduit::tools::Sink;
use sms_conduit::types::Secret;
use sms_conduit::webhook::{enqueue, Options, Outbox, StatusEvent, Webhooks};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn put(store: &Store, k: &str, v: u64) -> Result<(), StoreError> {
    let k = k.to_owned();
    store
        .write(move |txn| {
            tables::open(txn, tables::KV)?.insert(k.as_str(), v.to_be_bytes().as_slice())?;
            Ok(())
        })
        .await
}

fn get(store: &Store, k: &str) -> Result<Option<u64>, StoreError> {
    store.read(|rtxn| {
        let t = tables::open_read(rtxn, tables::KV)?.expect("kv exists");
        Ok(t.get(k)?.map(|v| {
            let b: [u8; 8] = v.value().try_into().expect("8 bytes");
            u64::from_be_bytes(b)
        }))
    })
}

/// Polls `f` every 20 ms for up to `within`; returns how long it took.
async fn wait_until(within: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f().then(|| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_makes_the_store_unhealthy_and_it_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = Store::open_with_faults(dir.path(), None, faults.clone()).unwrap();
    put(&store, "before", 1).await.unwrap();
    assert!(store.is_healthy());

    faults.fail_writes(true);
    let err = put(&store, "during", 2).await.unwrap_err();
    eprintln!("write during the fault: {err}");
    assert!(
        !store.is_healthy(),
        "a failed commit turns the store unhealthy"
    );

    faults.fail_writes(false);
    let took = wait_until(Duration::from_secs(10), || store.is_healthy()).await;
    eprintln!("healthy again after {took:?}");
    assert!(
        took.is_some(),
        "the store recovers without a reopen by the test"
    );

    let after = put(&store, "after", 3).await;
    eprintln!("first write after the fault: {after:?}");
    after.expect("a write after recovery commits");
    assert_eq!(
        get(&store, "after").unwrap(),
        Some(3),
        "readers see the reopened database"
    );
    assert_eq!(
        get(&store, "before").unwrap(),
        Some(1),
        "earlier commits survive"
    );
    assert_eq!(
        get(&store, "during").unwrap(),
        None,
        "the failed write left nothing"
    );
    store.close().await.unwrap();
    drop(store);

    // And on disk, for the next process.
    let store = Store::open(dir.path(), None).unwrap();
    assert_eq!(get(&store, "before").unwrap(), Some(1));
    assert_eq!(get(&store, "after").unwrap(), Some(3));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_unhealthy_writes_are_refused_at_once_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = Store::open_with_faults(dir.path(), None, faults.clone()).unwrap();
    put(&store, "before", 1).await.unwrap();
    faults.fail_writes(true);
    assert!(put(&store, "x", 2).await.is_err());
    assert!(!store.is_healthy());

    // The fault stays on: the store keeps trying to reopen in the
    // background, and every write meanwhile is answered at once.
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), put(&store, "y", i))
            .await
            .expect("a write while unhealthy does not hang");
        slowest = slowest.max(t0.elapsed());
        assert!(
            matches!(r, Err(StoreError::Unavailable)),
            "write {i} while unhealthy: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("slowest refusal while unhealthy: {slowest:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert!(!store.is_healthy(), "no recovery while the fault lasts");
    assert!(matches!(
        get(&store, "before"),
        Err(StoreError::Unavailable)
    ));
    // Flush and close do not hang either.
    tokio::time::timeout(Duration::from_secs(5), store.flush())
        .await
        .expect("flush while unhealthy returns")
        .ok();

    faults.fail_writes(false);
    assert!(wait_until(Duration::from_secs(10), || store.is_healthy())
        .await
        .is_some());
    put(&store, "y", 99).await.unwrap();
    assert_eq!(get(&store, "y").unwrap(), Some(99));
    tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .expect("close returns")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_unhealthy_returns() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = Store::open_with_faults(dir.path(), None, faults.clone()).unwrap();
    faults.fail_writes(true);
    assert!(put(&store, "x", 1).await.is_err());
    tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .expect("close returns while the store is recovering")
        .unwrap();
    assert!(matches!(put(&store, "x", 1).await, Err(StoreError::Closed)));
}

const CLIENT: &str = "clinic-app";
const SECRET: &[u8] = b"whsec_test_0123456789abcdef";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn status(msg: &str) -> StatusEvent {
    StatusEvent {
        message_id: msg.into(),
        status: "delivered".into(),
        error_code: None,
        carrier: Some("carrier-a".into()),
        campaign_id: Some("CTEST01".into()),
        client_ref: None,
        segments: 1,
        created_ms: now_ms(),
        updated_ms: now_ms(),
    }
}

/// Issue 16 item 2: an event delivered (2xx) while the store cannot record
/// the delivery used to be POSTed again every poll interval (every second by
/// default: 59 times each in a minute). Now the worker does not POST it
/// again, starts no other attempt while the store cannot commit, and once
/// the store is back removes it and sends the rest, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_event_is_not_resent_while_the_store_cannot_record_it() {
    let sink_dir = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let sink = Sink::start_self_signed(sink_dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let faults = FaultSwitch::new();
    let store = Store::open_with_faults(state_dir.path(), None, faults.clone()).unwrap();
    for m in 0..3 {
        let msg = format!("msg_{m}");
        store
            .write(move |txn| enqueue(txn, CLIENT, status(&msg), now_ms()))
            .await
            .unwrap();
    }
    // The disk fills up before the worker starts: it reads the events (reads
    // still work), the client answers 2xx, and recording that fails.
    faults.fail_writes(true);
    let options = Options {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let clients = vec![config::Client {
        id: CLIENT.into(),
        key_sha256: vec![],
        campaigns: vec![],
        webhook: Some(sink.webhook(1)),
        ..Default::default()
    }];
    let _hooks = Webhooks::start_with(
        &clients,
        store.clone(),
        Arc::new(Metrics::new()),
        shutdown.clone(),
        tracker.clone(),
        options,
    )
    .unwrap();
    // One attempt at a time. A 2xx frees the slot at once and the removal
    // is batched (its commit may wait a few ms for company), so the events
    // due before the first removal failed may each be POSTed once; from the
    // failed removal on the store is unhealthy and no attempt starts.
    assert!(
        sink.wait_for(1, Duration::from_secs(10)).await,
        "a delivery"
    );
    // Two seconds of a store that cannot commit: 20 poll intervals, in which
    // the old worker POSTed each delivered event again and again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = sink.attempts();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = sink.attempts();
    eprintln!("POSTs while the store could not record deliveries: {during}");
    assert!(
        during <= 3,
        "no event was POSTed twice while its removal could not commit: {during} POSTs for 3 events"
    );
    assert_eq!(
        during, settled,
        "no attempt starts while the store cannot commit"
    );

    faults.fail_writes(false);
    let outbox = Outbox::new(store.clone());
    let emptied = wait_until(Duration::from_secs(15), || {
        outbox.depth().is_ok_and(|d| d == 0)
    })
    .await;
    eprintln!(
        "outbox empty after recovery: {emptied:?}; POSTs in all: {}",
        sink.attempts()
    );
    assert!(
        emptied.is_some(),
        "the deliveries are recorded once the store is back"
    );
    assert_eq!(sink.attempts(), 3, "one POST per event");
    let mut ids: Vec<String> = sink
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each event arrived once");

    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(15), tracker.wait())
        .await
        .expect("workers stop");
    store.close().await.unwrap();
}
