//! Reassembly of concatenated MO messages, end to end over real SMPP/TLS on
//! loopback (issue 16 item 5, issue 20 item 1): a carrier (a `ManualSmsc`
//! the test drives part by part) → the relay → the client's signed webhook
//! (a `Sink`). A part never joins a message it does not belong to, a whole
//! MO reaches the webhook at most once per carrier delivery, and held parts
//! are bounded and shown on the metrics page. Every text carries a canary
//! that must not appear in any log line.

// The test doubles and the simulator are the `tools` feature (on by default).
#![cfg(feature = "tools")]

mod support;

use std::time::Duration;

use sms_conduit::relay::reassembly::{
    MO_HELD_BYTES_PER_LINK, MO_PART_MAX_OCTETS, MO_PART_MAX_SEPTETS,
};
use sms_conduit::smpp::{CommandStatus, DeliverRequest};
use sms_conduit::tools::{Mode, Sink};
use sms_conduit::types::Secret;
use support::capture::{capture, leaked, line_at};
use support::relay::{CarrierCfg, Files, ManualSmsc, Relay, Setup, FROM, TO};

const PW: &str = "mo-pw1";
const SECRET: &[u8] = b"whsec_mo_reassembly_0123456789ab";

fn new_canary() -> String {
    format!("MOCANARY-{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF)
}

async fn manual_world() -> (Relay, ManualSmsc, Sink) {
    let files = Files::new();
    let sink = Sink::start_self_signed(files.dir.path(), Secret::new(SECRET.to_vec()))
        .await
        .unwrap();
    let smsc = files.manual_smsc(PW).await;
    let setup = Setup::new(vec![CarrierCfg::new("carrier-a", smsc.port(), PW)]).webhook(
        &sink.url(),
        SECRET,
        sink.ca_file(),
    );
    let relay = Relay::start(files, setup).await;
    (relay, smsc, sink)
}

/// Part `seq` of `total` of a concatenated MO from [`TO`] to [`FROM`]
/// (8-bit reference UDH), payload `bytes` in `data_coding`.
fn part_dc(reference: u8, seq: u8, total: u8, data_coding: u8, text: &[u8]) -> DeliverRequest {
    let mut bytes = vec![0x05, 0x00, 0x03, reference, total, seq];
    bytes.extend_from_slice(text);
    DeliverRequest {
        source_addr: TO.trim_start_matches('+').into(),
        dest_addr: FROM.trim_start_matches('+').into(),
        esm_class: 0x40,
        data_coding,
        registered_delivery: 0,
        short_message: zeroize::Zeroizing::new(bytes),
        receipt: Default::default(),
    }
}

/// A GSM (ASCII) part.
fn part(reference: u8, seq: u8, total: u8, text: &str) -> DeliverRequest {
    part_dc(reference, seq, total, 0, text.as_bytes())
}

/// The texts of the `message.received` events, in arrival order.
fn received(sink: &Sink) -> Vec<String> {
    sink.events()
        .into_iter()
        .filter(|e| e["type"] == "message.received")
        .map(|e| e["data"]["text"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
}

/// The value of `sms_conduit_messages_total` for an MO outcome.
fn mo_count(page: &str, outcome: &str) -> u64 {
    let want = format!(
        "sms_conduit_messages_total{{carrier=\"carrier-a\",direction=\"mo\",outcome=\"{outcome}\"}} "
    );
    page.lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The value of a gauge line (name with its labels) on the metrics page.
fn gauge(page: &str, series: &str) -> Option<i64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Panics if the canary is in any log line so far.
fn assert_not_logged(canary: &str) {
    let log = capture().bytes();
    if let Some((form, at)) = leaked(&log, canary) {
        panic!("canary ({form}) in a log line: {}", line_at(&log, at));
    }
}

/// Delivers `req` until the relay stops answering ESME_RX_T_APPN (a
/// carrier's retries), at most 20 times; the final answer.
async fn deliver_until_taken(smsc: &ManualSmsc, req: impl Fn() -> DeliverRequest) -> CommandStatus {
    for _ in 0..20 {
        let st = smsc.deliver(req()).await;
        if st != CommandStatus::EsmeRxTAppn {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    CommandStatus::EsmeRxTAppn
}

/// Issue 16 item 5: the parts of a whole MO whose webhook failed are held
/// for the carrier's retry; a later message reusing the reference must not
/// be spliced into them (before: part 1 of the new message was delivered
/// with part 2 of the old one, acknowledged, and the real parts lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_part_does_not_splice_into_a_later_message_with_its_reference() {
    let _ = capture();
    let (relay, smsc, sink) = manual_world().await;
    let c = new_canary();
    let (a1, a2) = (
        format!("{c} A1 move my visit "),
        format!("{c} A2 to Friday"),
    );
    let (b1, b2) = (
        format!("{c} B1 my new address is "),
        format!("{c} B2 12 Main St"),
    );

    // Message A: its whole fails at the webhook, the carrier is to retry
    // part 2.
    sink.set_mode(Mode::Fail);
    assert_eq!(
        smsc.deliver(part(9, 1, 2, &a1)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(9, 2, 2, &a2)).await,
        CommandStatus::EsmeRxTAppn
    );
    sink.set_mode(Mode::Ok);
    // Message B reuses reference 9 before the carrier retried A's part 2:
    // B1 lands on A's filled slot 1 with other content. It must not be
    // relayed as B1 + A2; it is refused for now (nothing is acknowledged
    // that could be lost).
    let st = smsc.deliver(part(9, 1, 2, &b1)).await;
    assert!(
        received(&sink).is_empty(),
        "nothing relayed by a part of another message: {:?} (answer {st:?})",
        received(&sink)
    );
    assert_eq!(st, CommandStatus::EsmeRxTAppn);
    // The carrier retries: A's part 2 completes A, then B comes whole.
    assert_eq!(
        smsc.deliver(part(9, 2, 2, &a2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(9, 1, 2, &b1)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(9, 2, 2, &b2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        received(&sink),
        vec![format!("{a1}{a2}"), format!("{b1}{b2}")]
    );

    // An incomplete stale message (parts 1-2 of 3; the carrier restarted
    // its references and re-sends it whole under another one) is discarded
    // when a part with other content reuses its filled slot, and never
    // completed with the new message's parts.
    let (x1, x2) = (format!("{c} X1 "), format!("{c} X2 "));
    let (y1, y2, y3) = (
        format!("{c} Y1 "),
        format!("{c} Y2 "),
        format!("{c} Y3 end"),
    );
    assert_eq!(
        smsc.deliver(part(20, 1, 3, &x1)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(20, 2, 3, &x2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(20, 2, 3, &y2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(20, 3, 3, &y3)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(received(&sink).len(), 2, "X1 + Y2 + Y3 is not a message");
    assert_eq!(
        smsc.deliver(part(20, 1, 3, &y1)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(received(&sink)[2], format!("{y1}{y2}{y3}"));
    let page = relay.metrics_text().await;
    assert_eq!(mo_count(&page, "parts_discarded"), 1, "{page}");
    assert_not_logged(&c);
}

/// Issue 16 item 5: a carrier that pipelines parts and re-sends them after
/// a reconnect (Kannel) must not get the same reply delivered again; a new
/// message reusing the reference with other content still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_concatenated_mo_reaches_the_webhook_once() {
    let _ = capture();
    let (_relay, smsc, sink) = manual_world().await;
    let c = new_canary();
    let parts = [
        format!("{c} P1 is the clinic "),
        format!("{c} P2 open on Saturday "),
        format!("{c} P3 morning?"),
    ];
    let whole: String = parts.concat();

    // Sequentially, then the same three parts again (the carrier did not
    // see our answers before its reconnect).
    for round in 0..2 {
        for (i, p) in parts.iter().enumerate() {
            let seq = i as u8 + 1;
            assert_eq!(
                smsc.deliver(part(5, seq, 3, p)).await,
                CommandStatus::EsmeRok,
                "round {round} part {seq}"
            );
        }
    }
    assert_eq!(received(&sink), vec![whole.clone()]);

    // Pipelined: all parts at once, twice over; a part refused for now is
    // retried as a carrier would.
    let ps = [
        format!("{c} Q1 thanks, "),
        format!("{c} Q2 see you "),
        format!("{c} Q3 then"),
    ];
    let sends = (0..2).flat_map(|_| {
        ps.iter().enumerate().map(|(i, p)| {
            let smsc = &smsc;
            async move { deliver_until_taken(smsc, || part(6, i as u8 + 1, 3, p)).await }
        })
    });
    for st in futures::future::join_all(sends).await {
        assert_eq!(st, CommandStatus::EsmeRok);
    }
    assert_eq!(received(&sink), vec![whole.clone(), ps.concat()]);

    // A new message reusing reference 5 with other content is relayed.
    let n1 = format!("{c} N1 new ");
    let n2 = format!("{c} N2 question");
    let n3 = format!("{c} N3 here");
    for (seq, p) in [(1, &n1), (2, &n2), (3, &n3)] {
        assert_eq!(
            smsc.deliver(part(5, seq, 3, p)).await,
            CommandStatus::EsmeRok
        );
    }
    assert_eq!(
        received(&sink),
        vec![whole, ps.concat(), format!("{n1}{n2}{n3}")]
    );
    assert_not_logged(&c);
}

/// Issue 16 item 5: a part announcing another total than the held message's
/// belongs to another message and never completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_with_another_total_does_not_join() {
    let _ = capture();
    let (_relay, smsc, sink) = manual_world().await;
    let c = new_canary();
    let (a1, a2) = (format!("{c} A1 of two "), format!("{c} A2 of two"));
    let (b1, b2, b3) = (
        format!("{c} B1 of three "),
        format!("{c} B2 of three "),
        format!("{c} B3 of three"),
    );
    assert_eq!(
        smsc.deliver(part(11, 1, 2, &a1)).await,
        CommandStatus::EsmeRok
    );
    // B's part 2 (of 3) would fill A's empty slot 2 (of 2).
    assert_eq!(
        smsc.deliver(part(11, 2, 3, &b2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(11, 3, 3, &b3)).await,
        CommandStatus::EsmeRok
    );
    assert!(received(&sink).is_empty(), "{:?}", received(&sink));
    assert_eq!(
        smsc.deliver(part(11, 1, 3, &b1)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        smsc.deliver(part(11, 2, 2, &a2)).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        received(&sink),
        vec![format!("{b1}{b2}{b3}"), format!("{a1}{a2}")]
    );
    assert_not_logged(&c);
}

/// Issue 20 item 1: held parts are bounded per link; a part beyond the
/// bound is refused with ESME_RX_T_APPN (nothing acknowledged is lost), a
/// part longer than one SMS with ESME_RINVMSGLEN, and the gauge shows what
/// is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_parts_are_bounded_per_link_and_shown() {
    let _ = capture();
    let (relay, smsc, sink) = manual_world().await;
    let c = new_canary();

    // Oversized parts are refused for good.
    let long7 = format!("{c}{}", "x".repeat(MO_PART_MAX_SEPTETS + 1 - c.len()));
    assert_eq!(
        smsc.deliver(part(1, 1, 2, &long7)).await,
        CommandStatus::EsmeRinvmsglen
    );
    let ucs2 = vec![0x00; MO_PART_MAX_OCTETS + 2];
    assert_eq!(
        smsc.deliver(part_dc(1, 1, 2, 8, &ucs2)).await,
        CommandStatus::EsmeRinvmsglen
    );
    assert_eq!(
        smsc.deliver(part_dc(1, 1, 2, 8, &ucs2[..MO_PART_MAX_OCTETS]))
            .await,
        CommandStatus::EsmeRok,
        "a full UCS-2 part is taken"
    );
    let page = relay.metrics_text().await;
    let held_bytes = MO_PART_MAX_OCTETS as i64;
    assert_eq!(
        gauge(&page, "sms_conduit_mo_parts_held{kind=\"bytes\"}"),
        Some(held_bytes),
        "{page}"
    );

    // Full-size GSM parts of never-completed 255-part messages, until the
    // per-link byte bound: the next one is refused.
    let full = format!("{c}{}", "y".repeat(MO_PART_MAX_SEPTETS - c.len()));
    let fit = (MO_HELD_BYTES_PER_LINK - MO_PART_MAX_OCTETS) / MO_PART_MAX_SEPTETS;
    let slots: Vec<(u8, u8)> = (0..fit)
        .map(|i| (100 + (i / 254) as u8, (i % 254) as u8 + 1))
        .collect();
    for chunk in slots.chunks(32) {
        let sends = chunk
            .iter()
            .map(|&(r, s)| smsc.deliver(part(r, s, 255, &full)));
        for st in futures::future::join_all(sends).await {
            assert_eq!(st, CommandStatus::EsmeRok);
        }
    }
    let held_bytes = held_bytes + (fit * MO_PART_MAX_SEPTETS) as i64;
    assert_eq!(
        smsc.deliver(part(99, 1, 255, &full)).await,
        CommandStatus::EsmeRxTAppn,
        "beyond the per-link bound"
    );
    // A redelivery of a held part needs no room.
    let (r, s) = slots[0];
    assert_eq!(
        smsc.deliver(part(r, s, 255, &full)).await,
        CommandStatus::EsmeRok
    );
    let page = relay.metrics_text().await;
    assert_eq!(
        gauge(&page, "sms_conduit_mo_parts_held{kind=\"bytes\"}"),
        Some(held_bytes),
        "{page}"
    );
    assert_eq!(
        gauge(&page, "sms_conduit_mo_parts_held{kind=\"parts\"}"),
        Some(fit as i64 + 1),
        "{page}"
    );
    assert!(mo_count(&page, "parts_full") >= 1, "{page}");
    assert!(mo_count(&page, "part_too_long") >= 2, "{page}");
    assert!(received(&sink).is_empty());
    assert_not_logged(&c);
}
