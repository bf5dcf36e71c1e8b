//! Bounded property tests for everything that parses bytes from a carrier:
//! rusmpp's `CommandCodec` framing and PDU decoding, `text::decode`
//! and `smpp::dlr::parse` must never panic on any input, and
//! `encoding::encode` → `decode` must round-trip through reassembly.
//!
//! Case counts are kept small enough for debug builds on a shared 2-core box
//! (the whole file runs in a few seconds); raise `PROPTEST_CASES` locally to
//! search harder.

use bytes::BytesMut;
use proptest::prelude::*;
use rusmpp::{
    pdus::{DeliverSm, SubmitSm},
    tlvs::MessageDeliveryRequestTlvValue,
    tokio_codec::CommandCodec,
    types::{COctetString, OctetString},
    values::{DataCoding, EsmClass, MessageState},
    Command, CommandStatus,
};
use sms_conduit::smpp::dlr::{self, ReceiptTlvs};
use sms_conduit::text::{self as encoding, Encoded, Encoding, UDH_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// Counts heap allocations per thread, so the `analyze` property can check
/// that the API's hot-path call never allocates (other tests run in parallel
/// on other threads and do not disturb the count).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: delegates every call to `System` unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> usize {
    ALLOCATIONS.with(std::cell::Cell::get)
}

/// Every character of GSM 03.38 (default alphabet and extension table).
const GSM_CHARS: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€\u{0C}";

/// 2000 cases per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Feeds `bytes` to a fresh codec and decodes until it wants more or fails.
/// Returns the commands decoded (bounded so a bug cannot loop forever).
fn decode_all(bytes: &[u8]) -> Vec<Command> {
    let mut codec = CommandCodec::new().with_max_length(65536);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    for _ in 0..64 {
        match codec.decode(&mut buf) {
            Ok(Some(command)) => out.push(command),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

fn encode_command(command: Command) -> Vec<u8> {
    let mut buf = BytesMut::new();
    CommandCodec::new().encode(command, &mut buf).unwrap();
    buf.to_vec()
}

fn c_octets<const MIN: usize, const MAX: usize>(s: &str) -> COctetString<MIN, MAX> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).unwrap()
}

/// A valid submit_sm with a 160-octet GSM short_message.
fn submit_sm_bytes() -> Vec<u8> {
    let sm = SubmitSm::builder()
        .source_addr(c_octets("15551230001"))
        .destination_addr(c_octets("15557654321"))
        .esm_class(EsmClass::from(0))
        .data_coding(DataCoding::McSpecific)
        .short_message(OctetString::from_vec(vec![0x41; 160]).unwrap())
        .build();
    encode_command(Command::new(CommandStatus::EsmeRok, 7, sm))
}

/// A valid delivery-receipt deliver_sm with receipt TLVs.
fn deliver_sm_bytes() -> Vec<u8> {
    let text = "id:1A2B sub:001 dlvrd:001 submit date:2401151230 done date:2401151231 \
                stat:DELIVRD err:000 text:hello";
    let sm = DeliverSm::builder()
        .source_addr(c_octets("15557654321"))
        .destination_addr(c_octets("15551230001"))
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(text.as_bytes().to_vec()).unwrap())
        .push_tlv(MessageDeliveryRequestTlvValue::ReceiptedMessageId(
            c_octets("1A2B"),
        ))
        .push_tlv(MessageDeliveryRequestTlvValue::MessageState(
            MessageState::Delivered,
        ))
        .build();
    encode_command(Command::new(CommandStatus::EsmeRok, 9, sm))
}

/// One way of damaging a PDU.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    SetLength { value: u32 },
    Remove { at: usize },
    Insert { at: usize, value: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop_oneof![0u32..400, any::<u32>()].prop_map(|value| Mutation::SetLength { value }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    match *m {
        Mutation::Flip { at, mask } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= mask;
            }
        }
        Mutation::Set { at, value } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b = value;
            }
        }
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::SetLength { value } => {
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::Remove { at } => {
            if !bytes.is_empty() {
                bytes.remove(at % n);
            }
        }
        Mutation::Insert { at, value } => bytes.insert(at % (bytes.len() + 1), value),
    }
}

/// After a mutated deliver_sm decodes, run our own parsers on its payload.
fn exercise_parsers(commands: &[Command]) {
    for command in commands {
        if let Some(rusmpp::Pdu::DeliverSm(sm)) = command.pdu() {
            let bytes = sm.short_message().as_ref();
            let _ = encoding::decode(sm.data_coding.into(), sm.esm_class.into(), bytes);
            let _ = dlr::parse(bytes, &ReceiptTlvs::default());
        }
    }
}

/// A header with a plausible length and a real command id, then random body.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    let ids = prop::sample::select(vec![
        0x0000_0004u32, // submit_sm
        0x8000_0004,    // submit_sm_resp
        0x0000_0005,    // deliver_sm
        0x8000_0005,    // deliver_sm_resp
        0x0000_0009,    // bind_transceiver
        0x0000_0015,    // enquire_link
        0x0000_0103,    // data_sm
        0x8000_0000,    // generic_nack
    ]);
    (ids, prop::collection::vec(any::<u8>(), 0..400)).prop_map(|(id, body)| {
        let len = u32::try_from(16 + body.len()).unwrap();
        let mut out = Vec::with_capacity(16 + body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        out.extend_from_slice(&body);
        out
    })
}

/// Decodes every part of `enc` and joins the texts in `seq` order, checking
/// the concatenation headers on the way.
fn reassemble(enc: &Encoded) -> String {
    let mut parts: Vec<_> = enc
        .parts()
        .map(|p| encoding::decode(enc.data_coding(), enc.esm_class_bits(), p).unwrap())
        .collect();
    if enc.segments() > 1 {
        for d in &parts {
            let c = d.concat.unwrap();
            assert_eq!(usize::from(c.total), enc.segments());
        }
        parts.sort_by_key(|d| d.concat.map(|c| c.seq));
    }
    parts.iter().map(|d| d.text.expose()).collect()
}

/// Every part respects its size limit and never ends mid-character.
fn check_part_limits(enc: &Encoded) {
    let (single, per_part) = match enc.encoding() {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (140, 134),
    };
    for part in enc.parts() {
        let payload = if enc.udhi() { &part[UDH_LEN..] } else { part };
        let limit = if enc.udhi() { per_part } else { single };
        assert!(payload.len() <= limit);
        match enc.encoding() {
            Encoding::Gsm7 => assert_ne!(payload.last(), Some(&0x1B)),
            Encoding::Ucs2 => {
                assert_eq!(payload.len() % 2, 0);
                let hi = payload[payload.len() - 2];
                assert!(
                    !(0xD8..=0xDB).contains(&hi),
                    "part ends on a high surrogate"
                );
            }
        }
    }
}

fn gsm_string() -> impl Strategy<Value = String> {
    let chars: Vec<char> = GSM_CHARS.chars().collect();
    prop::collection::vec(prop::sample::select(chars), 1..700).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn codec_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        exercise_parsers(&decode_all(&bytes));
    }

    #[test]
    fn codec_never_panics_on_framed_garbage(bytes in framed_garbage()) {
        exercise_parsers(&decode_all(&bytes));
    }

    #[test]
    fn codec_survives_mutated_submit_and_deliver_sm(
        deliver in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = if deliver { deliver_sm_bytes() } else { submit_sm_bytes() };
        for m in &mutations {
            apply(&mut bytes, m);
        }
        exercise_parsers(&decode_all(&bytes));
    }

    #[test]
    fn encoding_decode_never_panics(
        data_coding in any::<u8>(),
        esm_class in any::<u8>(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = encoding::decode(data_coding, esm_class, &bytes);
    }

    #[test]
    fn dlr_parse_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        id in prop::option::of("[ -~]{0,70}"),
        state in prop::option::of(any::<u8>()),
        net in prop::option::of(prop::collection::vec(any::<u8>(), 0..5)),
    ) {
        let tlvs = ReceiptTlvs {
            receipted_message_id: id.as_deref(),
            message_state: state,
            network_error_code: net.as_deref(),
        };
        let _ = dlr::parse(&bytes, &tlvs);
    }

    #[test]
    fn dlr_never_leaks_what_follows_text(
        head in "((id|ID|stat|Stat|err|sub|dlvrd|submit date|done date|junk):[ -~]{0,12} ?){0,8}",
        snippet in "[ -~]{0,40}",
    ) {
        let input = format!("{head}text:{snippet}ZQXJCANARY{snippet}");
        let shown = match dlr::parse(input.as_bytes(), &ReceiptTlvs::default()) {
            Ok(r) => format!("{r:?}"),
            Err(e) => format!("{e:?} {e}"),
        };
        prop_assert!(!shown.contains("ZQXJCANARY"));
    }

    #[test]
    fn gsm_text_round_trips(text in gsm_string(), reference in any::<u8>()) {
        let info = encoding::analyze(&text);
        prop_assert_eq!(info.encoding, Encoding::Gsm7);
        let enc = encoding::encode(&text, reference).unwrap();
        prop_assert_eq!(enc.segments(), info.segments);
        check_part_limits(&enc);
        prop_assert_eq!(reassemble(&enc), text);
    }

    #[test]
    fn analyze_never_allocates_and_encode_allocates_twice(text in ".{0,500}") {
        let before = allocations();
        let info = encoding::analyze(&text);
        prop_assert_eq!(allocations(), before);
        prop_assert!(info.segments <= info.units);
        // encode: one zeroizing buffer plus one range list, whatever the
        // number of parts (this also proves the counter counts).
        if let Ok(enc) = encoding::encode(&text, 1) {
            prop_assert_eq!(allocations() - before, 2);
            drop(enc);
        }
    }

    #[test]
    fn unicode_text_round_trips(text in ".{1,300}", reference in any::<u8>()) {
        let info = encoding::analyze(&text);
        let enc = encoding::encode(&text, reference).unwrap();
        prop_assert_eq!(enc.encoding(), info.encoding);
        prop_assert_eq!(enc.segments(), info.segments);
        check_part_limits(&enc);
        prop_assert_eq!(reassemble(&enc), text);
    }
}

/// The seeds of the mutation property are themselves valid and decode to
/// what was sent, so the mutations start from real PDUs.
#[test]
fn seed_pdus_decode_and_parse() {
    let submit = decode_all(&submit_sm_bytes());
    assert_eq!(submit.len(), 1);
    assert!(matches!(submit[0].pdu(), Some(rusmpp::Pdu::SubmitSm(_))));

    let deliver = decode_all(&deliver_sm_bytes());
    assert_eq!(deliver.len(), 1);
    let Some(rusmpp::Pdu::DeliverSm(sm)) = deliver[0].pdu() else {
        panic!("not a deliver_sm");
    };
    let receipt = dlr::parse(sm.short_message().as_ref(), &ReceiptTlvs::default()).unwrap();
    assert_eq!(receipt.message_id, "1A2B");
    assert_eq!(receipt.state, dlr::ReceiptState::Delivered);
}

/// Documents a rusmpp 0.4 behaviour the session must design around: when a
/// PDU body fails to decode, `CommandCodec` has consumed only part of it, so
/// the next `decode` reads body bytes as a header. After any decode error
/// the session must answer generic_nack and close the connection rather than
/// keep reading. (If this starts failing after a rusmpp upgrade, the codec
/// skips whole bad PDUs and the session could keep the connection.)
#[test]
fn codec_error_mid_pdu_leaves_the_rest_in_the_buffer() {
    let mut bad = submit_sm_bytes();
    let bad_len = bad.len();
    for b in bad.iter_mut().skip(16).take(40) {
        *b = 0xFF; // no NUL terminators: service_type/addresses overrun
    }
    bad.extend_from_slice(&deliver_sm_bytes());
    let mut buf = BytesMut::from(&bad[..]);
    let mut codec = CommandCodec::new().with_max_length(65536);
    assert!(codec.decode(&mut buf).is_err());
    let consumed = bad.len() - buf.len();
    assert!(consumed < bad_len, "consumed {consumed} of {bad_len}");
    assert!(codec.decode(&mut buf).is_err(), "framing is lost");
}
