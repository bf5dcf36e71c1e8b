//! Inbound decoding: UDH stripping and the concatenation IE, and the text
//! of `short_message` octets (GSM 7-bit unpacked, IA5, Latin-1, UCS-2).
//!
//! Invariants: see the module above — text only in zeroizing buffers
//! reserved at their final size, errors carry offsets and codings only.

use zeroize::Zeroizing;

use super::gsm::*;
use super::{ESC, ESM_CLASS_UDHI};
use crate::types::Body;

/// Concatenation information from an inbound UDH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    /// Reference shared by all parts (8-bit references are widened).
    pub reference: u16,
    /// Total number of parts.
    pub total: u8,
    /// This part's number, 1-based.
    pub seq: u8,
}

/// A decoded inbound short message. `Debug` redacts the text (see [`Body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Present when this is one part of a concatenated message.
    pub concat: Option<Concat>,
    /// The text of this part.
    pub text: Body,
}

/// Why inbound bytes could not be decoded. Never carries the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// UDHI was set but the header length runs past the message.
    #[error("user data header is truncated")]
    UdhTruncated,
    /// A GSM 7-bit octet had its high bit set (packed or mislabelled data).
    #[error("octet at offset {offset} is not a GSM 7-bit septet")]
    InvalidSeptet {
        /// Offset of the octet within the text (after the UDH).
        offset: usize,
    },
    /// An IA5 octet had its high bit set.
    #[error("octet at offset {offset} is not IA5/ASCII")]
    InvalidIa5 {
        /// Offset of the octet within the text (after the UDH).
        offset: usize,
    },
    /// UCS-2 text with an odd number of octets.
    #[error("UCS-2 text has an odd length ({len} octets)")]
    OddUcs2Length {
        /// Octets after the UDH.
        len: usize,
    },
    /// A data_coding this relay does not turn into text (binary, Kanji, …).
    #[error("data_coding 0x{0:02x} is not a supported text alphabet")]
    UnsupportedDataCoding(u8),
}

/// Text alphabets an inbound data_coding can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alphabet {
    Gsm7,
    Ia5,
    Latin1,
    Ucs2,
}

/// Maps an SMPP data_coding to an alphabet (SMPP 3.4 §5.2.19 for 0x00–0x0F,
/// GSM 03.38 coding groups for the rest).
pub(super) fn alphabet_of(data_coding: u8) -> Option<Alphabet> {
    match data_coding {
        0x00 => Some(Alphabet::Gsm7),
        0x01 => Some(Alphabet::Ia5),
        0x03 => Some(Alphabet::Latin1),
        0x08 => Some(Alphabet::Ucs2),
        // General data coding with message class: bits 3..2 are the alphabet.
        0x10..=0x13 | 0xC0..=0xDF | 0xF0..=0xF3 => Some(Alphabet::Gsm7),
        0x18..=0x1B | 0xE0..=0xEF => Some(Alphabet::Ucs2),
        _ => None,
    }
}

/// Decodes an inbound deliver_sm `short_message` (or `message_payload`).
pub fn decode(
    data_coding: u8,
    esm_class: u8,
    short_message: &[u8],
) -> Result<Decoded, DecodeError> {
    let (concat, payload) = split_udh(esm_class, short_message)?;
    let text = decode_text(data_coding, payload)?;
    Ok(Decoded { concat, text })
}

/// Strips the UDH when `esm_class` has UDHI and returns the concatenation IE
/// (0x00 8-bit or 0x08 16-bit reference) if one is present and valid.
/// Reassembly code can join the payloads of all parts and call
/// [`decode_text`] once, which also survives SMSCs that split a character.
pub fn split_udh(
    esm_class: u8,
    short_message: &[u8],
) -> Result<(Option<Concat>, &[u8]), DecodeError> {
    if esm_class & ESM_CLASS_UDHI == 0 {
        return Ok((None, short_message));
    }
    let (&udhl, rest) = short_message
        .split_first()
        .ok_or(DecodeError::UdhTruncated)?;
    let udhl = usize::from(udhl);
    let header = rest.get(..udhl).ok_or(DecodeError::UdhTruncated)?;
    let payload = rest.get(udhl..).ok_or(DecodeError::UdhTruncated)?;
    Ok((parse_concat_ie(header), payload))
}

/// Walks the information elements; the last valid concatenation IE wins.
/// Malformed trailing IEs end the walk (their bytes are still stripped).
pub(super) fn parse_concat_ie(mut header: &[u8]) -> Option<Concat> {
    let mut found = None;
    while let [iei, len, rest @ ..] = header {
        let len = usize::from(*len);
        let Some(data) = rest.get(..len) else { break };
        found = concat_from_ie(*iei, data).or(found);
        header = rest.get(len..).unwrap_or_default();
    }
    found
}

/// A concatenation IE's content, ignoring invalid ones (23.040 §9.2.3.24.1).
pub(super) fn concat_from_ie(iei: u8, data: &[u8]) -> Option<Concat> {
    let (reference, total, seq) = match (iei, data) {
        (0x00, &[r, t, s]) => (u16::from(r), t, s),
        (0x08, &[r1, r2, t, s]) => (u16::from_be_bytes([r1, r2]), t, s),
        _ => return None,
    };
    let valid = total > 0 && seq > 0 && seq <= total;
    valid.then_some(Concat {
        reference,
        total,
        seq,
    })
}

/// Decodes text octets (UDH already removed) into a [`Body`]. The `String`
/// is reserved at its maximum size so it never reallocates.
pub fn decode_text(data_coding: u8, bytes: &[u8]) -> Result<Body, DecodeError> {
    let alphabet =
        alphabet_of(data_coding).ok_or(DecodeError::UnsupportedDataCoding(data_coding))?;
    let text = match alphabet {
        Alphabet::Gsm7 => decode_gsm7(bytes)?,
        Alphabet::Ia5 => decode_ia5(bytes)?,
        Alphabet::Latin1 => decode_latin1(bytes),
        Alphabet::Ucs2 => decode_ucs2(bytes)?,
    };
    Ok(Body::new(text))
}

/// A string with room for `bytes` UTF-8 octets, zeroized if we bail out.
pub(super) fn text_buffer(bytes: usize) -> Zeroizing<String> {
    Zeroizing::new(String::with_capacity(bytes))
}

/// Moves the text out of its zeroizing guard (the `Body` takes over).
pub(super) fn into_plain(mut text: Zeroizing<String>) -> String {
    std::mem::take(&mut *text)
}

/// GSM 7-bit unpacked: one septet per octet, ESC introduces the extension
/// table; an unknown extension shows its default-table character (23.038).
pub(super) fn decode_gsm7(bytes: &[u8]) -> Result<String, DecodeError> {
    // Every default-table character is at most 2 UTF-8 octets (all are
    // below U+0800); € (3 octets) costs 2 septets. So 2 octets per septet.
    let mut text = text_buffer(bytes.len().saturating_mul(2));
    let mut iter = bytes.iter().copied().enumerate();
    while let Some((offset, septet)) = iter.next() {
        let basic = gsm_basic(septet, offset)?;
        if septet != ESC {
            text.push(basic);
            continue;
        }
        // A trailing ESC carries no character.
        if let Some((offset, next)) = iter.next() {
            text.push(gsm_escaped(next, offset)?);
        }
    }
    Ok(into_plain(text))
}

/// The default-table character for a septet, erroring on high-bit octets.
pub(super) fn gsm_basic(septet: u8, offset: usize) -> Result<char, DecodeError> {
    GSM_BASIC
        .get(usize::from(septet))
        .copied()
        .ok_or(DecodeError::InvalidSeptet { offset })
}

/// The character for the septet after ESC.
pub(super) fn gsm_escaped(septet: u8, offset: usize) -> Result<char, DecodeError> {
    match gsm_ext_char(septet) {
        Some(ch) => Ok(ch),
        None => gsm_basic(septet, offset),
    }
}

/// IA5 (data_coding 1): 7-bit ASCII.
pub(super) fn decode_ia5(bytes: &[u8]) -> Result<String, DecodeError> {
    let mut text = text_buffer(bytes.len());
    for (offset, &b) in bytes.iter().enumerate() {
        if !b.is_ascii() {
            return Err(DecodeError::InvalidIa5 { offset });
        }
        text.push(char::from(b));
    }
    Ok(into_plain(text))
}

/// Latin-1 (data_coding 3): every octet is the code point of the same value.
pub(super) fn decode_latin1(bytes: &[u8]) -> String {
    let mut text = text_buffer(bytes.len().saturating_mul(2));
    text.extend(bytes.iter().map(|&b| char::from(b)));
    into_plain(text)
}

/// UCS-2 / UTF-16BE (data_coding 8). Unpaired surrogates become U+FFFD.
pub(super) fn decode_ucs2(bytes: &[u8]) -> Result<String, DecodeError> {
    if bytes.len() % 2 != 0 {
        return Err(DecodeError::OddUcs2Length { len: bytes.len() });
    }
    // Each unit becomes at most 3 UTF-8 octets (a pair of 2 units becomes 4).
    let mut text = text_buffer(bytes.len() / 2 * 3);
    let units = bytes
        .chunks_exact(2)
        .filter_map(|pair| <[u8; 2]>::try_from(pair).ok())
        .map(u16::from_be_bytes);
    text.extend(char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)));
    Ok(into_plain(text))
}
