//! Tamper-evident audit log (SPEC §6). Arrives with its own issue.
