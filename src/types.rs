//! Newtypes that carry the product's rules in the type system.
//!
//! * [`E164`] — a checked international number; everything past config parsing
//!   and request validation takes this, never a `String`.
//! * [`Body`] — a message text in flight. It zeroizes its buffer on drop and has
//!   no `Debug`/`Display` that prints the text, so the compiler keeps bodies out
//!   of logs, panics and error responses (SPEC §1.1).
//! * [`Secret`] — bytes read from a `*_file` key; zeroized on drop, redacted in
//!   `Debug`.
//! * [`masked`] — the log form of a phone number (`+1555***4321`, SPEC §1.2).

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// An E.164 number: `+`, a non-zero first digit, 7 to 15 digits in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

/// Why a string is not an [`E164`] number.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an E.164 number (+ and 7 to 15 digits, no leading zero)")]
pub struct NotE164(pub String);

impl E164 {
    /// Parses a strict E.164 string (`+15551234567`). No spaces, dashes or
    /// national forms: clients must send what the carriers will receive.
    pub fn parse(s: &str) -> Result<Self, NotE164> {
        let digits = s.strip_prefix('+').ok_or_else(|| NotE164(s.to_owned()))?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(E164(s.to_owned()))
        } else {
            Err(NotE164(s.to_owned()))
        }
    }

    /// Parses an SMPP address (digits with or without `+`, as carriers send
    /// them with TON international) into E.164.
    pub fn from_smpp(addr: &str) -> Result<Self, NotE164> {
        if addr.starts_with('+') {
            Self::parse(addr)
        } else {
            Self::parse(&format!("+{addr}"))
        }
    }

    /// The number with its leading `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+`, as SMPP addresses with TON=1 carry them.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The masked form for log lines: `+1555***4321`.
    pub fn masked(&self) -> Masked<'_> {
        Masked(&self.0)
    }
}

impl fmt::Debug for E164 {
    /// Debug output masks the number too, so a stray `{:?}` cannot leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

/// Display wrapper that prints a number as `+1555***4321`.
pub struct Masked<'a>(&'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&masked(self.0))
    }
}

/// Masks a phone number for logs: the first five and last four characters
/// stay, the middle becomes `***`. Short strings are masked entirely.
pub fn masked(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 9 {
        return "***".to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

/// A message body in flight. Zeroized on drop; never printable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Body(Zeroizing<String>);

impl Body {
    /// Takes ownership of a text; the `String`'s buffer is zeroized when the
    /// `Body` drops.
    pub fn new(text: String) -> Self {
        Body(Zeroizing::new(text))
    }

    /// The text, for the encoder. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Number of characters (Unicode scalar values).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }

    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Body(<{} chars redacted>)", self.char_len())
    }
}

/// Secret bytes read from a `*_file` key: zeroized on drop, redacted in Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes (taking ownership; the vector is zeroized on drop).
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text with surrounding whitespace removed (password files
    /// usually end with a newline).
    pub fn trimmed_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok().map(str::trim)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A keyed pseudonym of a phone number: HMAC-SHA256(deployment key, E.164).
///
/// Stored instead of the number (SPEC §1.2): an auditor holding the key can
/// ask "what did we send to +1…?" (`sms-conduit number-id`), a stolen
/// database discloses nobody.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(pub [u8; 32]);

impl Pseudonym {
    /// The pseudonym of `number` under the deployment key.
    pub fn of(key: &Secret, number: &E164) -> Self {
        use hmac::{Mac, SimpleHmac};
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(key.expose())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(number.as_str().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac.finalize().into_bytes());
        Pseudonym(out)
    }

    /// Lower-case hex, as the audit export and `number-id` print it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({})", &self.to_hex()[..12])
    }
}

/// Zeroizes a byte buffer in place (for decoded PDU payloads that held text).
pub fn wipe(buf: &mut [u8]) {
    buf.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_accepts_and_rejects() {
        assert!(E164::parse("+15551234567").is_ok());
        assert!(E164::parse("+447700900123").is_ok());
        for bad in [
            "+1555",
            "15551234567",
            "+05551234567",
            "+1555123456789012",
            "+1555-123-4567",
            "",
        ] {
            assert!(E164::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            E164::from_smpp("15551234567").unwrap().as_str(),
            "+15551234567"
        );
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(masked("+15551234321"), "+1555***4321");
        let n = E164::parse("+15551234321").unwrap();
        assert_eq!(format!("{:?}", n), "E164(+1555***4321)");
        assert_eq!(masked("+1555"), "***");
    }

    #[test]
    fn pseudonym_is_keyed_hmac() {
        let n = E164::parse("+15551234567").unwrap();
        let a = Pseudonym::of(&Secret::new(vec![1; 32]), &n);
        let b = Pseudonym::of(&Secret::new(vec![2; 32]), &n);
        assert_ne!(a, b, "different keys give different pseudonyms");
        assert_eq!(a, Pseudonym::of(&Secret::new(vec![1; 32]), &n));
        // RFC 2104 HMAC-SHA256 checked against Python's hmac module:
        // hmac.new(b"\x01"*32, b"+15551234567", "sha256").hexdigest()
        assert_eq!(
            a.to_hex(),
            "281836a123edf410bac7e9ee8ab86053fc3be540d9c98670c10507d7d78561a2"
        );
    }

    #[test]
    fn body_debug_never_prints_text() {
        let b = Body::new("canary-secret-text".into());
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("canary"));
        assert!(dbg.contains("18 chars"));
    }
}
