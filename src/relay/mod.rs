//! The relay: what happens between a client's request and a carrier's
//! session — authorisation on campaigns and sender numbers, 10DLC limits,
//! opt-out checks, routing to a carrier pool, and the metadata record.
//!
//! Must not know: HTTP or SMPP wire details (the API and the SMPP engine
//! translate), and never keeps a body beyond the request.

pub mod consent;
pub mod domain;
pub mod error;
pub mod inbound;
pub mod inflight;
pub mod limits;
pub mod reassembly;
pub mod recent;
pub mod record;
pub mod route;
pub mod settle;
pub mod status;

pub mod service;

pub use domain::{ClientId, MessageStatus, SendAccepted, SendRequest};
pub use error::SendError;
pub use service::Relay;
