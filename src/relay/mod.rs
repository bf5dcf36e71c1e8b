//! The relay: what happens between a client's request and a carrier's
//! session — authorisation on campaigns and sender numbers, 10DLC limits,
//! opt-out checks, routing to a carrier pool, and the metadata record.
//!
//! Must not know: HTTP or SMPP wire details (the API and the SMPP engine
//! translate), and never keeps a body beyond the request.

pub(crate) mod consent;
pub(crate) mod domain;
pub(crate) mod error;
pub(crate) mod inbound;
pub(crate) mod inflight;
pub(crate) mod limits;
pub mod reassembly;
pub(crate) mod recent;
pub(crate) mod record;
pub(crate) mod route;
pub(crate) mod settle;
pub(crate) mod status;

pub(crate) mod service;

pub use domain::{ClientId, MessageStatus, SendAccepted, SendRequest};
pub use error::SendError;
pub use service::Relay;
