//! keyswap's config: the YAML schema, its validation into a typed model with every error
//! located (file, line, column, field path, fix), host and route matching, and loading of
//! real secret values.
//!
//! Pure: no sockets, no async runtime. The only side effects of a load are reading files
//! (the config, `tasks_dir`, `from_file`, and checking `extra_roots`), reading the
//! environment through an [`EnvSource`], and running `from_command` programs.
//!
//! **Paths**: every path in the config (`ca_dir`, `audit_log`, `tasks_dir`,
//! `upstream.extra_roots`, `from_file`, `admin.socket`, `audit.key_file`, `sandbox.*`) is used
//! as written, so relative paths are relative to the process's current working directory, not
//! to the config file. `sandbox:` paths may also start with `~/`: the home of the user
//! `keyswap exec` runs the command as, kept symbolic ([`SandboxPath::Home`]) until exec
//! builds its plan.
//!
//! Secret values are held only in [`secrecy::SecretString`] and never appear in an error,
//! a warning or a `Debug` output of this crate.
//!
//! Modules: `read` (YAML text → raw types through `serde_yaml`, every schema error),
//! `locate` (the position of every value), `raw` (the file's shape, and its JSON Schema),
//! `validate` (raw → model), [`model`] (what the proxy uses, and matching), [`limits`]
//! (budgets, rates, rule keys), [`sandbox`] (what `keyswap exec` hides), [`host`], [`path`],
//! [`secrets`], [`error`].

#![forbid(unsafe_code)]

pub mod aws;
pub mod error;
pub mod host;
pub mod lease_sources;
pub mod limits;
mod locate;
pub mod model;
pub mod parent_proxy;
pub mod path;
mod raw;
mod read;
pub mod requestable;
pub mod sandbox;
pub mod secrets;
pub mod store;
mod validate;

use std::path::Path;

pub use aws::AwsKeys;
pub use error::{ConfigError, ConfigErrors};
pub use host::{HostPattern, HostPatternError};
pub use lease_sources::{AwsRole, GithubApp, GithubScope, LeaseScope, LeaseSource, OAuth2};
pub use limits::{Budget, Rate, RatePer};
pub use model::{
    first_rule_for_host, granted_secrets, match_route, valid_task_id, Admin, Approval, Approve,
    Audit, AuditKey, AuditLog, Config, ConnectionLimits, Limits, Metrics, OnUnlisted, Policy,
    PortMode, RouteMatch, Rule, Sandbox, SandboxPath, Scheme, Secret, SecretId, SecretSource,
    SourceNet, SwapIn, Task, TaskLimits, Transparent, TransparentTasks, TtlError, Upstream,
    LEASE_STATE_FILE,
};
pub use parent_proxy::{NoProxy, ParentAuth, ParentKind, ParentProxy};
pub use path::{normalize_path, PathError, PathPatternError, PathPatterns};
pub use requestable::{granted_rule, within, GrantAsk, Requestable};
pub use sandbox::{
    credential_stores, protected_paths, sandbox_plan_paths, Protected, Protection, SandboxPaths,
};
pub use secrets::{EnvSource, ProcessEnv};
pub use store::{RedisAddr, RedisStore, Store};

/// Loads and validates the config at `path`, reading `from_env`/`token_env` from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &ProcessEnv)
}

/// Loads and validates the config at `path` with the given environment.
pub fn load_with(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path, env),
        Err(e) => Err(ConfigErrors(vec![ConfigError::unreadable(
            path,
            &e,
            "check the path and its permissions (the file must be UTF-8)",
        )])),
    }
}

/// The admin socket the config at `path` names (or the default), read without validating
/// anything else and without reading any secret: how `keyswap exec` and `keyswap task` find
/// a running proxy. `None` if the file cannot be read or parsed.
pub fn admin_socket_of(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let config: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let socket = config
        .get("admin")
        .and_then(|admin| admin.get("socket"))
        .and_then(serde_yaml::Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(model::DEFAULT_ADMIN_SOCKET);
    Some(std::path::PathBuf::from(socket))
}

/// The JSON Schema of the config file (draft 7, which editors' YAML plugins read), generated
/// from the raw serde types: what `keyswap schema` prints. Field descriptions are the doc
/// comments of `raw.rs`. It describes the shape of the file; `keyswap check` also validates
/// meaning (patterns, durations, references between sections).
pub fn json_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<raw::RawConfig>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The `ca_dir` the config at `path` names (or the default), read without validating anything
/// else and without reading any secret: `keyswap ca export` needs only this, so it runs where
/// the secrets' variables are not set (an image build, an agent's machine, an init step).
pub fn ca_dir_of(path: &Path) -> Result<std::path::PathBuf, ConfigErrors> {
    let problem = |line: usize, column: usize, field: &str, message: String, fix: &str| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message,
            fix: fix.into(),
        }])
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        problem(
            0,
            0,
            "(file)",
            format!("cannot read {}: {e}", path.display()),
            "check the path and its permissions, or pass --ca-dir",
        )
    })?;
    let (tree, _) = locate::parse(&text)
        .map_err(|p| problem(p.pos.line, p.pos.column, &p.field, p.message, &p.fix))?;
    let Some((_, node)) = tree.entry("ca_dir") else {
        return Ok(std::path::PathBuf::from(model::DEFAULT_CA_DIR));
    };
    match node.scalar().filter(|s| !s.trim().is_empty()) {
        Some(dir) => Ok(std::path::PathBuf::from(dir)),
        None => Err(problem(
            node.pos.line,
            node.pos.column,
            "ca_dir",
            "is not a path".into(),
            "write a directory path, or remove the field for the default",
        )),
    }
}

/// Validates config text; `file_for_messages` names it in errors (it is not read). Paths
/// inside the config are still relative to the working directory.
pub fn load_str(
    text: &str,
    file_for_messages: &Path,
    env: &dyn EnvSource,
) -> Result<Config, ConfigErrors> {
    validate::load(text, file_for_messages, env)
}
