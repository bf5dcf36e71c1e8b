//! The run's material: the mix of texts, the recipients, and the temp dir
//! with certificates, secrets and the relay's config.

use super::*;

/// The three kinds of text the demo sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Gsm7,
    Ucs2,
    Long,
}

impl Kind {
    /// 60% GSM-7, 25% UCS-2 with an emoji, 15% multi-segment.
    pub(super) fn of(i: u64) -> Kind {
        match i % 20 {
            0..=11 => Kind::Gsm7,
            12..=16 => Kind::Ucs2,
            _ => Kind::Long,
        }
    }

    /// A made-up text of this kind (never printed).
    pub(super) fn text(self, i: u64) -> String {
        match self {
            Kind::Gsm7 => format!(
                "Reminder: your appointment #{i} at Acme Clinic is tomorrow at 10:00. Reply STOP to opt out."
            ),
            Kind::Ucs2 => {
                format!("Acme Clinic \u{1F4C5} your visit #{i} is confirmed. Reply STOP to opt out.")
            }
            Kind::Long => {
                let mut t = format!("Acme Clinic, visit #{i}: ");
                while t.len() < 300 {
                    t.push_str("Please bring your insurance card and a list of current medications. ");
                }
                t.truncate(300);
                t
            }
        }
    }
}

/// Whether message `i` goes to the slow campaign: every fourth one.
pub(super) fn is_slow(i: u64) -> bool {
    i % 4 == 3
}

/// Segments of message `i` (GSM-7 and UCS-2 texts fit one, long ones take two).
pub(super) fn segments_of(i: u64) -> u64 {
    match Kind::of(i) {
        Kind::Long => 2,
        _ => 1,
    }
}

/// The slow campaign's burst: 70% of the segments the run sends on it, so
/// that, whatever the machine's speed, it refuses part of its share with
/// `rate_limited` (its sustained rate adds only 20 segments a second).
pub(super) fn slow_burst(messages: u64) -> u64 {
    let segments: u64 = (0..messages).filter(|i| is_slow(*i)).map(segments_of).sum();
    (segments * 7 / 10).max(10)
}

/// The recipient of message `i` (fictional 555 numbers, 1000 of them).
pub(super) fn recipient(i: u64) -> String {
    format!("+1555{:07}", 2_000_000 + i % 1000)
}

/// The files the relay, carrier and sink need, in `dir`.
pub(super) struct Files {
    pub(super) dir: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) cert_pem: String,
    pub(super) smpp_password: String,
    pub(super) webhook_secret: Vec<u8>,
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, bytes)
}

pub(super) fn make_files(dir: &Path) -> Result<Files, DemoError> {
    let ss = crate::tls::self_signed(&["localhost", "127.0.0.1"])?;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &ss.cert_pem)?;
    write_private(&key, ss.key_pem.as_bytes())?;
    write_private(
        &dir.join("pseudonym.key"),
        hex::encode(rand::random::<[u8; 32]>()).as_bytes(),
    )?;
    // SMPP passwords are at most 8 characters.
    let smpp_password = hex::encode(rand::random::<[u8; 4]>());
    write_private(&dir.join("carrier-sim.pass"), smpp_password.as_bytes())?;
    let webhook_secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>())).into_bytes();
    write_private(&dir.join("clinic-app.whsec"), &webhook_secret)?;
    Ok(Files {
        dir: dir.to_path_buf(),
        cert,
        key,
        cert_pem: ss.cert_pem,
        smpp_password,
        webhook_secret,
    })
}

pub(super) fn config_toml(
    sim: SocketAddr,
    key_hash: &str,
    sink_url: &str,
    slow_burst: u64,
) -> String {
    format!(
        r#"# sms-conduit demo: relay on loopback, simulated carrier, webhook sink.
[node]
id = "demo"
state_dir = "state"
drain_secs = 15
pseudonym_key_file = "pseudonym.key"

[tls]
cert_file = "server.crt"
key_file = "server.key"

[api]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"

[smpp_server]

[[carriers]]
name = "carrier-sim"
host = "127.0.0.1"
port = {port}
tls = true
system_id = "{SYSTEM_ID}"
password_file = "carrier-sim.pass"
ca_file = "server.crt"
server_name = "localhost"
binds = 2
window = 64
prefixes = ["+1"]
priority = 1

[[brands]]
id = "BDEMO01"

[[campaigns]]
id = "{FAST_CAMPAIGN}"
brand = "BDEMO01"
numbers = ["{f0}", "{f1}"]
segments_per_minute = 600000
burst = 20000
help_text = "Acme Clinic: reply STOP to opt out. Help: 555-0100"
stop_text = "Acme Clinic: you are unsubscribed and will get no more messages."
start_text = "Acme Clinic: you are subscribed again. Reply STOP to opt out."

[[campaigns]]
id = "{SLOW_CAMPAIGN}"
brand = "BDEMO01"
numbers = ["{SLOW_NUMBER}"]
segments_per_minute = {SLOW_SEGMENTS_PER_MINUTE}
burst = {slow_burst}
help_text = "Acme Reminders: reply STOP to opt out."
stop_text = "Acme Reminders: you are unsubscribed."
start_text = "Acme Reminders: you are subscribed again."

[[clients]]
id = "clinic-app"
key_sha256 = ["{key_hash}"]
campaigns = ["{FAST_CAMPAIGN}", "{SLOW_CAMPAIGN}"]
webhook_url = "{sink_url}"
webhook_secret_file = "clinic-app.whsec"
webhook_ca_file = "sink.crt"
"#,
        port = sim.port(),
        f0 = FAST_NUMBERS[0],
        f1 = FAST_NUMBERS[1],
    )
}
