//! Signed webhooks to client applications. Arrives with the return-path issue.
