//! Framing: bytes ⇄ SMPP commands, nothing else.
//!
//! Owns: [`SmppCodec`], a wrapper around rusmpp's `CommandCodec` that
//!
//! * splits frames itself, so a PDU whose body does not decode becomes a
//!   [`Frame::Invalid`] (the session answers generic_nack and carries on)
//!   instead of an error that ends the stream;
//! * refuses a `command_length` below 16 or above the limit (64 KiB) with
//!   [`Frame::BadLength`]: framing is lost then, and the session must close;
//! * wipes each frame's bytes from the read buffer once copied out, so text
//!   does not linger in a reused buffer.
//!
//! Must not know: session state, what a PDU means, who is on the other end.
//!
//! Invariants: never panics on input; after `BadLength` it yields nothing more.

use bytes::{Buf, BytesMut};
use rusmpp::decode::DecodeWithLength;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::{Command, CommandId, CommandStatus};
use tokio_util::codec::{Decoder, Encoder};
use zeroize::Zeroize;

/// Largest `command_length` accepted (SPEC §5 "PDU size limit").
pub const MAX_COMMAND_LENGTH: usize = 64 * 1024;

const HEADER: usize = 16;

/// One decoded unit from the peer.
// `Command` is the hot variant; boxing it would cost an allocation per PDU.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// A well-formed command.
    Command(Command),
    /// The header was intact but the body did not decode. The stream is still
    /// in sync; answer generic_nack with `status`.
    Invalid {
        command_id: u32,
        sequence_number: u32,
        status: CommandStatus,
    },
    /// `command_length` out of bounds: framing is lost. Answer generic_nack
    /// `ESME_RINVCMDLEN` and close.
    BadLength { sequence_number: u32, length: u32 },
}

/// Prints the header only: a `Command`'s own `Debug` would print the text.
impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Command(c) => f
                .debug_struct("Command")
                .field("id", &c.id())
                .field("status", &c.status())
                .field("sequence_number", &c.sequence_number())
                .finish_non_exhaustive(),
            Frame::Invalid {
                command_id,
                sequence_number,
                status,
            } => f
                .debug_struct("Invalid")
                .field("command_id", command_id)
                .field("sequence_number", sequence_number)
                .field("status", status)
                .finish(),
            Frame::BadLength {
                sequence_number,
                length,
            } => f
                .debug_struct("BadLength")
                .field("sequence_number", sequence_number)
                .field("length", length)
                .finish(),
        }
    }
}

/// Codec for `Framed<S, SmppCodec>`.
#[derive(Debug)]
pub struct SmppCodec {
    inner: CommandCodec,
    max_length: usize,
    broken: bool,
}

impl SmppCodec {
    /// A codec with the 64 KiB limit.
    pub fn new() -> Self {
        Self::with_max_length(MAX_COMMAND_LENGTH)
    }

    /// A codec with another limit (tests).
    pub fn with_max_length(max_length: usize) -> Self {
        SmppCodec {
            inner: CommandCodec::new().without_max_length(),
            max_length: max_length.max(HEADER),
            broken: false,
        }
    }
}

impl Default for SmppCodec {
    fn default() -> Self {
        Self::new()
    }
}

fn be_u32(b: &[u8]) -> u32 {
    // Callers pass exactly four bytes of an already length-checked buffer.
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder for SmppCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if self.broken {
            src.zeroize();
            src.clear();
            return Ok(None);
        }
        if src.len() < HEADER {
            return Ok(None);
        }
        let length = be_u32(&src[0..4]);
        let command_id = be_u32(&src[4..8]);
        let sequence_number = be_u32(&src[12..16]);
        let len = length as usize;
        if len < HEADER || len > self.max_length {
            self.broken = true;
            src.zeroize();
            src.clear();
            return Ok(Some(Frame::BadLength {
                sequence_number,
                length,
            }));
        }
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let mut body = BytesMut::from(&src[4..len]);
        src[..len].zeroize();
        src.advance(len);
        match Command::decode(&mut body, len - 4) {
            Ok((command, _)) => Ok(Some(Frame::Command(command))),
            Err(_) => {
                let status = match CommandId::from(command_id) {
                    CommandId::Other(_) => CommandStatus::EsmeRinvcmdid,
                    _ => CommandStatus::EsmeRinvcmdlen,
                };
                Ok(Some(Frame::Invalid {
                    command_id,
                    sequence_number,
                    status,
                }))
            }
        }
    }
}

impl Encoder<Command> for SmppCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Command, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner.encode(&item, dst).map_err(|e| match e {
            rusmpp::tokio_codec::EncodeError::Io(e) => e,
            _ => std::io::Error::other("SMPP encode failed"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::Pdu;

    fn encode(cmd: Command) -> BytesMut {
        let mut buf = BytesMut::new();
        SmppCodec::new().encode(cmd, &mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_and_partial_frames() {
        let buf = encode(Command::new(CommandStatus::EsmeRok, 7, Pdu::EnquireLink));
        let mut codec = SmppCodec::new();
        let mut part = BytesMut::from(&buf[..10]);
        assert!(codec.decode(&mut part).unwrap().is_none());
        part.extend_from_slice(&buf[10..]);
        match codec.decode(&mut part).unwrap() {
            Some(Frame::Command(c)) => {
                assert_eq!(c.id(), CommandId::EnquireLink);
                assert_eq!(c.sequence_number(), 7);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_body_keeps_framing() {
        // submit_sm with a 3-byte body of garbage, then a valid enquire_link.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&19u32.to_be_bytes());
        buf.extend_from_slice(&4u32.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&9u32.to_be_bytes());
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        buf.extend_from_slice(&encode(Command::new(
            CommandStatus::EsmeRok,
            10,
            Pdu::EnquireLink,
        )));
        let mut codec = SmppCodec::new();
        match codec.decode(&mut buf).unwrap() {
            Some(Frame::Invalid {
                sequence_number: 9, ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Command(_))
        ));
    }

    #[test]
    fn oversized_length_breaks_framing() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(1_000_000u32).to_be_bytes());
        buf.extend_from_slice(&[0u8; 12]);
        let mut codec = SmppCodec::new();
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::BadLength { .. })
        ));
        buf.extend_from_slice(&[1u8; 32]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
}
