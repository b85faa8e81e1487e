//! The admin API's JSON bodies, shared by the server ([`super::admin`]) and the CLI client
//! ([`super::client`]). Only [`IssuedTask`] ever carries a token: it is the answer to the
//! one request that creates it. Nothing else here can hold a token or a secret value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The policy the task's rules come from.
    pub policy: String,
    /// e.g. `"30m"`; default: the policy's `ttl`; at most its `max_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Default: `<policy>-<random>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Keep the response open (one JSON line, then a newline every
    /// [`super::admin::LIFELINE_HEARTBEAT`]) and revoke the task when the connection drops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lifeline: bool,
    /// `"exec"` or `"api"` (default), for the audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to `POST /v1/tasks`: the only response that carries a task's token.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedTask {
    pub id: String,
    pub policy: String,
    pub token: String,
    /// `http://ID:TOKEN@host:port`.
    pub proxy_url: String,
    /// RFC 3339.
    pub expires: String,
    /// What the agent's environment needs: proxy variables, CA bundles, placeholders.
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for IssuedTask {
    // Written by hand: the token (also inside proxy_url and env) is never formatted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTask")
            .field("id", &self.id)
            .field("policy", &self.policy)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// One task in `GET /v1/tasks` and `GET /v1/tasks/{id}`: never its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    /// `"config"` or `"runtime"`.
    pub source: String,
    pub policy: Option<String>,
    /// `"exec"`, `"api"` or `"config"`.
    pub issued_by: String,
    pub issued_at: String,
    pub expires: Option<String>,
    pub expired: bool,
    pub open_connections: u64,
    pub requests: u64,
    /// Every rule of the task with a `budget:` or a `rate:`, with its counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<RuleUsageInfo>,
}

/// One limited rule of a task in [`TaskInfo`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleUsageInfo {
    /// Index of the rule in the task's rules (a policy's first, then the task's own).
    pub rule: usize,
    /// What names the rule across reloads: its `id:`, or `scheme://host:port METHODS PATHS`.
    pub key: String,
    /// `budget.requests`, if the rule has a budget.
    pub budget: Option<u64>,
    /// Requests counted on this rule for this task.
    pub used: u64,
    /// `budget - used` (never below zero), if the rule has a budget.
    pub remaining: Option<u64>,
    /// `rate:` as written in canonical form (`5/s`), if the rule has one.
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskInfo>,
}

/// The answer to `DELETE /v1/tasks/{id}`: the task is gone and its connections are closing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    pub id: String,
    pub why: String,
    pub connections_closed: u64,
    pub requests: u64,
}

/// The answer to `POST /v1/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reloaded {
    pub tasks_added: Vec<String>,
    pub tasks_removed: Vec<String>,
    pub tasks_revoked: Vec<String>,
}

/// Every error of the admin API: a reason from a closed set and a message for a person.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub reason: String,
    pub message: String,
}
