//! Raw config → [`Config`]: every check that is not about YAML types, collecting *all*
//! errors (with file, line, column, field path and a fix) before failing.
//!
//! `top` checks the top level and `upstream` (`proxy` its parent proxy), `admin` the admin API and metrics listeners,
//! `secrets` the secret definitions, `policies` the named allowlists, `tasks` the tasks
//! (inline and `tasks_dir`), `rules` the allow lists of both, `limits` a rule's `budget`,
//! `rate` and `id`, `transparent` the transparent listener, and `approval` the human approval
//! settings (`approval:`, `on_unlisted:`, `approve:`), `sandbox` the paths of `keyswap exec`'s
//! sandbox, `fairness` the bounds of `limits:` on one task and one agent connection. Secret values are read
//! and compared only through [`crate::secrets`], so no message built here can contain one.
//! All paths are used as written: relative paths are relative to the process's working
//! directory, not to the config file.

mod admin;
mod approval;
mod aws;
mod fairness;
mod leases;
mod limits;
mod policies;
mod proxy;
mod requestable;
mod rules;
mod sandbox;
mod secrets;
mod store;
mod sts;
mod tasks;
mod top;
mod transparent;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{ConfigError, ConfigErrors, Sink};
use crate::locate::{Node, Pos};
use crate::model::Config;
use crate::raw::RawConfig;
use crate::read::{self, Located};
use crate::secrets::EnvSource;
use tasks::Defined;

/// Where errors about the file as a whole (e.g. a missing `version`) point.
const TOP: Pos = Pos { line: 1, column: 1 };

/// State shared by the checks of one load.
pub(crate) struct Checker<'a> {
    pub env: &'a dyn EnvSource,
    pub now: SystemTime,
    pub warnings: Vec<String>,
}

impl Checker<'_> {
    /// Warnings read like errors without a fix: `file:line:col field: note`.
    pub fn warn(&mut self, file: &Path, pos: Pos, field: &str, note: impl AsRef<str>) {
        let note = note.as_ref();
        self.warnings.push(format!(
            "{}:{}:{} {field}: {note}",
            file.display(),
            pos.line,
            pos.column
        ));
    }

    /// A warning about the config as a whole.
    pub fn note(&mut self, file: &Path, note: impl AsRef<str>) {
        self.warnings
            .push(format!("{}: {}", file.display(), note.as_ref()));
    }
}

/// Loads a config from its text. `file` is used in messages and to name the main file.
pub(crate) fn load(text: &str, file: &Path, env: &dyn EnvSource) -> Result<Config, ConfigErrors> {
    let mut checker = Checker {
        env,
        now: SystemTime::now(),
        warnings: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut task_file_errors = Vec::new();
    let config = {
        let mut sink = Sink::new(file, &mut errors);
        check(text, &mut sink, &mut checker, &mut task_file_errors)
    };
    sort(&mut errors);
    errors.extend(task_file_errors);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Orders one file's errors by position (they are found section by section).
pub(crate) fn sort(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| (e.line, e.column));
}

/// Parses the text into a raw value, reporting syntax and schema errors. Returns the value
/// with the positioned tree it was read from; `None` when nothing usable could be read.
pub(crate) fn read_raw<T: serde::de::DeserializeOwned>(
    text: &str,
    root_path: &str,
    sink: &mut Sink<'_>,
) -> Option<(T, Node)> {
    read::read(text, root_path, sink)
}

fn check(
    text: &str,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
    task_file_errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let (raw, tree) = read_raw::<RawConfig>(text, "", sink)?;
    top::check_version(&raw, sink);
    let listen = top::check_listen(raw.listen.as_ref(), sink, checker);
    let (ca_dir, audit_log, state_dir) = top::check_paths(&raw, sink);
    let audit = top::check_audit(raw.audit.as_ref(), sink, checker);
    let upstream = raw
        .upstream
        .as_ref()
        .map(|u| top::check_upstream(u, sink, checker))
        .unwrap_or_default();
    let admin = admin::check_admin(raw.admin.as_ref(), sink, checker);
    let metrics = admin::check_metrics(raw.metrics.as_ref(), sink, checker);
    admin::check_listeners_apart(&raw, listen, &admin, metrics.as_ref(), sink);
    let approval = approval::check_approval(raw.approval.as_ref(), sink);
    let secrets = secrets::check_secrets(raw.secrets.as_ref(), sink, checker);
    let no_policies = BTreeMap::new();
    let mut defined = Defined {
        secrets: &secrets,
        declared: tree.keys_of("secrets").into_iter().collect::<BTreeSet<_>>(),
        policies: &no_policies,
    };
    let policies = policies::check_policies(raw.policies.as_ref(), &defined, sink, checker);
    defined.policies = &policies;
    let tasks = tasks::check_all(&raw, &defined, sink, checker, task_file_errors);
    admin::check_admin_token_apart(&raw, &admin, &tasks, sink);
    let transparent = transparent::check_transparent(
        raw.transparent.as_ref(),
        &tasks,
        transparent::Taken {
            listen,
            admin: &admin,
            metrics: metrics.as_ref(),
        },
        sink,
        checker,
    );
    tasks::warn_unused_secrets(&secrets, &tasks, &policies, sink.file, checker);
    let sandbox = sandbox::check_sandbox(raw.sandbox.as_ref(), sink, checker);
    let limits = fairness::check_limits(raw.limits.as_ref(), sink, checker);
    let store = store::check_store(raw.store.as_ref(), sink, checker);
    let config = Config {
        listen,
        ca_dir,
        audit_log,
        state_dir,
        audit,
        upstream,
        secrets,
        tasks,
        policies,
        admin,
        metrics,
        transparent,
        approval,
        tasks_dir: raw.tasks_dir.as_ref().map(|d| PathBuf::from(&d.value)),
        sandbox: sandbox.sandbox.clone(),
        limits,
        store,
        warnings: std::mem::take(&mut checker.warnings),
    };
    sandbox::check_expose(&sandbox, &config, sink);
    Some(config)
}

/// Longer than any sensible TTL or refresh interval, and far below where adding it to a
/// clock could overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A humantime duration (`90s`, `15m`, `2h`, `1h30m`); bounds are checked by the caller.
pub(crate) fn check_duration(value: &Located<String>, sink: &mut Sink<'_>) -> Option<Duration> {
    match humantime::parse_duration(value.value.trim()) {
        Ok(d) if d > MAX_DURATION => {
            sink.at(
                value,
                format!("\"{}\" is longer than 100 years", value.value),
                "write a shorter duration, e.g. 8h or 30days",
            );
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            sink.at(
                value,
                format!("\"{}\" is not a duration", value.value),
                "write a number and a unit, e.g. 90s, 15m, 2h or 1h30m",
            );
            None
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub pos: Pos,
    pub path: String,
}

impl<T> From<&Located<T>> for Site {
    fn from(l: &Located<T>) -> Site {
        Site {
            pos: l.pos,
            path: l.path.clone(),
        }
    }
}
