//! Helpers shared by the integration tests: a temp dir with real TLS
//! certificates (rcgen) and a config built from TOML, a running API server on
//! `127.0.0.1:0`, and an HTTPS client that trusts the test certificate.
//! Nothing here mocks the wire: tests talk TLS and HTTP to a real listener.
#![allow(dead_code)]

pub mod capture;
pub mod node;
pub mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sms_conduit::api::{
    self, ApiState, Authenticator, ConnLimits, MessageService, NoAudit, Readiness,
};
use sms_conduit::config::Config;
use sms_conduit::metrics::Metrics;
use sms_conduit::tls::{self, ClientAuth, ServerTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// ALPN offered by the API listener.
pub const API_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A temp dir holding a server certificate, a pseudonym key and a config.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// A valid API key of client `clinic-app`.
    pub api_key: String,
    /// The server certificate (PEM) clients must trust.
    pub cert_pem: String,
}

impl TestEnv {
    /// A config with one brand, campaign and client; `tls_extra` is appended
    /// to the `[tls]` table (e.g. `client_ca_file = "ca.pem"`), after
    /// `files` were written into the temp dir.
    pub fn with(tls_extra: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ss = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        write(dir.path(), "server.crt", &ss.cert_pem);
        write(dir.path(), "server.key", &ss.key_pem);
        write(dir.path(), "pseudonym.key", &"ab".repeat(32));
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let (api_key, hash) = api::new_key();
        let toml = format!(
            r#"
[node]
id = "test-node"
state_dir = "state"
pseudonym_key_file = "pseudonym.key"

[tls]
cert_file = "server.crt"
key_file = "server.key"
{tls_extra}

[api]
listen = "127.0.0.1:0"
header_timeout_secs = 5
idle_timeout_secs = 30
max_connections = 64

[metrics]
listen = "127.0.0.1:0"

# Present so its field defaults apply (an absent table gets zeros; see report).
[smpp_server]

[[brands]]
id = "BTEST01"

[[campaigns]]
id = "CTEST01"
brand = "BTEST01"
numbers = ["+15551230001"]
segments_per_minute = 60
help_text = "Test Clinic: reply STOP to opt out."
stop_text = "Test Clinic: you are unsubscribed."
start_text = "Test Clinic: you are subscribed again."

[[clients]]
id = "clinic-app"
key_sha256 = ["{hash}"]
campaigns = ["CTEST01"]
"#
        );
        let config = Config::from_toml(&toml, dir.path(), None)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        TestEnv {
            dir,
            config,
            api_key,
            cert_pem: ss.cert_pem,
        }
    }

    /// The default environment.
    pub fn new() -> Self {
        Self::with("", &[])
    }

    /// The API's TLS state, loaded from the config's `[tls]`.
    pub fn server_tls(&self) -> Arc<ServerTls> {
        ServerTls::load(&self.config.tls, API_ALPN, ClientAuth::None).unwrap()
    }

    /// An HTTPS client trusting only the test certificate.
    pub fn client(&self) -> reqwest::Client {
        client_trusting(&[&self.cert_pem], false)
    }

    /// Path of a file in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An HTTPS client trusting exactly `pems`; `http1` forces HTTP/1.1.
pub fn client_trusting(pems: &[&str], http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .timeout(std::time::Duration::from_secs(10));
    for pem in pems {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A server started for a test; stopped by [`Running::stop`] or on drop of
/// the token owner.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub tls: Arc<ServerTls>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
}

impl Running {
    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Cancels and waits for every connection task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts the API with `service` and `readiness` on `127.0.0.1:0`.
pub async fn start_api(
    env: &TestEnv,
    service: impl MessageService,
    readiness: Arc<dyn Readiness>,
) -> Running {
    start_api_with(
        env,
        service,
        readiness,
        ConnLimits::from_api(&env.config.api),
    )
    .await
}

/// As [`start_api`] with explicit connection limits.
pub async fn start_api_with(
    env: &TestEnv,
    service: impl MessageService,
    readiness: Arc<dyn Readiness>,
    limits: ConnLimits,
) -> Running {
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(Authenticator::new(
        &env.config.clients,
        Arc::new(NoAudit),
        metrics.clone(),
    ));
    let state = ApiState::new(service, readiness, auth.clone(), metrics.clone());
    let listener = TcpListener::bind(env.config.api.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = env.server_tls();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(api::serve_api(
        listener,
        tls.clone(),
        state,
        limits,
        shutdown.clone(),
        tracker.clone(),
    ));
    Running {
        addr,
        shutdown,
        tracker,
        tls,
        metrics,
        auth,
    }
}

/// Checks an error response: status, `application/problem+json`, `code`;
/// returns the parsed document.
pub async fn expect_problem(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json", "content type");
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["code"], code, "{doc}");
    assert_eq!(doc["status"], status, "{doc}");
    assert_eq!(
        doc["type"],
        format!("https://sms-conduit.dev/problems/{code}"),
        "{doc}"
    );
    assert!(
        doc["title"].is_string() && doc["detail"].is_string(),
        "{doc}"
    );
    doc
}

/// SMPP helpers: certificates, carrier/peer configs, a raw-socket fake SMSC.
mod smpp;
#[allow(unused_imports)]
pub use smpp::*;
