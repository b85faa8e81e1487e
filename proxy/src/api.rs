//! The admin API's JSON bodies, shared by the server ([`crate::admin`]) and the CLI client
//! ([`crate::admin::client`]). Only [`IssuedTask`] ever carries a token: it is the answer to the
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
    /// Where the agent reaches the proxy, when not at the proxy's own `listen` address: a
    /// sandboxed `keyswap exec` serves the agent on a listener inside its network namespace.
    /// Only the returned environment's proxy variables use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_addr: Option<std::net::SocketAddr>,
    /// `keyswap exec` sandboxes the command as the user with this home: answer with the paths
    /// the sandbox must hide (the proxy's config names them, relative to the proxy's own
    /// working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxFor>,
}

/// Whose sandbox [`IssueRequest::sandbox`] asks about.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxFor {
    /// The home directory `~/` paths and the default credential stores are under.
    pub home: std::path::PathBuf,
    /// `$XDG_RUNTIME_DIR` of that user's session, hidden whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<std::path::PathBuf>,
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
    /// The proxy's own explicit listener (what a sandboxed `keyswap exec` relays its agent's
    /// connections to when the environment points at a listener inside the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// What the sandbox hides and makes read-only, when the request asked
    /// ([`IssueRequest::sandbox`]). Paths only, absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<keyswap_config::SandboxPaths>,
    /// The names of the variables the proxy's config reads a credential from (secrets'
    /// `from_env`, tasks' `token_env`, `admin.token_env`): `keyswap exec` removes them from
    /// the command's environment. Names only, never a value; absent from an older proxy.
    #[serde(default)]
    pub withheld_env: Vec<String>,
}

impl std::fmt::Debug for IssuedTask {
    // Written by hand: the token (also inside proxy_url and env) is never formatted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTask")
            .field("id", &self.id)
            .field("policy", &self.policy)
            .field("expires", &self.expires)
            .field("withheld_env", &self.withheld_env)
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
    /// The task is in learn mode (`on_unlisted: learn`): what no rule allows is forwarded
    /// without secrets and recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learning: bool,
    /// Every rule of the task with a `budget:` or a `rate:`, with its counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<RuleUsageInfo>,
    /// The credentials minted for the task (credential leases), never a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<LeaseInfo>,
    /// In a fleet (`store:`): the replicas holding the task's open connections, each with
    /// how many (this replica's count is live, the others' at most a few seconds old).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub replicas: std::collections::BTreeMap<String, u64>,
}

/// One credential lease of a task in [`TaskInfo`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    pub secret: String,
    pub minted: String,
    pub expires: String,
    /// The last 4 hex digits of the SHA-256 of the credential.
    pub fingerprint: String,
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

/// One request waiting for a human, in `GET /v1/approvals`: what it would do, never a
/// secret value or a header value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalInfo {
    pub id: String,
    pub task: String,
    pub policy: Option<String>,
    /// `CONNECT` for a tunnel to a host no rule lists.
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The normalised path (`None` for a CONNECT).
    pub path: Option<String>,
    /// The rule with `approve:` that matched; `None` for a request no rule allows.
    pub rule: Option<usize>,
    /// `each` or `once` for a rule's `approve:`; `unlisted` for `on_unlisted: ask`.
    pub why: String,
    /// Names of the secrets the request would have swapped in if approved.
    pub secrets: Vec<String>,
    /// `why: grant`: the agent's own reason for asking (sanitised, at most 200 characters).
    /// Shown as the agent's words, never as keyswap's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_why: Option<String>,
    /// In a fleet (`store:`), the replica whose connection the request waits on, when it is
    /// another one than the replica that listed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// RFC 3339.
    pub waiting_since: String,
    pub waited_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalList {
    pub approvals: Vec<ApprovalInfo>,
}

/// `POST /v1/approvals/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// `"approve"` or `"deny"`.
    pub answer: String,
    /// Approvals only: `"once"` (default: this request), `"task"` (this exact host, method
    /// and path for the task's lifetime) or `"rule"` (the matched rule — or, for a request
    /// no rule allows, its host — for the task's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Denials only: told to the agent and audited (at most 200 printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `POST /v1/approvals/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answered {
    pub id: String,
    pub task: String,
    pub answer: String,
    pub scope: Option<String>,
    /// Who answered, as audited: `uid:N` (admin socket) or `token:NAME` (TCP listener).
    pub by: String,
}
