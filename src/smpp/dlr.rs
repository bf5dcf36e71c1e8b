//! Delivery receipt parsing (SMPP 3.4 Appendix B) and carrier message-id
//! matching (SPEC §5 "Delivery receipts").
//!
//! This module owns turning a receipt deliver_sm (its `short_message` or
//! `message_payload`, plus the `receipted_message_id`, `message_state` and
//! `network_error_code` TLVs) into a [`Receipt`] of metadata, and the lookup
//! keys that let a receipt id find the submit_sm_resp id it refers to when a
//! carrier converts between hex and decimal. It knows nothing of the store or
//! of sessions.
//!
//! Conduit rule (SPEC §1.1): the receipt text ends with `text:` followed by
//! the first characters of the message body. Parsing cuts the input at the
//! first `text:` before looking at anything, so the snippet is never copied,
//! and every kept value is checked against a narrow character set (ids,
//! digits, state words), so nothing else from the input can ride along.
//! Errors name the missing or invalid field, never the bytes.

use std::borrow::Cow;

/// The optional TLVs of a receipt deliver_sm, as the session decoded them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiptTlvs<'a> {
    /// `receipted_message_id` (0x001E), without its NUL terminator.
    pub receipted_message_id: Option<&'a str>,
    /// `message_state` (0x0427).
    pub message_state: Option<u8>,
    /// `network_error_code` (0x0423) raw value: network type, then a
    /// big-endian 16-bit error code.
    pub network_error_code: Option<&'a [u8]>,
}

/// A parsed delivery receipt: metadata only, never any text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The carrier's message id (as the receipt gives it; look it up with
    /// [`lookup_keys`]).
    pub message_id: String,
    /// The message's state at the carrier.
    pub state: ReceiptState,
    /// Carrier/network error code: `network_error_code` TLV as
    /// `"<network type>:<code>"` when present, else the text's `err:` field.
    pub error_code: Option<String>,
    /// `submit date:` as sent (`YYMMDDhhmm` or `YYMMDDhhmmss`).
    pub submit_date: Option<String>,
    /// `done date:` as sent (`YYMMDDhhmm` or `YYMMDDhhmmss`).
    pub done_date: Option<String>,
}

/// Message states of SMPP 3.4 §5.2.28 / SMPP 5.0 §4.7.15.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiptState {
    /// ENROUTE (1): still on its way.
    Enroute,
    /// DELIVRD (2).
    Delivered,
    /// EXPIRED (3): validity period passed.
    Expired,
    /// DELETED (4): removed at the SMSC (cancel or operator action).
    Deleted,
    /// UNDELIV (5).
    Undeliverable,
    /// ACCEPTD (6).
    Accepted,
    /// UNKNOWN (7), and any `stat:` word we do not recognise.
    Unknown,
    /// REJECTD (8).
    Rejected,
    /// SKIPPED (9, SMPP 5.0).
    Skipped,
}

impl ReceiptState {
    /// Maps a `message_state` TLV value; 0 (SCHEDULED) and >9 are `None`.
    pub fn from_message_state(value: u8) -> Option<Self> {
        use ReceiptState::*;
        let state = match value {
            1 => Enroute,
            2 => Delivered,
            3 => Expired,
            4 => Deleted,
            5 => Undeliverable,
            6 => Accepted,
            7 => Unknown,
            8 => Rejected,
            9 => Skipped,
            _ => return None,
        };
        Some(state)
    }

    /// Maps a `stat:` word (case-insensitive; the 7-letter SMPP forms and the
    /// spelled-out forms some carriers send). Unrecognised words → `Unknown`.
    pub fn from_stat(word: &[u8]) -> Self {
        use ReceiptState::*;
        let mut upper = [0u8; 16];
        let Some(slot) = upper.get_mut(..word.len()) else {
            return Unknown;
        };
        slot.copy_from_slice(word);
        slot.make_ascii_uppercase();
        match &*slot {
            b"DELIVRD" | b"DELIVERED" => Delivered,
            b"ENROUTE" => Enroute,
            b"EXPIRED" => Expired,
            b"DELETED" => Deleted,
            b"UNDELIV" | b"UNDELIVERABLE" => Undeliverable,
            b"ACCEPTD" | b"ACCEPTED" => Accepted,
            b"REJECTD" | b"REJECTED" => Rejected,
            b"SKIPPED" => Skipped,
            _ => Unknown,
        }
    }

    /// True when no later receipt can change the outcome.
    ///
    /// `Enroute` is intermediate. `Accepted` is final in SMPP's table, but
    /// carriers and aggregators commonly send ACCEPTD as a hop-by-hop
    /// intermediate receipt followed by DELIVRD, so it is treated as not
    /// final. `Unknown` is also not final: it is what unrecognised `stat:`
    /// words map to, and a later definite receipt must still win.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            ReceiptState::Enroute | ReceiptState::Accepted | ReceiptState::Unknown
        )
    }

    /// The API status (SPEC §4) this state puts a message in.
    ///
    /// `Enroute` and `Accepted` keep the message `accepted` (the API has no
    /// in-flight status past that). `Deleted` and `Skipped` map to `failed`:
    /// the carrier dropped the message itself (we never send cancel_sm), so
    /// it was neither refused on submission (`rejected`) nor found
    /// unreachable at the handset (`undeliverable`), and it will not arrive.
    pub fn as_status(&self) -> &'static str {
        match self {
            ReceiptState::Enroute | ReceiptState::Accepted => "accepted",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Expired => "expired",
            ReceiptState::Deleted | ReceiptState::Skipped => "failed",
            ReceiptState::Undeliverable => "undeliverable",
            ReceiptState::Unknown => "unknown",
            ReceiptState::Rejected => "rejected",
        }
    }
}

/// Why a receipt could not be parsed. Names fields, never input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlrError {
    /// Neither a valid `receipted_message_id` TLV nor a valid `id:` field.
    #[error("delivery receipt has no valid message id")]
    MissingId,
    /// Neither a `message_state` TLV (1..=9) nor a `stat:` field.
    #[error("delivery receipt has no message state")]
    MissingState,
}

/// Longest message id accepted (SMPP allows 65 octets with the NUL).
const MAX_ID_LEN: usize = 64;

/// Parses a delivery receipt. TLVs win over the text fields when present
/// and valid; the `text:` snippet and everything after it is never read.
pub fn parse(short_message: &[u8], tlvs: &ReceiptTlvs<'_>) -> Result<Receipt, DlrError> {
    let fields = Fields::scan(before_text(short_message));
    let message_id = tlvs
        .receipted_message_id
        .and_then(|id| {
            valid_id(
                id.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .as_bytes(),
            )
        })
        .or_else(|| fields.id.and_then(valid_id))
        .ok_or(DlrError::MissingId)?;
    let state = tlvs
        .message_state
        .and_then(ReceiptState::from_message_state)
        .or_else(|| fields.stat.map(ReceiptState::from_stat))
        .ok_or(DlrError::MissingState)?;
    let error_code = tlvs
        .network_error_code
        .and_then(network_error)
        .or_else(|| fields.err.and_then(valid_err));
    Ok(Receipt {
        message_id,
        state,
        error_code,
        submit_date: fields.submit_date.and_then(valid_date),
        done_date: fields.done_date.and_then(valid_date),
    })
}

/// The input up to (not including) the first case-insensitive `text:`.
fn before_text(input: &[u8]) -> &[u8] {
    let end = input
        .windows(5)
        .position(|w| w.eq_ignore_ascii_case(b"text:"))
        .unwrap_or(input.len());
    input.get(..end).unwrap_or_default()
}

/// The raw field values found before `text:` (first occurrence wins).
#[derive(Default)]
struct Fields<'a> {
    id: Option<&'a [u8]>,
    stat: Option<&'a [u8]>,
    err: Option<&'a [u8]>,
    submit_date: Option<&'a [u8]>,
    done_date: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Splits on whitespace and reads `key:value` tokens, joining the
    /// two-word keys `submit date:` / `done date:` and tolerating `key: value`.
    fn scan(head: &'a [u8]) -> Self {
        let mut fields = Fields::default();
        let mut tokens = head
            .split(|b| b.is_ascii_whitespace() || *b == 0)
            .filter(|t| !t.is_empty())
            .peekable();
        while let Some(token) = tokens.next() {
            let (key, mut value) = match split_colon(token) {
                Some(kv) => kv,
                None => match tokens.peek().and_then(|next| date_key(token, next)) {
                    Some(kv) => {
                        tokens.next();
                        kv
                    }
                    None => continue,
                },
            };
            if value.is_empty() {
                if let Some(next) = tokens.next_if(|t| !t.contains(&b':')) {
                    value = next;
                }
            }
            fields.set(key, value);
        }
        fields
    }

    /// Records a value under its canonical key, keeping the first one seen.
    fn set(&mut self, key: &[u8], value: &'a [u8]) {
        let slot = match canonical_key(key) {
            Some(Key::Id) => &mut self.id,
            Some(Key::Stat) => &mut self.stat,
            Some(Key::Err) => &mut self.err,
            Some(Key::SubmitDate) => &mut self.submit_date,
            Some(Key::DoneDate) => &mut self.done_date,
            None => return,
        };
        slot.get_or_insert(value);
    }
}

/// The fields a receipt result uses (`sub:` and `dlvrd:` are not kept).
enum Key {
    Id,
    Stat,
    Err,
    SubmitDate,
    DoneDate,
}

/// Recognises a key case-insensitively, with or without the date space.
fn canonical_key(key: &[u8]) -> Option<Key> {
    let is = |k: &[u8]| key.eq_ignore_ascii_case(k);
    if is(b"id") {
        Some(Key::Id)
    } else if is(b"stat") {
        Some(Key::Stat)
    } else if is(b"err") {
        Some(Key::Err)
    } else if is(b"submit date") || is(b"submit_date") || is(b"submitdate") {
        Some(Key::SubmitDate)
    } else if is(b"done date") || is(b"done_date") || is(b"donedate") {
        Some(Key::DoneDate)
    } else {
        None
    }
}

/// `key:value` → (key, value), splitting at the first colon.
fn split_colon(token: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = token.iter().position(|&b| b == b':')?;
    Some((token.get(..at)?, token.get(at + 1..)?))
}

/// `submit` + `date:X` → (`submit date`, X); same for `done`.
fn date_key<'a>(word: &[u8], next: &'a [u8]) -> Option<(&'static [u8], &'a [u8])> {
    let (date, value) = split_colon(next)?;
    if !date.eq_ignore_ascii_case(b"date") {
        return None;
    }
    if word.eq_ignore_ascii_case(b"submit") {
        Some((b"submit date", value))
    } else if word.eq_ignore_ascii_case(b"done") {
        Some((b"done date", value))
    } else {
        None
    }
}

/// A message id: 1..=64 characters of `[A-Za-z0-9._-]`.
fn valid_id(raw: &[u8]) -> Option<String> {
    let ok = (1..=MAX_ID_LEN).contains(&raw.len())
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| ascii_string(raw))
}

/// An `err:` value: 1..=16 ASCII letters or digits.
fn valid_err(raw: &[u8]) -> Option<String> {
    let ok = (1..=16).contains(&raw.len()) && raw.iter().all(u8::is_ascii_alphanumeric);
    ok.then(|| ascii_string(raw))
}

/// A date: `YYMMDDhhmm` or `YYMMDDhhmmss` digits.
fn valid_date(raw: &[u8]) -> Option<String> {
    let ok = matches!(raw.len(), 10 | 12) && raw.iter().all(u8::is_ascii_digit);
    ok.then(|| ascii_string(raw))
}

/// Bytes already checked to be ASCII, as a `String`.
fn ascii_string(raw: &[u8]) -> String {
    raw.iter().map(|&b| char::from(b)).collect()
}

/// `network_error_code` TLV (type, code u16 BE) → `"<type>:<code>"`.
fn network_error(raw: &[u8]) -> Option<String> {
    match raw {
        &[network_type, hi, lo] => Some(format!("{network_type}:{}", u16::from_be_bytes([hi, lo]))),
        _ => None,
    }
}

/// The value of an id read as hex (lower-case, trimmed), when it is all hex
/// digits and fits a `u64` once leading zeros are dropped.
fn hex_value(id: &str) -> Option<u64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match id.trim_start_matches('0') {
        "" => Some(0),
        t if t.len() <= 16 => u64::from_str_radix(t, 16).ok(),
        _ => None,
    }
}

/// The key of an already trimmed, lower-cased id: `x<hex value>` when it
/// reads as hex, else `s<the id>`.
fn key_of(id: &str) -> String {
    match hex_value(id) {
        Some(v) => hex_key(v),
        None => {
            let mut key = String::with_capacity(id.len() + 1);
            key.push('s');
            key.push_str(id);
            key
        }
    }
}

/// `x<v in hex>`, in one allocation (`format!` grows its string twice).
fn hex_key(v: u64) -> String {
    use std::fmt::Write;
    let mut key = String::with_capacity(17);
    let _ = write!(key, "x{v:x}");
    key
}

/// `id` trimmed and lower-cased, copied only when it has upper case.
fn normalized(id: &str) -> Cow<'_, str> {
    let id = id.trim();
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    }
}

/// The one key a submit_sm_resp's message id is indexed under; `None` for a
/// blank id.
///
/// Carriers give the same id in different forms: hex in submit_sm_resp and
/// decimal in the receipt, or the reverse, with or without leading zeros
/// and in either case. The index stores each id once, read as hex when it
/// can be (`"00001A2B"` → `x1a2b`); [`lookup_keys`] turns a receipt's id
/// into the keys its possible forms were stored under. One stored key per
/// id keeps the index to one B-tree entry per segment.
pub fn index_key(id: &str) -> Option<String> {
    let id = normalized(id);
    (!id.is_empty()).then(|| key_of(&id))
}

/// The index keys a receipt's message id may have been stored under
/// (see [`index_key`]), most likely first, at most three:
/// 1. the same id in the same form (case and leading zeros aside);
/// 2. if it is all decimal digits: the id it is the decimal rendering of;
/// 3. if it reads as hex: the decimal id it is the hex rendering of.
///
/// An all-digit id is ambiguous ("10" as decimal is hex "a"), so the same
/// form comes first: a carrier that keeps one form always hits on key 1.
pub fn lookup_keys(id: &str) -> Vec<String> {
    let id = normalized(id);
    let mut keys: Vec<String> = Vec::with_capacity(3);
    if id.is_empty() {
        return keys;
    }
    let mut add = |key: String| {
        if !keys.contains(&key) {
            keys.push(key);
        }
    };
    add(key_of(&id));
    if id.bytes().all(|b| b.is_ascii_digit()) {
        let value = match id.trim_start_matches('0') {
            "" => Some(0),
            t => t.parse::<u64>().ok(),
        };
        if let Some(v) = value {
            add(hex_key(v));
        }
    }
    if let Some(v) = hex_value(&id) {
        add(decimal_key(v));
    }
    keys
}

/// [`key_of`] the decimal rendering of `v`, without rendering it: decimal
/// digits are hex digits, so the key is `x` and the value of those digits
/// read as hex, when they fit a `u64` (at most 16 digits).
fn decimal_key(v: u64) -> String {
    let (mut rest, mut as_hex, mut digits) = (v, 0u64, 0u32);
    loop {
        as_hex |= (rest % 10) << (4 * digits);
        rest /= 10;
        digits += 1;
        if rest == 0 {
            break;
        }
        if digits == 16 {
            // 17 or more decimal digits: not a hex value, a string key.
            return key_of(&v.to_string());
        }
    }
    hex_key(as_hex)
}

/// True when a receipt's id `receipted` can name the submitted id
/// `submitted` (see [`lookup_keys`]).
pub fn ids_match(submitted: &str, receipted: &str) -> bool {
    index_key(submitted).is_some_and(|k| lookup_keys(receipted).contains(&k))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "CANARY-PHI-7731";

    const NO_TLVS: ReceiptTlvs<'static> = ReceiptTlvs {
        receipted_message_id: None,
        message_state: None,
        network_error_code: None,
    };

    #[test]
    fn decimal_key_is_the_key_of_the_decimal_rendering() {
        for v in [
            0,
            1,
            9,
            10,
            255,
            4096,
            99_999_999,
            1 << 40,
            9_999_999_999_999_999,
        ]
        .into_iter()
        .chain([10_000_000_000_000_000, u64::MAX])
        {
            assert_eq!(decimal_key(v), key_of(&v.to_string()), "{v}");
        }
    }

    fn canonical() -> String {
        format!(
            "id:0123456789 sub:001 dlvrd:001 submit date:2401151230 done date:2401151231 \
             stat:DELIVRD err:000 text:{CANARY} your appointment"
        )
    }

    #[test]
    fn canonical_receipt() {
        let r = parse(canonical().as_bytes(), &NO_TLVS).unwrap();
        assert_eq!(
            r,
            Receipt {
                message_id: "0123456789".into(),
                state: ReceiptState::Delivered,
                error_code: Some("000".into()),
                submit_date: Some("2401151230".into()),
                done_date: Some("2401151231".into()),
            }
        );
        assert!(r.state.is_final());
        assert_eq!(r.state.as_status(), "delivered");
    }

    #[test]
    fn fields_in_odd_order_and_lower_case_keys() {
        let text = "STAT:UNDELIV err:034 done date:2401151231 ID:ab12 text:x submit date:9";
        let r = parse(text.as_bytes(), &NO_TLVS).unwrap();
        assert_eq!(r.message_id, "ab12");
        assert_eq!(r.state, ReceiptState::Undeliverable);
        assert_eq!(r.error_code.as_deref(), Some("034"));
        assert_eq!(r.done_date.as_deref(), Some("2401151231"));
        assert_eq!(r.submit_date, None, "fields after text: are never read");

        let text = "stat:expired id:77 Submit Date:240115123059 dlvrd:000";
        let r = parse(text.as_bytes(), &NO_TLVS).unwrap();
        assert_eq!(r.state, ReceiptState::Expired);
        assert_eq!(r.submit_date.as_deref(), Some("240115123059"));
    }

    #[test]
    fn missing_err_and_spaced_values_are_tolerated() {
        let r = parse(b"id: 42 stat: ACCEPTD", &NO_TLVS).unwrap();
        assert_eq!(r.message_id, "42");
        assert_eq!(r.state, ReceiptState::Accepted);
        assert_eq!(r.error_code, None);
        assert!(!r.state.is_final());
    }

    #[test]
    fn text_snippet_never_reaches_results_or_errors() {
        let inputs = [
            canonical(),
            format!("id:1 stat:DELIVRD err:000text:{CANARY}"),
            format!("text:{CANARY} id:1 stat:DELIVRD"),
            format!("id:1 stat:DELIVRD TEXT:{CANARY}"),
            format!("id:1 stat:DELIVRD text: {CANARY} err:1 done date:2401151231"),
            format!("id:1 stat:DELIVRD Text:\n{CANARY}"),
            format!("id:1 stat:DELIVRD tExT:{CANARY}"),
        ];
        for input in inputs {
            match parse(input.as_bytes(), &NO_TLVS) {
                Ok(r) => assert!(!format!("{r:?}").contains("CANARY"), "{r:?}"),
                Err(e) => {
                    assert!(!format!("{e:?}").contains("CANARY"));
                    assert!(!e.to_string().contains("CANARY"));
                }
            }
        }
        // The id field is read before text: even when glued to err:.
        let r = parse(format!("id:9 err:000text:{CANARY}").as_bytes(), &NO_TLVS);
        assert_eq!(r, Err(DlrError::MissingState));
    }

    #[test]
    fn tlvs_override_text_fields() {
        let tlvs = ReceiptTlvs {
            receipted_message_id: Some("1A2B\0"),
            message_state: Some(8),
            network_error_code: Some(&[3, 0x00, 0x22]),
        };
        let r = parse(canonical().as_bytes(), &tlvs).unwrap();
        assert_eq!(r.message_id, "1A2B");
        assert_eq!(r.state, ReceiptState::Rejected);
        assert_eq!(r.error_code.as_deref(), Some("3:34"));
        assert_eq!(r.done_date.as_deref(), Some("2401151231"));

        // TLVs alone are a complete receipt; a bad TLV state falls back.
        let only = ReceiptTlvs {
            receipted_message_id: Some("77"),
            message_state: Some(2),
            network_error_code: None,
        };
        assert_eq!(parse(b"", &only).unwrap().state, ReceiptState::Delivered);
        let bad_state = ReceiptTlvs {
            message_state: Some(0),
            ..only
        };
        assert_eq!(parse(b"", &bad_state), Err(DlrError::MissingState));
        let r = parse(b"stat:EXPIRED", &bad_state).unwrap();
        assert_eq!(r.state, ReceiptState::Expired);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\xff\xfe\x00\x01",
            b":::: : :",
            b"id:",
            b"id: stat:",
            b"submit done date:",
            b"stat:DELIVRD",
            &[0u8; 300][..],
        ] {
            assert!(parse(input, &NO_TLVS).is_err());
        }
        assert_eq!(parse(b"id:1", &NO_TLVS), Err(DlrError::MissingState));
        assert_eq!(parse(b"stat:DELIVRD", &NO_TLVS), Err(DlrError::MissingId));
        let long_id = format!("id:{} stat:DELIVRD", "9".repeat(65));
        assert_eq!(
            parse(long_id.as_bytes(), &NO_TLVS),
            Err(DlrError::MissingId)
        );
    }

    #[test]
    fn states_map_from_words_and_tlv_values() {
        use ReceiptState::*;
        let words: [(&[u8], ReceiptState, &str); 9] = [
            (b"ENROUTE", Enroute, "accepted"),
            (b"DELIVRD", Delivered, "delivered"),
            (b"EXPIRED", Expired, "expired"),
            (b"DELETED", Deleted, "failed"),
            (b"UNDELIV", Undeliverable, "undeliverable"),
            (b"ACCEPTD", Accepted, "accepted"),
            (b"UNKNOWN", Unknown, "unknown"),
            (b"REJECTD", Rejected, "rejected"),
            (b"SKIPPED", Skipped, "failed"),
        ];
        for (i, (word, state, status)) in words.into_iter().enumerate() {
            assert_eq!(ReceiptState::from_stat(word), state);
            let tlv = u8::try_from(i + 1).unwrap();
            assert_eq!(ReceiptState::from_message_state(tlv), Some(state));
            assert_eq!(state.as_status(), status);
        }
        assert_eq!(ReceiptState::from_message_state(0), None);
        assert_eq!(ReceiptState::from_message_state(10), None);
        assert_eq!(ReceiptState::from_stat(b"delivered"), Delivered);
        assert_eq!(ReceiptState::from_stat(b"WHATEVER"), Unknown);
        assert_eq!(ReceiptState::from_stat(&[b'A'; 40]), Unknown);
    }

    #[test]
    fn id_keys_match_hex_and_decimal_forms() {
        assert!(ids_match("1A2B", "6699"));
        assert!(ids_match("6699", "1a2b"));
        assert!(ids_match("000123", "123"));
        assert!(ids_match("00001A2B", "6699"));
        assert!(ids_match("abc-def", "ABC-DEF"));
        assert!(!ids_match("abc-def", "abcdef"));
        assert!(!ids_match("abc-def", "abc"));
        assert!(!ids_match("1A2B", "6698"));
        assert!(!ids_match("", ""));
        assert_eq!(index_key("abc-def").as_deref(), Some("sabc-def"));
        assert_eq!(index_key("00001A2B").as_deref(), Some("x1a2b"));
        assert_eq!(index_key("  "), None);
        assert_eq!(lookup_keys("abc-def"), ["sabc-def"]);
        assert_eq!(lookup_keys("1A2B"), ["x1a2b", "x6699"]);
        assert_eq!(lookup_keys("000123"), ["x123", "x7b", "x291"]);
        assert_eq!(lookup_keys("  "), Vec::<String>::new());
        // Too long for u64: only the id itself.
        assert_eq!(lookup_keys("123456789012345678901234").len(), 1);
        assert_eq!(lookup_keys("ffffffffffffffffff").len(), 1);
        // The same form wins over a conversion: "10" and "16" are two ids.
        assert_eq!(lookup_keys("16")[0], index_key("16").unwrap());
        assert_eq!(lookup_keys("16")[1], index_key("10").unwrap());
    }
}
