//! TLS for every listener and every outbound connection (rustls, ring
//! provider, TLS 1.2 and 1.3 only).
//!
//! Owns: reading PEM certificates and keys, building `rustls` server and
//! client configs, optional client-certificate verification for SMPP peers,
//! the optional, unchained client certificate of the API (its fingerprint is
//! the second factor `crate::api::auth` checks),
//! and hot reload: a [`ServerTls`] hands out an acceptor built from the
//! *current* config, and [`ServerTls::reload`] swaps it (SIGHUP) without
//! touching connections already established.
//!
//! Must not know: which protocol runs over the stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config;
use crate::live::Part;

/// A TLS setup problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.into(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?);
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Invalid {
            path: path.into(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey { path: path.into() })
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.into(),
            what: format!("bad CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate requested.
    None,
    /// `tls.client_ca_file` (when set) must have signed the client's certificate.
    RequireIfConfigured,
    /// A client certificate is asked for but not required, and not checked
    /// against a CA: the API compares its SHA-256 with the client's
    /// `client_cert_sha256` pins. The handshake still proves the client
    /// holds the certificate's private key.
    Optional,
}

/// The verifier of [`ClientAuth::Optional`]: offers client authentication,
/// does not require it, accepts any certificate whose handshake signature
/// verifies.
#[derive(Debug)]
struct PinnedByCaller {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for PinnedByCaller {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Trust comes from the pinned fingerprint, compared per request.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// SHA-256 of a certificate's DER: what `client_cert_sha256` pins.
pub fn cert_sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// Builds a server config from the `[tls]` table.
pub fn server_config(
    cfg: &config::Tls,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&cfg.cert_file)?;
    let key = load_key(&cfg.key_file)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
    let builder = match (&cfg.client_ca_file, client_auth) {
        (Some(ca), ClientAuth::RequireIfConfigured) => {
            let roots = Arc::new(roots_from(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, ClientAuth::Optional) => builder.with_client_cert_verifier(Arc::new(PinnedByCaller {
            algorithms: provider().signature_verification_algorithms,
        })),
        _ => builder.with_no_client_auth(),
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid {
            path: cfg.key_file.clone(),
            what: format!("key does not match certificate or is unsupported: {e}"),
        })?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(sc))
}

/// What to do when a certificate is a CA certificate used as a leaf. webpki
/// (rustls, hence every Rust client, and this relay towards carriers and
/// webhooks) refuses one with `CaUsedAsEndEntity`; `openssl req -x509` makes
/// exactly that by default (basicConstraints CA:TRUE).
pub const CA_AS_LEAF_HINT: &str = "it is a CA certificate (basicConstraints CA:TRUE), which TLS clients refuse as a server's own certificate (webpki: CaUsedAsEndEntity); keep it as the CA, make a leaf it signs with basicConstraints CA:FALSE and a subjectAltName of the names clients use, and put the leaf (then any intermediates) in the certificate file: README \"Install on an edge server\" shows the openssl commands";

/// True when webpki refuses `e` because the peer's leaf is a CA
/// certificate (`CaUsedAsEndEntity`, which rustls passes on as an opaque
/// `CertificateError::Other`).
pub fn is_ca_used_as_leaf(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))
            if format!("{o:?}").contains("CaUsedAsEndEntity")
    )
}

/// Checks the leaf of `cert_file` the way a webpki client will: a CA
/// certificate as the leaf is an error naming [`CA_AS_LEAF_HINT`]. Other
/// verification problems (issuer, name, expiry) are not this check's.
pub fn check_leaf_not_ca(cert_file: &Path) -> Result<(), TlsError> {
    use rustls::client::danger::ServerCertVerifier as _;
    let certs = load_certs(cert_file)?;
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(TlsError::NoCertificate {
            path: cert_file.into(),
        });
    };
    // The leaf as its own trust anchor: webpki checks basicConstraints of
    // the end entity before it looks for an issuer, so a CA leaf fails with
    // CaUsedAsEndEntity whatever signed it.
    let mut roots = RootCertStore::empty();
    if roots.add(leaf.clone()).is_err() {
        return Ok(());
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Invalid {
                path: cert_file.into(),
                what: e.to_string(),
            })?;
    let name = rustls::pki_types::ServerName::try_from("leaf-check.invalid")
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    match verifier.verify_server_cert(
        leaf,
        intermediates,
        &name,
        &[],
        rustls::pki_types::UnixTime::now(),
    ) {
        Err(e) if is_ca_used_as_leaf(&e) => Err(TlsError::Invalid {
            path: cert_file.into(),
            what: format!(
                "the first certificate is not usable as a server certificate: {CA_AS_LEAF_HINT}"
            ),
        }),
        _ => Ok(()),
    }
}

/// A listener's TLS as a reload installs it: the server config and whether
/// client certificates are asked for. A listener's part of the live
/// configuration.
pub struct ListenerTls {
    config: Arc<ServerConfig>,
    client_auth: ClientAuth,
    /// A client CA is configured.
    has_client_ca: bool,
}

impl ListenerTls {
    /// Loads and checks the certificate and key (and client CA) of `cfg`.
    pub fn build(
        cfg: &config::Tls,
        alpn: &[&[u8]],
        client_auth: ClientAuth,
    ) -> Result<ListenerTls, TlsError> {
        Ok(ListenerTls {
            config: server_config(cfg, alpn, client_auth)?,
            client_auth,
            has_client_ca: cfg.client_ca_file.is_some(),
        })
    }
}

/// A listener's TLS state, read afresh for every new connection.
pub struct ServerTls {
    alpn: Vec<Vec<u8>>,
    current: Part<ListenerTls>,
}

impl ServerTls {
    /// Loads the certificate and key for a listener that is reloaded on its
    /// own ([`ServerTls::reload`]).
    pub fn load(
        cfg: &config::Tls,
        alpn: &[&[u8]],
        client_auth: ClientAuth,
    ) -> Result<Arc<Self>, TlsError> {
        let first = ListenerTls::build(cfg, alpn, client_auth)?;
        Ok(Self::reading(alpn, Part::own(Arc::new(first))))
    }

    /// A listener whose TLS is read from `current` (the app: its part of
    /// the live snapshot, built with the same `alpn`).
    pub fn reading(alpn: &[&[u8]], current: Part<ListenerTls>) -> Arc<Self> {
        Arc::new(ServerTls {
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current,
        })
    }

    /// Whether this listener requires client certificates (a CA to check
    /// them is configured).
    pub fn requires_client_cert(&self) -> bool {
        let c = self.current.load();
        c.client_auth == ClientAuth::RequireIfConfigured && c.has_client_ca
    }

    /// An acceptor using the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().config.clone())
    }

    /// Re-reads the certificate files; on error the old certificate stays.
    pub fn reload(&self, cfg: &config::Tls) -> Result<(), TlsError> {
        let client_auth = self.current.load().client_auth;
        self.reload_with(cfg, client_auth)
    }

    /// The TLS a reload to `cfg` would install, built and checked without
    /// changing anything: a reload prepares every part first, so a refused
    /// one changes nothing.
    pub fn prepare(
        &self,
        cfg: &config::Tls,
        client_auth: ClientAuth,
    ) -> Result<ListenerTls, TlsError> {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        ListenerTls::build(cfg, &alpn, client_auth)
    }

    /// As [`ServerTls::reload`], changing whether client certificates are
    /// asked for (the API: when a reload adds or removes the last pin).
    pub fn reload_with(&self, cfg: &config::Tls, client_auth: ClientAuth) -> Result<(), TlsError> {
        let next = self.prepare(cfg, client_auth)?;
        self.current.set(Arc::new(next));
        Ok(())
    }
}

/// A client config trusting `ca_file` when given, else the webpki roots.
pub fn client_config(
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_file {
        Some(p) => roots_from(p)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let mut cc = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cc))
}

/// A connector for outbound TLS (carriers, webhooks).
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(client_config(ca_file, &[])?))
}

/// Trusts exactly one server certificate, by the SHA-256 of its DER
/// (`carriers[].cert_sha256`): for carriers whose SMSC runs a self-signed
/// certificate. The handshake signature is still checked against it, so
/// only the holder of its key passes; name and validity are not checked
/// (the pin is the identity).
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let got: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if bool::from(got.ct_eq(&self.sha256)) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the carrier's certificate (SHA-256 {}) is not the one pinned in carriers[].cert_sha256",
                hex::encode(got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connector that trusts only the certificate whose SHA-256 is `sha256`.
pub fn pinned_connector(sha256: [u8; 32]) -> Result<TlsConnector, TlsError> {
    let provider = provider();
    let cc = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { sha256, provider }))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cc)))
}

/// A self-signed certificate and key, PEM encoded, for the demo and tests.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a self-signed certificate for `names` (DNS names or IPs).
pub fn self_signed(names: &[&str]) -> Result<SelfSigned, TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    })
}

/// The `notAfter` of a DER X.509 certificate, as unix seconds; `None` when
/// the bytes are not a certificate this bounded reader understands (it
/// walks only the outer structure: Certificate → tbsCertificate → validity,
/// never panics, never allocates).
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    /// One DER TLV: its tag, its content and what follows it.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] EXPLICIT version
    }
    // serialNumber, signature AlgorithmIdentifier, issuer: skipped.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // UTCTime YYMMDDHHMMSS: 50-99 are 19xx, 00-49 20xx (RFC 5280).
        (0x17, 12) => {
            let yy: u32 = digits[..2].parse().ok()?;
            format!("{}{digits}", if yy >= 50 { "19" } else { "20" })
        }
        // GeneralizedTime YYYYMMDDHHMMSS.
        (0x18, 14) => digits.to_owned(),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| full.get(r)?.parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(n(0..4)?).ok()?, n(4..6)?, n(6..8)?)?;
    let at = date.and_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)?;
    Some(at.and_utc().timestamp())
}

/// The earliest `notAfter` of `certs` (a presented chain: the leaf and its
/// intermediates; whichever expires first breaks the chain), as unix
/// seconds; `None` when none can be read.
pub fn earliest_not_after<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Option<i64> {
    certs.into_iter().filter_map(not_after_unix).min()
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    fn cert_expiring(y: i32, m: u8, d: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn unix(y: i32, m: u32, d: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp()
    }

    #[test]
    fn reads_not_after_in_utc_time_and_generalized_time() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050.
        assert_eq!(
            not_after_unix(&cert_expiring(2031, 3, 4)),
            Some(unix(2031, 3, 4))
        );
        assert_eq!(
            not_after_unix(&cert_expiring(2061, 12, 31)),
            Some(unix(2061, 12, 31))
        );
        let a = cert_expiring(2030, 1, 1);
        let b = cert_expiring(2029, 6, 1);
        assert_eq!(
            earliest_not_after([a.as_slice(), b.as_slice()]),
            Some(unix(2029, 6, 1))
        );
    }

    #[test]
    fn garbage_and_truncations_are_none_not_panics() {
        let good = cert_expiring(2031, 3, 4);
        for n in 0..good.len() {
            assert_eq!(not_after_unix(&good[..n]), None, "prefix of {n} bytes");
        }
        assert_eq!(not_after_unix(b""), None);
        assert_eq!(not_after_unix(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(not_after_unix(&[0x30, 0x80]), None);
        for seed in 0..200u32 {
            let mut bad = good.clone();
            let i = (seed as usize * 7919) % bad.len();
            bad[i] ^= 0x5a;
            let _ = not_after_unix(&bad);
        }
    }
}
