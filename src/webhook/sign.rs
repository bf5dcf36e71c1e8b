//! `Conduit-Signature`: how a client knows a webhook came from us, unchanged
//! and recently (SPEC §4).
//!
//! The header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! the scheme Stripe and others made familiar. During a secret rotation
//! ([`sign_all`], `webhook_secret_next_file`) the header carries one `v1=` per
//! secret. [`verify`] accepts several `v1=` values and ignores unknown keys,
//! so the format can grow.
//!
//! Invariants: the comparison is constant-time ([`Mac::verify_slice`]); a
//! timestamp further than `tolerance` from `now`, past or future, is refused
//! (replay protection); nothing here logs or returns the body.

use std::time::Duration;

use hmac::{Mac, SimpleHmac};
use sha2::Sha256;

/// The request header carrying the signature.
pub const HEADER: &str = "Conduit-Signature";

/// [`HEADER`] as a header name, made once: given as a string it is
/// lower-cased into a new allocation on every request.
pub(crate) static HEADER_NAME: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("conduit-signature");

/// How far a signature's timestamp may be from the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a signature was refused. Carries no part of the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed {HEADER} header")]
    Malformed,
    /// The timestamp is outside the tolerance (a replay, or a skewed clock).
    #[error("signature timestamp is {age_secs} s from now, outside the tolerance")]
    Stale { age_secs: i64 },
    /// No `v1` value matches the body under this secret.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], t: u64, body: &[u8]) -> SimpleHmac<Sha256> {
    // HMAC takes keys of any length, so construction cannot fail.
    let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value signing `body` at unix time `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    sign_all(&[secret], t, body)
}

/// The header value signing `body` at unix time `t` with every secret, in
/// order: `t=<t>,v1=<sig 1>,v1=<sig 2>` (a rotation: the current secret,
/// then the next; a receiver holding either finds a match).
pub fn sign_all(secrets: &[&[u8]], t: u64, body: &[u8]) -> String {
    let mut out = format!("t={t}");
    for secret in secrets {
        let tag = mac(secret, t, body).finalize().into_bytes();
        out.push_str(",v1=");
        out.push_str(&hex::encode(tag));
    }
    out
}

/// Checks a `Conduit-Signature` header against `body`.
///
/// `now` is the receiver's unix time in seconds; `tolerance` the largest
/// allowed distance between it and the header's `t`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut t: Option<u64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => {
                if t.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                t = Some(v.parse().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {} // other schemes: ignored, as receivers of such headers do
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let age = i128::from(now) - i128::from(t);
    if age.unsigned_abs() > tolerance.as_secs() as u128 {
        let age_secs = age.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        return Err(SignatureError::Stale { age_secs });
    }
    let expected = mac(secret, t, body);
    let ok = candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn the_header_name_is_the_documented_one() {
        assert_eq!(HEADER_NAME.as_str(), HEADER.to_ascii_lowercase());
    }

    #[test]
    fn sign_matches_a_reference_hmac() {
        // python3 -c 'import hmac;print(hmac.new(b"whsec","1700000000.{}".encode(),"sha256").hexdigest())'
        let h = sign(b"whsec", 1_700_000_000, b"{}");
        assert_eq!(
            h,
            "t=1700000000,v1=7d44587dddbaf4c7f70fef20f48cd594834ffea1641e3ac227b84408298738af"
        );
        assert!(verify(b"whsec", &h, b"{}", 1_700_000_000, TOL).is_ok());
    }

    #[test]
    fn verify_rejects_tampering_staleness_and_garbage() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign(b"k", 1000, body);
        assert_eq!(verify(b"k", &h, body, 1000, TOL), Ok(()));
        assert_eq!(verify(b"k", &h, body, 1300, TOL), Ok(()));
        assert_eq!(
            verify(b"k", &h, br#"{"id":"evt_2"}"#, 1000, TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, body, 1000, TOL),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", &h, body, 1301, TOL),
            Err(SignatureError::Stale { age_secs: 301 })
        );
        assert_eq!(
            verify(b"k", &h, body, 600, TOL),
            Err(SignatureError::Stale { age_secs: -400 })
        );
        for bad in [
            "",
            "t=1000",
            "v1=00",
            "t=x,v1=00",
            "t=1000,v1=zz",
            "garbage",
        ] {
            assert_eq!(
                verify(b"k", bad, body, 1000, TOL),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn sign_all_carries_one_v1_per_secret_each_verifying_alone() {
        let body = br#"{"id":"evt_1"}"#;
        let h = sign_all(&[b"old", b"new"], 1000, body);
        assert_eq!(h.matches(",v1=").count(), 2, "{h}");
        assert!(
            h.starts_with(&sign(b"old", 1000, body)),
            "current first: {h}"
        );
        assert_eq!(verify(b"old", &h, body, 1000, TOL), Ok(()));
        assert_eq!(verify(b"new", &h, body, 1000, TOL), Ok(()));
        assert_eq!(
            verify(b"other", &h, body, 1000, TOL),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn verify_accepts_any_of_several_v1_values() {
        let body = b"x";
        let good = sign(b"new", 1000, body);
        let v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap();
        let header = format!("t=1000,v1={},v1={v1},v0=ignored", "00".repeat(32));
        assert_eq!(verify(b"new", &header, body, 1000, TOL), Ok(()));
    }
}
