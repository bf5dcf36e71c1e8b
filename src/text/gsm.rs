//! GSM 03.38: the default alphabet and its extension table, both ways.
//!
//! Owns: the tables and the character ↔ septet look-ups the encoder
//! ([`super::encode`], [`super::analyze`]) and the decoder
//! ([`super::decode`]) share.

use super::ESC;

/// The GSM 03.38 default alphabet, indexed by septet. 0x1B is ESC (decoded
/// as a space only when it cannot introduce an extension character).
pub(super) const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', ' ', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The GSM 03.38 extension table: (septet after ESC, character).
pub(super) const GSM_EXT: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// Marks an extension-table entry in [`ASCII_TO_GSM`].
pub(super) const EXT_FLAG: u8 = 0x80;
/// Marks an ASCII character with no GSM representation in [`ASCII_TO_GSM`].
pub(super) const NO_GSM: u8 = 0xFF;

/// ASCII → septet (or `EXT_FLAG | septet`, or `NO_GSM`), built from the tables
/// at compile time so the hot path is one array load per ASCII character.
pub(super) const ASCII_TO_GSM: [u8; 128] = build_ascii_table();

pub(super) const fn build_ascii_table() -> [u8; 128] {
    let mut table = [NO_GSM; 128];
    let mut septet = 0;
    while septet < 128 {
        let ch = GSM_BASIC[septet] as u32;
        if ch < 128 && septet != ESC as usize {
            table[ch as usize] = septet as u8;
        }
        septet += 1;
    }
    let mut i = 0;
    while i < GSM_EXT.len() {
        let (septet, ch) = GSM_EXT[i];
        if (ch as u32) < 128 {
            table[ch as usize] = EXT_FLAG | septet;
        }
        i += 1;
    }
    table
}

/// A character's GSM 03.38 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gsm {
    Basic(u8),
    Ext(u8),
}

/// Septets a character costs in GSM 03.38 (1, 2 with ESC), `None` if absent.
pub(super) fn gsm_septets(ch: char) -> Option<u8> {
    gsm_encode(ch).map(|g| match g {
        Gsm::Basic(_) => 1,
        Gsm::Ext(_) => 2,
    })
}

/// A character's GSM 03.38 septet(s), `None` if it is not in the alphabet.
pub(super) fn gsm_encode(ch: char) -> Option<Gsm> {
    if ch.is_ascii() {
        return match ASCII_TO_GSM[ch as usize] {
            NO_GSM => None,
            v if v & EXT_FLAG != 0 => Some(Gsm::Ext(v & !EXT_FLAG)),
            v => Some(Gsm::Basic(v)),
        };
    }
    gsm_encode_non_ascii(ch)
}

/// The non-ASCII part of the default alphabet, plus `€` from the extension.
pub(super) fn gsm_encode_non_ascii(ch: char) -> Option<Gsm> {
    let septet = match ch {
        '£' => 0x01,
        '¥' => 0x03,
        'è' => 0x04,
        'é' => 0x05,
        'ù' => 0x06,
        'ì' => 0x07,
        'ò' => 0x08,
        'Ç' => 0x09,
        'Ø' => 0x0B,
        'ø' => 0x0C,
        'Å' => 0x0E,
        'å' => 0x0F,
        'Δ' => 0x10,
        'Φ' => 0x12,
        'Γ' => 0x13,
        'Λ' => 0x14,
        'Ω' => 0x15,
        'Π' => 0x16,
        'Ψ' => 0x17,
        'Σ' => 0x18,
        'Θ' => 0x19,
        'Ξ' => 0x1A,
        'Æ' => 0x1C,
        'æ' => 0x1D,
        'ß' => 0x1E,
        'É' => 0x1F,
        '¤' => 0x24,
        '¡' => 0x40,
        'Ä' => 0x5B,
        'Ö' => 0x5C,
        'Ñ' => 0x5D,
        'Ü' => 0x5E,
        '§' => 0x5F,
        '¿' => 0x60,
        'ä' => 0x7B,
        'ö' => 0x7C,
        'ñ' => 0x7D,
        'ü' => 0x7E,
        'à' => 0x7F,
        '€' => return Some(Gsm::Ext(0x65)),
        _ => return None,
    };
    Some(Gsm::Basic(septet))
}

/// The extension-table character for the septet after ESC, if any.
pub(super) fn gsm_ext_char(septet: u8) -> Option<char> {
    GSM_EXT
        .iter()
        .find(|(s, _)| *s == septet)
        .map(|(_, ch)| *ch)
}
