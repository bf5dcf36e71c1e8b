//! A whole appliance for send-path scenarios: real TLS certificates, one or
//! more simulated carriers (SMSCs over TLS), a config whose `[[carriers]]`
//! point at them, [`App::start`] on `127.0.0.1:0`, and an HTTPS client that
//! trusts the test certificate. Nothing is mocked: the tests speak HTTPS to
//! the API and the App speaks SMPP over TLS to the simulators.
//!
//! Shape of a scenario:
//!
//! ```ignore
//! let files = Files::new();
//! let sim = files.sim(|_| {}).await;
//! let relay = Relay::start(files, Setup::one(&sim)).await;
//! let resp = relay.send(&message("hello")).await;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use sms_conduit::app::App;
use sms_conduit::config::{self, Config};
use sms_conduit::smpp::codec::{Frame, SmppCodec};
use sms_conduit::smpp::{bind, CommandStatus};
use sms_conduit::store::shared::LocalShared;
use sms_conduit::tls::{self, ClientAuth, ServerTls};
use sms_conduit::tools::sim::{start_sim, SimHandle, SimOptions};
use sms_conduit::types::{Pseudonym, E164};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{client_trusting, write};

/// The campaign the main client (`clinic-app`) may use.
pub const CAMPAIGN: &str = "CTEST01";
/// Its brand (the one with the configurable daily cap).
pub const BRAND: &str = "BTEST01";
/// Sender numbers of [`CAMPAIGN`].
pub const FROM: &str = "+15551230001";
pub const FROM_2: &str = "+15551230002";
/// A campaign of the other client (`other-app`), and its number.
pub const OTHER_CAMPAIGN: &str = "COTHER1";
pub const OTHER_FROM: &str = "+15551230009";
/// The usual recipient (routed by `+1`).
pub const TO: &str = "+15557654321";
/// SMPP credentials the simulators accept.
pub const SYSTEM_ID: &str = "conduit";

/// A valid send body from [`FROM`] to [`TO`] on [`CAMPAIGN`].
pub fn message(text: &str) -> serde_json::Value {
    serde_json::json!({
        "from": FROM,
        "to": TO,
        "text": text,
        "campaign_id": CAMPAIGN,
    })
}

/// The temp dir with the TLS certificate (for the API, the SMPP simulators
/// and as the carriers' `ca_file`), the pseudonym key and password files.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Files {
    fn default() -> Self {
        Self::new()
    }
}

impl Files {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ss = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let cert = write(dir.path(), "server.crt", &ss.cert_pem);
        let key = write(dir.path(), "server.key", &ss.key_pem);
        write(dir.path(), "pseudonym.key", &"5a".repeat(32));
        Files {
            dir,
            cert_pem: ss.cert_pem,
            cert,
            key,
        }
    }

    /// Another dir with the same certificate and pseudonym key (a second
    /// node of a fleet: it trusts the same simulators, has its own store).
    pub fn sibling(&self) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "server.crt", &self.cert_pem);
        let key_pem = std::fs::read_to_string(&self.key).unwrap();
        let key = write(dir.path(), "server.key", &key_pem);
        write(dir.path(), "pseudonym.key", &"5a".repeat(32));
        Files {
            dir,
            cert_pem: self.cert_pem.clone(),
            cert,
            key,
        }
    }

    /// Starts a simulated SMSC over TLS (this dir's certificate) accepting
    /// [`SYSTEM_ID`] / `password`; `tweak` may change any option. Receipts
    /// are held back an hour unless `tweak` shortens `dlr_delay`.
    pub async fn sim(&self, password: &str, tweak: impl FnOnce(&mut SimOptions)) -> Sim {
        let mut opts = SimOptions::new("127.0.0.1:0".parse().unwrap());
        opts.tls = Some((self.cert.clone(), self.key.clone()));
        opts.system_id = Some(SYSTEM_ID.into());
        opts.password = Some(password.into());
        opts.dlr_delay = Duration::from_secs(3600);
        tweak(&mut opts);
        let token = CancellationToken::new();
        let handle = start_sim(opts, token.clone()).await.unwrap();
        Sim { handle, token }
    }

    /// Starts an SMSC over TLS that accepts any bind and answers
    /// enquire_link, but never answers a submit_sm.
    pub async fn silent_smsc(&self) -> SilentSmsc {
        self.unanswering_smsc(false, Duration::ZERO).await
    }

    /// Like [`Self::silent_smsc`], but it answers each bind only after
    /// `delay`.
    pub async fn slow_binding_smsc(&self, delay: Duration) -> SilentSmsc {
        self.unanswering_smsc(false, delay).await
    }

    /// Like [`Self::silent_smsc`], but it drops the connection as soon as
    /// a submit_sm arrives: a carrier lost with the message in its window.
    pub async fn dropping_smsc(&self) -> SilentSmsc {
        self.unanswering_smsc(true, Duration::ZERO).await
    }

    async fn unanswering_smsc(&self, drop_on_submit: bool, bind_delay: Duration) -> SilentSmsc {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls_cfg = config::Tls {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            client_ca_file: None,
        };
        let tls = ServerTls::load(&tls_cfg, &[], ClientAuth::None).unwrap();
        let submits = Arc::new(AtomicU64::new(0));
        let binds = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        let (s, b, t) = (submits.clone(), binds.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = t.cancelled() => break,
                };
                let acceptor = tls.acceptor();
                let (s, b, t) = (s.clone(), b.clone(), t.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut framed = Framed::new(stream, SmppCodec::new());
                    let mut refused = 0;
                    let Ok(attempt) =
                        bind::await_bind(&mut framed, Duration::from_secs(5), &mut refused).await
                    else {
                        return;
                    };
                    tokio::time::sleep(bind_delay).await;
                    if bind::answer_bind(&mut framed, &attempt, CommandStatus::EsmeRok, "SILENT")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    b.fetch_add(1, Ordering::SeqCst);
                    silent_session(framed, s, t, drop_on_submit).await;
                });
            }
        });
        SilentSmsc {
            addr,
            submits,
            binds,
            token,
        }
    }

    /// Writes a password file for a carrier and returns its name.
    fn password_file(&self, carrier: &str, password: &str) -> String {
        let name = format!("{carrier}.pass");
        write(self.dir.path(), &name, &format!("{password}\n"));
        name
    }
}

/// One bound session of the silent SMSC: answers enquire_link and unbind,
/// counts submit_sm and never answers them.
async fn silent_session<S>(
    mut framed: Framed<S, SmppCodec>,
    submits: Arc<AtomicU64>,
    token: CancellationToken,
    drop_on_submit: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use rusmpp::{Command, CommandId, Pdu};
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            _ = token.cancelled() => return,
        };
        let Some(Ok(Frame::Command(cmd))) = frame else {
            return;
        };
        let seq = cmd.sequence_number();
        match cmd.id() {
            CommandId::EnquireLink => {
                let resp = Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp);
                if framed.send(resp).await.is_err() {
                    return;
                }
            }
            CommandId::Unbind => {
                let resp = Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp);
                let _ = framed.send(resp).await;
                return;
            }
            CommandId::SubmitSm => {
                submits.fetch_add(1, Ordering::SeqCst);
                if drop_on_submit {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// A running simulated carrier.
pub struct Sim {
    pub handle: SimHandle,
    pub token: CancellationToken,
}

impl Sim {
    pub fn port(&self) -> u16 {
        self.handle.local_addr().port()
    }
    pub fn submits(&self) -> u64 {
        self.handle.report().submits
    }
    /// Shuts the simulator down (its sessions unbind, its port closes).
    pub async fn stop(&self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle.wait()).await;
    }
}

/// An SMSC that never answers submit_sm (see [`Files::silent_smsc`]).
pub struct SilentSmsc {
    pub addr: SocketAddr,
    pub submits: Arc<AtomicU64>,
    pub binds: Arc<AtomicU64>,
    pub token: CancellationToken,
}

impl Drop for SilentSmsc {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// One `[[carriers]]` entry.
#[derive(Debug, Clone)]
pub struct CarrierCfg {
    pub name: String,
    pub port: u16,
    pub password: String,
    pub priority: u32,
    pub prefixes: Vec<String>,
    pub response_timeout_secs: u64,
    /// `max_tps`; 0 = unset.
    pub max_tps: u32,
}

impl CarrierCfg {
    /// `name` on `127.0.0.1:port` over TLS, priority 1, prefix `+1`,
    /// 2 s response timeout.
    pub fn new(name: &str, port: u16, password: &str) -> Self {
        CarrierCfg {
            name: name.into(),
            port,
            password: password.into(),
            priority: 1,
            prefixes: vec!["+1".into()],
            response_timeout_secs: 2,
            max_tps: 0,
        }
    }
    pub fn max_tps(mut self, tps: u32) -> Self {
        self.max_tps = tps;
        self
    }
    pub fn priority(mut self, p: u32) -> Self {
        self.priority = p;
        self
    }
    pub fn prefixes(mut self, p: &[&str]) -> Self {
        self.prefixes = p.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn response_timeout_secs(mut self, s: u64) -> Self {
        self.response_timeout_secs = s;
        self
    }
}

/// What varies between scenarios.
#[derive(Debug, Clone)]
pub struct Setup {
    pub carriers: Vec<CarrierCfg>,
    /// `[[campaigns]] segments_per_minute` / `burst` of [`CAMPAIGN`].
    pub spm: u32,
    pub burst: u32,
    /// `[[brands]] daily_cap` / `daily_reset_tz` of [`BRAND`].
    pub daily_cap: u64,
    pub tz: String,
    /// Wait until `/readyz` is 200 after start (every priority-1 carrier bound).
    pub wait_ready: bool,
    /// A webhook for `clinic-app` (none by default).
    pub webhook: Option<WebhookCfg>,
    /// Extra `[node]` lines (e.g. the receipt rules' windows).
    pub node_extra: String,
    /// Appended to the config as is: e.g. a `[fleet]` table.
    pub fleet_extra: String,
    /// `[node] id` (`send-test` unless a fleet test names its nodes).
    pub node_id: String,
    /// Appended to the end of the config: whole tables (`[[campaigns]]`,
    /// `[[clients]]`, …) a scenario adds.
    pub extra_toml: String,
}

/// `webhook_url`, the secret (written to `clinic-app.whsec` as is) and the
/// optional `webhook_ca_file` of `clinic-app` (see [`Setup::webhook`]).
#[derive(Debug, Clone)]
pub struct WebhookCfg {
    pub url: String,
    pub secret: Vec<u8>,
    pub ca_file: Option<PathBuf>,
}

impl Setup {
    /// Generous limits, no daily cap, the given carriers.
    pub fn new(carriers: Vec<CarrierCfg>) -> Self {
        Setup {
            carriers,
            spm: 60_000,
            burst: 1_000,
            daily_cap: 0,
            tz: "America/Los_Angeles".into(),
            wait_ready: true,
            webhook: None,
            node_extra: String::new(),
            fleet_extra: String::new(),
            node_id: "send-test".into(),
            extra_toml: String::new(),
        }
    }
    /// One carrier, `carrier-a`, on `sim`.
    pub fn one(sim: &Sim, password: &str) -> Self {
        Self::new(vec![CarrierCfg::new("carrier-a", sim.port(), password)])
    }
    pub fn limits(mut self, spm: u32, burst: u32) -> Self {
        self.spm = spm;
        self.burst = burst;
        self
    }
    pub fn daily_cap(mut self, cap: u64, tz: &str) -> Self {
        self.daily_cap = cap;
        self.tz = tz.into();
        self
    }
    /// Names the node (`[node] id`): each node of a fleet has its own.
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = id.into();
        self
    }
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }
    /// Gives `clinic-app` a webhook: `url`, signed with `secret`, its
    /// certificate trusted through `ca_file`.
    pub fn webhook(mut self, url: &str, secret: &[u8], ca_file: Option<&Path>) -> Self {
        self.webhook = Some(WebhookCfg {
            url: url.into(),
            secret: secret.to_vec(),
            ca_file: ca_file.map(Path::to_path_buf),
        });
        self
    }
}

pub fn toml_for(files: &Files, setup: &Setup, hash: &str, other_hash: &str) -> String {
    let mut carriers = String::new();
    for c in &setup.carriers {
        let pass = files.password_file(&c.name, &c.password);
        let prefixes: Vec<String> = c.prefixes.iter().map(|p| format!("{p:?}")).collect();
        carriers.push_str(&format!(
            r#"
[[carriers]]
name = "{name}"
host = "127.0.0.1"
port = {port}
tls = true
system_id = "{SYSTEM_ID}"
password_file = "{pass}"
ca_file = "server.crt"
server_name = "localhost"
prefixes = [{prefixes}]
priority = {priority}
response_timeout_secs = {rt}
{tps}"#,
            tps = if c.max_tps > 0 {
                format!("max_tps = {}\n", c.max_tps)
            } else {
                String::new()
            },
            name = c.name,
            port = c.port,
            prefixes = prefixes.join(", "),
            priority = c.priority,
            rt = c.response_timeout_secs,
        ));
    }
    let clinic_hook = match &setup.webhook {
        Some(w) => {
            std::fs::write(files.dir.path().join("clinic-app.whsec"), &w.secret).unwrap();
            let ca = w
                .ca_file
                .as_ref()
                .map(|p| format!("webhook_ca_file = {:?}\n", p.display().to_string()))
                .unwrap_or_default();
            format!(
                "webhook_url = {:?}\nwebhook_secret_file = \"clinic-app.whsec\"\n{ca}",
                w.url
            )
        }
        None => String::new(),
    };
    format!(
        r#"
[node]
id = "{node_id}"
state_dir = "state"
drain_secs = 15
pseudonym_key_file = "pseudonym.key"
{node_extra}

[tls]
cert_file = "server.crt"
key_file = "server.key"

[api]
listen = "127.0.0.1:0"
header_timeout_secs = 5
idle_timeout_secs = 30
max_connections = 256

[metrics]
listen = "127.0.0.1:0"

[smpp_server]
{carriers}
[[brands]]
id = "{BRAND}"
daily_cap = {cap}
daily_reset_tz = "{tz}"

[[brands]]
id = "BOTHER1"

[[campaigns]]
id = "{CAMPAIGN}"
brand = "{BRAND}"
numbers = ["{FROM}", "{FROM_2}"]
segments_per_minute = {spm}
burst = {burst}
help_text = "Test Clinic: reply STOP to opt out."
stop_text = "Test Clinic: you are unsubscribed."
start_text = "Test Clinic: you are subscribed again."

[[campaigns]]
id = "{OTHER_CAMPAIGN}"
brand = "BOTHER1"
numbers = ["{OTHER_FROM}"]
segments_per_minute = 60000
burst = 1000
help_text = "Other: reply STOP to opt out."
stop_text = "Other: you are unsubscribed."
start_text = "Other: you are subscribed again."

[[clients]]
id = "clinic-app"
key_sha256 = ["{hash}"]
campaigns = ["{CAMPAIGN}"]
{clinic_hook}
[[clients]]
id = "other-app"
key_sha256 = ["{other_hash}"]
campaigns = ["{OTHER_CAMPAIGN}"]

{fleet_extra}
{extra_toml}"#,
        fleet_extra = setup.fleet_extra,
        node_id = setup.node_id,
        node_extra = setup.node_extra,
        extra_toml = setup.extra_toml,
        cap = setup.daily_cap,
        tz = setup.tz,
        spm = setup.spm,
        burst = setup.burst,
    )
}

/// A running appliance and what a test needs to talk to it.
pub struct Relay {
    pub files: Files,
    pub config: Config,
    /// Key of `clinic-app` (campaign [`CAMPAIGN`]).
    pub api_key: String,
    /// Key of `other-app` (campaign [`OTHER_CAMPAIGN`]).
    pub other_key: String,
    pub client: reqwest::Client,
    wait_ready: bool,
    app: Option<App>,
    /// Hashes of `api_key` and `other_key`, to write configs for reloads.
    hashes: (String, String),
}

impl Relay {
    /// Writes the config into `files.dir`, starts the App and (unless
    /// `setup.wait_ready` is off) waits for `/readyz` 200.
    pub async fn start(files: Files, setup: Setup) -> Relay {
        Self::start_inner(files, setup, None).await
    }

    /// [`Relay::start`] over a store whose commits the test can make fail.
    pub async fn start_with_store_faults(
        files: Files,
        setup: Setup,
        faults: sms_conduit::store::FaultSwitch,
    ) -> Relay {
        Self::start_inner(files, setup, Some(faults)).await
    }

    async fn start_inner(
        files: Files,
        setup: Setup,
        faults: Option<sms_conduit::store::FaultSwitch>,
    ) -> Relay {
        let (api_key, hash) = sms_conduit::api::new_key();
        let (other_key, other_hash) = sms_conduit::api::new_key();
        let toml = toml_for(&files, &setup, &hash, &other_hash);
        write(files.dir.path(), "sms-conduit.toml", &toml);
        let config = Config::from_toml(&toml, files.dir.path(), None)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let app = match faults {
            None => App::start(config.clone()).await.unwrap(),
            Some(f) => App::start_with_store_faults(config.clone(), f)
                .await
                .unwrap(),
        };
        let client = client_trusting(&[&files.cert_pem], false);
        let relay = Relay {
            files,
            config,
            api_key,
            other_key,
            client,
            wait_ready: setup.wait_ready,
            app: Some(app),
            hashes: (hash, other_hash),
        };
        if relay.wait_ready {
            relay.wait_ready().await;
        }
        relay
    }

    /// The running App.
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("the App is stopped")
    }

    /// `https://localhost:<api port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.app().bound.api.port())
    }

    /// `<state_dir>` of the node.
    pub fn state_dir(&self) -> &Path {
        &self.config.node.state_dir
    }

    /// A POST of raw bytes to `/v1/messages`: optional key, optional
    /// Idempotency-Key, `Content-Type: application/json`.
    pub async fn post_raw(
        &self,
        key: Option<&str>,
        idempotency_key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut rb = self
            .client
            .post(self.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(k) = idempotency_key {
            rb = rb.header("idempotency-key", k);
        }
        rb.send().await.unwrap()
    }

    /// Sends `body` as `clinic-app`.
    pub async fn send(&self, body: &serde_json::Value) -> reqwest::Response {
        self.post_raw(Some(&self.api_key), None, body.to_string())
            .await
    }

    /// Sends `body` as `clinic-app` with an Idempotency-Key.
    pub async fn send_idem(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.post_raw(Some(&self.api_key), Some(key), body.to_string())
            .await
    }

    /// Sends and expects 201; returns the JSON answer.
    pub async fn send_ok(&self, body: &serde_json::Value) -> serde_json::Value {
        let resp = self.send(body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 201, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// `GET path` with `key`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// An unauthenticated GET of `path` (`/readyz`, `/healthz`).
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `/readyz` status code.
    pub async fn readyz(&self) -> u16 {
        self.client
            .get(self.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits (up to 10 s) until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readyz().await != 200 {
            assert!(Instant::now() < deadline, "/readyz never became 200");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (up to 10 s) until `/readyz` is 503.
    pub async fn wait_not_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readyz().await != 503 {
            assert!(Instant::now() < deadline, "/readyz never became 503");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The shared state (daily counters, opt-outs) over the App's store.
    pub fn shared(&self) -> LocalShared {
        LocalShared::new(self.app().store.clone())
    }

    /// The keyed pseudonym of `number` under this node's key.
    pub fn pseudonym(&self, number: &str) -> [u8; 32] {
        Pseudonym::of(
            &self.config.node.pseudonym_key,
            &E164::parse(number).unwrap(),
        )
        .0
    }

    /// Drains the App (store flushed and closed). Returns whether it was clean.
    pub async fn stop(&mut self) -> bool {
        match self.app.take() {
            Some(app) => app.stop(Duration::from_secs(5)).await,
            None => true,
        }
    }

    /// The App's `/metrics` page (plain HTTP on loopback).
    pub async fn metrics_text(&self) -> String {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            self.app().bound.metrics.port()
        );
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Waits (up to 10 s) until the relay itself counts `n` bound sessions
    /// to carrier `link` (a simulator counts a bind before the relay has
    /// read its bind_resp, so its own count cannot tell).
    pub async fn wait_bound(&self, link: &str, n: u64) {
        let line = format!("sms_conduit_smpp_sessions{{link=\"{link}\",state=\"bound\"}} {n}\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.metrics_text().await.contains(&line) {
            assert!(
                Instant::now() < deadline,
                "{link} never had {n} bound sessions"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Status events waiting in the webhook outbox (every client).
    pub fn outbox_depth(&self) -> u64 {
        sms_conduit::webhook::Outbox::new(self.app().store.clone())
            .depth()
            .unwrap()
    }

    /// Rewrites the config from `setup` (same keys) and applies it as
    /// SIGHUP does.
    pub async fn reload(&mut self, setup: Setup) {
        let toml = toml_for(&self.files, &setup, &self.hashes.0, &self.hashes.1);
        write(self.files.dir.path(), "sms-conduit.toml", &toml);
        let config = Config::from_toml(&toml, self.files.dir.path(), None)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        self.app
            .as_mut()
            .expect("the App is stopped")
            .reload(config.clone())
            .await
            .unwrap();
        self.config = config;
    }

    /// Hands `config` to the running App's reload as is (a test may have
    /// changed it after parsing) and returns the App's verdict; the
    /// relay's `config` changes only when the reload was applied.
    pub async fn try_reload(&mut self, config: Config) -> Result<(), sms_conduit::app::AppError> {
        self.app
            .as_mut()
            .expect("the App is stopped")
            .reload(config.clone())
            .await?;
        self.config = config;
        Ok(())
    }

    /// Stops the App and starts a new one on the same config and state dir.
    pub async fn restart(&mut self) {
        assert!(self.stop().await, "the App did not drain cleanly");
        self.app = Some(App::start(self.config.clone()).await.unwrap());
        if self.wait_ready {
            self.wait_ready().await;
        }
    }
}

/// Polls `cond` every 20 ms for up to `within`; panics with `what` if it
/// never holds.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Retry-After` header as whole seconds.
pub fn retry_after(resp: &reqwest::Response) -> u64 {
    let v = resp
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {}", resp.status()));
    v.to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {v:?} is not integer seconds"))
}

/// One submit_sm taken by a [`ManualSmsc`].
#[derive(Debug, Clone)]
pub struct ManualSubmit {
    /// The SMSC's link name of the session it came on.
    pub link: String,
    /// The carrier message id it was answered with.
    pub message_id: String,
    pub source_addr: String,
    pub dest_addr: String,
}

struct ManualHandler {
    submits: Arc<std::sync::Mutex<Vec<ManualSubmit>>>,
    /// How long to hold the answer of the next submits, in order; empty =
    /// answer at once.
    delays: Arc<std::sync::Mutex<std::collections::VecDeque<Duration>>>,
}

impl sms_conduit::smpp::InboundHandler for ManualHandler {
    fn deliver<'a>(
        &'a self,
        link: &'a str,
        msg: sms_conduit::smpp::InboundMessage,
    ) -> futures::future::BoxFuture<'a, CommandStatus> {
        Box::pin(async move {
            if msg.kind == sms_conduit::smpp::InboundKind::SubmitSm {
                if let Some(id) = &msg.message_id {
                    self.submits.lock().unwrap().push(ManualSubmit {
                        link: link.to_owned(),
                        message_id: id.clone(),
                        source_addr: msg.source_addr.clone(),
                        dest_addr: msg.dest_addr.clone(),
                    });
                }
                let delay = self.delays.lock().unwrap().pop_front();
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
            }
            CommandStatus::EsmeRok
        })
    }
}

/// An SMSC over TLS (the crate's own SMPP server engine) that accepts every
/// submit_sm and sends delivery receipts only when the test says so
/// ([`ManualSmsc::receipt`]): for checking what the relay does between
/// the receipts of one message's segments.
pub struct ManualSmsc {
    pub handle: sms_conduit::smpp::ServerHandle,
    pub token: CancellationToken,
    submits: Arc<std::sync::Mutex<Vec<ManualSubmit>>>,
    delays: Arc<std::sync::Mutex<std::collections::VecDeque<Duration>>>,
}

impl Files {
    /// Starts a [`ManualSmsc`] accepting [`SYSTEM_ID`] / `password`.
    pub async fn manual_smsc(&self, password: &str) -> ManualSmsc {
        use sha2::Digest;
        let tls_cfg = config::Tls {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            client_ca_file: None,
        };
        let tls = ServerTls::load(&tls_cfg, &[], ClientAuth::None).unwrap();
        let server_cfg = config::SmppServer {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            plaintext_listen: None,
            idle_timeout: Duration::from_secs(300),
            window: 64,
            max_connections: 256,
            max_unbound_per_address: 8,
            bind_timeout: Duration::from_secs(10),
            enquire_link: Duration::from_secs(30),
        };
        let peer = config::Peer {
            name: "manual".into(),
            system_id: SYSTEM_ID.into(),
            password_sha256: sha2::Sha256::digest(password.as_bytes()).into(),
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            max_binds: 16,
            carrier: None,
            cert_sha256: None,
        };
        let submits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let delays = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let handler = Arc::new(ManualHandler {
            submits: submits.clone(),
            delays: delays.clone(),
        });
        let token = CancellationToken::new();
        let handle = sms_conduit::smpp::start_server(
            &server_cfg,
            Some(tls),
            vec![peer],
            handler,
            Arc::new(sms_conduit::metrics::Metrics::new()),
            token.clone(),
        )
        .await
        .unwrap();
        ManualSmsc {
            handle,
            token,
            submits,
            delays,
        }
    }
}

impl ManualSmsc {
    pub fn port(&self) -> u16 {
        self.handle.local_addr().unwrap().port()
    }

    /// Holds the answers of the next submit_sm, in arrival order, for these
    /// times (a slow or throttling carrier; a segment answered late).
    pub fn answer_after(&self, delays: &[Duration]) {
        self.delays.lock().unwrap().extend(delays.iter().copied());
    }

    /// Every submit_sm taken so far, in arrival order.
    pub fn submits(&self) -> Vec<ManualSubmit> {
        self.submits.lock().unwrap().clone()
    }

    /// Sends a `DELIVRD` receipt (Appendix B text, `receipted_message_id`,
    /// `message_state` 2) for `submit`; the relay's answer.
    pub async fn receipt(&self, submit: &ManualSubmit) -> CommandStatus {
        self.receipt_with(submit, "DELIVRD", "000", Some(2), &submit.message_id)
            .await
    }

    /// Sends a receipt for `submit` with the `stat:` word `stat`, the `err:`
    /// code `err`, the `message_state` TLV `state` (with the
    /// `receipted_message_id` TLV) or no TLVs at all (`None`), and `id` as
    /// the text's `id:` field (e.g. the decimal form of a hex id).
    pub async fn receipt_with(
        &self,
        submit: &ManualSubmit,
        stat: &str,
        err: &str,
        state: Option<u8>,
        id: &str,
    ) -> CommandStatus {
        self.receipt_with_network_error(submit, stat, err, state, id, None)
            .await
    }

    /// As [`Self::receipt_with`], with a `network_error_code` TLV
    /// (network type, code).
    pub async fn receipt_with_network_error(
        &self,
        submit: &ManualSubmit,
        stat: &str,
        err: &str,
        state: Option<u8>,
        id: &str,
        network_error_code: Option<(u8, u16)>,
    ) -> CommandStatus {
        let now = chrono::Utc::now().format("%y%m%d%H%M");
        let text = format!(
            "id:{id} sub:001 dlvrd:001 submit date:{now} done date:{now} stat:{stat} err:{err} text:"
        );
        let req = sms_conduit::smpp::DeliverRequest {
            source_addr: submit.dest_addr.clone(),
            dest_addr: submit.source_addr.clone(),
            esm_class: 0x04,
            data_coding: 0,
            registered_delivery: 0,
            short_message: zeroize::Zeroizing::new(text.into_bytes()),
            receipt: sms_conduit::smpp::handler::ReceiptTlvs {
                receipted_message_id: state.map(|_| submit.message_id.clone()),
                message_state: state,
                network_error_code,
            },
        };
        match self.handle.deliver(&submit.link, req).await {
            Ok(()) => CommandStatus::EsmeRok,
            Err(sms_conduit::smpp::SmppError::Status(s)) => s,
            Err(e) => panic!("receipt not delivered: {e}"),
        }
    }
}

impl ManualSmsc {
    /// Sends `req` (e.g. one part of a concatenated MO) as a deliver_sm on
    /// the relay's session; the relay's answer.
    pub async fn deliver(&self, req: sms_conduit::smpp::DeliverRequest) -> CommandStatus {
        match self.handle.deliver("manual", req).await {
            Ok(()) => CommandStatus::EsmeRok,
            Err(sms_conduit::smpp::SmppError::Status(s)) => s,
            Err(e) => panic!("deliver_sm not delivered: {e}"),
        }
    }
}

impl Drop for ManualSmsc {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Starts the real binary, `sms-conduit run`, on the config in `dir`; returns the child and
/// its API port once it listens.
pub fn start_binary(dir: &std::path::Path) -> (std::process::Child, u16) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["run", "--config"])
        .arg(dir.join("sms-conduit.toml"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push(l.clone());
            if let Some(rest) = l.split("api=").nth(1) {
                let addr: std::net::SocketAddr =
                    rest.split_whitespace().next().unwrap().parse().unwrap();
                // Keep draining the log so the child never blocks on it.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return (child, addr.port());
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the relay did not start listening:\n{}", log.join("\n"));
}
