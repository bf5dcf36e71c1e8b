//! Typed requests ⇄ rusmpp PDUs.
//!
//! Owns: [`SubmitRequest`] / [`SubmitResponse`] (what the relay hands the
//! pool), [`DeliverRequest`] (what the server sends to a bound peer), turning
//! them into PDUs, turning received message PDUs into [`InboundMessage`], and
//! building the responses a session sends (`_resp` with a status, generic_nack).
//!
//! Must not know: sockets, sessions, text encodings.
//!
//! Invariants: text bytes move into PDUs through a zeroizing owner, so the
//! copy the PDU holds is wiped when its last clone drops; nothing here logs.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use rusmpp::pdus::{DataSmResp, DeliverSm, DeliverSmResp, SubmitSm, SubmitSmResp};
use rusmpp::tlvs::{MessageDeliveryRequestTlvValue, Tlv, TlvValue};
use rusmpp::types::{AnyOctetString, COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{
    DataCoding, ErrorCodeNetworkType, EsmClass, MessageState, NetworkErrorCode, Npi,
    RegisteredDelivery, Ton,
};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use zeroize::Zeroizing;

use super::handler::{InboundKind, InboundMessage, ReceiptTlvs};
use super::SmppError;
use crate::types::E164;

/// One submit_sm, already encoded by the caller. Text bytes are zeroized
/// when the PDU built from them is dropped.
pub struct SubmitRequest {
    pub source: E164,
    pub dest: E164,
    /// Encoded bytes (with UDH when `esm_class` has 0x40), at most 254.
    pub short_message: Zeroizing<Vec<u8>>,
    pub data_coding: u8,
    pub esm_class: u8,
    /// 1 = ask for a delivery receipt.
    pub registered_delivery: u8,
    /// Relative validity period; `None` = carrier default.
    pub validity: Option<Duration>,
}

impl std::fmt::Debug for SubmitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitRequest")
            .field("source", &self.source)
            .field("dest", &self.dest)
            .field("short_message_len", &self.short_message.len())
            .field("data_coding", &self.data_coding)
            .field("esm_class", &self.esm_class)
            .field("registered_delivery", &self.registered_delivery)
            .field("validity", &self.validity)
            .finish()
    }
}

/// A carrier's acceptance of one submit_sm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitResponse {
    pub message_id: String,
}

/// A deliver_sm the server sends to a bound peer (MT to a peer, an MO or a
/// receipt from the simulator). Addresses are digits (TON international),
/// `+digits`, or alphanumeric.
pub struct DeliverRequest {
    pub source_addr: String,
    pub dest_addr: String,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    pub short_message: Zeroizing<Vec<u8>>,
    pub receipt: ReceiptTlvs,
}

impl std::fmt::Debug for DeliverRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverRequest")
            .field("source_addr", &crate::types::masked(&self.source_addr))
            .field("dest_addr", &crate::types::masked(&self.dest_addr))
            .field("esm_class", &self.esm_class)
            .field("short_message_len", &self.short_message.len())
            .field("receipt", &self.receipt)
            .finish()
    }
}

/// SMPP relative validity (`YYMMDDhhmmss000R`) for a duration.
pub fn relative_validity(d: Duration) -> String {
    let secs = d.as_secs();
    let (mut days, rem) = (secs / 86_400, secs % 86_400);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let years = (days / 365).min(99);
    days -= years * 365;
    let months = (days / 30).min(11);
    days -= months * 30;
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}000R",
        years,
        months,
        days.min(99),
        hh,
        mm,
        ss
    )
}

fn zeroizing_bytes(v: Zeroizing<Vec<u8>>) -> Bytes {
    Bytes::from_owner(v)
}

fn address(field: &'static str, s: &str) -> Result<(Ton, Npi, COctetString<1, 21>), SmppError> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let (ton, npi) = if numeric {
        (Ton::International, Npi::Isdn)
    } else {
        (Ton::Alphanumeric, Npi::Unknown)
    };
    let c = COctetString::from_str(digits).map_err(|_| SmppError::InvalidField {
        field,
        reason: "longer than 20 characters or not ASCII",
    })?;
    Ok((ton, npi, c))
}

fn short_message(v: Zeroizing<Vec<u8>>) -> Result<OctetString<0, 255>, SmppError> {
    OctetString::from_bytes(zeroizing_bytes(v)).map_err(|_| SmppError::InvalidField {
        field: "short_message",
        reason: "longer than 255 bytes",
    })
}

/// Builds the submit_sm PDU for a request (consumes the text buffer).
pub fn submit_sm(req: SubmitRequest) -> Result<Pdu, SmppError> {
    let (ston, snpi, src) = address("source_addr", req.source.digits())?;
    let (dton, dnpi, dst) = address("destination_addr", req.dest.digits())?;
    let validity = match req.validity {
        Some(d) => EmptyOrFullCOctetString::from_str(&relative_validity(d)).map_err(|_| {
            SmppError::InvalidField {
                field: "validity_period",
                reason: "not representable",
            }
        })?,
        None => EmptyOrFullCOctetString::empty(),
    };
    let sm = SubmitSm::builder()
        .source_addr_ton(ston)
        .source_addr_npi(snpi)
        .source_addr(src)
        .dest_addr_ton(dton)
        .dest_addr_npi(dnpi)
        .destination_addr(dst)
        .esm_class(EsmClass::from(req.esm_class))
        .validity_period(validity)
        .registered_delivery(RegisteredDelivery::from(req.registered_delivery))
        .data_coding(DataCoding::from(req.data_coding))
        .short_message(short_message(req.short_message)?)
        .build();
    Ok(Pdu::SubmitSm(sm))
}

/// Builds the deliver_sm PDU for a request (consumes the text buffer).
pub fn deliver_sm(req: DeliverRequest) -> Result<Pdu, SmppError> {
    let (ston, snpi, src) = address("source_addr", &req.source_addr)?;
    let (dton, dnpi, dst) = address("destination_addr", &req.dest_addr)?;
    let mut tlvs: Vec<MessageDeliveryRequestTlvValue> = Vec::new();
    if let Some(id) = &req.receipt.receipted_message_id {
        let id = COctetString::from_str(id).map_err(|_| SmppError::InvalidField {
            field: "receipted_message_id",
            reason: "longer than 64 characters or not ASCII",
        })?;
        tlvs.push(MessageDeliveryRequestTlvValue::ReceiptedMessageId(id));
    }
    if let Some(state) = req.receipt.message_state {
        tlvs.push(MessageDeliveryRequestTlvValue::MessageState(
            MessageState::from(state),
        ));
    }
    if let Some((net, code)) = req.receipt.network_error_code {
        tlvs.push(MessageDeliveryRequestTlvValue::NetworkErrorCode(
            NetworkErrorCode::new(ErrorCodeNetworkType::from(net), code),
        ));
    }
    let mut sm = DeliverSm::builder()
        .source_addr_ton(ston)
        .source_addr_npi(snpi)
        .source_addr(src)
        .dest_addr_ton(dton)
        .dest_addr_npi(dnpi)
        .destination_addr(dst)
        .esm_class(EsmClass::from(req.esm_class))
        .registered_delivery(RegisteredDelivery::from(req.registered_delivery))
        .data_coding(DataCoding::from(req.data_coding))
        .short_message(short_message(req.short_message)?)
        .build();
    sm.set_tlvs(tlvs);
    Ok(Pdu::DeliverSm(sm))
}

fn text(c: &[u8]) -> String {
    let c = c.strip_suffix(&[0]).unwrap_or(c);
    String::from_utf8_lossy(c).into_owned()
}

fn read_tlvs(tlvs: &[Tlv], receipt: &mut ReceiptTlvs) -> Option<Zeroizing<Vec<u8>>> {
    let mut payload = None;
    for tlv in tlvs {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => {
                receipt.receipted_message_id = Some(text(id));
            }
            Some(TlvValue::MessageState(s)) => receipt.message_state = Some(u8::from(*s)),
            Some(TlvValue::NetworkErrorCode(n)) => {
                receipt.network_error_code = Some((u8::from(n.network_type), n.error_code));
            }
            Some(TlvValue::MessagePayload(p)) => {
                payload = Some(Zeroizing::new(p.value.as_ref().to_vec()));
            }
            _ => {}
        }
    }
    payload
}

/// The handler's view of a deliver_sm, data_sm or submit_sm; `None` for any
/// other PDU. Copies the text into zeroizing buffers.
pub fn inbound_message(pdu: &Pdu) -> Option<InboundMessage> {
    // deliver_sm, submit_sm and data_sm are distinct rusmpp types with the
    // same field names; one expansion per type keeps the mapping in one place.
    macro_rules! from_pdu {
        ($p:expr, $kind:expr, $short_message:expr) => {{
            let p = $p;
            let mut receipt = ReceiptTlvs::default();
            let message_payload = read_tlvs(p.tlvs(), &mut receipt);
            InboundMessage {
                kind: $kind,
                source_addr_ton: u8::from(p.source_addr_ton),
                source_addr: text(&p.source_addr),
                dest_addr_ton: u8::from(p.dest_addr_ton),
                dest_addr: text(&p.destination_addr),
                esm_class: u8::from(p.esm_class),
                data_coding: u8::from(p.data_coding),
                registered_delivery: u8::from(p.registered_delivery),
                short_message: $short_message,
                message_payload,
                receipt,
                message_id: None,
                session: 0,
            }
        }};
    }
    let msg = match pdu {
        Pdu::DeliverSm(p) => from_pdu!(
            p,
            InboundKind::DeliverSm,
            Zeroizing::new(p.short_message().as_ref().to_vec())
        ),
        Pdu::SubmitSm(p) => from_pdu!(
            p,
            InboundKind::SubmitSm,
            Zeroizing::new(p.short_message().as_ref().to_vec())
        ),
        // data_sm carries its text in the message_payload TLV only.
        Pdu::DataSm(p) => from_pdu!(p, InboundKind::DataSm, Zeroizing::new(Vec::new())),
        _ => return None,
    };
    Some(msg)
}

/// A response with no body (used for every error response, and for
/// commands whose response has no body).
pub fn empty_resp(id: CommandId, status: CommandStatus, seq: u32) -> Command {
    Command::new(
        status,
        seq,
        Pdu::Other {
            command_id: id,
            body: AnyOctetString::empty(),
        },
    )
}

/// generic_nack with a status.
pub fn generic_nack(status: CommandStatus, seq: u32) -> Command {
    Command::new(status, seq, Pdu::GenericNack)
}

/// The response to a message PDU: with a message id when OK.
pub fn message_resp(
    kind: InboundKind,
    status: CommandStatus,
    seq: u32,
    message_id: Option<&str>,
) -> Command {
    let id = match kind {
        InboundKind::DeliverSm => CommandId::DeliverSmResp,
        InboundKind::DataSm => CommandId::DataSmResp,
        InboundKind::SubmitSm => CommandId::SubmitSmResp,
    };
    if status != CommandStatus::EsmeRok {
        return empty_resp(id, status, seq);
    }
    let mid = message_id
        .and_then(|m| COctetString::from_str(m).ok())
        .unwrap_or_else(COctetString::empty);
    let pdu = match kind {
        InboundKind::DeliverSm => Pdu::DeliverSmResp(DeliverSmResp::new(mid, Vec::new())),
        InboundKind::DataSm => Pdu::DataSmResp(DataSmResp::new(mid, Vec::new())),
        InboundKind::SubmitSm => Pdu::SubmitSmResp(SubmitSmResp::new(mid, Vec::new())),
    };
    Command::new(status, seq, pdu)
}

/// The message id in a submit_sm_resp (empty when the body was absent).
pub fn submit_resp_id(cmd: &Command) -> String {
    match cmd.pdu() {
        Some(Pdu::SubmitSmResp(r)) => text(r.message_id()),
        Some(Pdu::DataSmResp(r)) => text(r.message_id()),
        _ => String::new(),
    }
}

/// Unique message ids for PDUs we accept: a random per-process prefix and a
/// counter, as 16 hex digits.
#[derive(Debug)]
pub struct MessageIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl MessageIds {
    pub fn new() -> Self {
        use rand::Rng;
        MessageIds {
            prefix: u64::from(rand::thread_rng().gen::<u16>()) << 48,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The next id, e.g. `3fa2000000000001`.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:016x}", self.prefix | (n & 0x0000_FFFF_FFFF_FFFF))
    }
}

impl Default for MessageIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_relative_format() {
        assert_eq!(
            relative_validity(Duration::from_secs(86_400)),
            "000001000000000R"
        );
        assert_eq!(
            relative_validity(Duration::from_secs(3661)),
            "000000010101000R"
        );
    }

    #[test]
    fn submit_round_trips_to_inbound() {
        let req = SubmitRequest {
            source: E164::parse("+15551230001").unwrap(),
            dest: E164::parse("+15557654321").unwrap(),
            short_message: Zeroizing::new(b"hello".to_vec()),
            data_coding: 0,
            esm_class: 0,
            registered_delivery: 1,
            validity: Some(Duration::from_secs(3600)),
        };
        let pdu = submit_sm(req).unwrap();
        let m = inbound_message(&pdu).unwrap();
        assert_eq!(m.source_addr, "15551230001");
        assert_eq!(&m.short_message[..], b"hello");
        assert_eq!(m.registered_delivery, 1);
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("hello") && !dbg.contains("15551230001"));
    }
}
