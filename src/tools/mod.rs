//! The tools that ship with the appliance but are not part of it: the
//! `demo` (the whole appliance, a simulated carrier and a webhook sink in
//! one process), the `bench` load generator and the SMPP session benchmark,
//! the simulated carrier (`sim-carrier`), the webhook sink, and test
//! doubles. Still subcommands of the one binary (`main.rs`).
//!
//! Must not be imported by the appliance: the dependency runs from here to
//! the appliance's modules, never back.

pub mod bench;
pub mod demo;
pub mod doubles;
pub mod recording;
pub mod sim;
pub mod sink;
pub mod smpp_bench;

pub use doubles::{AlwaysReady, TempErrorHandler};
pub use recording::RecordingHandler;
pub use sink::{Mode, Sink, SinkError};
