//! Tasks: raw → [`Task`], for inline tasks and for the files of `tasks_dir` (each
//! `*.yaml`/`*.yml` is one task, id = file stem; errors in it name that file and its lines).
//!
//! Owns task ids, `token_env`, `expires`, `policy` (whose rules come before the task's
//! own), and the warnings about tasks as a whole (tasks without a token, secrets no rule
//! grants); rules are checked in `rules`. Never formats a secret value or a token; tokens
//! are compared with values only through [`crate::secrets`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::rules::{check_rules, warn_shadowed, warn_shadowed_by_policy, warn_unscoped_headers};
use super::{read_raw, sort, Checker, Site};
use crate::error::{io_reason, ConfigError, Sink};
use crate::locate::child;
use crate::model::{Policy, Secret, SecretId, Task};
use crate::raw::{RawConfig, RawOnUnlisted, RawTask};
use crate::read::{closest, Located};
use crate::secrets;

/// The secrets rules may name: loaded ones (with ids) and every name written under
/// `secrets:` (a secret whose own definition has errors is not also "undefined"); and the
/// policies tasks may name (empty while the policies themselves are checked).
pub(crate) struct Defined<'a> {
    pub secrets: &'a [Secret],
    pub declared: BTreeSet<String>,
    pub policies: &'a BTreeMap<String, Policy>,
}

impl Defined<'_> {
    pub(super) fn id(&self, name: &str) -> Option<SecretId> {
        self.secrets.iter().find(|s| s.name == name).map(|s| s.id)
    }
}

/// Task ids appear in proxy credentials (`http://TASK:TOKEN@...`) and file names; policy
/// names follow the same rule.
pub(super) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const TASK_ID_FIX: &str =
    "task ids are 1 to 64 characters of A-Z, a-z, 0-9, \".\", \"_\" and \"-\"";

/// Checks inline tasks and `tasks_dir`. Errors in task files go to `file_errors`.
pub(crate) fn check_all(
    raw: &RawConfig,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
    file_errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Task> {
    let mut tasks = BTreeMap::new();
    let mut inline: HashMap<String, Site> = HashMap::new();
    for (id, raw_task) in raw
        .tasks
        .as_ref()
        .map(|t| t.value.0.as_slice())
        .unwrap_or_default()
    {
        if !valid_id(&id.value) {
            sink.at(
                id,
                format!("\"{}\" is not a valid task id", id.value),
                format!("rename it: {TASK_ID_FIX}"),
            );
        }
        let task = check_task(
            &id.value,
            &raw_task.value,
            Site::from(raw_task),
            defined,
            sink,
            checker,
        );
        inline.insert(id.value.clone(), Site::from(id));
        tasks.insert(id.value.clone(), task);
    }
    let from_files = match &raw.tasks_dir {
        Some(dir) => check_dir(
            dir,
            &inline,
            defined,
            sink,
            checker,
            file_errors,
            &mut tasks,
        ),
        None => HashMap::new(),
    };
    let runtime_capable = !defined.policies.is_empty();
    check_tokens(
        &tasks,
        runtime_capable,
        &inline,
        &from_files,
        raw.tasks_dir.as_ref(),
        sink,
        checker,
    );
    tasks
}

/// A task without a token accepts any credentials that name it. That is the simplest
/// laptop setup when it is the config's only task (a warning); with several tasks — also
/// when `policies:` lets the admin API issue more at runtime — any of them, or anyone who
/// can reach the proxy, could act as it by naming it, so it is an error.
fn check_tokens(
    tasks: &BTreeMap<String, Task>,
    runtime_capable: bool,
    inline: &HashMap<String, Site>,
    from_files: &HashMap<String, PathBuf>,
    tasks_dir: Option<&Located<String>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) {
    let tokenless = tasks.values().filter(|t| t.token.is_none());
    if tasks.len() == 1 && !runtime_capable {
        if let Some(task) = tokenless.into_iter().next() {
            checker.note(
                sink.file,
                format!(
                    "task {} has no token_env: any client that can reach the proxy can use it",
                    task.id
                ),
            );
        }
        return;
    }
    let others = match (tasks.len(), runtime_capable) {
        (1, _) => "tasks issued at runtime from policies".to_string(),
        (n, false) => format!("{n} tasks"),
        (n, true) => format!("{n} tasks and tasks issued at runtime from policies"),
    };
    let fix = "add token_env: naming a variable that holds a token of at least 16 random bytes";
    for task in tokenless {
        let message = |task: &str| {
            format!(
                "task {task} has no token_env, and with {others}, anyone who can reach the proxy could use it by naming it"
            )
        };
        match (inline.get(&task.id), tasks_dir, from_files.get(&task.id)) {
            (Some(site), _, _) => sink.error(site.pos, &site.path, message(&task.id), fix),
            (None, Some(dir), Some(file)) => {
                let task = format!("{} ({})", task.id, file.display());
                sink.at(dir, message(&task), fix);
            }
            _ => sink.error(super::TOP, "tasks", message(&task.id), fix),
        }
    }
}

/// Reads every task file of `tasks_dir`; returns the file each task id came from.
fn check_dir(
    dir: &Located<String>,
    inline: &HashMap<String, Site>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
    file_errors: &mut Vec<ConfigError>,
    tasks: &mut BTreeMap<String, Task>,
) -> HashMap<String, PathBuf> {
    let entries = match std::fs::read_dir(&dir.value) {
        Ok(entries) => entries,
        Err(e) => {
            sink.at(
                dir,
                format!("directory {} cannot be read: {}", dir.value, io_reason(&e)),
                "check the path (relative to the working directory), or remove tasks_dir",
            );
            return HashMap::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml") && p.is_file())
        .collect();
    files.sort();
    let mut from_files: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let Some(id) = file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            sink.at(
                dir,
                format!("file {} has a name that is not UTF-8", file.display()),
                "rename the file",
            );
            continue;
        };
        if !valid_id(&id) {
            let message = format!(
                "file {} gives the task id \"{id}\", which is not valid",
                file.display()
            );
            sink.at(dir, message, format!("rename the file: {TASK_ID_FIX}"));
            continue;
        }
        if let Some(site) = inline.get(&id) {
            let message = format!("task \"{id}\" is also defined by {}", file.display());
            sink.error(
                site.pos,
                &site.path,
                message,
                "keep one of the two definitions",
            );
            continue;
        }
        if let Some(other) = from_files.get(&id) {
            let message = format!(
                "task \"{id}\" is defined by both {} and {}",
                other.display(),
                file.display()
            );
            sink.at(dir, message, "keep one of the two files");
            continue;
        }
        let mut errors = Vec::new();
        let mut file_sink = Sink::new(&file, &mut errors);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let root = child("tasks", &id);
                if let Some((raw, tree)) = read_raw::<RawTask>(&text, &root, &mut file_sink) {
                    let site = Site {
                        pos: tree.pos,
                        path: root,
                    };
                    let task = check_task(&id, &raw, site, defined, &mut file_sink, checker);
                    tasks.insert(id.clone(), task);
                }
            }
            Err(e) => file_sink.errors.push(ConfigError::unreadable(
                &file,
                &e,
                "check the file's permissions and encoding (UTF-8)",
            )),
        }
        from_files.insert(id, file.clone());
        sort(&mut errors);
        file_errors.extend(errors);
    }
    from_files
}

fn check_task(
    id: &str,
    raw: &RawTask,
    site: Site,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Task {
    let token = raw.token_env.as_ref().and_then(|name| {
        let token = secrets::read_token(&name.value, checker.env)
            .map_err(|e| sink.at(name, e.message, e.fix))
            .ok()?;
        // The agent holds its token: a token that is (or holds) a credential leaks it.
        for secret in defined.secrets {
            if secrets::token_contains_value(&token, &secret.value) {
                sink.at(
                    name,
                    format!(
                        "the token contains the real value of secret \"{}\"",
                        secret.name
                    ),
                    "use a token that is not a credential (the agent holds its token)",
                );
            }
        }
        Some(token)
    });
    let expires = raw
        .expires
        .as_ref()
        .and_then(|expires| check_expires(id, expires, sink, checker));
    let policy = raw
        .policy
        .as_ref()
        .and_then(|name| check_policy_name(name, defined, sink));
    let (mut rules, sites) = check_rules(raw.allow.as_ref(), defined, sink, checker);
    super::approval::warn_learning(
        raw.on_unlisted.as_ref(),
        &format!("task {id}"),
        sink.file,
        checker,
    );
    let learning = raw.on_unlisted.as_ref().map(|r| r.value) == Some(RawOnUnlisted::Learn);
    if raw.allow.as_ref().is_none_or(|a| a.value.is_empty()) && raw.policy.is_none() && !learning {
        checker.warn(
            sink.file,
            site.pos,
            &site.path,
            format!("task {id} has no allow rules, so it can reach nothing"),
        );
    }
    warn_shadowed(&rules, &sites, sink.file, checker);
    warn_unscoped_headers(&rules, &sites, defined.secrets, sink.file, checker);
    if let Some(policy) = policy {
        if let Some(list) = &raw.allow {
            super::limits::check_ids_apart_from_policy(
                &policy.name,
                &policy.rules,
                &list.value,
                sink,
            );
        }
        warn_shadowed_by_policy(policy, &rules, &sites, sink.file, checker);
        // The policy's rules first, then the task's own; `index` is the position in that
        // list (what the audit record's `rule` names).
        let mut all = policy.rules.clone();
        all.append(&mut rules);
        rules = all;
        for (index, rule) in rules.iter_mut().enumerate() {
            rule.index = index;
        }
    }
    // The task's own on_unlisted wins over its policy's.
    let on_unlisted = super::approval::on_unlisted(raw.on_unlisted.as_ref())
        .or(policy.map(|p| p.on_unlisted))
        .unwrap_or_default();
    // The task's own bounds replace its policy's.
    let requestable = match &raw.requestable {
        Some(list) => super::requestable::check_requestable(Some(list), defined, sink),
        None => policy.map(|p| p.requestable.clone()).unwrap_or_default(),
    };
    Task {
        id: id.to_string(),
        token,
        token_env: raw.token_env.as_ref().map(|name| name.value.clone()),
        expires,
        policy: raw.policy.as_ref().map(|p| p.value.clone()),
        rules,
        on_unlisted,
        requestable,
    }
}

/// `expires:`, an RFC 3339 time with any offset (`Z`, `+09:00`, `-05:00`).
fn check_expires(
    id: &str,
    expires: &Located<String>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<SystemTime> {
    let Ok(time) = OffsetDateTime::parse(expires.value.trim(), &Rfc3339) else {
        sink.at(
            expires,
            format!("\"{}\" is not an RFC 3339 time", expires.value),
            "write a date, a time and an offset, e.g. 2026-12-01T00:00:00Z or 2026-12-01T09:00:00+09:00",
        );
        return None;
    };
    let time = SystemTime::from(time);
    if time <= checker.now {
        checker.warn(
            sink.file,
            expires.pos,
            &expires.path,
            format!("task {id} has already expired"),
        );
    }
    Some(time)
}

/// The policy a task names with `policy:`.
fn check_policy_name<'d>(
    name: &Located<String>,
    defined: &Defined<'d>,
    sink: &mut Sink<'_>,
) -> Option<&'d Policy> {
    if let Some(policy) = defined.policies.get(&name.value) {
        return Some(policy);
    }
    let known: Vec<&str> = defined.policies.keys().map(String::as_str).collect();
    let fix = if known.is_empty() {
        "define it under policies:, or remove policy (no policies are defined)".to_string()
    } else if let Some(close) = closest(&name.value, known.iter().copied()) {
        format!(
            "did you mean \"{close}\"? defined policies: {}",
            known.join(", ")
        )
    } else {
        format!("use one of the defined policies: {}", known.join(", "))
    };
    sink.at(
        name,
        format!("policy \"{}\" is not defined", name.value),
        fix,
    );
    None
}

/// A secret no rule grants is probably a typo in a rule. Policies' rules count: tasks are
/// issued from them at runtime.
pub(crate) fn warn_unused_secrets(
    secrets: &[Secret],
    tasks: &BTreeMap<String, Task>,
    policies: &BTreeMap<String, Policy>,
    file: &Path,
    checker: &mut Checker<'_>,
) {
    for secret in secrets {
        let used = tasks
            .values()
            .flat_map(|t| &t.rules)
            .chain(policies.values().flat_map(|p| &p.rules))
            .any(|r| r.grants(secret.id));
        if !used {
            checker.note(
                file,
                format!("secret \"{}\" is not granted by any rule", secret.name),
            );
        }
    }
}
