//! What a request held for a human is ([`Held`], [`Why`]), how a human can answer it
//! ([`Answer`], [`Scope`]), and how the wait ends ([`Outcome`]). The waiting itself is
//! [`crate::state::approvals`]'s.

use keyswap_config::{Approve, Rule, Scheme};

/// The longest human reason text passed on to the agent and the audit log.
pub const MAX_NOTE_CHARS: usize = 200;

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This request only.
    Once,
    /// This exact host, port, method and path, for the task's lifetime.
    Task,
    /// The matched rule on this host (or, for an unlisted request, this host), for the
    /// task's lifetime. Never wider than the host the request went to.
    Rule,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "once" => Some(Scope::Once),
            "task" => Some(Scope::Task),
            "rule" => Some(Scope::Rule),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Task => "task",
            Scope::Rule => "rule",
        }
    }
}

/// A human's answer.
#[derive(Debug, Clone)]
pub enum Answer {
    Approve { scope: Scope, by: String },
    Deny { note: Option<String>, by: String },
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    /// With the human's (sanitised) reason, if they gave one.
    Denied(Option<String>),
    TimedOut,
    TaskEnded,
    QueueFull,
}

/// Why a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No rule allows it and the task's `on_unlisted` is `ask`.
    Unlisted,
    /// The rule it matched has `approve:`.
    Rule(Approve),
    /// The agent asked for a grant inside its `requestable:` bounds (keyswap.internal).
    Grant,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Unlisted => "unlisted",
            Why::Rule(approve) => approve.as_str(),
            Why::Grant => "grant",
        }
    }
}

/// What a held request would do.
#[derive(Debug, Clone)]
pub struct Held {
    pub conn: u64,
    pub method: String,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Normalised; `None` for a CONNECT.
    pub path: Option<String>,
    /// The matched rule (index and its grant key), for `approve:` rules.
    pub rule: Option<(usize, String)>,
    pub secrets: Vec<String>,
    pub why: Why,
    /// A grant request: the agent's own reason, sanitised ([`sanitise_note`]).
    pub agent_why: Option<String>,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no request \"{0}\" is waiting (it was answered, timed out, or its connection or task ended)")]
    Unknown(String),
}

/// A key that names one rule of one config: its position and everything it matches and
/// grants. A reload that changes the rule changes the key, so a grant never carries over to
/// a different rule.
pub fn rule_key(rule: &Rule) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        rule.index, rule.scheme, rule.host, rule.port, rule.methods, rule.paths, rule.secrets
    )
}

/// At most [`MAX_NOTE_CHARS`] characters, control characters replaced by spaces, trimmed;
/// `None` when nothing is left.
pub fn sanitise_note(text: &str) -> Option<String> {
    let cleaned: String = text
        .chars()
        .filter(|c| *c != '\u{feff}')
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_NOTE_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[derive(Debug, Clone)]
pub struct Answered {
    pub id: String,
    pub task: String,
    pub answer: &'static str,
    pub scope: Option<&'static str>,
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_bounded_and_printable() {
        assert_eq!(
            sanitise_note("  not now\r\nX-Injected: 1 "),
            Some("not now  X-Injected: 1".into())
        );
        assert_eq!(sanitise_note("\u{7}\t"), None);
        assert_eq!(
            sanitise_note(&"é".repeat(500)).map(|n| n.chars().count()),
            Some(MAX_NOTE_CHARS)
        );
    }

    #[test]
    fn scopes_parse() {
        for scope in [Scope::Once, Scope::Task, Scope::Rule] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("all"), None);
    }
}
