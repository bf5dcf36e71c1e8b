//! SMPP 3.4 over TLS: carrier sessions out, carrier binds in (SPEC §5).
