//! The JSON bodies of `https://keyswap.internal`, shared by the server ([`super`]) and its
//! client (`keyswap mcp`). Names, placeholders, patterns and counts only: no type here can
//! hold a secret value or a token.

use serde::{Deserialize, Serialize};

use crate::state::agent_side::{Grant, Refusal};

/// `GET /v1/self`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelfView {
    pub task: String,
    pub policy: Option<String>,
    /// RFC 3339; `None` = never expires.
    pub expires: Option<String>,
    pub expires_in_secs: Option<u64>,
    /// What a request no rule allows gets: `deny`, `ask` or `learn`.
    pub on_unlisted: String,
    /// The task's configured rules, in the order they are matched.
    pub rules: Vec<RuleView>,
    /// Rules added for the task's lifetime by a human's approval of the agent's request.
    pub grants: Vec<RuleView>,
    /// What the agent may ask for (`POST /v1/self/requests`); empty = nothing.
    pub requestable: Vec<BoundView>,
}

/// One rule the task acts under.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleView {
    /// Its index in the task's rules (what the audit names); `None` for a grant.
    pub index: Option<usize>,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// `None` = any method.
    pub methods: Option<Vec<String>>,
    /// `None` = any path.
    pub paths: Option<Vec<String>>,
    /// Passed through without interception: nothing swapped.
    #[serde(default)]
    pub tunnel: bool,
    /// `each` or `once`: a human approves requests it matches.
    pub approve: Option<String>,
    pub secrets: Vec<SecretView>,
    pub budget: Option<BudgetView>,
    /// `N/s`, `N/m` or `N/h`.
    pub rate: Option<String>,
}

/// A secret a rule lets the agent use: what it holds and where exec put it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    pub placeholder: String,
    /// The variable `keyswap exec` sets to the placeholder.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetView {
    pub requests: u64,
    pub used: u64,
    pub left: u64,
}

/// One entry of the task's `requestable:` bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundView {
    pub index: usize,
    pub host: String,
    pub port: u16,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub secrets: Vec<String>,
}

/// `GET /v1/self/refusals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusalsView {
    pub task: String,
    pub refusals: Vec<ExplainedRefusal>,
}

/// One refusal with what would allow it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainedRefusal {
    #[serde(flatten)]
    pub refusal: Refusal,
    /// What would allow it, in words.
    pub to_allow: String,
    /// A grant inside the task's `requestable:` bounds that would allow it: the body of a
    /// `POST /v1/self/requests` (add `secrets` and `why`).
    pub request: Option<Grant>,
}

/// `POST /v1/self/requests`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub host: String,
    /// Default 443.
    pub port: Option<u16>,
    /// Default any (only inside a bound that allows any).
    pub methods: Option<Vec<String>>,
    /// Default any (only inside a bound that allows any).
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Why the agent needs it, in its own words (shown to the human, at most 200 characters).
    pub why: Option<String>,
}

/// A grant request as `POST /v1/self/requests` and `GET /v1/self/requests/{id}` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestView {
    pub id: String,
    /// `pending`, `approved`, `denied`, `timed_out` or `refused`.
    pub status: String,
    pub grant: Grant,
    pub why: Option<String>,
    pub asked_at: String,
    /// A denial's reason from the human, or why it was refused without one.
    pub reason: Option<String>,
    /// Where to poll it.
    pub poll: String,
    /// How long a human has to answer (keyswap's `approval.timeout`).
    pub timeout_secs: u64,
}
