//! SMS text encoding, segmentation and inbound decoding (SPEC §5 "Encoding"),
//! and the keyword class of an MO text.
//!
//! Code map: this file chooses the alphabet, counts and fills segments;
//! [`gsm`] holds the GSM 03.38 tables; [`decode`] (re-exported here) turns
//! inbound octets back into text; [`keyword`] classifies an MO's text.
//! A leaf module: the relay, the config check and tests use it; the SMPP
//! engine carries only the octets it produces.
//!
//! This module owns the choice between GSM 03.38 and UCS-2, the 160/153 and
//! 70/67 segment limits, the 8-bit-reference concatenation UDH for outbound
//! parts, and the decoding of inbound `short_message` bytes (UDH stripping,
//! GSM 7-bit unpacked, IA5, Latin-1, UCS-2). It knows nothing about sessions,
//! PDUs or the store: it turns a `&str` into `short_message` octets and back.
//!
//! Invariants:
//! * GSM 7-bit is carried *unpacked* (one septet per octet) with
//!   `data_coding = 0`, which is what SMSCs and node-smpp/smpplib expect.
//! * An escape sequence (ESC + extension septet) or a UTF-16 surrogate pair is
//!   never split across parts.
//! * Text bytes only ever live in zeroizing buffers, reserved at their final
//!   size up front: a `Vec`/`String` that grows reallocates and leaves an
//!   unzeroized copy of the text in freed memory (SPEC §1.1).
//! * No error or `Debug` output carries text: errors hold lengths, offsets
//!   and data_coding values only.
//!
//! Why not `rusmpp-extra` (evaluated, version 0.4.0): its UCS-2 encoder goes
//! through the `ucs2` crate, which refuses every non-BMP character, so emoji
//! cannot be sent at all; its GSM extension table lacks form feed; its encode
//! error's `Display` prints the offending character (a piece of the body);
//! it builds a non-zeroized intermediate `Vec` for the whole text plus one
//! `to_vec()` per part; and it has no decoder for inbound MO. Its GSM split
//! rule (never end a part on ESC) is correct and is the rule used here.

use std::ops::Range;

use zeroize::Zeroizing;

mod decode;
mod gsm;
mod keyword;

pub use decode::{decode, decode_text, split_udh, Concat, DecodeError, Decoded};
pub use keyword::{keyword, KeywordClass};

use gsm::*;

/// GSM escape septet that introduces an extension-table character.
const ESC: u8 = 0x1B;
/// UDHI bit of `esm_class`: the short_message starts with a user data header.
pub const ESM_CLASS_UDHI: u8 = 0x40;
/// Length of the concatenation UDH written on outbound parts (`05 00 03 r t s`).
pub const UDH_LEN: usize = 6;
/// Most parts an 8-bit concatenation header can number.
pub const MAX_PARTS: usize = 255;

/// The alphabet a text is sent in; serialised (API answers, message
/// records) by its [`Encoding::as_str`] name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// GSM 03.38 default alphabet + extension table, unpacked septets.
    Gsm7,
    /// UCS-2 as UTF-16BE (non-BMP characters as surrogate pairs).
    Ucs2,
}

impl Encoding {
    /// The name the API returns in `"encoding"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// A stored name: `ucs2`, else GSM 7-bit (what records have held).
    pub fn parse(s: &str) -> Encoding {
        if s == Encoding::Ucs2.as_str() {
            Encoding::Ucs2
        } else {
            Encoding::Gsm7
        }
    }

    /// The SMPP `data_coding` value for this alphabet.
    pub fn data_coding(self) -> u8 {
        match self {
            Encoding::Gsm7 => 0x00,
            Encoding::Ucs2 => 0x08,
        }
    }

    /// Units (septets or UTF-16 code units) that fit in a single message.
    fn single_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units that fit in one part of a concatenated message (after the UDH).
    fn part_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }

    /// Octets per unit on the wire.
    fn octets_per_unit(self) -> usize {
        match self {
            Encoding::Gsm7 => 1,
            Encoding::Ucs2 => 2,
        }
    }

    /// Units one character costs (GSM: 1 or 2 with ESC; UCS-2: 1 or 2 for a
    /// surrogate pair). Only called with characters valid for the encoding.
    fn cost(self, ch: char) -> usize {
        match self {
            Encoding::Gsm7 => gsm_septets(ch).map_or(1, usize::from),
            Encoding::Ucs2 => ch.len_utf16(),
        }
    }
}

/// What the API needs to know about a text before sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextInfo {
    /// Alphabet the text will be sent in.
    pub encoding: Encoding,
    /// Number of SMS parts (0 for an empty text).
    pub segments: usize,
    /// Septets (GSM 7-bit) or UTF-16 code units (UCS-2) in the whole text.
    pub units: usize,
}

/// Chooses the encoding and counts segments without allocating.
pub fn analyze(text: &str) -> TextInfo {
    let (encoding, units) = match gsm_units(text) {
        Some(septets) => (Encoding::Gsm7, septets),
        None => (Encoding::Ucs2, text.encode_utf16().count()),
    };
    let segments = if units == 0 {
        0
    } else if units <= encoding.single_capacity() {
        1
    } else {
        count_parts(text, encoding)
    };
    TextInfo {
        encoding,
        segments,
        units,
    }
}

/// Total septets if every character is in GSM 03.38, else `None`.
fn gsm_units(text: &str) -> Option<usize> {
    text.chars()
        .try_fold(0usize, |n, ch| gsm_septets(ch).map(|s| n + usize::from(s)))
}

/// Parts needed when the text is concatenated (never splitting a character).
fn count_parts(text: &str, encoding: Encoding) -> usize {
    let mut packer = Packer::new(encoding.part_capacity());
    for ch in text.chars() {
        packer.push(encoding.cost(ch));
    }
    packer.parts
}

/// Greedy part filler shared by [`analyze`] and [`encode`] so both always
/// agree on where parts break.
struct Packer {
    capacity: usize,
    used: usize,
    parts: usize,
}

impl Packer {
    fn new(capacity: usize) -> Self {
        Packer {
            capacity,
            used: 0,
            parts: 0,
        }
    }

    /// Adds a character of `cost` units; true when it starts a new part.
    fn push(&mut self, cost: usize) -> bool {
        if self.parts == 0 || self.used + cost > self.capacity {
            self.parts += 1;
            self.used = cost;
            true
        } else {
            self.used += cost;
            false
        }
    }
}

/// Why a text cannot be encoded. Carries counts only, never text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The text is empty.
    #[error("message text is empty")]
    Empty,
    /// The text needs more parts than an 8-bit concatenation header numbers.
    #[error("message text needs {parts} parts, more than {MAX_PARTS}")]
    TooManyParts {
        /// Parts the text would need.
        parts: usize,
    },
}

/// A text encoded into `short_message` octets, one range per part, all in a
/// single zeroizing buffer. `Debug` shows sizes only.
pub struct Encoded {
    encoding: Encoding,
    udhi: bool,
    buf: Zeroizing<Vec<u8>>,
    parts: Vec<Range<usize>>,
}

impl Encoded {
    /// Alphabet used.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// SMPP `data_coding` for every part.
    pub fn data_coding(&self) -> u8 {
        self.encoding.data_coding()
    }

    /// True when each part starts with a concatenation UDH: the caller must
    /// then set [`ESM_CLASS_UDHI`] in `esm_class` (see [`Encoded::esm_class_bits`]).
    pub fn udhi(&self) -> bool {
        self.udhi
    }

    /// Bits to OR into `esm_class` (`0x40` when concatenated, else 0).
    pub fn esm_class_bits(&self) -> u8 {
        if self.udhi {
            ESM_CLASS_UDHI
        } else {
            0
        }
    }

    /// Number of parts (submit_sm PDUs) to send.
    pub fn segments(&self) -> usize {
        self.parts.len()
    }

    /// The `short_message` octets of part `index` (0-based), UDH included.
    pub fn part(&self, index: usize) -> Option<&[u8]> {
        self.parts.get(index).and_then(|r| self.buf.get(r.clone()))
    }

    /// Every part's `short_message` octets in order.
    pub fn parts(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.parts
            .iter()
            .map(|r| self.buf.get(r.clone()).unwrap_or_default())
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("encoding", &self.encoding)
            .field("udhi", &self.udhi)
            .field("segments", &self.parts.len())
            .field("octets", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Encodes a text into the `short_message` of each part. `reference` is the
/// 8-bit concatenation reference (pick it per recipient, e.g. a counter).
pub fn encode(text: &str, reference: u8) -> Result<Encoded, EncodeError> {
    let info = analyze(text);
    match info.segments {
        0 => return Err(EncodeError::Empty),
        n if n > MAX_PARTS => return Err(EncodeError::TooManyParts { parts: n }),
        _ => {}
    }
    let udhi = info.segments > 1;
    let udh_octets = if udhi { UDH_LEN * info.segments } else { 0 };
    let size = info.units * info.encoding.octets_per_unit() + udh_octets;
    let mut out = Encoded {
        encoding: info.encoding,
        udhi,
        buf: Zeroizing::new(Vec::with_capacity(size)),
        parts: Vec::with_capacity(info.segments),
    };
    fill(&mut out, text, info.segments, reference);
    debug_assert_eq!(out.buf.len(), size);
    debug_assert_eq!(out.parts.len(), info.segments);
    Ok(out)
}

/// Writes every part into `out.buf` and records its range.
fn fill(out: &mut Encoded, text: &str, total: usize, reference: u8) {
    let encoding = out.encoding;
    let capacity = if out.udhi {
        encoding.part_capacity()
    } else {
        encoding.single_capacity()
    };
    let mut packer = Packer::new(capacity);
    let mut start = 0;
    for ch in text.chars() {
        if packer.push(encoding.cost(ch)) {
            close_part(out, start);
            start = out.buf.len();
            if out.udhi {
                write_udh(&mut out.buf, reference, total, packer.parts);
            }
        }
        write_char(&mut out.buf, encoding, ch);
    }
    close_part(out, start);
}

/// Records `start..len` as a part unless nothing was written yet.
fn close_part(out: &mut Encoded, start: usize) {
    let end = out.buf.len();
    if end > start {
        out.parts.push(start..end);
    }
}

/// Writes `05 00 03 <ref> <total> <seq>`; `total` and `seq` are ≤ 255 here.
fn write_udh(buf: &mut Vec<u8>, reference: u8, total: usize, seq: usize) {
    let total = u8::try_from(total).unwrap_or(u8::MAX);
    let seq = u8::try_from(seq).unwrap_or(u8::MAX);
    buf.extend_from_slice(&[0x05, 0x00, 0x03, reference, total, seq]);
}

/// Appends one character in the chosen encoding.
fn write_char(buf: &mut Vec<u8>, encoding: Encoding, ch: char) {
    match encoding {
        Encoding::Gsm7 => match gsm_encode(ch) {
            Some(Gsm::Basic(s)) => buf.push(s),
            Some(Gsm::Ext(s)) => buf.extend_from_slice(&[ESC, s]),
            None => buf.push(b'?'), // unreachable: analyze chose Gsm7
        },
        Encoding::Ucs2 => {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                buf.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes every part of `enc` and joins the texts in `seq` order.
    fn reassemble(enc: &Encoded) -> String {
        let esm = enc.esm_class_bits();
        let mut parts: Vec<Decoded> = enc
            .parts()
            .map(|p| decode(enc.data_coding(), esm, p).unwrap())
            .collect();
        parts.sort_by_key(|d| d.concat.map_or(0, |c| c.seq));
        parts.iter().map(|d| d.text.expose().to_owned()).collect()
    }

    /// Payload of a part after its UDH.
    fn payload(enc: &Encoded, i: usize) -> &[u8] {
        let p = enc.part(i).unwrap();
        if enc.udhi() {
            &p[UDH_LEN..]
        } else {
            p
        }
    }

    #[test]
    fn encoding_names_and_data_coding() {
        assert_eq!(Encoding::Gsm7.as_str(), "gsm7");
        assert_eq!(Encoding::Ucs2.as_str(), "ucs2");
        assert_eq!(Encoding::Gsm7.data_coding(), 0x00);
        assert_eq!(Encoding::Ucs2.data_coding(), 0x08);
    }

    #[test]
    fn every_basic_septet_round_trips() {
        for septet in 0u8..128 {
            if septet == ESC {
                continue;
            }
            let ch = GSM_BASIC[usize::from(septet)];
            assert!(ch.len_utf8() <= 2, "decode_gsm7 reserves 2 octets/septet");
            assert_eq!(
                gsm_encode(ch),
                Some(Gsm::Basic(septet)),
                "septet {septet:#x}"
            );
            let text = decode_text(0, &[septet]).unwrap();
            assert_eq!(text.expose().chars().next(), Some(ch));
        }
    }

    #[test]
    fn every_extension_char_costs_two_septets() {
        for (septet, ch) in GSM_EXT {
            assert!(ch.len_utf8() <= 4, "decode_gsm7 reserves 2 octets/septet");
            let text = format!("a{ch}b");
            let info = analyze(&text);
            assert_eq!(info.encoding, Encoding::Gsm7, "{ch:?}");
            assert_eq!(info.units, 4, "{ch:?}");
            let enc = encode(&text, 1).unwrap();
            assert_eq!(enc.part(0).unwrap(), &[0x61, ESC, septet, 0x62]);
            assert_eq!(reassemble(&enc), text);
        }
    }

    #[test]
    fn euro_sign_is_gsm_escape_0x65() {
        let enc = encode("€5", 0).unwrap();
        assert_eq!(enc.encoding(), Encoding::Gsm7);
        assert_eq!(enc.part(0).unwrap(), &[ESC, 0x65, 0x35]);
    }

    #[test]
    fn gsm_maps_at_dollar_underscore_not_ascii() {
        let enc = encode("@$_", 0).unwrap();
        assert_eq!(enc.part(0).unwrap(), &[0x00, 0x02, 0x11]);
        assert_eq!(analyze("`").encoding, Encoding::Ucs2);
        assert_eq!(analyze("ç").encoding, Encoding::Ucs2);
    }

    #[test]
    fn gsm_160_is_one_segment_161_is_two() {
        let t160 = "a".repeat(160);
        let info = analyze(&t160);
        assert_eq!(
            (info.encoding, info.segments, info.units),
            (Encoding::Gsm7, 1, 160)
        );
        let enc = encode(&t160, 7).unwrap();
        assert!(!enc.udhi());
        assert_eq!(enc.esm_class_bits(), 0);
        assert_eq!(enc.part(0).unwrap().len(), 160);

        let t161 = "a".repeat(161);
        assert_eq!(analyze(&t161).segments, 2);
        let enc = encode(&t161, 7).unwrap();
        assert!(enc.udhi());
        assert_eq!(enc.esm_class_bits(), 0x40);
        assert_eq!(enc.segments(), 2);
        assert_eq!(&enc.part(0).unwrap()[..6], &[5, 0, 3, 7, 2, 1]);
        assert_eq!(&enc.part(1).unwrap()[..6], &[5, 0, 3, 7, 2, 2]);
        assert_eq!(payload(&enc, 0).len(), 153);
        assert_eq!(payload(&enc, 1).len(), 8);
        assert_eq!(reassemble(&enc), t161);
    }

    #[test]
    fn escape_never_straddles_the_153_boundary() {
        // 152 plain septets, then '€' (ESC 0x65) would occupy septets 153–154.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let info = analyze(&text);
        assert_eq!(info.units, 174);
        assert_eq!(info.segments, 2);
        let enc = encode(&text, 9).unwrap();
        assert_eq!(payload(&enc, 0).len(), 152, "part 1 ends before the ESC");
        assert_eq!(payload(&enc, 1)[..2], [ESC, 0x65]);
        assert!(payload(&enc, 0).last() != Some(&ESC));
        assert_eq!(reassemble(&enc), text);
    }

    #[test]
    fn extension_chars_fill_a_single_message_exactly() {
        // 80 × '{' = 160 septets: still a single message.
        let text = "{".repeat(80);
        assert_eq!(analyze(&text).segments, 1);
        let text = "{".repeat(81);
        let info = analyze(&text);
        assert_eq!((info.units, info.segments), (162, 2));
        let enc = encode(&text, 0).unwrap();
        // 153 is odd: 76 pairs (152 septets) fit, never half a pair.
        assert_eq!(payload(&enc, 0).len(), 152);
        assert_eq!(reassemble(&enc), text);
    }

    #[test]
    fn ucs2_70_is_one_segment_71_is_two() {
        let t70 = "ж".repeat(70);
        let info = analyze(&t70);
        assert_eq!(
            (info.encoding, info.segments, info.units),
            (Encoding::Ucs2, 1, 70)
        );
        let enc = encode(&t70, 0).unwrap();
        assert_eq!(enc.data_coding(), 0x08);
        assert_eq!(enc.part(0).unwrap().len(), 140);
        assert_eq!(&enc.part(0).unwrap()[..2], &[0x04, 0x36]);

        let t71 = "ж".repeat(71);
        let enc = encode(&t71, 3).unwrap();
        assert_eq!(enc.segments(), 2);
        assert_eq!(payload(&enc, 0).len(), 134);
        assert_eq!(payload(&enc, 1).len(), 8);
        assert_eq!(reassemble(&enc), t71);
    }

    #[test]
    fn emoji_is_a_surrogate_pair_never_split_at_67() {
        let enc = encode("😀", 0).unwrap();
        assert_eq!(enc.part(0).unwrap(), &[0xD8, 0x3D, 0xDE, 0x00]);
        // 66 units, then an emoji (2 units) would occupy units 67–68.
        let text = format!("{}😀{}", "ж".repeat(66), "ж".repeat(10));
        let info = analyze(&text);
        assert_eq!((info.units, info.segments), (78, 2));
        let enc = encode(&text, 0).unwrap();
        assert_eq!(payload(&enc, 0).len(), 132, "part 1 stops before the pair");
        assert_eq!(payload(&enc, 1)[..2], [0xD8, 0x3D]);
        assert_eq!(reassemble(&enc), text);
    }

    #[test]
    fn four_hundred_gsm_chars_make_three_parts() {
        let text: String = "Hello world 0123456789 "
            .chars()
            .cycle()
            .take(400)
            .collect();
        let info = analyze(&text);
        assert_eq!(
            (info.encoding, info.segments, info.units),
            (Encoding::Gsm7, 3, 400)
        );
        let enc = encode(&text, 200).unwrap();
        let sizes: Vec<usize> = (0..3).map(|i| payload(&enc, i).len()).collect();
        assert_eq!(sizes, [153, 153, 94]);
        for (i, part) in enc.parts().enumerate() {
            assert_eq!(part[..5], [5, 0, 3, 200, 3]);
            assert_eq!(usize::from(part[5]), i + 1);
        }
        assert_eq!(reassemble(&enc), text);
    }

    #[test]
    fn round_trip_mixed_texts_through_reassembly() {
        let texts = [
            "Appointment tomorrow 9:00 [room 4] {bring ID} ~ | \\ ^ € £¥ ΔΦΓΛΩΠΨΣΘΞ ÆæßÉ ¡¿ äöñüà"
                .repeat(5),
            "Ваш визит завтра в 9:00. 😀👍🏽 🇺🇸 漢字".repeat(6),
            "line1\nline2\r\n\u{0C}page".to_owned(),
        ];
        for text in texts {
            let enc = encode(&text, 42).unwrap();
            assert_eq!(enc.segments(), analyze(&text).segments);
            assert_eq!(reassemble(&enc), text);
        }
    }

    #[test]
    fn encode_rejects_empty_and_too_many_parts() {
        assert_eq!(encode("", 0).unwrap_err(), EncodeError::Empty);
        assert_eq!(analyze("").segments, 0);
        let huge = "a".repeat(153 * 255 + 1);
        assert_eq!(
            encode(&huge, 0).unwrap_err(),
            EncodeError::TooManyParts { parts: 256 }
        );
        assert_eq!(encode(&"a".repeat(153 * 255), 0).unwrap().segments(), 255);
    }

    #[test]
    fn encode_buffer_is_sized_exactly() {
        let text = "x€".repeat(300);
        let enc = encode(&text, 0).unwrap();
        assert_eq!(enc.buf.len(), enc.buf.capacity());
        let dbg = format!("{enc:?}");
        assert!(!dbg.contains('x'), "{dbg}");
    }

    #[test]
    fn decode_parses_8_and_16_bit_concat_and_ignores_other_ies() {
        let sm = [5, 0, 3, 0xAB, 3, 2, 0x48, 0x69];
        let d = decode(0, 0x40, &sm).unwrap();
        let c = Concat {
            reference: 0xAB,
            total: 3,
            seq: 2,
        };
        assert_eq!((d.concat, d.text.expose()), (Some(c), "Hi"));

        // Other IE (0x24 national language) before a 16-bit reference IE.
        let sm = [9, 0x24, 1, 0x01, 0x08, 4, 0x12, 0x34, 2, 1, 0x48];
        let d = decode(0, 0x43, &sm).unwrap();
        let c = Concat {
            reference: 0x1234,
            total: 2,
            seq: 1,
        };
        assert_eq!((d.concat, d.text.expose()), (Some(c), "H"));

        // Invalid seq (0) is ignored but the header is still stripped.
        let d = decode(0, 0x40, &[5, 0, 3, 1, 2, 0, 0x48]).unwrap();
        assert_eq!((d.concat, d.text.expose()), (None, "H"));

        // No UDHI: the bytes are all text.
        let d = decode(0, 0x00, &[5, 0x48]).unwrap();
        assert_eq!(d.concat, None);
        assert_eq!(d.text.char_len(), 2);
    }

    #[test]
    fn decode_rejects_truncated_udh() {
        assert_eq!(decode(0, 0x40, &[]), Err(DecodeError::UdhTruncated));
        assert_eq!(decode(0, 0x40, &[5, 0, 3]), Err(DecodeError::UdhTruncated));
        // An IE that overruns the header is dropped, not a panic.
        assert!(decode(0, 0x40, &[2, 0, 9, 0x41]).unwrap().concat.is_none());
    }

    #[test]
    fn decode_alphabets() {
        assert_eq!(decode_text(0x01, b"STOP").unwrap().expose(), "STOP");
        assert_eq!(
            decode_text(0x01, &[0x41, 0x80]),
            Err(DecodeError::InvalidIa5 { offset: 1 })
        );
        assert_eq!(decode_text(0x03, &[0x63, 0xE9]).unwrap().expose(), "cé");
        assert_eq!(
            decode_text(0x08, &[0, 0x41, 0xD8, 0x3D, 0xDE, 0])
                .unwrap()
                .expose(),
            "A😀"
        );
        assert_eq!(
            decode_text(0x08, &[0, 0x41, 0]),
            Err(DecodeError::OddUcs2Length { len: 3 })
        );
        assert_eq!(
            decode_text(0x08, &[0xD8, 0x3D]).unwrap().expose(),
            "\u{FFFD}"
        );
        assert_eq!(
            decode_text(0x00, &[0x41, 0xC1]),
            Err(DecodeError::InvalidSeptet { offset: 1 })
        );
        assert_eq!(decode_text(0xF1, &[0x41]).unwrap().expose(), "A");
        assert_eq!(
            decode_text(0x04, &[1]),
            Err(DecodeError::UnsupportedDataCoding(4))
        );
    }

    #[test]
    fn decode_gsm_escape_edge_cases() {
        // Trailing ESC dropped; ESC + unknown falls back to the basic table;
        // ESC ESC shows a space.
        assert_eq!(decode_text(0, &[0x41, ESC]).unwrap().expose(), "A");
        assert_eq!(decode_text(0, &[ESC, 0x41]).unwrap().expose(), "A");
        assert_eq!(decode_text(0, &[ESC, ESC]).unwrap().expose(), " ");
        assert!(decode_text(0, &[ESC, 0x90]).is_err());
    }

    #[test]
    fn errors_never_carry_text() {
        let e = decode(0, 0, &[0x41, 0xFF]).unwrap_err();
        assert_eq!(e.to_string(), "octet at offset 1 is not a GSM 7-bit septet");
        let d = decode(0, 0, b"canary").unwrap();
        assert!(!format!("{d:?}").contains("canary"));
    }
}
