//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every field is optional and [`Located`], so that a missing or wrong field is reported by
//! validation with its position instead of aborting the load, and every struct denies
//! unknown fields. These types hold no secret values (only where to read them from) and are
//! never seen outside this crate: the proxy uses [`crate::model`].

use serde::Deserialize;

use crate::de::{Entries, Located};

pub(crate) type L<T> = Located<T>;

/// The top level of `keyswap.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub version: Option<L<u64>>,
    pub listen: Option<L<String>>,
    pub ca_dir: Option<L<String>>,
    pub audit_log: Option<L<String>>,
    pub upstream: Option<L<RawUpstream>>,
    pub secrets: Option<L<Entries<L<RawSecret>>>>,
    pub tasks_dir: Option<L<String>>,
    pub tasks: Option<L<Entries<L<RawTask>>>>,
    pub policies: Option<L<Entries<L<RawPolicy>>>>,
    pub admin: Option<L<RawAdmin>>,
    pub metrics: Option<L<RawMetrics>>,
}

/// `upstream:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub extra_roots: Option<L<String>>,
    pub resolve: Option<L<Entries<L<String>>>>,
    pub allow_private: Option<L<bool>>,
}

/// One entry of `secrets:` (the key is the secret's name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub from_env: Option<L<String>>,
    pub from_file: Option<L<String>>,
    pub from_command: Option<L<Vec<L<String>>>>,
    pub placeholder: Option<L<String>>,
    pub env: Option<L<String>>,
    pub refresh: Option<L<String>>,
    pub headers: Option<L<Vec<L<String>>>>,
}

/// One task: an entry of `tasks:` or the whole body of a file in `tasks_dir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTask {
    pub token_env: Option<L<String>>,
    pub expires: Option<L<String>>,
    pub policy: Option<L<String>>,
    pub allow: Option<L<Vec<L<RawRule>>>>,
}

/// One entry of `policies:` (the key is the policy's name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub ttl: Option<L<String>>,
    pub max_ttl: Option<L<String>>,
    pub allow: Option<L<Vec<L<RawRule>>>>,
}

/// `admin:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub socket: Option<L<String>>,
    pub listen: Option<L<String>>,
    pub token_env: Option<L<String>>,
}

/// `metrics:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<L<String>>,
}

/// One element of a task's or a policy's `allow:` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub host: Option<L<String>>,
    pub port: Option<L<u64>>,
    pub methods: Option<L<Vec<L<String>>>>,
    pub paths: Option<L<Vec<L<String>>>>,
    pub secrets: Option<L<Vec<L<String>>>>,
    pub tunnel: Option<L<bool>>,
    pub swap_in: Option<L<Vec<L<RawSwapIn>>>>,
    pub headers: Option<L<Vec<L<String>>>>,
    pub scheme: Option<L<RawScheme>>,
    pub allow_cleartext: Option<L<bool>>,
    pub id: Option<L<String>>,
    pub budget: Option<L<RawBudget>>,
    pub rate: Option<L<String>>,
}

/// `budget:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub requests: Option<L<u64>>,
}

/// `scheme:` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawScheme {
    Http,
    Https,
}

/// One word of `swap_in:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSwapIn {
    Headers,
    Query,
    Body,
}
