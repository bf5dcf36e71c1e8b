//! The keyword class of an MO text (CTIA opt-out, opt-in and help words).
//!
//! Owns: [`KeywordClass`] and [`keyword`], used by the relay on every MO
//! and by the config check (a campaign's opt-in keyword must not be one of
//! these).

/// What an MO was, without what it said (SPEC §6: keyword class only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordClass {
    /// STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT.
    Stop,
    /// START, UNSTOP.
    Start,
    /// HELP.
    Help,
    /// Anything else (relayed to the client's webhook).
    Other,
}

impl KeywordClass {
    /// The record form: `stop`, `start`, `help`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeywordClass::Stop => "stop",
            KeywordClass::Start => "start",
            KeywordClass::Help => "help",
            KeywordClass::Other => "other",
        }
    }
}

/// The keyword class of an MO text: the whole text, any case, surrounding
/// spaces and punctuation ignored.
pub fn keyword(text: &str) -> KeywordClass {
    let word = text.trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation());
    let upper = word.to_ascii_uppercase();
    match upper.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "REVOKE" | "OPTOUT" => {
            KeywordClass::Stop
        }
        "START" | "UNSTOP" => KeywordClass::Start,
        "HELP" => KeywordClass::Help,
        _ => KeywordClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::{keyword, KeywordClass};

    #[test]
    fn keywords_alone_any_case_punctuation_ignored() {
        for w in [
            "STOP",
            "stop",
            " Stop! ",
            "stopall",
            "UNSUBSCRIBE",
            "cancel",
            "End.",
            "quit",
            "revoke",
            "OptOut",
        ] {
            assert_eq!(keyword(w), KeywordClass::Stop, "{w}");
        }
        assert_eq!(keyword("start"), KeywordClass::Start);
        assert_eq!(keyword("UNSTOP"), KeywordClass::Start);
        assert_eq!(keyword("help?"), KeywordClass::Help);
        assert_eq!(keyword("please stop texting me"), KeywordClass::Other);
        assert_eq!(keyword("STOP STOP"), KeywordClass::Other);
    }
}
