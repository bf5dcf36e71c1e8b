//! The audit log against real redb files in a temp dir: the chain verifies,
//! every kind of tampering is caught at the right seq with the right reason,
//! retention keeps the rest verifiable, an export re-verifies with an
//! independent Python script, failed ops leave no trace, verification works
//! on a copy while the store is open, and no clear recipient number is kept.

use std::collections::BTreeMap;

use redb::ReadableTable as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sms_conduit::audit::{
    self, append, export, export_file, verify, verify_file, Audit, AuditEvent, AuditNumber,
    BreakReason, KeywordClass, OwnNumbers, VerifyError, AUDIT, ZERO_HASH,
};
use sms_conduit::config::Campaign;
use sms_conduit::metrics::Metrics;
use sms_conduit::store::{tables, Store, StoreError};
use sms_conduit::types::{Pseudonym, Secret, E164};

/// The verifier a third party would write, following the module doc to the
/// letter. Prints the number of records verified; fails on any mismatch.
const PYTHON_VERIFY: &str = r#"
import sys, json, hashlib
prev = None; n = 0
for line in sys.stdin.buffer:
    r = json.loads(line); h = r.pop("hash")
    c = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(bytes.fromhex(r["prev_hash"]) + c.encode()).hexdigest() == h, r["seq"]
    assert prev is None or (r["prev_hash"] == prev and r["seq"] == seq + 1), r["seq"]
    prev, seq, n = h, r["seq"], n + 1
print(n)
"#;

const NODE: &str = "edge-test";

fn status(i: u64) -> AuditEvent {
    AuditEvent::MessageStatus {
        message_id: format!("msg_{i}"),
        status: "delivered",
        carrier: Some("carrier-a".into()),
        error: None,
    }
}

async fn open(dir: &std::path::Path) -> (Store, Audit, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(dir, Some(metrics.clone())).unwrap();
    let audit = Audit::open(store.clone(), NODE, Some(metrics.clone()))
        .await
        .unwrap();
    (store, audit, metrics)
}

/// Appends `n` status records in ops of 100.
async fn fill(audit: &Audit, n: u64) {
    let mut i = 0;
    while i < n {
        let end = (i + 100).min(n);
        audit
            .write(move |log| {
                for k in i..end {
                    log.append(status(k), "carrier:carrier-a")?;
                }
                Ok(())
            })
            .await
            .unwrap();
        i = end;
    }
}

/// Appends `n` records dated `start + i * step` with the free `append`.
async fn fill_at(store: &Store, n: u64, start: DateTime<Utc>, step: TimeDelta) {
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        store
            .write(move |txn| {
                for k in i..end {
                    let at = start + step * (k as i32);
                    append(txn, NODE, status(k), "system", at)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        i = end;
    }
}

/// Every stored record by its position (chunk key + line), as verify
/// sees them.
fn stored(t: &impl redb::ReadableTable<u64, &'static [u8]>) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for item in t.iter().unwrap() {
        let (k, v) = item.unwrap();
        let chunk = audit::decode_chunk(v.value()).unwrap();
        for (i, r) in audit::chunk_records(&chunk).enumerate() {
            out.insert(k.value() + i as u64, r.to_vec());
        }
    }
    out
}

fn raw(store: &Store, seq: u64) -> Vec<u8> {
    store
        .read(|rtxn| {
            let t = tables::open_read(rtxn, AUDIT)?.unwrap();
            Ok(stored(&t).remove(&seq).unwrap())
        })
        .unwrap()
}

/// The stored records, by position, for [`tamper`] to edit.
struct Records(BTreeMap<u64, Vec<u8>>);

impl Records {
    fn insert(&mut self, seq: u64, bytes: &[u8]) {
        self.0.insert(seq, bytes.to_vec());
    }
    fn remove(&mut self, seq: u64) {
        self.0.remove(&seq).unwrap();
    }
}

/// Changes the stored records directly through redb, as an attacker with
/// the file would, and stores them back in chunks of contiguous positions.
async fn tamper<F>(store: &Store, mut f: F)
where
    F: FnMut(&mut Records) + Send + 'static,
{
    store
        .write(move |txn| {
            let mut t = tables::open(txn, AUDIT)?;
            let mut records = Records(stored(&*t));
            f(&mut records);
            t.retain(|_, _| false)?;
            audit::store_records(&mut t, records.0)?;
            Ok(())
        })
        .await
        .unwrap();
}

fn broken(r: Result<audit::VerifyReport, VerifyError>) -> (u64, BreakReason) {
    match r {
        Err(VerifyError::Broken { seq, reason }) => (seq, reason),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

fn export_all(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    export(store, None, None, &mut out).unwrap();
    out
}

/// Runs the independent verifier; `Ok(count)` or `Err(stderr)`.
fn python_verify(lines: &[u8]) -> Result<u64, String> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is present");
    child.stdin.take().unwrap().write_all(lines).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn records(lines: &[u8]) -> Vec<serde_json::Value> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test]
async fn chain_of_5000_records_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, metrics) = open(dir.path()).await;
    fill(&audit, 4999).await;
    let report = verify(&store).unwrap();
    assert_eq!(report.count, 5000);
    assert_eq!(report.first_seq, Some(0));
    assert_eq!(report.anchor.as_deref(), Some(ZERO_HASH));
    let head = audit.head().unwrap().unwrap();
    assert_eq!(head.seq, 4999);
    assert_eq!(report.head, Some(head));
    assert_eq!(metrics.audit_records.get(), 5000);
    let genesis: serde_json::Value = serde_json::from_slice(&raw(&store, 0)).unwrap();
    assert_eq!(genesis["event"], "audit.genesis");
    assert_eq!(genesis["node"], NODE);
    assert_eq!(genesis["prev_hash"], ZERO_HASH);
    // `at` is RFC 3339 UTC with milliseconds.
    let at = genesis["at"].as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2024-05-01T12:34:56.789Z".len(),
        "{at}"
    );
    // Reopening does not write a second genesis.
    let again = Audit::open(store.clone(), NODE, None).await.unwrap();
    assert_eq!(again.head().unwrap().unwrap().seq, 4999);
    store.close().await.unwrap();
}

#[tokio::test]
async fn edited_byte_is_a_hash_mismatch_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 99).await;
    let mut bytes = raw(&store, 42);
    let at = bytes
        .windows(5)
        .position(|w| w == b"msg_4")
        .expect("message id in record");
    bytes[at + 1] = b'z'; // "msg_41" -> "mzg_41": still canonical JSON
    tamper(&store, move |t| {
        t.insert(42, &bytes);
    })
    .await;
    assert_eq!(broken(verify(&store)), (42, BreakReason::HashMismatch));
    store.close().await.unwrap();
}

#[tokio::test]
async fn deleted_record_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 99).await;
    tamper(&store, |t| {
        t.remove(30);
    })
    .await;
    assert_eq!(
        broken(verify(&store)),
        (31, BreakReason::Gap { expected: 30 })
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn swapped_records_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 99).await;
    let (a, b) = (raw(&store, 20), raw(&store, 57));
    tamper(&store, move |t| {
        t.insert(20, &b);
        t.insert(57, &a);
    })
    .await;
    assert_eq!(broken(verify(&store)), (20, BreakReason::Reordered));
    // Moving the genesis record away is a reordering too.
    let (a, b) = (raw(&store, 0), raw(&store, 5));
    tamper(&store, move |t| {
        t.insert(0, &b);
        t.insert(5, &a);
    })
    .await;
    assert_eq!(broken(verify(&store)), (0, BreakReason::Reordered));
    store.close().await.unwrap();
}

#[tokio::test]
async fn record_from_another_chain_breaks_the_link() {
    // A record that hashes correctly on its own but was not written after
    // its predecessor (here: taken from another node's chain).
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store, audit, _) = open(d1.path()).await;
    let other_store = Store::open(d2.path(), None).unwrap();
    let other = Audit::open(other_store.clone(), "edge-other", None)
        .await
        .unwrap();
    fill(&audit, 60).await;
    fill(&other, 60).await;
    let foreign = raw(&other_store, 50);
    tamper(&store, move |t| {
        t.insert(50, &foreign);
    })
    .await;
    assert_eq!(broken(verify(&store)), (50, BreakReason::BrokenLink));
    store.close().await.unwrap();
    other_store.close().await.unwrap();
}

#[tokio::test]
async fn deleted_genesis_is_unanchored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 10).await;
    tamper(&store, |t| {
        t.remove(0);
    })
    .await;
    assert_eq!(broken(verify(&store)), (1, BreakReason::Unanchored));
    store.close().await.unwrap();
}

#[tokio::test]
async fn malformed_records_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 20).await;
    let good = raw(&store, 7);
    let mut spaced = good.clone();
    spaced.insert(1, b' ');
    let mut floaty = String::from_utf8(good.clone()).unwrap();
    floaty = floaty.replacen("\"seq\":7", "\"seq\":7.0", 1);
    let cases: Vec<Vec<u8>> = vec![
        b"\xff\xfe not json".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{}".to_vec(),
        spaced,
        floaty.into_bytes(),
        good[..good.len() / 2].to_vec(),
    ];
    for bad in cases {
        tamper(&store, move |t| {
            t.insert(7, &bad);
        })
        .await;
        match broken(verify(&store)) {
            (7, BreakReason::Malformed { .. }) => {}
            other => panic!("expected Malformed at 7, got {other:?}"),
        }
    }
    // A malformed head: the log refuses to extend a chain it cannot link to.
    tamper(&store, |t| {
        t.insert(20, b"garbage");
    })
    .await;
    match audit.record(status(1), "system").await {
        Err(StoreError::Refused(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(audit.head().is_err());
    store.close().await.unwrap();
}

#[tokio::test]
async fn pruning_keeps_the_rest_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let now = Utc::now();
    // 12,000 old records (genesis + 11,999), one a minute, 400 days ago:
    // two prune ops (10,000 + 2,000).
    fill_at(
        &store,
        11_999,
        now - TimeDelta::days(400),
        TimeDelta::minutes(1),
    )
    .await;
    let audit = Audit::open(store.clone(), NODE, None).await.unwrap();
    fill(&audit, 10).await;
    let last_old_hash = serde_json::from_slice::<serde_json::Value>(&raw(&store, 11_999)).unwrap()
        ["hash"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(audit.prune(365, now).await.unwrap(), 12_000);
    let report = verify(&store).unwrap();
    assert_eq!(report.first_seq, Some(12_000));
    assert_eq!(report.anchor.as_deref(), Some(last_old_hash.as_str()));
    assert_eq!(report.count, 10 + 2);
    let lines = export_all(&store);
    let pruned: Vec<_> = records(&lines)
        .into_iter()
        .filter(|r| r["event"] == "audit.pruned")
        .collect();
    assert_eq!(pruned.len(), 2);
    assert_eq!(pruned[0]["count"], 10_000);
    assert_eq!(pruned[0]["last_seq"], 9_999);
    assert_eq!(pruned[1]["count"], 2_000);
    assert_eq!(pruned[1]["last_seq"], 11_999);
    assert_eq!(pruned[1]["last_hash"], last_old_hash.as_str());
    assert_eq!(python_verify(&lines), Ok(12));

    // Nothing more is old enough: no deletion, no new record.
    assert_eq!(audit.prune(365, now).await.unwrap(), 0);
    assert_eq!(verify(&store).unwrap().count, 12);

    // Deleting the record that vouches for the anchor is caught.
    let head = audit.head().unwrap().unwrap().seq;
    tamper(&store, move |t| {
        t.remove(head);
    })
    .await;
    assert_eq!(broken(verify(&store)), (12_000, BreakReason::Unanchored));
    store.close().await.unwrap();
}

#[tokio::test]
async fn export_reverifies_with_an_independent_python_script() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let t0 = DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    fill_at(&store, 59, t0, TimeDelta::minutes(1)).await;
    // Actors with everything the escaping rules have to agree on.
    let audit = Audit::open(store.clone(), NODE, None).await.unwrap();
    for actor in [
        "operator:\"quoted\" \\ back",
        "tab\tnew\nline\r\u{1}\u{1f}\u{7f}",
        "é ünïcödé ✓ 🚀 \u{2028}",
    ] {
        audit.record(status(0), actor).await.unwrap();
    }
    let lines = export_all(&store);
    // genesis + 59 + 3
    assert_eq!(python_verify(&lines), Ok(63));
    assert_eq!(records(&lines).len(), 63);

    // A window of the export verifies on its own, anchored by its first line.
    let since = t0 + TimeDelta::minutes(10);
    let until = t0 + TimeDelta::minutes(20);
    let mut window = Vec::new();
    assert_eq!(
        export(&store, Some(since), Some(until), &mut window).unwrap(),
        10
    );
    assert_eq!(python_verify(&window), Ok(10));
    // Record k + 1 is dated t0 + k minutes (genesis shares t0 with record 1).
    assert_eq!(records(&window)[0]["seq"], 11);

    // The script really checks: one changed character fails it.
    let text = String::from_utf8(lines).unwrap();
    let tampered = text.replacen("msg_33", "msg_34", 1);
    assert!(python_verify(tampered.as_bytes()).is_err());
    store.close().await.unwrap();
}

#[tokio::test]
async fn failed_op_leaves_no_trace_and_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, metrics) = open(dir.path()).await;
    fill(&audit, 5).await;
    let before = audit.head().unwrap().unwrap();
    let counted = metrics.audit_records.get();

    let r = audit
        .write(|log| {
            tables::open(log.txn(), tables::KV)?.insert("audit-test", b"1".as_slice())?;
            log.append(status(100), "system")?;
            log.append(status(101), "system")?;
            Err::<(), _>(StoreError::Refused("domain refusal".into()))
        })
        .await;
    assert!(matches!(r, Err(StoreError::Refused(_))));
    let r = store
        .write(|txn| {
            append(txn, NODE, status(102), "system", Utc::now())?;
            Err::<(), _>(StoreError::Refused("domain refusal".into()))
        })
        .await;
    assert!(r.is_err());

    assert_eq!(audit.head().unwrap().unwrap(), before);
    assert_eq!(metrics.audit_records.get(), counted);
    let kv = store
        .read(|rtxn| {
            Ok(tables::open_read(rtxn, tables::KV)?
                .unwrap()
                .get("audit-test")?
                .is_some())
        })
        .unwrap();
    assert!(!kv, "the state change was rolled back with its record");
    let next = audit.record(status(103), "system").await.unwrap();
    assert_eq!(next.seq, before.seq + 1);
    assert_eq!(next.prev_hash, before.hash);
    let text = String::from_utf8(export_all(&store)).unwrap();
    for gone in ["\"msg_100\"", "\"msg_101\"", "\"msg_102\""] {
        assert!(!text.contains(gone), "{gone} left a trace");
    }
    assert_eq!(verify(&store).unwrap().count, before.seq + 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn verify_file_works_on_a_copy_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 300).await;
    // The live file is locked: a second opener is refused, hence the copy.
    assert!(redb::Database::open(store.path()).is_err());

    let live = verify(&store).unwrap();
    assert_eq!(verify_file(dir.path()).unwrap(), live);
    assert_eq!(verify_file(store.path()).unwrap(), live);
    let mut out = Vec::new();
    assert_eq!(export_file(dir.path(), None, None, &mut out).unwrap(), 301);
    assert_eq!(out, export_all(&store));

    // Writes carry on meanwhile, and tampering shows in the copy too.
    fill(&audit, 10).await;
    tamper(&store, |t| {
        t.remove(100);
    })
    .await;
    assert_eq!(
        broken(verify_file(dir.path())),
        (101, BreakReason::Gap { expected: 100 })
    );
    // The private copies are gone.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".audit-copy"))
        .collect();
    assert!(leftovers.is_empty());
    assert!(matches!(
        verify_file(&dir.path().join("missing")),
        Err(VerifyError::Copy(_))
    ));
    store.close().await.unwrap();
}

#[tokio::test]
async fn records_hold_no_clear_recipient_number() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    let key = Secret::new(vec![9; 32]);
    let sender = E164::parse("+15551230001").unwrap();
    let patient = E164::parse("+15557654321").unwrap();
    let own = OwnNumbers::from_campaigns(&[Campaign {
        id: "CX4K2M9".into(),
        brand: "BQ7A1Z0".into(),
        numbers: vec![sender.clone()],
        segments_per_minute: 240,
        burst: 20,
        number_segments_per_minute: 0,
        help_text: "help".into(),
        stop_text: "stop".into(),
        start_text: "start".into(),
        ..Default::default()
    }]);
    let from = AuditNumber::of(&sender, &key, &own);
    let to = AuditNumber::of(&patient, &key, &own);
    let events = vec![
        AuditEvent::MessageAccepted {
            message_id: "msg_1".into(),
            client: "clinic-app".into(),
            campaign: "CX4K2M9".into(),
            from: from.clone(),
            to: to.clone(),
            carrier: "carrier-a".into(),
            segments: 1,
        },
        AuditEvent::MessageRefused {
            client: "clinic-app".into(),
            campaign: Some("CX4K2M9".into()),
            to: Some(to.clone()),
            code: "recipient_opted_out",
            detail: None,
        },
        AuditEvent::MoReceived {
            link: "carrier-a".into(),
            from: to.clone(),
            to: from.clone(),
            campaign: Some("CX4K2M9".into()),
            keyword: KeywordClass::Stop,
        },
        AuditEvent::OptOutAdded {
            campaign: "CX4K2M9".into(),
            number: to.clone(),
            via: "mo",
        },
    ];
    for e in events {
        audit.record(e, "client:clinic-app").await.unwrap();
    }
    let text = String::from_utf8(export_all(&store)).unwrap();
    assert!(
        !text.contains("7654321"),
        "clear recipient number in export"
    );
    assert!(text.contains(&Pseudonym::of(&key, &patient).to_hex()));
    assert!(
        text.contains("\"from\":\"+15551230001\""),
        "own sender in clear"
    );
    assert!(text.contains("\"keyword\":\"stop\""));
    store.close().await.unwrap();
    let file = std::fs::read(dir.path().join(sms_conduit::store::DB_FILE)).unwrap();
    assert!(
        !file.windows(7).any(|w| w == b"7654321"),
        "clear number in db"
    );
}

#[tokio::test]
async fn key_use_is_aggregated_per_client_per_minute() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    for _ in 0..1000 {
        audit.key_used("clinic-app");
    }
    for _ in 0..5 {
        audit.key_used("ehr-bridge");
    }
    let token = tokio_util::sync::CancellationToken::new();
    let flusher = tokio::spawn(audit.clone().run_key_use_flusher(token.clone()));
    token.cancel();
    flusher.await.unwrap();

    let recs = records(&export_all(&store));
    let used: Vec<_> = recs
        .iter()
        .filter(|r| r["event"] == "api.key_used")
        .collect();
    // One record per client per minute (two if the test straddled a minute).
    assert!((2..=4).contains(&used.len()), "{} records", used.len());
    let total = |c: &str| -> u64 {
        used.iter()
            .filter(|r| r["client"] == c)
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total("clinic-app"), 1000);
    assert_eq!(total("ehr-bridge"), 5);
    assert_eq!(used[0]["actor"], "client:clinic-app");
    assert!(used[0]["minute"].as_str().unwrap().ends_with(":00.000Z"));
    assert_eq!(audit.flush_key_use(true).await.unwrap(), 0);
    verify(&store).unwrap();
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, metrics) = open(dir.path()).await;
    let mut tasks = Vec::new();
    for t in 0..20u64 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                audit.record(status(t * 100 + i), "system").await.unwrap();
                if i % 10 == 3 {
                    // A failing op amid the others: when it shares a batch,
                    // the batch is rerun op by op, and only its records go.
                    let failed = audit
                        .write(move |log| {
                            log.append(status(9_000 + t), "system")?;
                            Err::<(), _>(StoreError::Refused("domain refusal".into()))
                        })
                        .await;
                    assert!(failed.is_err());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = verify(&store).unwrap();
    assert_eq!(report.count, 1001);
    assert_eq!(metrics.audit_records.get(), 1001);
    let stats = store.stats();
    assert!(
        stats.commits < stats.ops,
        "records share commits: {stats:?}"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_of_records_is_stored_as_chunks_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    // One op of 2,000 records (~800 KB): several chunks, none over the
    // limit.
    audit
        .write(|log| {
            for k in 0..2_000 {
                log.append(status(k), "carrier:carrier-a")?;
            }
            Ok(())
        })
        .await
        .unwrap();
    // (stored, decoded) size of each chunk.
    let sizes: Vec<(usize, usize)> = store
        .read(|rtxn| {
            let t = tables::open_read(rtxn, AUDIT)?.unwrap();
            Ok(t.iter()?
                .map(|i| {
                    let v = i.unwrap().1;
                    let decoded = audit::decode_chunk(v.value()).unwrap().len();
                    (v.value().len(), decoded)
                })
                .collect::<Vec<_>>())
        })
        .unwrap();
    assert!(sizes.len() > 3 && sizes.len() < 100, "{}", sizes.len());
    assert!(sizes.iter().all(|s| s.1 <= audit::CHUNK_BYTES), "{sizes:?}");
    // Compressed: keys repeat, each prev_hash is the hash before it.
    let (stored, decoded) = sizes.iter().fold((0, 0), |(a, b), (s, d)| (a + s, b + d));
    assert!(stored * 3 < decoded, "{stored} stored for {decoded}");
    assert_eq!(verify(&store).unwrap().count, 2_001);
    store.close().await.unwrap();
}

#[tokio::test]
async fn records_of_the_first_layout_move_to_chunks_on_open() {
    const LEGACY: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 300).await;
    let head = audit.head().unwrap().unwrap();
    let lines = export_all(&store);
    // Rewrite the file as the first build stored it: one record per seq.
    store
        .write(|txn| {
            // Raw redb: the cached handles of `tables::open` would keep the
            // table open, and an open table cannot be deleted.
            let txn = txn.txn();
            let records = stored(&txn.open_table(AUDIT)?);
            txn.delete_table(AUDIT)?;
            let mut legacy = txn.open_table(LEGACY)?;
            for (seq, bytes) in records {
                legacy.insert(seq, bytes.as_slice())?;
            }
            Ok(())
        })
        .await
        .unwrap();
    // Read as it is (a copy taken before the upgraded appliance starts).
    assert_eq!(verify(&store).unwrap().head, Some(head.clone()));
    assert_eq!(export_all(&store), lines);
    drop(audit);
    store.close().await.unwrap();

    let (store, audit, _) = open(dir.path()).await;
    assert_eq!(audit.head().unwrap().unwrap(), head);
    assert_eq!(verify(&store).unwrap().count, 301);
    assert_eq!(export_all(&store), lines);
    let legacy_gone = store
        .read(|rtxn| Ok(tables::open_read(rtxn, LEGACY)?.is_none()))
        .unwrap();
    assert!(legacy_gone);
    fill(&audit, 5).await;
    assert_eq!(verify(&store).unwrap().count, 306);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_damaged_compressed_chunk_is_reported_at_its_first_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (store, audit, _) = open(dir.path()).await;
    fill(&audit, 50).await; // genesis, then one op of 50 records: chunk 1
    let first_chunk = |store: &Store| {
        store
            .read(|rtxn| {
                let t = tables::open_read(rtxn, AUDIT)?.unwrap();
                let (k, v) = t.last()?.unwrap();
                Ok((k.value(), v.value().to_vec()))
            })
            .unwrap()
    };
    let (key, good) = first_chunk(&store);
    assert_eq!(key, 1);
    assert_eq!(good[0], 1, "stored compressed");
    let mut flipped = good.clone();
    flipped[20] ^= 0x55; // inside the zstd frame
    let mut long = good.clone();
    long[5..9].copy_from_slice(&u32::MAX.to_le_bytes()); // a lying length
    for bad in [flipped, long, good[..good.len() / 2].to_vec()] {
        store
            .write(move |txn| {
                tables::open(txn, AUDIT)?.insert(1, bad.as_slice())?;
                Ok(())
            })
            .await
            .unwrap();
        match broken(verify(&store)) {
            (1, BreakReason::Malformed { .. } | BreakReason::HashMismatch) => {}
            other => panic!("expected chunk 1 malformed, got {other:?}"),
        }
        assert!(export(&store, None, None, &mut Vec::new()).is_err());
    }
    store.close().await.unwrap();
}
