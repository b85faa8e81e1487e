//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every field is optional and [`Located`], so that a missing or wrong field is reported by
//! validation with its position instead of aborting the load, and every struct denies
//! unknown fields. These types hold no secret values (only where to read them from) and are
//! never seen outside this crate: the proxy uses [`crate::model`].
//!
//! They also generate the config's JSON Schema (`keyswap schema`): each type derives
//! `JsonSchema` next to `Deserialize`, and its doc comments become the descriptions editors
//! show. A doc comment here is written for the person editing `keyswap.yaml`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::read::{Entries, Located};

pub(crate) type L<T> = Located<T>;

/// keyswap's config file (`keyswap.yaml`), version 1.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(title = "keyswap config")]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// The config format's version: 1 (required).
    pub version: Option<L<u64>>,
    /// Where the proxy listens, ip:port (default 127.0.0.1:8080).
    pub listen: Option<L<String>>,
    /// Directory of keyswap's CA (ca.pem, ca-key.pem), created on first run (default ./.keyswap/ca).
    pub ca_dir: Option<L<String>>,
    /// The audit log (JSON lines), "-" for stdout (default ./.keyswap/audit.jsonl).
    pub audit_log: Option<L<String>>,
    /// Directory of keyswap's own state (the lease state file), created 0700, hidden from exec's sandbox (default: `state` beside ca_dir, ./.keyswap/state).
    pub state_dir: Option<L<String>>,
    /// The audit log's hash chain: an optional HMAC key (`audit.key_file`).
    pub audit: Option<L<RawAudit>>,
    /// How keyswap reaches upstream servers.
    pub upstream: Option<L<RawUpstream>>,
    /// Real credentials by name: where each is read from and the placeholder agents hold.
    pub secrets: Option<L<Entries<L<RawSecret>>>>,
    /// A directory whose *.yaml files are one task each (the body of a task entry; id = file stem).
    pub tasks_dir: Option<L<String>>,
    /// Tasks by id: who may use the proxy, and for what.
    pub tasks: Option<L<Entries<L<RawTask>>>>,
    /// Named allowlists that tasks issued at runtime (keyswap exec, task issue) are made from.
    pub policies: Option<L<Entries<L<RawPolicy>>>>,
    /// The admin API (HTTP over a unix socket, optionally TCP).
    pub admin: Option<L<RawAdmin>>,
    /// Prometheus metrics and /healthz.
    pub metrics: Option<L<RawMetrics>>,
    /// The listener iptables/nftables REDIRECT sends agents' outbound TCP to.
    pub transparent: Option<L<RawTransparent>>,
    /// How requests that wait for a human are held (`approval:`).
    pub approval: Option<L<RawApproval>>,
    /// What `keyswap exec`'s sandbox hides from the command, besides what it always hides.
    pub sandbox: Option<L<RawSandbox>>,
    /// How much of keyswap one task and one agent connection may hold at once.
    pub limits: Option<L<RawLimits>>,
    /// State shared by several keyswap replicas (tasks, revocations), in Redis.
    pub store: Option<L<crate::store::RawStore>>,
}

/// `limits:`: fair use of keyswap's connections among tasks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Bounds on each task, whatever the number of its connections.
    pub per_task: Option<L<RawTaskLimits>>,
    /// Bounds on each agent connection.
    pub per_connection: Option<L<RawConnectionLimits>>,
}

/// `limits.per_task:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTaskLimits {
    /// Upstream connections (and tunnels, WebSockets) one task may hold at once (default 32);
    /// more wait briefly, then are refused with task_busy.
    pub upstream_connections: Option<L<u64>>,
    /// Requests of one task in flight at once, from decision to the end of the response
    /// (default 64); more wait briefly, then are refused with task_busy.
    pub in_flight: Option<L<u64>>,
}

/// `limits.per_connection:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnectionLimits {
    /// HTTP/2 streams one agent connection may have open at once (default 100).
    pub h2_streams: Option<L<u64>>,
}

/// `sandbox:`: paths for `keyswap exec`'s sandbox. A path is absolute, relative to the
/// working directory (like every path here), or `~/...` (the home of the user the command
/// runs as).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    /// More paths the command must not see (a file reads as empty, a directory is empty).
    pub hide: Option<L<Vec<L<String>>>>,
    /// Take these out of the default list of hidden credential stores (~/.ssh, ~/.aws,
    /// ~/.npmrc, ...): a store equal to or inside an entry stays visible. Never unhides what
    /// keyswap itself always hides (secret files, the CA key, the admin socket, the audit log).
    pub expose: Option<L<Vec<L<String>>>>,
    /// Paths the command may read but not change.
    pub read_only: Option<L<Vec<L<String>>>>,
}

/// `upstream:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// A PEM file of CA certificates trusted besides the built-in (Mozilla) roots.
    pub extra_roots: Option<L<String>>,
    /// "host:port" to "ip:port", like curl --resolve; these addresses are always allowed.
    pub resolve: Option<L<Entries<L<String>>>>,
    /// Dial loopback, private and link-local addresses (default false).
    pub allow_private: Option<L<bool>>,
    /// A parent (corporate) proxy every upstream connection goes through, but no_proxy hosts.
    pub proxy: Option<L<RawParentProxy>>,
}

/// `upstream.proxy:`: the parent proxy keyswap's upstream leg goes through.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParentProxy {
    /// scheme://host:port with scheme http, https (TLS to the proxy), socks5h (the proxy resolves names) or socks5.
    pub url: Option<L<String>>,
    /// An environment variable holding user:password for the parent proxy (never logged).
    pub auth_env: Option<L<String>>,
    /// Hosts dialled directly: ".corp.example" (it and its subdomains), exact names, IPs, CIDRs ("10.0.0.0/8").
    pub no_proxy: Option<L<Vec<L<String>>>>,
}

/// One entry of `secrets:` (the key is the secret's name).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    /// Read the value from this environment variable (exactly one of from_env, from_file, from_command).
    pub from_env: Option<L<String>>,
    /// Read the value from this file.
    pub from_file: Option<L<String>>,
    /// Read the value from this program's output: [program, args...].
    pub from_command: Option<L<Vec<L<String>>>>,
    /// The stand-in the agent holds: 8 to 256 visible ASCII characters, unique.
    pub placeholder: Option<L<String>>,
    /// The variable keyswap exec sets to the placeholder.
    pub env: Option<L<String>>,
    /// from_file / from_command: re-read the value when it is older than this (e.g. 15m).
    pub refresh: Option<L<String>>,
    /// The only headers this secret is swapped into (default any).
    pub headers: Option<L<Vec<L<String>>>>,
    /// An AWS key pair requests are re-signed with (SigV4) instead of a value to swap; then
    /// placeholder (optional) is the access key id the agent holds.
    pub aws: Option<L<crate::aws::RawAws>>,
    /// Lease sources (instead of from_*): a GitHub App installation token minted per task.
    pub github_app: Option<L<crate::lease_sources::RawGithubApp>>,
    /// Lease sources (instead of from_*): an OAuth2 access token minted per task from a refresh token.
    pub oauth2: Option<L<crate::lease_sources::RawOauth2>>,
}

/// One task: an entry of `tasks:` or the whole body of a file in `tasks_dir`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTask {
    /// The variable holding the task's proxy password (at least 16 bytes).
    pub token_env: Option<L<String>>,
    /// RFC 3339 time after which every request of the task is refused.
    pub expires: Option<L<String>>,
    /// A policy whose rules come first, before this task's allow.
    pub policy: Option<L<String>>,
    /// deny (default), ask (hold a request no rule allows until a human answers) or learn
    /// (forward it without any secret and record it for `keyswap learn`).
    pub on_unlisted: Option<L<RawOnUnlisted>>,
    pub allow: Option<L<Vec<L<RawRule>>>>,
    /// What the task's agent may ask for at runtime (instead of its policy's bounds); a
    /// human approves each request.
    pub requestable: Option<L<Vec<L<RawRequestable>>>>,
}

/// One entry of `policies:` (the key is the policy's name).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// Lifetime of a task issued without --ttl (default 1h).
    pub ttl: Option<L<String>>,
    /// The longest --ttl accepted (default 24h, never below ttl).
    pub max_ttl: Option<L<String>>,
    /// deny (default), ask (hold a request no rule allows until a human answers) or learn
    /// (forward it without any secret and record it for `keyswap learn`).
    pub on_unlisted: Option<L<RawOnUnlisted>>,
    pub allow: Option<L<Vec<L<RawRule>>>>,
    /// What its tasks' agents may ask for at runtime (POST https://keyswap.internal/v1/self/requests);
    /// a human approves each request. Absent: every request is refused.
    pub requestable: Option<L<Vec<L<RawRequestable>>>>,
    /// What the installation tokens of github_app secrets are narrowed to for this policy's tasks.
    pub github: Option<L<crate::lease_sources::RawPolicyGithub>>,
    /// What the access tokens of oauth2 secrets are narrowed to for this policy's tasks.
    pub oauth2: Option<L<crate::lease_sources::RawPolicyOauth2>>,
    /// What the STS sessions of aws assume_role secrets are narrowed to for this policy's tasks.
    pub aws: Option<L<crate::aws::RawPolicyAws>>,
}

/// One entry of `requestable:`: the bound of what an agent may ask for.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestable {
    /// Exact name or "*.example.com": the hosts that may be asked for.
    pub host: Option<L<String>>,
    /// The port (default 443).
    pub port: Option<L<u64>>,
    /// The methods that may be asked for (default any).
    pub methods: Option<L<Vec<L<String>>>>,
    /// Path patterns that may be asked for, or narrowed (default any).
    pub paths: Option<L<Vec<L<String>>>>,
    /// Secrets that may be asked for.
    pub secrets: Option<L<Vec<L<String>>>>,
}

/// `admin:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// The admin API's unix socket, mode 0600 (default ./.keyswap/admin.sock).
    pub socket: Option<L<String>>,
    /// Optional TCP listener, ip:port (sidecars); requires token_env.
    pub listen: Option<L<String>>,
    /// The variable holding the TCP listener's bearer token (at least 16 bytes).
    pub token_env: Option<L<String>>,
}

/// `audit:`: how the audit log is chained.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    /// A file holding an HMAC key (at least 32 bytes): the chain is keyed with it.
    pub key_file: Option<L<String>>,
}

/// `metrics:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    /// GET /metrics (Prometheus) and GET /healthz on ip:port.
    pub listen: Option<L<String>>,
}

/// `transparent:`: the listener that iptables/nftables REDIRECT sends agents' TCP to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransparent {
    /// "ip:port" where redirected connections arrive (a change needs a restart).
    pub listen: Option<L<String>>,
    /// The task every redirected connection belongs to (one agent per proxy).
    pub task: Option<L<String>>,
    /// Source address or CIDR to task id (several agents behind one proxy).
    pub sources: Option<L<Entries<L<String>>>>,
    /// Original destination port to how it is read: tls (SNI names the target) or http
    /// (the Host header does). Any other port is refused.
    pub ports: Option<L<Entries<L<RawPortMode>>>>,
}

/// How a transparent connection to one original destination port is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawPortMode {
    Tls,
    Http,
}

/// One element of a task's or a policy's `allow:` list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    /// Exact name, IP literal, or "*.example.com" (one or more labels).
    pub host: Option<L<String>>,
    /// Default 443 for https, 80 for http.
    pub port: Option<L<u64>>,
    /// HTTP methods (default any).
    pub methods: Option<L<Vec<L<String>>>>,
    /// Path patterns (default any): "*" one segment, "**" any rest.
    pub paths: Option<L<Vec<L<String>>>>,
    /// Secrets whose placeholders may be swapped on matching requests.
    pub secrets: Option<L<Vec<L<String>>>>,
    /// Pass through without interception: no swap, no scrub.
    pub tunnel: Option<L<bool>>,
    /// Where to swap: headers (default), query, body.
    pub swap_in: Option<L<Vec<L<RawSwapIn>>>>,
    /// The only headers placeholders are swapped into on this rule (default any).
    pub headers: Option<L<Vec<L<String>>>>,
    /// https (default) or http; port: 80 alone also means http.
    pub scheme: Option<L<RawScheme>>,
    /// Required to grant a secret on a plain-HTTP rule.
    pub allow_cleartext: Option<L<bool>>,
    /// each or once: a human must approve requests this rule matches (every one, or once per task).
    pub approve: Option<L<RawApprove>>,
    /// A name for this rule that keeps its budget count across reloads (default: derived
    /// from what the rule matches).
    pub id: Option<L<String>>,
    /// At most this many requests per task over its lifetime: {requests: N}.
    pub budget: Option<L<RawBudget>>,
    /// A token bucket per task and rule: N/s, N/m or N/h (burst = one second's worth).
    pub rate: Option<L<String>>,
}

/// `budget:` of a rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    /// The most requests a task may make through this rule.
    pub requests: Option<L<u64>>,
}

/// `scheme:` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawScheme {
    Http,
    Https,
}

/// One word of `swap_in:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSwapIn {
    Headers,
    Query,
    Body,
}

/// `approval:`: how requests that wait for a human are held.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    /// How long a request waits for a human before approval_timeout (default 120s).
    pub timeout: Option<L<String>>,
    /// An https:// URL that gets a JSON POST (no secret, no token) when a request waits.
    pub webhook: Option<L<String>>,
    /// The most requests of one task that may wait at once (default 20).
    pub max_pending: Option<L<u64>>,
}

/// `on_unlisted:` of a policy or a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawOnUnlisted {
    Deny,
    Ask,
    Learn,
}

/// `approve:` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawApprove {
    Each,
    Once,
}
