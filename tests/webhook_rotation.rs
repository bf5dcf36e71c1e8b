//! Webhooks an integrator can rotate and an operator can see failing, over
//! real HTTPS on loopback against the sink, with a real redb store:
//! - during a rotation (`webhook_secret_next_file`) every request carries
//!   one `v1=` per secret, and a receiver holding either secret verifies it;
//! - a failing endpoint is logged once per failure series (with status and
//!   back-off) and once when it recovers, not per attempt.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sms_conduit::config;
use sms_conduit::metrics::Metrics;
use sms_conduit::store::Store;
use sms_conduit::tools::{Mode, Sink};
use sms_conduit::types::Secret;
use sms_conduit::webhook::{Options, StatusEvent, Webhooks};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::fmt::MakeWriter;

const OLD: &[u8] = b"whsec_current_0123456789";
const NEW: &[u8] = b"whsec_next_abcdefghijklm";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every log line of this test binary (a global subscriber, INFO and up).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl Logs {
    /// Lines containing every one of `needles`.
    fn count(&self, needles: &[&str]) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}

fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(logs.clone())
            .try_init()
            .expect("the only global subscriber of this binary");
        logs
    })
    .clone()
}

fn fast() -> Options {
    Options {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        poll_interval: Duration::from_millis(50),
        ..Options::default()
    }
}

fn status(msg: &str, st: &str) -> StatusEvent {
    StatusEvent {
        message_id: msg.into(),
        status: st.into(),
        error_code: None,
        carrier: Some("carrier-a".into()),
        campaign_id: Some("CTEST01".into()),
        client_ref: None,
        segments: 1,
        created_ms: now_ms(),
        updated_ms: now_ms(),
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

/// The sink's webhook, signed with `OLD` and, as the next secret, `NEW`.
fn rotating(sink: &Sink) -> config::Webhook {
    let mut hook = sink.webhook(2);
    hook.secret = Secret::new(OLD.to_vec());
    hook.secret_next = Some(Secret::new(NEW.to_vec()));
    hook
}

struct Workers {
    hooks: Webhooks,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn start(store: &Store, metrics: &Arc<Metrics>, clients: &[config::Client]) -> Workers {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let hooks = Webhooks::start_with(
        clients,
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
        tracker.clone(),
        fast(),
    )
    .unwrap();
    Workers {
        hooks,
        shutdown,
        tracker,
    }
}

impl Workers {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(15), self.tracker.wait())
            .await
            .expect("workers stop");
    }
}

async fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_both_secrets_verify() {
    let _ = logs();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // A receiver still on the current secret, and one already on the next.
    let on_old = Sink::start_self_signed(dir.path(), Secret::new(OLD.to_vec()))
        .await
        .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let on_new = Sink::start_self_signed(dir2.path(), Secret::new(NEW.to_vec()))
        .await
        .unwrap();
    let store = Store::open(state.path(), None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let id = "rotating-client";

    let w = start(&store, &metrics, &[client(id, rotating(&on_old))]);
    w.hooks
        .enqueue(id, status("msg_r1", "accepted"))
        .await
        .unwrap();
    assert!(on_old.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(on_old.bad_signatures(), 0, "the current secret verifies");

    w.hooks.reload(&[client(id, rotating(&on_new))]).unwrap();
    w.hooks
        .enqueue(id, status("msg_r1", "delivered"))
        .await
        .unwrap();
    assert!(on_new.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(on_new.bad_signatures(), 0, "the next secret verifies");

    // Without the next secret, the receiver already on it refuses.
    let mut only_old = rotating(&on_new);
    only_old.secret_next = None;
    w.hooks.reload(&[client(id, only_old)]).unwrap();
    w.hooks
        .enqueue(id, status("msg_r1", "undeliverable"))
        .await
        .unwrap();
    eventually("a refused signature", Duration::from_secs(10), || {
        on_new.bad_signatures() >= 1
    })
    .await;
    assert_eq!(on_new.count(), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_logged_once_per_series() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let sink = Sink::start_self_signed(dir.path(), Secret::new(OLD.to_vec()))
        .await
        .unwrap();
    let store = Store::open(state.path(), None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let id = "failing-client";
    let failed = |m: &Metrics| {
        m.webhook_attempts
            .with_label_values(&[id, "http_error"])
            .get()
    };
    let failing = ["webhook endpoint failing", id, "status=503", "retry_in_ms="];
    let recovered = ["webhook endpoint answers 2xx again", id];

    sink.set_mode(Mode::Fail);
    let w = start(&store, &metrics, &[client(id, sink.webhook(2))]);
    for m in 0..3 {
        w.hooks
            .enqueue(id, status(&format!("msg_f{m}"), "accepted"))
            .await
            .unwrap();
    }
    eventually("10 failed attempts", Duration::from_secs(20), || {
        failed(&metrics) >= 10
    })
    .await;
    let attempts = failed(&metrics);
    assert_eq!(
        logs.count(&failing),
        1,
        "{attempts} failed attempts, one series: logged once"
    );
    assert_eq!(logs.count(&recovered), 0);

    sink.set_mode(Mode::Ok);
    assert!(sink.wait_for(3, Duration::from_secs(10)).await);
    eventually("the recovery line", Duration::from_secs(5), || {
        logs.count(&recovered) == 1
    })
    .await;

    // A new series is logged again, once.
    sink.set_mode(Mode::Fail);
    let before = failed(&metrics);
    w.hooks
        .enqueue(id, status("msg_f9", "accepted"))
        .await
        .unwrap();
    eventually("5 more failed attempts", Duration::from_secs(20), || {
        failed(&metrics) >= before + 5
    })
    .await;
    assert_eq!(logs.count(&failing), 2, "a second series, logged once");
    assert_eq!(logs.count(&recovered), 1);
    w.stop().await;
}
