//! The real binary's `check-config` and `number-id` commands.

use std::process::Command;

/// The binary, with the example's dummy credentials directory (the example
/// config names its files by the credential names the systemd unit loads).
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sms-conduit"));
    c.env(
        "CREDENTIALS_DIRECTORY",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example"),
    );
    c
}

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sms-conduit.example.toml")
}

#[test]
fn example_config_passes_check_config() {
    let out = bin()
        .args(["check-config", "--config"])
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// A copy of the example config in a temp dir, edited by `edit`.
fn edited(edit: impl Fn(String) -> String) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let text = edit(std::fs::read_to_string(example()).unwrap());
    let path = dir.path().join("sms-conduit.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_config_reports_every_error_with_its_key() {
    let (_d, path) = edited(|t| {
        t.replace("drain_secs = 20", "drain_sec = 20")
            .replace("\"+15551230002\"", "\"+1555\"")
            .replace("campaigns = [\"CX4K2M9\"]", "campaigns = [\"NOPE\"]")
    });
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.drain_sec: unknown key; did you mean `drain_secs`?"),
        "{err}"
    );
    assert!(
        err.contains("campaigns[0].numbers[1]: \"+1555\" is not an E.164 number"),
        "{err}"
    );
    assert!(
        err.contains("clients[0].campaigns[0]: unknown campaign \"NOPE\""),
        "{err}"
    );
}

#[test]
fn check_config_rejects_a_broken_certificate() {
    let (d, path) = edited(|t| t);
    std::fs::write(d.path().join("server.crt"), "not a pem").unwrap();
    let out = bin()
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert_file"), "{err}");
}

#[test]
fn number_id_prints_the_keyed_pseudonym() {
    let out = bin()
        .args(["number-id", "--config"])
        .arg(example())
        .arg("+15551234567")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64);
    assert!(!id.contains("5551234567"));
    let bad = bin()
        .args(["number-id", "--config"])
        .arg(example())
        .arg("555-1234")
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
