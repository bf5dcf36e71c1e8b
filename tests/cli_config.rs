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

/// The example's comment for `key` in table `section`: the text after `#`
/// on its line, the indented comment lines that continue it, and the
/// column-0 comment lines right above it.
fn comment_of(example: &str, section: &str, key: &str) -> String {
    let lines: Vec<&str> = example.lines().collect();
    let header = |l: &str| {
        let t = l.trim();
        t.starts_with(&format!("[{section}]")) || t.starts_with(&format!("[[{section}]]"))
    };
    let start = lines
        .iter()
        .position(|l| header(l))
        .unwrap_or_else(|| panic!("no [{section}] in the example"));
    let at = (start + 1..lines.len())
        .take_while(|&i| !lines[i].starts_with('['))
        .find(|&i| {
            lines[i]
                .split_once('=')
                .is_some_and(|(k, _)| !lines[i].starts_with('#') && k.trim() == key)
        })
        .unwrap_or_else(|| panic!("{section}.{key} not found in the example's text"));
    let mut out = String::new();
    // After the first `#` outside a string.
    let mut in_str = false;
    for (i, c) in lines[at].char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => {
                out.push_str(&lines[at][i..]);
                break;
            }
            _ => {}
        }
    }
    for l in &lines[at + 1..] {
        if l.starts_with("   ") && l.trim_start().starts_with('#') {
            out.push(' ');
            out.push_str(l.trim());
        } else {
            break;
        }
    }
    for l in lines[..at].iter().rev() {
        if l.starts_with('#') {
            out.push(' ');
            out.push_str(l);
        } else {
            break;
        }
    }
    out
}

/// Issue 19 item 7: the example's values are the code's defaults or say
/// they are not, and required keys say so. For every key of the example
/// (every table, the first entry of each array of tables), the example is
/// loaded without that key: if it no longer loads, the key's comment must
/// say "required"; if it loads but the config differs (the example's value
/// is not what the key gets when left out), the comment must say
/// "default" or "optional"; if nothing changes, the value shown is the
/// default and the comment must not call it required.
#[test]
fn example_config_values_are_the_defaults_or_say_so() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let creds = dir.join("example");
    let text = std::fs::read_to_string(example()).unwrap();
    let load = |t: &str| sms_conduit::config::Config::from_toml(t, &dir, Some(&creds));
    let effective = |c: &sms_conduit::config::Config| {
        format!(
            "{:?}",
            (
                &c.node,
                &c.tls,
                &c.api,
                &c.metrics,
                &c.smpp_server,
                &c.carriers,
                &c.peers,
                (&c.brands, &c.campaigns, &c.clients, &c.audit, &c.store),
                &c.fleet
            )
        )
    };
    let full = effective(&load(&text).unwrap_or_else(|e| panic!("the example: {e}")));
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (section, v) in &table {
        let keys: Vec<String> = match v {
            toml::Value::Table(t) => t.keys().cloned().collect(),
            toml::Value::Array(a) => a
                .first()
                .and_then(toml::Value::as_table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default(),
            _ => continue,
        };
        for key in keys {
            let mut edited = table.clone();
            match edited.get_mut(section) {
                Some(toml::Value::Table(t)) => {
                    t.remove(&key);
                }
                Some(toml::Value::Array(a)) => {
                    if let Some(t) = a.first_mut().and_then(toml::Value::as_table_mut) {
                        t.remove(&key);
                    }
                }
                _ => unreachable!(),
            }
            let edited = toml::to_string(&edited).unwrap();
            let comment = comment_of(&text, section, &key).to_ascii_lowercase();
            let name = format!("{section}.{key}");
            checked += 1;
            match load(&edited) {
                Err(e) => {
                    if !comment.contains("required") {
                        let why = e.to_string().lines().nth(1).unwrap_or("").to_owned();
                        problems.push(format!(
                            "{name}: required (without it: {why}) but its comment does not say `required`"
                        ));
                    }
                }
                Ok(c) if effective(&c) != full => {
                    if !comment.contains("default") && !comment.contains("optional") {
                        problems.push(format!(
                            "{name}: the example's value is not the default, and its comment says neither `default: …` nor `optional`"
                        ));
                    }
                }
                Ok(_) => {
                    if comment.contains("required") {
                        problems.push(format!(
                            "{name}: the comment says required, but the example loads without it and means the same"
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} keys checked");
    assert!(
        problems.is_empty(),
        "config/sms-conduit.example.toml:\n  {}",
        problems.join("\n  ")
    );
}
