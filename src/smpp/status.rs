//! SMPP command statuses by name, and how the relay should treat each.
//!
//! Owns: the one table from [`CommandStatus`] to its SMPP spec name
//! (`ESME_RINVDSTADR`) and the classification of statuses into "slow down and
//! retry", "temporary" and "permanent". Names come from this fixed table, so
//! they are safe as metric labels; an unknown code is `OTHER` in labels and
//! `0x%08X` in error text.
//!
//! Also the one mapping from a handler's [`InboundOutcome`] to the status
//! its `_resp` carries.
//!
//! Must not know: sessions, sockets, messages.

use std::borrow::Cow;

use rusmpp::CommandStatus;

use super::handler::{InboundOutcome, Refusal};

/// The SMPP name of a status, e.g. `ESME_RTHROTTLED`; unknown codes as hex.
pub fn status_name(status: CommandStatus) -> Cow<'static, str> {
    match status_label(status) {
        "OTHER" => Cow::Owned(format!("0x{:08X}", u32::from(status))),
        name => Cow::Borrowed(name),
    }
}

/// A bounded metric label for a status: its SMPP name, or `OTHER`.
pub fn status_label(status: CommandStatus) -> &'static str {
    use CommandStatus as S;
    match status {
        S::EsmeRok => "ESME_ROK",
        S::EsmeRinvmsglen => "ESME_RINVMSGLEN",
        S::EsmeRinvcmdlen => "ESME_RINVCMDLEN",
        S::EsmeRinvcmdid => "ESME_RINVCMDID",
        S::EsmeRinvbndsts => "ESME_RINVBNDSTS",
        S::EsmeRalybnd => "ESME_RALYBND",
        S::EsmeRinvprtflg => "ESME_RINVPRTFLG",
        S::EsmeRinvregdlvflg => "ESME_RINVREGDLVFLG",
        S::EsmeRsyserr => "ESME_RSYSERR",
        S::EsmeRinvsrcadr => "ESME_RINVSRCADR",
        S::EsmeRinvdstadr => "ESME_RINVDSTADR",
        S::EsmeRinvmsgid => "ESME_RINVMSGID",
        S::EsmeRbindfail => "ESME_RBINDFAIL",
        S::EsmeRinvpaswd => "ESME_RINVPASWD",
        S::EsmeRinvsysid => "ESME_RINVSYSID",
        S::EsmeRcancelfail => "ESME_RCANCELFAIL",
        S::EsmeRreplacefail => "ESME_RREPLACEFAIL",
        S::EsmeRmsgqful => "ESME_RMSGQFUL",
        S::EsmeRinvsertyp => "ESME_RINVSERTYP",
        S::EsmeRinvnumdests => "ESME_RINVNUMDESTS",
        S::EsmeRinvdlname => "ESME_RINVDLNAME",
        S::EsmeRinvdestflag => "ESME_RINVDESTFLAG",
        S::EsmeRinvsubrep => "ESME_RINVSUBREP",
        S::EsmeRinvesmclass => "ESME_RINVESMCLASS",
        S::EsmeRcntsubdl => "ESME_RCNTSUBDL",
        S::EsmeRsubmitfail => "ESME_RSUBMITFAIL",
        S::EsmeRinvsrcton => "ESME_RINVSRCTON",
        S::EsmeRinvsrcnpi => "ESME_RINVSRCNPI",
        S::EsmeRinvdstton => "ESME_RINVDSTTON",
        S::EsmeRinvdstnpi => "ESME_RINVDSTNPI",
        S::EsmeRinvsystyp => "ESME_RINVSYSTYP",
        S::EsmeRinvrepflag => "ESME_RINVREPFLAG",
        S::EsmeRinvnummsgs => "ESME_RINVNUMMSGS",
        S::EsmeRthrottled => "ESME_RTHROTTLED",
        S::EsmeRinvsched => "ESME_RINVSCHED",
        S::EsmeRinvexpiry => "ESME_RINVEXPIRY",
        S::EsmeRinvdftmsgid => "ESME_RINVDFTMSGID",
        S::EsmeRxTAppn => "ESME_RX_T_APPN",
        S::EsmeRxPAppn => "ESME_RX_P_APPN",
        S::EsmeRxRAppn => "ESME_RX_R_APPN",
        S::EsmeRqueryfail => "ESME_RQUERYFAIL",
        S::EsmeRinvtlvstream => "ESME_RINVTLVSTREAM",
        S::EsmeRtlvnotallwd => "ESME_RTLVNOTALLWD",
        S::EsmeRinvtlvlen => "ESME_RINVTLVLEN",
        S::EsmeRmissingtlv => "ESME_RMISSINGTLV",
        S::EsmeRinvtlvval => "ESME_RINVTLVVAL",
        S::EsmeRdeliveryfailure => "ESME_RDELIVERYFAILURE",
        S::EsmeRunknownerr => "ESME_RUNKNOWNERR",
        S::EsmeRsertypunauth => "ESME_RSERTYPUNAUTH",
        S::EsmeRprohibited => "ESME_RPROHIBITED",
        S::EsmeRsertypunavail => "ESME_RSERTYPUNAVAIL",
        S::EsmeRsertypdenied => "ESME_RSERTYPDENIED",
        S::EsmeRinvdcs => "ESME_RINVDCS",
        S::EsmeRinvsrcaddrsubunit => "ESME_RINVSRCADDRSUBUNIT",
        S::EsmeRinvdstaddrsubunit => "ESME_RINVDSTADDRSUBUNIT",
        S::EsmeRinvbcastfreqint => "ESME_RINVBCASTFREQINT",
        S::EsmeRinvbcastaliasName => "ESME_RINVBCASTALIAS_NAME",
        S::EsmeRinvbcastareafmt => "ESME_RINVBCASTAREAFMT",
        S::EsmeRinvnumbcastAreas => "ESME_RINVNUMBCAST_AREAS",
        S::EsmeRinvbcastcnttype => "ESME_RINVBCASTCNTTYPE",
        S::EsmeRinvbcastmsgclass => "ESME_RINVBCASTMSGCLASS",
        S::EsmeRbcastfail => "ESME_RBCASTFAIL",
        S::EsmeRbcastqueryfail => "ESME_RBCASTQUERYFAIL",
        S::EsmeRbcastcancelfail => "ESME_RBCASTCANCELFAIL",
        S::EsmeRinvbcastRep => "ESME_RINVBCAST_REP",
        S::EsmeRinvbcastsrvgrp => "ESME_RINVBCASTSRVGRP",
        S::EsmeRinvbcastchanind => "ESME_RINVBCASTCHANIND",
        S::Other(_) => "OTHER",
    }
}

/// Statuses that mean "the carrier is busy": pause the session, retry the PDU.
pub fn is_slow_down(status: CommandStatus) -> bool {
    matches!(
        status,
        CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful
    )
}

/// Statuses after which sending the same PDU again later may succeed.
pub fn is_temporary(status: CommandStatus) -> bool {
    is_slow_down(status)
        || matches!(
            status,
            CommandStatus::EsmeRsyserr | CommandStatus::EsmeRxTAppn
        )
}

/// A bounded metric label for a command id (`submit_sm`, `deliver_sm_resp`, …).
pub fn command_label(id: rusmpp::CommandId) -> &'static str {
    use rusmpp::CommandId as C;
    match id {
        C::BindReceiver => "bind_receiver",
        C::BindTransmitter => "bind_transmitter",
        C::QuerySm => "query_sm",
        C::SubmitSm => "submit_sm",
        C::DeliverSm => "deliver_sm",
        C::Unbind => "unbind",
        C::ReplaceSm => "replace_sm",
        C::CancelSm => "cancel_sm",
        C::BindTransceiver => "bind_transceiver",
        C::Outbind => "outbind",
        C::EnquireLink => "enquire_link",
        C::SubmitMulti => "submit_multi",
        C::AlertNotification => "alert_notification",
        C::DataSm => "data_sm",
        C::BroadcastSm => "broadcast_sm",
        C::QueryBroadcastSm => "query_broadcast_sm",
        C::CancelBroadcastSm => "cancel_broadcast_sm",
        C::GenericNack => "generic_nack",
        C::BindReceiverResp => "bind_receiver_resp",
        C::BindTransmitterResp => "bind_transmitter_resp",
        C::QuerySmResp => "query_sm_resp",
        C::SubmitSmResp => "submit_sm_resp",
        C::DeliverSmResp => "deliver_sm_resp",
        C::UnbindResp => "unbind_resp",
        C::ReplaceSmResp => "replace_sm_resp",
        C::CancelSmResp => "cancel_sm_resp",
        C::BindTransceiverResp => "bind_transceiver_resp",
        C::EnquireLinkResp => "enquire_link_resp",
        C::SubmitMultiResp => "submit_multi_resp",
        C::DataSmResp => "data_sm_resp",
        C::BroadcastSmResp => "broadcast_sm_resp",
        C::QueryBroadcastSmResp => "query_broadcast_sm_resp",
        C::CancelBroadcastSmResp => "cancel_broadcast_sm_resp",
        C::Other(_) => "other",
    }
}

impl InboundOutcome {
    /// The status the peer gets in the message's `_resp`.
    pub fn command_status(self) -> CommandStatus {
        match self {
            InboundOutcome::Taken | InboundOutcome::Held => CommandStatus::EsmeRok,
            InboundOutcome::RetryLater => CommandStatus::EsmeRxTAppn,
            InboundOutcome::Refused(Refusal::BadSource) => CommandStatus::EsmeRinvsrcadr,
            InboundOutcome::Refused(Refusal::UnknownDestination) => CommandStatus::EsmeRinvdstadr,
            InboundOutcome::Refused(Refusal::Undecodable) => CommandStatus::EsmeRxPAppn,
            InboundOutcome::Refused(Refusal::TooLong) => CommandStatus::EsmeRinvmsglen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert_eq!(
            status_name(CommandStatus::EsmeRinvdstadr),
            "ESME_RINVDSTADR"
        );
        assert_eq!(status_name(CommandStatus::EsmeRxTAppn), "ESME_RX_T_APPN");
        assert_eq!(status_name(CommandStatus::Other(0x400)), "0x00000400");
        assert_eq!(status_label(CommandStatus::Other(0x400)), "OTHER");
    }
}
