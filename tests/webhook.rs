//! Webhooks over real HTTPS on loopback against the sink, with a real redb
//! store in a temp dir: signed delivery, ordered retries while the client is
//! down or hanging, restarts, expiry, reload, the synchronous MO path, and
//! the conduit rule that an MO text never reaches the state directory.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sms_conduit::config;
use sms_conduit::metrics::Metrics;
use sms_conduit::store::Store;
use sms_conduit::tools::{Mode, Sink};
use sms_conduit::types::{Body, Secret, E164};
use sms_conduit::webhook::sign::{self, SignatureError};
use sms_conduit::webhook::{
    enqueue, Options, Outbox, ReceivedEvent, StatusEvent, WebhookError, Webhooks,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CLIENT: &str = "clinic-app";
const SECRET: &[u8] = b"whsec_test_0123456789abcdef";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Short backoff and polling so failure scenarios finish in seconds; the
/// request timeouts stay at their defaults, so a slow machine does not turn
/// a delivery into a timeout (and a resend).
fn fast() -> Options {
    Options {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        ..Options::default()
    }
}

fn client(id: &str, hook: config::Webhook) -> config::Client {
    config::Client {
        id: id.into(),
        key_sha256: vec![],
        campaigns: vec![],
        webhook: Some(hook),
        ..Default::default()
    }
}

fn status(msg: &str, st: &str) -> StatusEvent {
    StatusEvent {
        message_id: msg.into(),
        status: st.into(),
        error_code: (st == "undeliverable").then(|| "0x0000000B".into()),
        carrier: Some("carrier-a".into()),
        campaign_id: Some("CTEST01".into()),
        client_ref: None,
        segments: 1,
        created_ms: now_ms(),
        updated_ms: now_ms(),
    }
}

const STATUSES: [&str; 3] = ["accepted", "delivered", "undeliverable"];

/// `messages` × [`STATUSES`], interleaved across messages as a relay would
/// commit them; one store op per status change.
async fn enqueue_statuses(store: &Store, client: &str, prefix: &str, messages: usize) {
    for st in STATUSES {
        for m in 0..messages {
            let (client, msg) = (client.to_owned(), format!("msg_{prefix}{m:03}"));
            store
                .write(move |txn| enqueue(txn, &client, status(&msg, st), now_ms()))
                .await
                .unwrap();
        }
    }
}

/// Every message's statuses arrived in [`STATUSES`] order, each event once.
fn assert_in_order_once(events: &[serde_json::Value], prefix: &str, messages: usize) {
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "an event arrived twice");
    assert_eq!(events.len(), messages * STATUSES.len());
    for m in 0..messages {
        let msg = format!("msg_{prefix}{m:03}");
        let seen: Vec<&str> = events
            .iter()
            .filter(|e| e["data"]["id"] == msg.as_str())
            .map(|e| e["data"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(seen, STATUSES, "order of {msg}");
    }
}

async fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attempts(m: &Metrics, outcome: &str) -> u64 {
    m.webhook_attempts
        .with_label_values(&[CLIENT, outcome])
        .get()
}

/// A sink, a store, and what it takes to start and stop workers on it.
struct Rig {
    _sink_dir: tempfile::TempDir,
    state_dir: tempfile::TempDir,
    sink: Sink,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Rig {
    async fn new() -> Rig {
        let sink_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let sink = Sink::start_self_signed(sink_dir.path(), Secret::new(SECRET.to_vec()))
            .await
            .unwrap();
        let store = Store::open(state_dir.path(), None).unwrap();
        Rig {
            _sink_dir: sink_dir,
            state_dir,
            sink,
            store,
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn clients(&self, concurrency: u32) -> Vec<config::Client> {
        vec![client(CLIENT, self.sink.webhook(concurrency))]
    }

    fn start(&self, concurrency: u32, options: Options) -> Workers {
        self.start_for(&self.clients(concurrency), options)
    }

    /// Workers for `clients` (webhooks other than the rig's sink).
    fn start_for(&self, clients: &[config::Client], options: Options) -> Workers {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let hooks = Webhooks::start_with(
            clients,
            self.store.clone(),
            self.metrics.clone(),
            shutdown.clone(),
            tracker.clone(),
            options,
        )
        .unwrap();
        Workers {
            hooks,
            shutdown,
            tracker,
        }
    }

    fn outbox(&self) -> Outbox {
        Outbox::new(self.store.clone())
    }
}

struct Workers {
    hooks: Webhooks,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Workers {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(15), self.tracker.wait())
            .await
            .expect("workers stop within the request timeout");
    }
}

/// A backlog larger than the worker's window is read in as the window
/// frees, not at the next poll: the worker scans the outbox again while its
/// last scan filled the window (it skips the scan only when nothing new
/// can be there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_window_is_read_in_as_the_window_frees() {
    let rig = Rig::new().await;
    enqueue_statuses(&rig.store, CLIENT, "w", 10).await;
    let opts = Options {
        poll_interval: Duration::from_secs(60),
        window: 3,
        ..fast()
    };
    let w = rig.start(4, opts);
    assert!(
        rig.sink.wait_for(30, Duration::from_secs(20)).await,
        "{} of 30 events within 20 s (the poll is 60 s)",
        rig.sink.count()
    );
    assert_in_order_once(&rig.sink.events(), "w", 10);
    assert_eq!(rig.sink.attempts(), 30, "no failed attempt");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_are_delivered_signed_in_order_and_removed() {
    let rig = Rig::new().await;
    // Half is waiting before the workers start; half arrives later, with a
    // poll interval so long that only the wake-up can explain a quick delivery.
    enqueue_statuses(&rig.store, CLIENT, "a", 10).await;
    let opts = Options {
        poll_interval: Duration::from_secs(60),
        ..fast()
    };
    let w = rig.start(4, opts);
    assert!(rig.sink.wait_for(30, Duration::from_secs(20)).await);
    let t0 = Instant::now();
    for m in 0..10 {
        for st in STATUSES {
            w.hooks
                .enqueue(CLIENT, status(&format!("msg_b{m:03}"), st))
                .await
                .unwrap();
        }
    }
    assert!(rig.sink.wait_for(60, Duration::from_secs(20)).await);
    assert!(t0.elapsed() < Duration::from_secs(20));

    let events = rig.sink.events();
    assert_eq!(rig.sink.bad_signatures(), 0);
    assert_eq!(rig.sink.attempts(), 60, "no failed attempt");
    let (a, b): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| e["data"]["id"].as_str().unwrap().starts_with("msg_a"));
    assert_in_order_once(&a, "a", 10);
    assert_in_order_once(&b, "b", 10);
    let e = &a[0];
    assert!(e["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(e["type"], "message.status");
    assert!(e["created_at"].as_str().unwrap().ends_with('Z'));
    for k in [
        "id",
        "status",
        "carrier",
        "segments",
        "created_at",
        "updated_at",
    ] {
        assert!(!e["data"][k].is_null(), "data.{k} missing in {e}");
    }
    assert!(e["data"].get("text").is_none() && e["data"].get("to").is_none());

    let outbox = rig.outbox();
    eventually("an empty outbox", Duration::from_secs(5), || {
        outbox.depth().unwrap() == 0
    })
    .await;
    assert_eq!(attempts(&rig.metrics, "ok"), 60);
    eventually("the depth gauge at 0", Duration::from_secs(5), || {
        rig.metrics.outbox_depth.get() == 0
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_client_gets_everything_once_in_order_after_it_recovers() {
    let rig = Rig::new().await;
    rig.sink.set_mode(Mode::Fail);
    let w = rig.start(8, fast());
    enqueue_statuses(&rig.store, CLIENT, "f", 10).await;
    // The metric counts an attempt once its answer is in.
    eventually("retries", Duration::from_secs(10), || {
        attempts(&rig.metrics, "http_error") >= 40
    })
    .await;
    assert_eq!(rig.sink.count(), 0);

    // While failing, only the first event of each message was ever tried:
    // a message has one event in flight, and its next waits for it.
    let outbox = rig.outbox();
    let pending = outbox.pending(CLIENT).unwrap();
    assert_eq!(pending.len(), 30);
    for (_, rec) in &pending {
        if rec.data()["status"] != "accepted" {
            assert_eq!(rec.attempt, 0, "{rec:?}");
        }
    }
    eventually("every first event retried", Duration::from_secs(5), || {
        outbox
            .pending(CLIENT)
            .unwrap()
            .iter()
            .all(|(_, r)| (r.attempt > 0) == (r.data()["status"] == "accepted"))
    })
    .await;

    rig.sink.set_mode(Mode::Ok);
    assert!(rig.sink.wait_for(30, Duration::from_secs(20)).await);
    eventually("an empty outbox", Duration::from_secs(5), || {
        outbox.depth().unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_in_order_once(&rig.sink.events(), "f", 10);
    assert_eq!(attempts(&rig.metrics, "ok"), 30);
    assert_eq!(rig.sink.bad_signatures(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_client_times_out_then_gets_its_events() {
    let rig = Rig::new().await;
    rig.sink.set_mode(Mode::Hang(Duration::from_secs(5)));
    let opts = Options {
        request_timeout: Duration::from_millis(300),
        ..fast()
    };
    let w = rig.start(4, opts);
    enqueue_statuses(&rig.store, CLIENT, "h", 2).await;
    eventually("timeouts", Duration::from_secs(10), || {
        attempts(&rig.metrics, "timeout") >= 4
    })
    .await;
    assert_eq!(rig.sink.count(), 0);
    assert_eq!(attempts(&rig.metrics, "ok"), 0);
    rig.sink.set_mode(Mode::Ok);
    assert!(rig.sink.wait_for(6, Duration::from_secs(20)).await);
    assert_in_order_once(&rig.sink.events(), "h", 2);
    let outbox = rig.outbox();
    eventually("an empty outbox", Duration::from_secs(5), || {
        outbox.depth().unwrap() == 0
    })
    .await;
    w.stop().await;
    rig.sink.stop().await;
}

/// Reopens a store whose previous handles were closed.
async fn reopen(dir: &Path) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(dir, None) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("store did not reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resends_what_was_pending() {
    let mut rig = Rig::new().await;
    rig.sink.set_mode(Mode::Fail);
    let w = rig.start(4, fast());
    enqueue_statuses(&rig.store, CLIENT, "r", 5).await;
    eventually("failed attempts", Duration::from_secs(10), || {
        attempts(&rig.metrics, "http_error") >= 5
    })
    .await;
    w.stop().await;
    rig.store.close().await.unwrap();

    // A new process: a new store handle on the same file, new workers.
    rig.store = reopen(rig.state_dir.path()).await;
    let pending = rig.outbox().pending(CLIENT).unwrap();
    assert_eq!(pending.len(), 15);
    assert!(
        pending.iter().any(|(_, r)| r.attempt > 0),
        "attempts persisted"
    );
    rig.sink.set_mode(Mode::Ok);
    let w = rig.start(4, fast());
    assert!(rig.sink.wait_for(15, Duration::from_secs(20)).await);
    let outbox = rig.outbox();
    eventually("an empty outbox", Duration::from_secs(5), || {
        outbox.depth().unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_in_order_once(&rig.sink.events(), "r", 5);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_the_maximum_age_are_dropped_as_expired() {
    let rig = Rig::new().await;
    rig.sink.set_mode(Mode::Fail);
    let opts = Options {
        max_age: Duration::from_millis(1500),
        ..fast()
    };
    let w = rig.start(4, opts);
    enqueue_statuses(&rig.store, CLIENT, "x", 2).await;
    let outbox = rig.outbox();
    eventually("the outbox to empty", Duration::from_secs(10), || {
        outbox.depth().unwrap() == 0
    })
    .await;
    assert_eq!(attempts(&rig.metrics, "expired"), 6);
    assert!(
        attempts(&rig.metrics, "http_error") >= 1,
        "tried before dropped"
    );
    assert_eq!(rig.sink.count(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_url_and_secret() {
    let rig = Rig::new().await;
    let w = rig.start(2, fast());
    w.hooks
        .enqueue(CLIENT, status("msg_1", "accepted"))
        .await
        .unwrap();
    assert!(rig.sink.wait_for(1, Duration::from_secs(10)).await);

    let dir = tempfile::tempdir().unwrap();
    let other = Sink::start_self_signed(dir.path(), Secret::new(b"rotated".to_vec()))
        .await
        .unwrap();
    w.hooks.reload(&[client(CLIENT, other.webhook(2))]).unwrap();
    w.hooks
        .enqueue(CLIENT, status("msg_1", "delivered"))
        .await
        .unwrap();
    assert!(other.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(other.bad_signatures(), 0, "signed with the new secret");
    assert_eq!(other.events()[0]["data"]["status"], "delivered");
    assert_eq!(rig.sink.count(), 1);

    // A client whose webhook is removed stops being served; its events wait.
    w.hooks.reload(&[]).unwrap();
    assert!(!w.hooks.has_webhook(CLIENT));
    w.stop().await;
}

fn mo(text: &str) -> ReceivedEvent {
    ReceivedEvent {
        from: E164::parse("+15557654321").unwrap(),
        to: E164::parse("+15551230001").unwrap(),
        text: Body::new(text.into()),
        campaign_id: "CTEST01".into(),
        keyword: None,
        received_ms: now_ms(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_now_is_ok_on_2xx() {
    let rig = Rig::new().await;
    let w = rig.start(2, Options::default());
    let text = "Running 10 min late — is 3:40 ok? ✓";
    w.hooks
        .deliver_now(CLIENT, mo(text), Duration::from_secs(5))
        .await
        .unwrap();
    let events = rig.sink.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["type"], "message.received");
    assert!(e["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(e["data"]["text"], text);
    assert_eq!(e["data"]["from"], "+15557654321");
    assert_eq!(e["data"]["to"], "+15551230001");
    assert_eq!(e["data"]["campaign_id"], "CTEST01");
    assert!(e["data"]["keyword"].is_null());
    assert_eq!(rig.sink.bad_signatures(), 0);
    assert_eq!(attempts(&rig.metrics, "ok"), 1);
    assert_eq!(rig.outbox().depth().unwrap(), 0, "an MO is never stored");

    let err = w
        .hooks
        .deliver_now("no-such-client", mo("x"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::NoWebhook(_)), "{err:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_now_is_err_on_503() {
    let rig = Rig::new().await;
    rig.sink.set_mode(Mode::Fail);
    let w = rig.start(2, Options::default());
    let err = w
        .hooks
        .deliver_now(CLIENT, mo("canary-503-text"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, WebhookError::Status { status: 503, .. }),
        "{err:?}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("canary"), "{shown}");
        assert!(!shown.contains("7654321"), "{shown}");
    }
    assert_eq!(rig.sink.count(), 0);
    assert_eq!(attempts(&rig.metrics, "http_error"), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_now_is_err_when_the_client_hangs_past_the_deadline() {
    let rig = Rig::new().await;
    rig.sink.set_mode(Mode::Hang(Duration::from_secs(5)));
    let w = rig.start(2, Options::default());
    let t0 = Instant::now();
    let err = w
        .hooks
        .deliver_now(CLIENT, mo("hello"), Duration::from_millis(400))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, WebhookError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(attempts(&rig.metrics, "timeout"), 1);
    assert_eq!(rig.sink.count(), 0);
    w.stop().await;
    rig.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_reject_tampering_staleness_and_strangers() {
    let body = br#"{"id":"evt_1","type":"message.status","data":{"status":"delivered"}}"#;
    let now = now_ms() / 1000;
    let header = sign::sign(SECRET, now, body);
    assert_eq!(
        sign::verify(SECRET, &header, body, now, sign::DEFAULT_TOLERANCE),
        Ok(())
    );
    let tampered = br#"{"id":"evt_1","type":"message.status","data":{"status":"failed"}}"#;
    assert_eq!(
        sign::verify(SECRET, &header, tampered, now, sign::DEFAULT_TOLERANCE),
        Err(SignatureError::Mismatch)
    );
    let old = sign::sign(SECRET, now - 600, body);
    assert!(matches!(
        sign::verify(SECRET, &old, body, now, sign::DEFAULT_TOLERANCE),
        Err(SignatureError::Stale { .. })
    ));

    // The sink refuses what is not signed with its secret, over real HTTPS.
    let rig = Rig::new().await;
    let pem = std::fs::read(rig.sink.ca_file().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let cases = [
        None,
        Some(sign::sign(b"wrong-secret", now, body)),
        Some(old),
        Some(header.clone()),
    ];
    let mut statuses = Vec::new();
    for (i, h) in cases.into_iter().enumerate() {
        let mut req = http.post(rig.sink.url());
        if let Some(h) = h {
            req = req.header(sign::HEADER, h);
        }
        let b: &[u8] = if i == 3 { tampered } else { body };
        statuses.push(req.body(b.to_vec()).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401]);
    assert_eq!(rig.sink.bad_signatures(), 4);
    assert_eq!(rig.sink.count(), 0);
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mo_text_never_reaches_the_state_dir() {
    let rig = Rig::new().await;
    let canary = "CANARY-mo-text-7f3a9c1e";
    let w = rig.start(2, fast());
    // Delivered, refused and timed out: no path may leave the text behind.
    w.hooks
        .deliver_now(CLIENT, mo(canary), Duration::from_secs(5))
        .await
        .unwrap();
    rig.sink.set_mode(Mode::Fail);
    let err = w
        .hooks
        .deliver_now(CLIENT, mo(canary), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("CANARY"));
    rig.sink.set_mode(Mode::Hang(Duration::from_secs(2)));
    let err = w
        .hooks
        .deliver_now(CLIENT, mo(canary), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(!format!("{err:?}").contains("CANARY"));
    rig.sink.set_mode(Mode::Ok);
    // Status traffic in the same store, and a positive control: an event for
    // a client without a webhook stays in the outbox, so its message id must
    // be found by the same byte search.
    enqueue_statuses(&rig.store, CLIENT, "c", 3).await;
    rig.store
        .write(|txn| {
            enqueue(
                txn,
                "no-webhook",
                status("msg_control_5d1b", "accepted"),
                now_ms(),
            )
        })
        .await
        .unwrap();
    assert!(rig.sink.wait_for(1 + 9, Duration::from_secs(20)).await);
    w.stop().await;
    rig.store.close().await.unwrap();

    let mut files = Vec::new();
    files_under(rig.state_dir.path(), &mut files);
    assert!(!files.is_empty());
    let mut control_found = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, canary.as_bytes()),
            "MO text found in {}",
            f.display()
        );
        assert!(
            !contains(&bytes, b"+15557654321") && !contains(&bytes, b"15557654321"),
            "MO sender number found in {}",
            f.display()
        );
        control_found |= contains(&bytes, b"msg_control_5d1b");
    }
    assert!(control_found, "the search sees what the store holds");
}

/// A TLS acceptor offering `alpn` with a new self-signed certificate for
/// 127.0.0.1, written to `dir/ep.crt` (the webhook's CA file, returned).
fn endpoint_tls(dir: &Path, alpn: &[&[u8]]) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    let ss = sms_conduit::tls::self_signed(&["127.0.0.1"]).unwrap();
    let (cert_file, key_file) = (dir.join("ep.crt"), dir.join("ep.key"));
    std::fs::write(&cert_file, &ss.cert_pem).unwrap();
    std::fs::write(&key_file, &ss.key_pem).unwrap();
    let tls = sms_conduit::tls::ServerTls::load(
        &config::Tls {
            cert_file: cert_file.clone(),
            key_file,
            client_ca_file: None,
        },
        alpn,
        sms_conduit::tls::ClientAuth::None,
    )
    .unwrap();
    (tls.acceptor(), cert_file)
}

/// An HTTP/2 endpoint over TLS that refuses its first `refuse` streams
/// (REFUSED_STREAM: never processed, RFC 9113 §8.7) and answers 200 to the
/// rest, counting them. Written on the h2 crate directly: the sink's hyper
/// server cannot refuse a stream.
async fn refusing_endpoint(dir: &Path, refuse: usize) -> (config::Webhook, Arc<AtomicUsize>) {
    let (acceptor, cert_file) = endpoint_tls(dir, &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        let mut refused = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                continue;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                if refused < refuse {
                    refused += 1;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                let count = count.clone();
                // The connection is driven by `accept`: the body is read,
                // and the answer sent, beside it.
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = respond.send_response(hyper::Response::new(()), true);
                });
            }
        }
    });
    let hook = config::Webhook {
        url: format!("https://127.0.0.1:{port}/events"),
        secret: Secret::new(SECRET.to_vec()),
        secret_next: None,
        ca_file: Some(cert_file),
        concurrency: 4,
    };
    (hook, answered)
}

/// A stream the endpoint refused was never processed: it is sent again at
/// once on the same attempt, not counted as a failure and retried after a
/// back-off. (reqwest would retry it itself, but only with a body it can
/// clone; the webhook body goes in pieces, see `http::Chunks`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_stream_is_sent_again_at_once() {
    let rig = Rig::new().await;
    let ep_dir = tempfile::tempdir().unwrap();
    let (hook, answered) = refusing_endpoint(ep_dir.path(), 2).await;
    rig.store
        .write(move |txn| enqueue(txn, CLIENT, status("msg_r1", "delivered"), now_ms()))
        .await
        .unwrap();
    let opts = Options {
        // Only the same attempt's retries can deliver it quickly.
        backoff_base: Duration::from_secs(60),
        backoff_cap: Duration::from_secs(60),
        ..fast()
    };
    let workers = rig.start_for(&[client(CLIENT, hook)], opts);
    eventually(
        "the refused event answered",
        Duration::from_secs(10),
        || answered.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(attempts(&rig.metrics, "ok"), 1);
    assert_eq!(attempts(&rig.metrics, "connect_error"), 0);
    eventually("the event removed", Duration::from_secs(10), || {
        rig.outbox().depth().unwrap() == 0
    })
    .await;
    workers.stop().await;
}

/// What an [`http1_endpoint`] saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    answered: AtomicUsize,
    /// Each request's version, Authorization and Conduit-Signature headers.
    requests: parking_lot::Mutex<Vec<(hyper::Version, Option<String>, bool)>>,
}

/// The size of an [`http1_endpoint`]'s answers: more than hyper reads
/// with the head, so a client that does not read the body loses the
/// connection (measured: 24 connections for 24 requests, against 2–3 when
/// the body is read).
const ANSWER: usize = 60_000;

/// An HTTP/1.1-only endpoint (hyper's http1 server): over TLS offering only
/// ALPN http/1.1 when `tls` is set, else plain TCP. Answers 200 with an
/// [`ANSWER`]-byte body, keeps connections alive, and records what it saw.
async fn http1_endpoint(dir: &Path, tls: bool, userinfo: &str) -> (config::Webhook, Arc<Seen>) {
    use hyper_util::rt::TokioIo;
    let (acceptor, ca_file) = match tls {
        true => {
            let (a, ca) = endpoint_tls(dir, &[b"http/1.1"]);
            (Some(a), Some(ca))
        }
        false => (None, None),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let state = state.clone();
                    async move {
                        let h = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let entry = (req.version(), h("authorization"), h(sign::HEADER).is_some());
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        state.requests.lock().push(entry);
                        state.answered.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; ANSWER])),
                        ))
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    let hook = config::Webhook {
        url: if tls {
            format!("https://{userinfo}127.0.0.1:{port}/events")
        } else {
            format!("http://{userinfo}127.0.0.1:{port}/events")
        },
        secret: Secret::new(SECRET.to_vec()),
        secret_next: None,
        ca_file,
        concurrency: 2,
    };
    (hook, seen)
}

/// An endpoint that speaks only HTTP/1.1 (ALPN http/1.1 over TLS, or plain
/// http to a loopback sidecar, which config allows) gets every event, signed,
/// over a few kept-alive connections (`concurrency` 2), though it answers
/// with a body (read and dropped); a URL's user info goes as
/// `Authorization: Basic`, percent-decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_endpoint_gets_its_events_over_kept_alive_connections() {
    for (tls, userinfo, auth) in [
        (true, "", None),
        (false, "app:p%40ss@", Some("Basic YXBwOnBAc3M=")),
    ] {
        let rig = Rig::new().await;
        let ep_dir = tempfile::tempdir().unwrap();
        let (hook, seen) = http1_endpoint(ep_dir.path(), tls, userinfo).await;
        enqueue_statuses(&rig.store, CLIENT, "h", 8).await;
        let workers = rig.start_for(&[client(CLIENT, hook)], fast());
        eventually("24 events answered", Duration::from_secs(20), || {
            seen.answered.load(Ordering::SeqCst) == 24
        })
        .await;
        eventually("the outbox emptied", Duration::from_secs(10), || {
            rig.outbox().depth().unwrap() == 0
        })
        .await;
        assert_eq!(attempts(&rig.metrics, "ok"), 24, "tls {tls}");
        // Two at a time, kept alive; hyper's pool takes a connection back a
        // moment after its answer was read, so a request may open one more.
        let connections = seen.connections.load(Ordering::SeqCst);
        assert!(
            (1..=6).contains(&connections),
            "tls {tls}: {connections} connections for 24 requests at concurrency 2"
        );
        for (version, authorization, signed) in seen.requests.lock().iter() {
            assert_eq!(*version, hyper::Version::HTTP_11, "tls {tls}");
            assert_eq!(authorization.as_deref(), auth, "tls {tls}");
            assert!(signed, "tls {tls}: unsigned");
        }
        workers.stop().await;
    }
}

/// A connection that fails says why (refused; a certificate nobody
/// trusts), as `Unreachable` and the `connect_error` outcome, and names
/// neither the URL's path and query (which may carry a token) nor its
/// user info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_says_why_without_the_url() {
    let rig = Rig::new().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let refused = config::Webhook {
        url: format!("https://app:tok-pass@127.0.0.1:{dead_port}/hook?token=tok-query"),
        ..rig.sink.webhook(1)
    };
    let untrusted = config::Webhook {
        url: format!("{}?token=tok-query", rig.sink.url()),
        ca_file: None,
        ..rig.sink.webhook(1)
    };
    for (hook, cause) in [(refused, "refused"), (untrusted, "certificate")] {
        let w = rig.start_for(&[client(CLIENT, hook)], Options::default());
        let err = w
            .hooks
            .deliver_now(CLIENT, mo("hello"), Duration::from_secs(5))
            .await
            .unwrap_err();
        let WebhookError::Unreachable { reason, .. } = &err else {
            panic!("{cause}: {err:?}");
        };
        assert!(reason.to_lowercase().contains(cause), "{cause}: {reason}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("tok-"), "{shown}");
            assert!(!shown.contains("/hook"), "{shown}");
        }
        w.stop().await;
    }
    assert_eq!(attempts(&rig.metrics, "connect_error"), 2);
    assert_eq!(rig.sink.count(), 0);
}

/// An endpoint that answers 200 and then stalls in the middle of its body
/// has answered: the attempt is a 2xx within the deadline (the connection
/// is given up), not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_whose_body_stalls_is_a_2xx() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let hook = config::Webhook {
        url: format!("http://127.0.0.1:{port}/events"),
        ca_file: None,
        ..rig.sink.webhook(1)
    };
    let w = rig.start_for(&[client(CLIENT, hook)], Options::default());
    let t0 = Instant::now();
    w.hooks
        .deliver_now(CLIENT, mo("hello"), Duration::from_millis(500))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(attempts(&rig.metrics, "ok"), 1);
    assert_eq!(attempts(&rig.metrics, "timeout"), 0);
    w.stop().await;
}
