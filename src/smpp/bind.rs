//! The bind exchange, both directions, before a session engine takes over.
//!
//! Owns: sending our bind and reading the answer ([`bind_esme`]); waiting
//! for a peer's bind while refusing everything else with `ESME_RINVBNDSTS`
//! ([`await_bind`]); and answering it ([`answer_bind`]).
//!
//! Must not know: who is allowed to bind (the server decides), pools.
//!
//! Invariants: passwords live in zeroizing buffers and are never logged; no
//! PDU received before a successful bind reaches an [`super::InboundHandler`].

use std::str::FromStr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{
    BindReceiver, BindReceiverResp, BindTransceiver, BindTransceiverResp, BindTransmitter,
    BindTransmitterResp,
};
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;
use zeroize::Zeroizing;

use super::codec::{Frame, SmppCodec};
use super::pdu;
use super::session::BindKind;
use super::SmppError;

/// The sequence number of our bind; the session continues from the next one.
pub const BIND_SEQ: u32 = 1;

fn field<const MIN: usize, const MAX: usize>(
    name: &'static str,
    v: &str,
) -> Result<COctetString<MIN, MAX>, SmppError> {
    COctetString::from_str(v).map_err(|_| SmppError::InvalidField {
        field: name,
        reason: "too long for SMPP or not ASCII",
    })
}

/// Binds as an ESME and waits for the answer. `Ok` means bound.
pub async fn bind_esme<S>(
    framed: &mut Framed<S, SmppCodec>,
    kind: BindKind,
    system_id: &str,
    password: &str,
    system_type: &str,
    within: Duration,
) -> Result<(), SmppError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let sid = field::<1, 16>("system_id", system_id)?;
    let pw = field::<1, 9>("password", password)?;
    let st = field::<1, 13>("system_type", system_type)?;
    let v = InterfaceVersion::Smpp3_4;
    let pdu = match kind {
        BindKind::Transmitter => Pdu::BindTransmitter(
            BindTransmitter::builder()
                .system_id(sid)
                .password(pw)
                .system_type(st)
                .interface_version(v)
                .build(),
        ),
        BindKind::Receiver => Pdu::BindReceiver(
            BindReceiver::builder()
                .system_id(sid)
                .password(pw)
                .system_type(st)
                .interface_version(v)
                .build(),
        ),
        BindKind::Transceiver => Pdu::BindTransceiver(
            BindTransceiver::builder()
                .system_id(sid)
                .password(pw)
                .system_type(st)
                .interface_version(v)
                .build(),
        ),
    };
    let deadline = Instant::now() + within;
    let bind = Command::new(CommandStatus::EsmeRok, BIND_SEQ, pdu);
    timeout_at(deadline, framed.send(bind))
        .await
        .map_err(|_| SmppError::PhaseTimeout("bind"))??;
    loop {
        let frame = timeout_at(deadline, framed.next())
            .await
            .map_err(|_| SmppError::PhaseTimeout("bind"))?;
        match frame {
            None => return Err(SmppError::SessionLost),
            Some(Err(e)) => return Err(SmppError::Io(e)),
            Some(Ok(Frame::BadLength { .. })) => {
                return Err(SmppError::Protocol("bad command_length during bind"))
            }
            Some(Ok(Frame::Invalid { .. })) => {
                return Err(SmppError::Protocol("undecodable PDU during bind"))
            }
            Some(Ok(Frame::Command(cmd))) => {
                if cmd.id() == CommandId::EnquireLink {
                    let resp = Command::new(
                        CommandStatus::EsmeRok,
                        cmd.sequence_number(),
                        Pdu::EnquireLinkResp,
                    );
                    framed.send(resp).await?;
                    continue;
                }
                if cmd.id().is_response() && cmd.sequence_number() == BIND_SEQ {
                    return match cmd.status() {
                        CommandStatus::EsmeRok if cmd.id() != CommandId::GenericNack => Ok(()),
                        CommandStatus::EsmeRok => {
                            Err(SmppError::BindRefused(CommandStatus::EsmeRbindfail))
                        }
                        s => Err(SmppError::BindRefused(s)),
                    };
                }
            }
        }
    }
}

/// A bind received from a peer.
pub struct BindAttempt {
    pub kind: BindKind,
    pub system_id: String,
    pub password: Zeroizing<Vec<u8>>,
    pub sequence_number: u32,
    /// What the peer asked for: a 5.0 peer is answered 5.0 (SPEC §5: "5.0
    /// where a peer asks"), anything else 3.4.
    pub interface_version: InterfaceVersion,
}

impl std::fmt::Debug for BindAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindAttempt")
            .field("kind", &self.kind)
            .field("system_id", &self.system_id)
            .finish_non_exhaustive()
    }
}

/// Why no bind came.
#[derive(Debug)]
pub enum NoBind {
    /// The peer closed, unbound or timed out.
    Gone,
    /// Framing lost (the nack was sent).
    BadLength,
    Io(std::io::Error),
}

fn cstr(b: &[u8]) -> &[u8] {
    b.strip_suffix(&[0]).unwrap_or(b)
}

/// Waits for a bind, answering enquire_link and refusing every other request
/// with `ESME_RINVBNDSTS`. The count of refused PDUs is returned for metrics.
pub async fn await_bind<S>(
    framed: &mut Framed<S, SmppCodec>,
    within: Duration,
    refused: &mut u64,
) -> Result<BindAttempt, NoBind>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + within;
    loop {
        let frame = match timeout_at(deadline, framed.next()).await {
            Ok(f) => f,
            Err(_) => return Err(NoBind::Gone),
        };
        let reply = match frame {
            None => return Err(NoBind::Gone),
            Some(Err(e)) => return Err(NoBind::Io(e)),
            Some(Ok(Frame::BadLength {
                sequence_number, ..
            })) => {
                let nack = pdu::generic_nack(CommandStatus::EsmeRinvcmdlen, sequence_number);
                let _ = timeout_at(deadline, framed.send(nack)).await;
                return Err(NoBind::BadLength);
            }
            Some(Ok(Frame::Invalid {
                command_id,
                sequence_number,
                status,
            })) => {
                if command_id & 0x8000_0000 != 0 {
                    continue;
                }
                pdu::generic_nack(status, sequence_number)
            }
            Some(Ok(Frame::Command(cmd))) => {
                let seq = cmd.sequence_number();
                let attempt = |kind,
                               sid: &COctetString<1, 16>,
                               pw: &COctetString<1, 9>,
                               version: InterfaceVersion| {
                    Ok(BindAttempt {
                        kind,
                        system_id: String::from_utf8_lossy(cstr(sid)).into_owned(),
                        password: Zeroizing::new(cstr(pw).to_vec()),
                        sequence_number: seq,
                        interface_version: version,
                    })
                };
                match cmd.pdu() {
                    Some(Pdu::BindTransmitter(b)) => {
                        return attempt(
                            BindKind::Transmitter,
                            &b.system_id,
                            &b.password,
                            b.interface_version,
                        )
                    }
                    Some(Pdu::BindReceiver(b)) => {
                        return attempt(
                            BindKind::Receiver,
                            &b.system_id,
                            &b.password,
                            b.interface_version,
                        )
                    }
                    Some(Pdu::BindTransceiver(b)) => {
                        return attempt(
                            BindKind::Transceiver,
                            &b.system_id,
                            &b.password,
                            b.interface_version,
                        )
                    }
                    _ => {}
                }
                match cmd.id() {
                    CommandId::EnquireLink => {
                        Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp)
                    }
                    CommandId::Unbind => {
                        let resp = Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp);
                        let _ = timeout_at(deadline, framed.send(resp)).await;
                        return Err(NoBind::Gone);
                    }
                    id if id.is_response() => continue,
                    id @ CommandId::Other(_) => {
                        let _ = id;
                        *refused += 1;
                        pdu::generic_nack(CommandStatus::EsmeRinvbndsts, seq)
                    }
                    id => {
                        *refused += 1;
                        pdu::empty_resp(id.matching_response(), CommandStatus::EsmeRinvbndsts, seq)
                    }
                }
            }
        };
        if timeout_at(deadline, framed.send(reply)).await.is_err() {
            return Err(NoBind::Gone);
        }
    }
}

/// Answers a bind: `ESME_ROK` with our system id, or the refusal status
/// (with no body, as SMPP 3.4 §4.1 allows).
pub async fn answer_bind<S>(
    framed: &mut Framed<S, SmppCodec>,
    attempt: &BindAttempt,
    status: CommandStatus,
    our_system_id: &str,
) -> Result<(), SmppError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let seq = attempt.sequence_number;
    let cmd = if status != CommandStatus::EsmeRok {
        let id = match attempt.kind {
            BindKind::Transmitter => CommandId::BindTransmitterResp,
            BindKind::Receiver => CommandId::BindReceiverResp,
            BindKind::Transceiver => CommandId::BindTransceiverResp,
        };
        pdu::empty_resp(id, status, seq)
    } else {
        let sid = field::<1, 16>("system_id", our_system_id)?;
        // sc_interface_version: 5.0 to a peer that asked for it (the
        // session then serves the PDUs both versions share), else 3.4.
        let v = Some(match attempt.interface_version {
            InterfaceVersion::Smpp5_0 => InterfaceVersion::Smpp5_0,
            _ => InterfaceVersion::Smpp3_4,
        });
        let pdu = match attempt.kind {
            BindKind::Transmitter => Pdu::BindTransmitterResp(BindTransmitterResp::new(sid, v)),
            BindKind::Receiver => Pdu::BindReceiverResp(BindReceiverResp::new(sid, v)),
            BindKind::Transceiver => Pdu::BindTransceiverResp(BindTransceiverResp::new(sid, v)),
        };
        Command::new(CommandStatus::EsmeRok, seq, pdu)
    };
    tokio::time::timeout(Duration::from_secs(5), framed.send(cmd))
        .await
        .map_err(|_| SmppError::PhaseTimeout("bind response"))??;
    Ok(())
}
