//! For the canary tests: a global TRACE-level tracing subscriber writing
//! into memory, so every log line the process produced can be searched, and
//! the helpers that search bytes and files for a canary text.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Every log line of this test binary, from the first [`capture`] on.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

pub struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CapturedWriter(self.0.clone())
    }
}

impl Captured {
    /// Everything logged so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Installs (once per binary) a global TRACE subscriber writing into memory;
/// `log` records (rustls) are forwarded to it too.
pub fn capture() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(logs.clone())
            .try_init()
            .expect("the only global subscriber of this binary");
        logs
    })
    .clone()
}

/// The byte forms the canary could take at rest: UTF-8 (= GSM 03.38
/// unpacked, since it is ASCII letters, digits and '-', all at their ASCII
/// code points in GSM), and UCS-2 big-endian (SMPP data_coding 8).
pub fn forms(canary: &str) -> Vec<(&'static str, Vec<u8>)> {
    assert!(canary
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let ucs2: Vec<u8> = canary
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    vec![
        ("UTF-8/GSM unpacked", canary.as_bytes().to_vec()),
        ("UCS-2 BE", ucs2),
    ]
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The log line around byte `at`.
pub fn line_at(log: &[u8], at: usize) -> String {
    let start = log[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = log[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(log.len(), |i| at + i);
    String::from_utf8_lossy(&log[start..end]).into_owned()
}

/// Which form of `canary` is in `bytes`, if any.
pub fn leaked(bytes: &[u8], canary: &str) -> Option<(&'static str, usize)> {
    forms(canary)
        .into_iter()
        .find_map(|(name, f)| find(bytes, &f).map(|at| (name, at)))
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            files_under(&p, out);
        } else if meta.is_file() {
            out.push(p);
        }
    }
}
