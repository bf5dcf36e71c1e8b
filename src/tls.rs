//! TLS configuration for every listener and outbound connection (rustls).
