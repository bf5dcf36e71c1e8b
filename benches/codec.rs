//! Codec micro-benchmarks: the per-message CPU cost of text analysis and
//! encoding (run for every API request), rusmpp PDU framing, and receipt
//! parsing. Figures and the command live in `BENCHMARKS.md`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use rusmpp::{
    pdus::SubmitSm,
    tokio_codec::CommandCodec,
    types::{COctetString, OctetString},
    values::DataCoding,
    Command, CommandStatus,
};
use sms_conduit::smpp::dlr::{self, ReceiptTlvs};
use sms_conduit::text as encoding;
use tokio_util::codec::{Decoder, Encoder};

fn texts() -> [(&'static str, String); 3] {
    let gsm40 = "Your appointment is tomorrow at 9:00 AM.".to_owned();
    let gsm400: String = "Reminder: Dr. Lee, room 4 [east wing] at 9:00. Reply C to confirm. "
        .chars()
        .cycle()
        .take(400)
        .collect();
    let ucs2_100: String = "Напоминание: приём завтра в 9:00 😀 "
        .chars()
        .cycle()
        .take(100)
        .collect();
    [("gsm40", gsm40), ("gsm400", gsm400), ("ucs2_100", ucs2_100)]
}

fn bench_text(c: &mut Criterion) {
    for (name, text) in texts() {
        c.bench_function(&format!("analyze/{name}"), |b| {
            b.iter(|| encoding::analyze(black_box(&text)))
        });
        c.bench_function(&format!("encode/{name}"), |b| {
            b.iter(|| encoding::encode(black_box(&text), 7))
        });
    }
}

fn c_octets<const MIN: usize, const MAX: usize>(s: &str) -> COctetString<MIN, MAX> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    COctetString::from_vec(bytes).expect("valid address")
}

fn submit_sm_160() -> Command {
    let sm = SubmitSm::builder()
        .source_addr(c_octets("15551230001"))
        .destination_addr(c_octets("15557654321"))
        .data_coding(DataCoding::McSpecific)
        .short_message(OctetString::from_vec(vec![0x41; 160]).expect("≤ 255 octets"))
        .build();
    Command::new(CommandStatus::EsmeRok, 1, sm)
}

fn bench_pdu(c: &mut Criterion) {
    let command = submit_sm_160();
    let mut buf = BytesMut::with_capacity(512);
    c.bench_function("rusmpp/encode_submit_sm_160", |b| {
        let mut codec = CommandCodec::new();
        b.iter(|| {
            buf.clear();
            codec
                .encode(black_box(&command), &mut buf)
                .expect("encodes");
        })
    });
    let mut wire = BytesMut::new();
    CommandCodec::new()
        .encode(&command, &mut wire)
        .expect("encodes");
    let wire = wire.freeze();
    c.bench_function("rusmpp/decode_submit_sm_160", |b| {
        let mut codec = CommandCodec::new();
        b.iter(|| {
            let mut src = BytesMut::from(&wire[..]);
            codec.decode(black_box(&mut src)).expect("decodes")
        })
    });
}

fn bench_dlr(c: &mut Criterion) {
    let receipt = b"id:0123456789 sub:001 dlvrd:001 submit date:2401151230 \
                    done date:2401151231 stat:DELIVRD err:000 text:Your appointment";
    c.bench_function("dlr/parse", |b| {
        b.iter(|| dlr::parse(black_box(receipt), &ReceiptTlvs::default()))
    });
    c.bench_function("dlr/lookup_keys", |b| {
        b.iter(|| dlr::lookup_keys(black_box("00001A2B")))
    });
}

criterion_group!(benches, bench_text, bench_pdu, bench_dlr);
criterion_main!(benches);
