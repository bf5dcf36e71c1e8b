//! `sms-conduit demo` as a user runs it: the real binary, its exit status and
//! the summary it prints. The totals must add up (every message accounted
//! for), no text may reach the output, and `--keep` must leave a config the
//! printed `audit verify` command accepts.

// `demo` is part of the `tools` feature (on by default).
#![cfg(feature = "tools")]

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sms-conduit");

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args`, killing it after `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sms-conduit");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sms-conduit {args:?} did not finish within {} s\nstdout:\n{}\nstderr:\n{}",
                limit.as_secs(),
                o.join().unwrap_or_default(),
                e.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        code: status.code(),
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

/// The summary's `label  N ...` lines, by label.
fn totals(stdout: &str) -> HashMap<String, u64> {
    let summary = stdout
        .split("\nsummary\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let mut out = HashMap::new();
    for line in summary.lines() {
        let line = line.trim();
        for label in [
            "sent",
            "accepted",
            "delivered",
            "refused by code",
            "unaccounted",
        ] {
            if let Some(rest) = line.strip_prefix(label) {
                if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    out.insert(label.to_owned(), n);
                }
            }
        }
    }
    out
}

/// Pieces of the demo's texts: none may appear in anything it prints.
const TEXT_CANARIES: &[&str] = &[
    "appointment",
    "insurance card",
    "is confirmed",
    "\u{1F4C5}",
    "Reply STOP",
];

fn assert_no_text(o: &Output) {
    for c in TEXT_CANARIES {
        assert!(!o.stdout.contains(c), "message text {c:?} in stdout");
        assert!(!o.stderr.contains(c), "message text {c:?} in stderr");
    }
}

#[test]
fn demo_200_messages_accounts_for_every_one() {
    let o = run(&["demo", "--messages", "200"], Duration::from_secs(90));
    assert_eq!(
        o.code,
        Some(0),
        "demo failed\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let t = totals(&o.stdout);
    let get = |k: &str| {
        *t.get(k)
            .unwrap_or_else(|| panic!("no {k:?} line in:\n{}", o.stdout))
    };
    assert_eq!(get("sent"), 200, "{}", o.stdout);
    assert_eq!(
        get("accepted") + get("refused by code"),
        get("sent"),
        "{}",
        o.stdout
    );
    assert_eq!(get("delivered"), get("accepted"), "{}", o.stdout);
    assert_eq!(get("unaccounted"), 0, "{}", o.stdout);
    assert!(get("accepted") > 0, "{}", o.stdout);
    // The refusals say why: code, campaign and the relay's detail.
    if get("refused by code") > 0 {
        let why = o
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("why"))
            .unwrap_or_else(|| panic!("no `why` line for the refusals:\n{}", o.stdout));
        assert!(
            why.contains("429 rate_limited on CDEMOSLOW")
                && why.contains("segments_per_minute")
                && why.contains("retry after"),
            "{why}"
        );
    }
    assert!(
        o.stdout.contains("result: ok, every message accounted for"),
        "{}",
        o.stdout
    );
    for line in [
        "latency          p50 ",
        "audit chain      ok, ",
        "sms_conduit_ lines",
    ] {
        assert!(o.stdout.contains(line), "no {line:?} in:\n{}", o.stdout);
    }
    assert_no_text(&o);
}

#[test]
fn demo_keep_leaves_a_config_audit_verify_accepts() {
    let o = run(
        &["demo", "--messages", "20", "--keep"],
        Duration::from_secs(90),
    );
    assert_eq!(
        o.code,
        Some(0),
        "demo failed\nstdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let config: PathBuf = o
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("config "))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_else(|| panic!("no kept config path in:\n{}", o.stdout));
    let dir = config.parent().expect("config dir").to_path_buf();
    assert!(config.is_file(), "{} missing", config.display());
    let config_arg = config.to_str().expect("utf-8 path");
    assert!(
        o.stdout
            .contains(&format!("sms-conduit audit verify --config {config_arg}")),
        "{}",
        o.stdout
    );

    let verify = run(
        &["audit", "verify", "--config", config_arg],
        Duration::from_secs(30),
    );
    let export = run(
        &["audit", "export", "--config", config_arg],
        Duration::from_secs(30),
    );
    std::fs::remove_dir_all(&dir).expect("remove the kept dir");
    assert_eq!(verify.code, Some(0), "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.starts_with("audit chain ok"),
        "{}",
        verify.stdout
    );
    assert_eq!(export.code, Some(0), "{}", export.stderr);
    assert!(export.stdout.lines().count() > 20, "{}", export.stdout);
    assert_no_text(&o);
    assert_no_text(&export);
}
