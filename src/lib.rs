//! sms-conduit: a carrier-edge SMS relay that is a HIPAA conduit.
//!
//! The module tree follows a message: [`api`] (clients in, HTTPS) →
//! [`relay`] (decide, limit, route) → [`smpp`] (carriers out and in) →
//! [`webhook`] (clients out), with [`store`], [`audit`], [`config`],
//! [`metrics`], [`tls`], [`service`] and [`text`] (SMS encodings) beside
//! them. [`tools`] (demo, bench, simulated carrier, webhook sink, test
//! doubles) use the appliance and are not part of it; they are built with the
//! `tools` cargo feature (on by default). See `ARCHITECTURE.md`.

pub mod api;
pub mod app;
pub mod audit;
pub mod backup;
pub mod config;
pub(crate) mod deadline;
pub(crate) mod live;
pub mod metrics;
pub mod preflight;
pub mod relay;
pub mod service;
pub mod smpp;
pub mod store;
pub mod text;
pub mod tls;
#[cfg(feature = "tools")]
pub mod tools;
pub mod types;
pub mod webhook;
