//! The real binary as systemd runs it: `sms-conduit run` with a config file,
//! sd_notify on a real datagram socket, HTTPS on the bound port, SIGHUP
//! reload, SIGTERM drain.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sms_conduit::tls;

struct Files {
    dir: tempfile::TempDir,
    cert_pem: String,
    api_key: String,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ss = tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(dir.path().join("server.crt"), &ss.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &ss.key_pem).unwrap();
    std::fs::write(dir.path().join("pseudonym.key"), "cd".repeat(32)).unwrap();
    let (api_key, hash) = sms_conduit::api::new_key();
    let toml = format!(
        r#"
[node]
id = "edge-test"
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

[[brands]]
id = "B1"

[[campaigns]]
id = "C1"
brand = "B1"
numbers = ["+15551230001"]
segments_per_minute = 60
help_text = "help"
stop_text = "stop"
start_text = "start"

[[clients]]
id = "clinic-app"
key_sha256 = ["{hash}"]
campaigns = ["C1"]
"#
    );
    std::fs::write(dir.path().join("sms-conduit.toml"), toml).unwrap();
    Files {
        dir,
        cert_pem: ss.cert_pem,
        api_key,
    }
}

/// Reads the child's stderr lines into a channel.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, log: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push(l.clone());
            if l.contains(needle) {
                return l;
            }
        }
    }
    panic!("no log line with {needle:?}; got:\n{}", log.join("\n"));
}

fn wait_notify(sock: &UnixDatagram, needle: &str) -> String {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.contains(needle) {
                return m;
            }
        }
    }
    panic!("no sd_notify message with {needle:?}");
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn run_notifies_serves_reloads_and_drains() {
    let f = files();
    let notify_path = f.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["run", "--config"])
        .arg(f.dir.path().join("sms-conduit.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut log = Vec::new();
    let line = wait_line(&rx, "listening api=", &mut log);
    wait_notify(&sock, "READY=1");
    let api: std::net::SocketAddr = line
        .split("api=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(f.cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", api.port());
    let status = rt.block_on(async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let status = rt.block_on(async {
        client
            .get(format!("{base}/v1/messages/msg_x"))
            .bearer_auth(&f.api_key)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 404, "an authenticated request reaches the service");

    // A new key, made offline, comes into force on SIGHUP.
    let (new_key, new_hash) = sms_conduit::api::new_key();
    let cfg_path = f.dir.path().join("sms-conduit.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let text = text
        .replace(
            "key_sha256 = [\"",
            &format!("key_sha256 = [\"{new_hash}\", \""),
        )
        // A setting that only a restart applies: the reload says so.
        .replace("drain_secs = 15", "drain_secs = 16");
    std::fs::write(&cfg_path, text).unwrap();
    let status_with_new_key = || {
        rt.block_on(async {
            client
                .get(format!("{base}/v1/messages/msg_x"))
                .bearer_auth(&new_key)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let status = status_with_new_key();
    assert_eq!(status, 401, "not before the reload");
    signal(child.id(), libc::SIGHUP);
    wait_notify(&sock, "RELOADING=1");
    let restart_only = wait_line(&rx, "take effect only on restart", &mut log);
    assert!(restart_only.contains("node.drain_secs"), "{restart_only}");
    wait_line(&rx, "configuration reloaded", &mut log);
    wait_notify(&sock, "READY=1");
    let status = status_with_new_key();
    assert_eq!(status, 404, "the new key works after the reload");

    // The process refuses core dumps.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    assert!(
        std::fs::read_to_string(format!("/proc/{}/limits", child.id()))
            .unwrap_or_default()
            .lines()
            .any(
                |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
            ),
        "RLIMIT_CORE is 0"
    );
    drop(status);

    signal(child.id(), libc::SIGTERM);
    wait_notify(&sock, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within the drain time"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code:?}");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(l);
    }
    assert!(
        log.iter().any(|l| l.contains("stopped cleanly")),
        "{}",
        log.join("\n")
    );
    assert!(f.dir.path().join("state/sms-conduit.redb").exists());

    // The audit log of that run verifies and exports (genesis, the reload).
    let cfg = f.dir.path().join("sms-conduit.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain ok"));
    let out = Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(["audit", "export", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let export = String::from_utf8_lossy(&out.stdout);
    assert!(export.contains("\"audit.genesis\""), "{export}");
    assert!(export.contains("\"config.reloaded\""), "{export}");
    assert!(export.contains("\"key.created\""), "{export}");
    assert!(
        !export.contains(&new_key),
        "the key itself is never recorded"
    );
    assert!(
        export.contains("\"api.key_used\""),
        "key use is aggregated and flushed at stop: {export}"
    );
}
