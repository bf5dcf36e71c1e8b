//! SMPP 3.4 over TLS: carrier sessions out, carrier binds in (SPEC §5).
pub mod dlr;
pub mod encoding;
