//! Service lifecycle: signals, systemd notify, drain, process hardening.
