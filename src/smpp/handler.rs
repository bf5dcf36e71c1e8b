//! The seam between SMPP and the relay: what a session does with a message
//! PDU the peer sent (deliver_sm, data_sm, or submit_sm from a peer bound to
//! our server).
//!
//! Owns: [`InboundMessage`] (the decoded, text-redacting form of those PDUs),
//! the [`InboundHandler`] trait, [`InboundOutcome`] (what a handler did, mapped
//! to a command status in `status.rs`). (A handler that only answers
//! "try later", for tests, is `tools::TempErrorHandler`.)
//!
//! Must not know: receipt text formats, opt-out keywords, webhooks.
//!
//! Invariants: the message bytes live in zeroizing buffers, and `Debug` never
//! prints them (only lengths) nor an unmasked number.

use std::fmt;

use futures::future::BoxFuture;
use rusmpp::CommandStatus;
use zeroize::Zeroizing;

use crate::types::masked;

/// Which PDU an [`InboundMessage`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    DeliverSm,
    DataSm,
    SubmitSm,
}

/// Receipt TLVs as the peer sent them; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptTlvs {
    /// `receipted_message_id` (0x001E): the carrier's id of the original MT.
    pub receipted_message_id: Option<String>,
    /// `message_state` (0x0427): 2 = delivered, 5 = undeliverable, …
    pub message_state: Option<u8>,
    /// `network_error_code` (0x0423): network type and error code.
    pub network_error_code: Option<(u8, u16)>,
}

/// A message PDU received from a peer. The text bytes are zeroized on drop.
pub struct InboundMessage {
    pub kind: InboundKind,
    pub source_addr_ton: u8,
    pub source_addr: String,
    pub dest_addr_ton: u8,
    pub dest_addr: String,
    /// 0x04 = delivery receipt; 0x40 = UDH present.
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    /// `short_message` bytes as received (empty when the payload TLV is used).
    pub short_message: Zeroizing<Vec<u8>>,
    /// `message_payload` TLV bytes, when present.
    pub message_payload: Option<Zeroizing<Vec<u8>>>,
    pub receipt: ReceiptTlvs,
    /// For submit_sm/data_sm: the message id the session will answer with
    /// when the handler returns `ESME_ROK`.
    pub message_id: Option<String>,
    /// The id of the server session it came in on
    /// ([`crate::smpp::ServerHandle::deliver_elsewhere`]); 0 on a session
    /// we opened to a carrier.
    pub session: u64,
}

impl InboundMessage {
    /// True for a delivery receipt: esm_class message type 0x04 (SMSC
    /// delivery receipt), 0x08 (SME delivery acknowledgement) or 0x20
    /// (intermediate delivery notification), or a `receipted_message_id`
    /// TLV. None of them is a patient's text, so none may reach the MO path.
    pub fn is_receipt(&self) -> bool {
        matches!(self.esm_class & 0x3C, 0x04 | 0x08 | 0x20)
            || self.receipt.receipted_message_id.is_some()
    }

    /// The text bytes: the payload TLV when present, else `short_message`.
    pub fn body_bytes(&self) -> &[u8] {
        match &self.message_payload {
            Some(p) => p,
            None => &self.short_message,
        }
    }
}

impl fmt::Debug for InboundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundMessage")
            .field("kind", &self.kind)
            .field("source_addr", &masked(&self.source_addr))
            .field("dest_addr", &masked(&self.dest_addr))
            .field("esm_class", &self.esm_class)
            .field("data_coding", &self.data_coding)
            .field("short_message_len", &self.short_message.len())
            .field(
                "message_payload_len",
                &self.message_payload.as_ref().map(|p| p.len()),
            )
            .field("receipt", &self.receipt)
            .field("message_id", &self.message_id)
            .finish()
    }
}

/// What the relay implements to take messages from SMPP peers. The returned
/// status is sent to the peer in the matching `_resp`; `ESME_ROK` acknowledges
/// the message, `ESME_RX_T_APPN` asks the peer to retry later.
pub trait InboundHandler: Send + Sync + 'static {
    /// Handles one message from `link` (carrier or peer name from config).
    fn deliver<'a>(&'a self, link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus>;

    /// A bind came up, went down or failed (the relay audits these). Must
    /// not block: it is called from the session's own task.
    fn bind_event(&self, _event: BindEvent) {}
}

/// What a handler did with an inbound message, in its own terms;
/// `smpp::status` alone turns it into the `_resp`'s command status
/// ([`InboundOutcome::command_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    /// Taken: with a client, recorded, or needing nothing more (also a
    /// receipt that will not get better on redelivery). `ESME_ROK`.
    Taken,
    /// A part of a concatenated message, held until the rest arrives (or a
    /// part of a message already relayed). `ESME_ROK`.
    Held,
    /// Not taken now; the peer redelivers it later. `ESME_RX_T_APPN`.
    RetryLater,
    /// Refused for good, and why.
    Refused(Refusal),
}

/// Why an inbound message was refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source address is not a number. `ESME_RINVSRCADR`.
    BadSource,
    /// The destination is none of our numbers. `ESME_RINVDSTADR`.
    UnknownDestination,
    /// The bytes do not decode as text. `ESME_RX_P_APPN`.
    Undecodable,
    /// A part longer than one SMS can carry. `ESME_RINVMSGLEN`.
    TooLong,
}

/// A change of an SMPP bind, for the audit log. `peer` is the remote
/// address (`host:port` of a carrier, or a peer's IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindEvent {
    Up {
        link: String,
        peer: String,
        /// `outbound` (our pool) or `inbound` (a peer bound to our server).
        direction: &'static str,
        mode: &'static str,
    },
    Down {
        link: String,
        peer: String,
        reason: &'static str,
    },
    Failed {
        link: String,
        peer: String,
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_esm_class(esm_class: u8) -> InboundMessage {
        InboundMessage {
            kind: InboundKind::DeliverSm,
            source_addr_ton: 1,
            source_addr: "15557654321".into(),
            dest_addr_ton: 1,
            dest_addr: "15551230001".into(),
            esm_class,
            data_coding: 0,
            registered_delivery: 0,
            short_message: Zeroizing::new(b"id:1 stat:ENROUTE".to_vec()),
            message_payload: None,
            receipt: ReceiptTlvs::default(),
            message_id: None,
            session: 0,
        }
    }

    #[test]
    fn receipts_and_intermediate_notifications_are_not_mo() {
        for esm in [0x04, 0x08, 0x20, 0x44, 0x60] {
            assert!(with_esm_class(esm).is_receipt(), "esm_class {esm:#04x}");
        }
        for esm in [0x00, 0x40, 0x03] {
            assert!(!with_esm_class(esm).is_receipt(), "esm_class {esm:#04x}");
        }
    }
}
