//! keyswap's config: the YAML schema, its validation into a typed model with every error
//! located (file, line, column, field path, fix), host and route matching, and loading of
//! real secret values.
//!
//! Pure: no sockets, no async runtime. The only side effects of a load are reading files
//! (the config, `tasks_dir`, `from_file`, and checking `extra_roots`), reading the
//! environment through an [`EnvSource`], and running `from_command` programs.
//!
//! **Paths**: every path in the config (`ca_dir`, `audit_log`, `tasks_dir`,
//! `upstream.extra_roots`, `from_file`, `admin.socket`) is used as written, so relative
//! paths are relative to the process's current working directory, not to the config file.
//!
//! Secret values are held only in [`secrecy::SecretString`] and never appear in an error,
//! a warning or a `Debug` output of this crate.
//!
//! Modules: `locate` (YAML text → positioned tree), `de` (serde over that tree, every
//! schema error), `raw` (the file's shape), `validate` (raw → model), [`model`]
//! (what the proxy uses, and matching), [`limits`] (budgets, rates, rule keys), [`host`], [`path`], [`secrets`], [`error`].

#![forbid(unsafe_code)]

mod de;
pub mod error;
pub mod host;
pub mod limits;
mod locate;
pub mod model;
pub mod path;
mod raw;
pub mod secrets;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use host::{HostPattern, HostPatternError};
pub use limits::{Budget, Rate, RatePer};
pub use model::{
    first_rule_for_host, granted_secrets, match_route, valid_task_id, Admin, AuditLog, Config,
    Metrics, Policy, RouteMatch, Rule, Scheme, Secret, SecretId, SecretSource, SwapIn, Task,
    TtlError, Upstream,
};
pub use path::{normalize_path, PathError, PathPatternError, PathPatterns};
pub use secrets::{EnvSource, ProcessEnv};

/// Loads and validates the config at `path`, reading `from_env`/`token_env` from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &ProcessEnv)
}

/// Loads and validates the config at `path` with the given environment.
pub fn load_with(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path, env),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("the config file cannot be read: {e}"),
            fix: "check the path and its permissions (the file must be UTF-8)".into(),
        }])),
    }
}

/// The admin socket the config at `path` names (or the default), read without validating
/// anything else and without reading any secret: how `keyswap exec` and `keyswap task` find
/// a running proxy. `None` if the file cannot be read or parsed.
pub fn admin_socket_of(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let (tree, _) = locate::parse(&text).ok()?;
    let socket = tree
        .get("admin")
        .and_then(|admin| admin.get("socket"))
        .and_then(|socket| socket.scalar())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(model::DEFAULT_ADMIN_SOCKET);
    Some(std::path::PathBuf::from(socket))
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
