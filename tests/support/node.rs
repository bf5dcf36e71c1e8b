//! node-smpp (npm `smpp`) processes for interop tests: the first run
//! installs it into `tests/interop/node/node_modules` from the npm registry
//! (`npm install`); later runs reuse it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node")
}

/// Installs node-smpp once (serialised across the tests of this binary).
fn ensure_node_smpp() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done || node_dir().join("node_modules/smpp/package.json").exists() {
        *done = true;
        return;
    }
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(node_dir())
        .output()
        .expect("npm is needed for the interop tests (it ships with node)");
    assert!(
        out.status.success(),
        "npm install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    *done = true;
}

/// A node process printing JSON lines; the lines arrive on a channel.
pub struct NodeProc {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl NodeProc {
    pub fn spawn(script: &str, env: &[(&str, String)]) -> NodeProc {
        ensure_node_smpp();
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join(script))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("node is needed for the interop tests");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        NodeProc { child, lines: rx }
    }

    pub fn next(&self, event: &str) -> serde_json::Value {
        let mut seen = Vec::new();
        loop {
            let Ok(v) = self.lines.recv_timeout(Duration::from_secs(15)) else {
                panic!("node printed no {event:?} event; it printed {seen:?}");
            };
            if v["event"] == event {
                return v;
            }
            seen.push(v);
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
