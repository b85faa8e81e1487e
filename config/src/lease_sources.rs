//! Secrets that are *lease sources* instead of values: a GitHub App (`github_app:`) mints an
//! installation token per task, an OAuth2 client (`oauth2:`) mints an access token from a
//! refresh token. The raw serde types mirror the file; the model types are what the proxy
//! mints from. The source credentials (the app's private key, the client secret, the refresh
//! token) are read once at load like any secret value and live only in [`SecretString`];
//! nothing here formats one.
//!
//! An `aws:` secret with `assume_role:` mints an STS session per task ([`AwsRole`]); its raw
//! shape lives with the rest of `aws:` in [`crate::aws`].
//!
//! A policy narrows what its tasks mint with `github: {repositories, permissions}`,
//! `oauth2: {scope}` and `aws: {session_policy_file}` ([`LeaseScope`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

use crate::read::{Entries, Located};

type L<T> = Located<T>;

/// Where one source credential of a lease is read from: exactly one of from_env, from_file,
/// from_command.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawValueSource {
    /// Read it from this environment variable.
    pub from_env: Option<L<String>>,
    /// Read it from this file.
    pub from_file: Option<L<String>>,
    /// Read it from this program's output: [program, args...].
    pub from_command: Option<L<Vec<L<String>>>>,
}

/// `oauth2.refresh_token`: only a file, as keyswap writes a rotated token back to it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRefreshToken {
    /// The file holding the refresh token.
    pub from_file: Option<L<String>>,
}

/// `github_app:`: installation tokens minted per task from a GitHub App's key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithubApp {
    /// The App's id (its settings page, "App ID").
    pub app_id: Option<L<u64>>,
    /// The installation of the App on the account or organisation whose repositories tasks use.
    pub installation_id: Option<L<u64>>,
    /// The App's private key (PEM, as GitHub downloads it).
    pub private_key: Option<L<RawValueSource>>,
    /// The REST API's base URL (default https://api.github.com; GitHub Enterprise: https://HOST/api/v3).
    pub api: Option<L<String>>,
}

/// `oauth2:`: access tokens minted per task with the refresh-token grant.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOauth2 {
    /// The provider's token endpoint (https).
    pub token_url: Option<L<String>>,
    /// The OAuth client's id.
    pub client_id: Option<L<RawValueSource>>,
    /// The OAuth client's secret.
    pub client_secret: Option<L<RawValueSource>>,
    /// The refresh token's file: a rotated token is written back there (0600).
    pub refresh_token: Option<L<RawRefreshToken>>,
    /// The scope asked for on every refresh (space-separated); a policy's oauth2.scope narrows it.
    pub scope: Option<L<String>>,
}

/// A policy's `github:`: what its tasks' installation tokens are narrowed to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicyGithub {
    /// Repository names (without the owner) the token may reach.
    pub repositories: Option<L<Vec<L<String>>>>,
    /// Permission to level (read, write, admin), e.g. contents: write.
    pub permissions: Option<L<Entries<L<String>>>>,
}

/// A policy's `oauth2:`: what its tasks' access tokens are narrowed to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicyOauth2 {
    /// The scope asked for instead of the secret's (space-separated).
    pub scope: Option<L<String>>,
}

/// What a lease secret mints from.
#[derive(Clone)]
pub enum LeaseSource {
    GithubApp(GithubApp),
    OAuth2(OAuth2),
    /// `aws: {assume_role}`: an STS session per task.
    Aws(AwsRole),
}

impl LeaseSource {
    /// `github_app` or `oauth2`, for messages and the audit.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseSource::GithubApp(_) => "github_app",
            LeaseSource::OAuth2(_) => "oauth2",
            LeaseSource::Aws(_) => "aws_sts",
        }
    }

    /// Environment variables the source credentials are read from (kept out of `keyswap
    /// exec`'s command).
    pub fn env_vars(&self) -> &[String] {
        match self {
            LeaseSource::GithubApp(app) => &app.env_vars,
            LeaseSource::OAuth2(o) => &o.env_vars,
            LeaseSource::Aws(role) => &role.env_vars,
        }
    }

    /// Files the source credentials are read from (hidden from `keyswap exec`'s sandbox).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            LeaseSource::GithubApp(app) => app.private_key_file.iter().cloned().collect(),
            LeaseSource::OAuth2(o) => vec![o.refresh_token_file.clone()],
            // The source keys' files are the secret's own sources, hidden with them.
            LeaseSource::Aws(_) => Vec::new(),
        }
    }
}

impl fmt::Debug for LeaseSource {
    // Only the non-secret parts: the credentials are never formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseSource::GithubApp(app) => f
                .debug_struct("GithubApp")
                .field("app_id", &app.app_id)
                .field("installation_id", &app.installation_id)
                .field("api", &app.api)
                .finish_non_exhaustive(),
            LeaseSource::OAuth2(o) => f
                .debug_struct("OAuth2")
                .field("token_url", &o.token_url)
                .field("scope", &o.scope)
                .finish_non_exhaustive(),
            LeaseSource::Aws(role) => f
                .debug_struct("AwsRole")
                .field("role_arn", &role.role_arn)
                .field("sts", &role.sts)
                .field("duration", &role.duration)
                .finish_non_exhaustive(),
        }
    }
}

/// `github_app:`, validated.
#[derive(Clone)]
pub struct GithubApp {
    pub app_id: u64,
    pub installation_id: u64,
    /// The PEM text of the App's RSA key (PKCS#1 or PKCS#8).
    pub private_key: SecretString,
    /// The file it was read from, if `from_file`.
    pub private_key_file: Option<PathBuf>,
    /// The API base URL, without a trailing `/`.
    pub api: String,
    /// The environment variable the key was read from, if `from_env`.
    pub env_vars: Vec<String>,
}

/// `oauth2:`, validated.
#[derive(Clone)]
pub struct OAuth2 {
    pub token_url: String,
    pub client_id: SecretString,
    pub client_secret: SecretString,
    /// The refresh token as read at load; a rotated one is held by the proxy and written back
    /// to `refresh_token_file`.
    pub refresh_token: SecretString,
    pub refresh_token_file: PathBuf,
    pub scope: Option<String>,
    /// The environment variables the client id and secret were read from (`from_env`).
    pub env_vars: Vec<String>,
}

/// `aws: {assume_role}`, validated: what an STS AssumeRole call per task needs.
#[derive(Clone)]
pub struct AwsRole {
    pub role_arn: String,
    /// The source keys: they sign the AssumeRole call and nothing else.
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    /// The STS endpoint URL, without a trailing `/`.
    pub sts: String,
    /// The region the AssumeRole call is signed for (from the endpoint, else us-east-1).
    pub sts_region: String,
    /// `assume_role.session_policy_file`, read and minified: the session policy of tasks
    /// whose policy has none.
    pub session_policy: Option<String>,
    /// `assume_role.duration`: the longest session (capped by a task's remaining TTL).
    pub duration: Duration,
    /// The ExternalId read from `external_id_env` at load.
    pub external_id: Option<SecretString>,
    /// The placeholders a session's secret key and token are scrubbed back to.
    pub secret_access_key_placeholder: String,
    pub session_token_placeholder: String,
    /// `external_id_env` (kept out of `keyswap exec`'s command).
    pub env_vars: Vec<String>,
}

/// A policy's narrowing of what its tasks mint (`github:`, `oauth2:`); empty = the source's
/// own reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseScope {
    pub github: Option<GithubScope>,
    /// `oauth2.scope`.
    pub oauth2_scope: Option<String>,
    /// `aws.session_policy_file`, read and minified: the session policy of its tasks' STS
    /// sessions (instead of the secret's own).
    pub aws_session_policy: Option<String>,
}

/// `github: {repositories, permissions}` of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GithubScope {
    /// `None` = every repository of the installation.
    pub repositories: Option<Vec<String>>,
    /// Permission → `read`, `write` or `admin`; `None` = the App's own permissions.
    pub permissions: Option<BTreeMap<String, String>>,
}
