//! The message's state machine: its status ([`MessageStatus`]), how the
//! states of its segments' receipts decide it ([`MessageStatus::overall`],
//! [`MessageStatus::settled`]), and the state of an idempotency key
//! ([`IdempotencyState`]).
//!
//! Owns: every transition rule; the receipt path (`inbound`), the receipt
//! rules (`settle`) and the send path ask here. The wire and stored names
//! are the lowercase variant names (`accepted`, `delivered`, …; `pending`,
//! `done`), unchanged from when they were strings.

use serde::{Deserialize, Serialize};

/// Lifecycle state of a message (SPEC §4). A segment's final receipt
/// state is one of these too (a message's `part_states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Accepted,
    Delivered,
    Undeliverable,
    Expired,
    Rejected,
    Failed,
    Unknown,
}

impl MessageStatus {
    const ALL: [MessageStatus; 7] = [
        MessageStatus::Accepted,
        MessageStatus::Delivered,
        MessageStatus::Undeliverable,
        MessageStatus::Expired,
        MessageStatus::Rejected,
        MessageStatus::Failed,
        MessageStatus::Unknown,
    ];

    /// The wire and stored name (`accepted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Accepted => "accepted",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undeliverable => "undeliverable",
            MessageStatus::Expired => "expired",
            MessageStatus::Rejected => "rejected",
            MessageStatus::Failed => "failed",
            MessageStatus::Unknown => "unknown",
        }
    }

    /// A stored or forwarded name; an unrecognised one is `Unknown`.
    pub fn parse(s: &str) -> MessageStatus {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .unwrap_or(MessageStatus::Unknown)
    }

    /// Whether the message has left `accepted` for good (delivered, a
    /// failure, or settled as `unknown`); a settled message is not settled
    /// again.
    pub fn is_final(self) -> bool {
        self != MessageStatus::Accepted
    }

    /// A failure: the first such segment state decides the message.
    fn is_failure(self) -> bool {
        matches!(
            self,
            MessageStatus::Undeliverable
                | MessageStatus::Expired
                | MessageStatus::Rejected
                | MessageStatus::Failed
        )
    }

    /// The overall status of a message from its segments' final receipts:
    /// the first failure, else `delivered` once every segment is; `None`
    /// while undecided.
    pub fn overall(parts: &[Option<MessageStatus>]) -> Option<MessageStatus> {
        if let Some(f) = parts.iter().flatten().find(|p| p.is_failure()) {
            return Some(*f);
        }
        if !parts.is_empty() && parts.iter().all(|p| *p == Some(MessageStatus::Delivered)) {
            return Some(MessageStatus::Delivered);
        }
        None
    }

    /// The final status of a message whose receipts stopped coming: its
    /// segments with a state decide; with none, `unknown`.
    pub fn settled(parts: &[Option<MessageStatus>]) -> MessageStatus {
        let known: Vec<Option<MessageStatus>> =
            parts.iter().filter(|p| p.is_some()).copied().collect();
        if known.is_empty() {
            return MessageStatus::Unknown;
        }
        Self::overall(&known).unwrap_or(MessageStatus::Unknown)
    }
}

/// Where an idempotency key's record is: claimed (`pending`, the first
/// attempt's outcome not recorded yet) or `done` (the outcome to replay is
/// recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyState {
    Pending,
    Done,
}

#[cfg(test)]
mod tests {
    use super::MessageStatus as S;

    #[test]
    fn delivered_only_when_every_part_is() {
        assert_eq!(S::overall(&[Some(S::Delivered), None]), None);
        assert_eq!(
            S::overall(&[Some(S::Delivered), Some(S::Delivered)]),
            Some(S::Delivered)
        );
        assert_eq!(
            S::overall(&[Some(S::Delivered), Some(S::Undeliverable)]),
            Some(S::Undeliverable)
        );
        assert_eq!(S::overall(&[None, Some(S::Expired)]), Some(S::Expired));
    }

    #[test]
    fn the_segments_with_a_state_decide_a_settled_message() {
        assert_eq!(S::settled(&[Some(S::Delivered), None]), S::Delivered);
        assert_eq!(S::settled(&[None, Some(S::Delivered), None]), S::Delivered);
        assert_eq!(S::settled(&[None, None]), S::Unknown);
        assert_eq!(S::settled(&[]), S::Unknown);
        assert_eq!(
            S::settled(&[Some(S::Delivered), Some(S::Expired), None]),
            S::Expired
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_unknown() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(S::parse("unknown_receipt"), S::Unknown);
        assert!(!S::Accepted.is_final());
        assert!(S::Unknown.is_final());
    }
}
