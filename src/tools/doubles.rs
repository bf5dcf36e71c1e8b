//! Test doubles of the appliance's seams that only tests use.

use futures::future::BoxFuture;
use rusmpp::CommandStatus;

use crate::api::Readiness;
use crate::smpp::{InboundHandler, InboundMessage};

/// Always ready (`/readyz` answers 200): an API started without a relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Answers `ESME_RX_T_APPN` (temporary application error) to everything, so
/// a carrier keeps MO and receipts queued: a pool or session without a
/// relay behind it.
#[derive(Debug, Default, Clone, Copy)]
pub struct TempErrorHandler;

impl InboundHandler for TempErrorHandler {
    fn deliver<'a>(&'a self, _link: &'a str, msg: InboundMessage) -> BoxFuture<'a, CommandStatus> {
        drop(msg);
        Box::pin(async { CommandStatus::EsmeRxTAppn })
    }
}
