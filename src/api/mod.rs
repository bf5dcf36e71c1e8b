//! HTTPS API for client applications (SPEC §4).
