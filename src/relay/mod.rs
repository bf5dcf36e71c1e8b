//! The relay: authorisation, 10DLC limits, routing, opt-outs. Arrives with the send-path issue.
