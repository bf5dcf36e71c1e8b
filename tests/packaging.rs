//! The installed layout (README "Install on an edge server", `.ci/build-deb`):
//! the example config names its files by the credential names the systemd
//! unit's `LoadCredential=` lines load, and the unit's own pre-start check
//! (`ExecStartPre=`) passes on a credentials directory populated from those
//! lines, with a CA-signed server certificate. A CA certificate used as the
//! server's leaf is refused by `check-config` with what to do.
//!
//! `.ci/run` does the same with the real package (`dpkg -i`) and openssl.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo("systemd/sms-conduit.service")).expect("unit readable")
}

fn example_text() -> String {
    std::fs::read_to_string(repo("config/sms-conduit.example.toml")).expect("example readable")
}

/// `(name, source)` of every `LoadCredential=NAME:SOURCE` line.
fn load_credentials() -> Vec<(String, String)> {
    unit_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LoadCredential="))
        .map(|v| {
            let (name, src) = v.split_once(':').expect("LoadCredential=NAME:PATH");
            (name.to_owned(), src.to_owned())
        })
        .collect()
}

/// The values of the `*_file` keys the example config sets (not the
/// commented-out ones).
fn example_file_values() -> BTreeSet<String> {
    example_text()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once('=')?;
            if !key.trim().ends_with("_file") {
                return None;
            }
            let rest = rest.trim().strip_prefix('"')?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

#[test]
fn example_files_are_the_units_credential_names() {
    let creds = load_credentials();
    let names: BTreeSet<String> = creds.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        example_file_values(),
        names,
        "every *_file value of the example config must be a LoadCredential= name of the unit, and back"
    );
    for (name, src) in &creds {
        assert_eq!(
            src,
            &format!("/etc/sms-conduit/secrets/{name}"),
            "credential sources live in /etc/sms-conduit/secrets/ under their own name"
        );
        assert!(
            repo("config/example").join(name).is_file(),
            "config/example/{name} (the dummy credentials directory) is missing"
        );
    }
}

/// Test TLS material: a CA and a leaf it signed (webpki refuses a CA
/// certificate as a leaf), PEM.
struct Pki {
    ca_pem: String,
    ca_key_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sms-conduit test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_params = CertificateParams::new(vec!["sms.example".to_owned()]).expect("leaf params");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    Pki {
        ca_pem: ca.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

/// Writes one credential the way an operator would make it, by its name.
fn make_credential(dir: &Path, name: &str, pki: &Pki) {
    let content = match name {
        "server.crt" => pki.leaf_pem.clone(),
        "server.key" => pki.leaf_key_pem.clone(),
        n if n.ends_with(".pem") => pki.ca_pem.clone(),
        n if n.ends_with(".pass") => "s3cret".to_owned(),
        n if n.ends_with(".key") || n.ends_with(".whsec") => hex::encode(rand_bytes()),
        other => panic!("no recipe for credential {other}: add one here and in .ci/install-check"),
    };
    std::fs::write(dir.join(name), content).expect("write credential");
}

fn rand_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// Runs the unit's `ExecStartPre=` as systemd would (empty environment
/// plus `CREDENTIALS_DIRECTORY`), with the built binary and `config` in
/// place of the installed paths.
fn run_pre_start(config: &Path, creds: &Path) -> Output {
    let line = unit_text()
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=").map(str::to_owned))
        .expect("the unit has an ExecStartPre= line");
    let line = line.trim_start_matches(['-', '+', '!', '@', ':']);
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/sms-conduit"));
    let args: Vec<String> = words
        .map(|w| {
            if w == "/etc/sms-conduit/sms-conduit.toml" {
                config.display().to_string()
            } else {
                w.to_owned()
            }
        })
        .collect();
    Command::new(env!("CARGO_BIN_EXE_sms-conduit"))
        .args(&args)
        .env_clear()
        .env("CREDENTIALS_DIRECTORY", creds)
        .current_dir("/")
        .output()
        .expect("run the pre-start check")
}

/// An installed layout: the example config alone in its directory (as in
/// /etc/sms-conduit/), a credentials directory from the unit's lines.
fn installed(pki: &Pki) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc");
    let creds = root.path().join("credentials");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::create_dir_all(&creds).expect("creds");
    let config = etc.join("sms-conduit.toml");
    std::fs::write(&config, example_text()).expect("config");
    for (name, _) in load_credentials() {
        make_credential(&creds, &name, pki);
    }
    (root, config, creds)
}

#[test]
fn pre_start_check_passes_on_the_installed_layout() {
    let (_root, config, creds) = installed(&pki());
    let out = run_pre_start(&config, &creds);
    assert!(
        out.status.success(),
        "ExecStartPre= failed on the installed layout:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_ca_certificate_as_the_servers_leaf_is_refused_with_what_to_do() {
    let pki = pki();
    let (_root, config, creds) = installed(&pki);
    // The classic mistake: `openssl req -x509` makes a CA certificate
    // (basicConstraints CA:TRUE), and it is used as the server certificate.
    std::fs::write(creds.join("server.crt"), &pki.ca_pem).expect("write");
    std::fs::write(creds.join("server.key"), &pki.ca_key_pem).expect("write");
    let out = run_pre_start(&config, &creds);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a CA certificate as leaf passed:\n{err}"
    );
    assert!(err.contains("tls.cert_file"), "{err}");
    assert!(err.contains("CaUsedAsEndEntity"), "{err}");
    assert!(
        err.contains("CA:FALSE") && err.contains("README"),
        "the error must say what to do:\n{err}"
    );
}
