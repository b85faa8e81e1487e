//! The `secrets:` section: names, placeholders, the one source of each value, `env`,
//! `refresh` and `headers`, and the clashes between placeholders and real values. Values are read and compared only through
//! [`crate::secrets`]; messages name secrets and sources, never values.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use super::{check_duration, Checker, Site};
use crate::error::Sink;
use crate::model::{Secret, SecretId, SecretSource};
use crate::raw::RawSecret;
use crate::read::{Entries, Located};
use crate::secrets::{self, Source};

pub(super) fn check_secrets(
    raw: Option<&Located<Entries<Located<RawSecret>>>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Vec<Secret> {
    let entries = raw.map(|r| r.value.0.as_slice()).unwrap_or_default();
    let mut secrets = Vec::new();
    let mut sites: Vec<(Site, Site)> = Vec::new();
    let mut envs: HashMap<&str, &str> = HashMap::new();
    for (name, raw) in entries {
        check_secret_name(name, sink);
        if let Some(aws) = &raw.value.aws {
            let env = check_env(name, raw, &mut envs, sink);
            let id = SecretId(secrets.len());
            if let Some((secret, site)) =
                super::aws::check_aws_secret(id, name, raw, aws, env, sink, checker)
            {
                secrets.push(secret);
                sites.push(site);
            }
            continue;
        }
        let placeholder = check_placeholder(raw, sink);
        let env = check_env(name, raw, &mut envs, sink);
        let refresh = check_refresh(raw, sink);
        let headers = raw
            .value
            .headers
            .as_ref()
            .map(|list| super::rules::check_header_names(list, sink));
        let leased = raw.value.github_app.is_some() || raw.value.oauth2.is_some();
        let (value, lease) = if leased {
            let lease = super::leases::check_lease(name, raw, sink, checker);
            let marker = super::leases::unminted_marker(&name.value);
            let value = lease
                .as_ref()
                .map(|(_, site)| (marker, SecretSource::Lease, site.clone()));
            (value, lease.map(|(lease, _)| std::sync::Arc::new(lease)))
        } else {
            (read_secret_value(name, raw, sink, checker), None)
        };
        if let (Some(placeholder), Some((value, source, source_site)), Some(headers)) = (
            placeholder,
            value,
            headers.map_or(Some(None), |h| h.map(Some)),
        ) {
            if secrets::has_outer_whitespace(&value) {
                checker.warn(
                    sink.file,
                    source_site.pos,
                    &source_site.path,
                    format!(
                        "the value of secret \"{}\" starts or ends with whitespace",
                        name.value
                    ),
                );
            }
            let id = SecretId(secrets.len());
            secrets.push(Secret {
                id,
                name: name.value.clone(),
                placeholder: placeholder.value.clone(),
                value,
                source,
                env,
                refresh,
                headers,
                aws: None,
                lease,
            });
            sites.push((Site::from(placeholder), source_site));
        }
    }
    check_secret_clashes(&secrets, &sites, sink);
    secrets
}

fn check_secret_name(name: &Located<String>, sink: &mut Sink<'_>) {
    let n = &name.value;
    let valid = (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        sink.at(
            name,
            format!("\"{n}\" is not a valid secret name"),
            "use 1 to 64 characters of a-z, 0-9, \"_\" and \"-\"",
        );
    }
}

fn check_placeholder<'r>(
    raw: &'r Located<RawSecret>,
    sink: &mut Sink<'_>,
) -> Option<&'r Located<String>> {
    let Some(placeholder) = &raw.value.placeholder else {
        sink.missing(
            raw,
            "placeholder",
            "add the token the agent will hold, e.g. `placeholder: ks-github-placeholder-0001`",
        );
        return None;
    };
    if let Some(problem) = secrets::placeholder_problem(&placeholder.value) {
        sink.at(placeholder, problem.message, problem.fix);
        return None;
    }
    Some(placeholder)
}

/// The variable `keyswap exec` sets to the placeholder: a name every shell can export, and
/// one per secret (two placeholders cannot share a variable).
fn check_env<'r>(
    name: &'r Located<String>,
    raw: &'r Located<RawSecret>,
    envs: &mut HashMap<&'r str, &'r str>,
    sink: &mut Sink<'_>,
) -> Option<String> {
    let env = raw.value.env.as_ref()?;
    let var = env.value.as_str();
    let mut bytes = var.bytes();
    let portable = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !portable {
        sink.at(
            env,
            format!("\"{var}\" is not a valid environment variable name"),
            "use letters, digits and \"_\", not starting with a digit, e.g. GITHUB_TOKEN",
        );
        return None;
    }
    if let Some(other) = envs.get(var) {
        sink.at(
            env,
            format!("env {var} is also the env of secret \"{other}\""),
            "give each secret its own variable (keyswap exec sets it to that secret's placeholder)",
        );
        return None;
    }
    envs.insert(var, &name.value);
    Some(var.to_string())
}

/// How often the value is read again: only a file or a command can change while keyswap
/// runs, and not more often than once a second.
fn check_refresh(raw: &Located<RawSecret>, sink: &mut Sink<'_>) -> Option<Duration> {
    let refresh = raw.value.refresh.as_ref()?;
    if raw.value.from_env.is_some() {
        sink.at(
            refresh,
            "refresh cannot be used with from_env: the environment cannot change while keyswap runs",
            "remove refresh, or read the secret with from_file or from_command",
        );
        return None;
    }
    let every = check_duration(refresh, sink)?;
    if every < Duration::from_secs(1) {
        sink.at(
            refresh,
            format!(
                "refresh {} is shorter than 1s",
                humantime::format_duration(every)
            ),
            "write 1s or more, e.g. 15m",
        );
        return None;
    }
    Some(every)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// Reads the value from the one source the secret names. Returns it with the site of the
/// source field (where problems with the value are reported).
fn read_secret_value(
    name: &Located<String>,
    raw: &Located<RawSecret>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(SecretString, SecretSource, Site)> {
    let r = &raw.value;
    let mut present: Vec<(&str, Site)> = Vec::new();
    if let Some(v) = &r.from_env {
        present.push(("from_env", v.into()));
    }
    if let Some(v) = &r.from_file {
        present.push(("from_file", v.into()));
    }
    if let Some(v) = &r.from_command {
        present.push(("from_command", v.into()));
    }
    let fix_one = "keep exactly one of from_env, from_file or from_command";
    match present.as_slice() {
        [] => {
            let message = format!("secret \"{}\" has no source for its value", name.value);
            sink.error(
                raw.pos,
                &raw.path,
                message,
                "add one of from_env, from_file or from_command",
            );
            return None;
        }
        [_] => {}
        [(first, _), rest @ ..] => {
            for (field, site) in rest {
                let message = format!("secret \"{}\" has both {first} and {field}", name.value);
                sink.error(site.pos, &site.path, message, fix_one);
            }
            return None;
        }
    }
    let argv: Vec<String>;
    let (source, site) = if let Some(env) = &r.from_env {
        if !valid_env_name(&env.value) {
            sink.at(
                env,
                format!("\"{}\" is not a valid environment variable name", env.value),
                "write a name like GITHUB_TOKEN",
            );
            return None;
        }
        (Source::Env(&env.value), Site::from(env))
    } else if let Some(file) = &r.from_file {
        if file.value.trim().is_empty() {
            sink.at(
                file,
                "the path is empty",
                "write the path of a file holding the credential",
            );
            return None;
        }
        (Source::File(Path::new(&file.value)), Site::from(file))
    } else {
        let command = r.from_command.as_ref()?;
        argv = command.value.iter().map(|a| a.value.clone()).collect();
        if argv.first().is_none_or(|program| program.is_empty()) {
            sink.at(
                command,
                "from_command needs a program",
                "write the command as a list, e.g. [op, read, \"op://vault/item/field\"]",
            );
            return None;
        }
        (Source::Command(&argv), Site::from(command))
    };
    match secrets::read_value(&source, checker.env) {
        Ok(value) => Some((value, source.to_model(), site)),
        Err(e) => {
            sink.error(
                site.pos,
                &site.path,
                format!("secret \"{}\": {}", name.value, e.message),
                e.fix,
            );
            None
        }
    }
}

/// Placeholders must be unambiguous and must not reveal or collide with real values.
/// `sites[i]` is (placeholder site, value source site) of `secrets[i]`.
fn check_secret_clashes(secrets: &[Secret], sites: &[(Site, Site)], sink: &mut Sink<'_>) {
    for (i, a) in secrets.iter().enumerate() {
        let (placeholder_site, value_site) = &sites[i];
        for (j, b) in secrets.iter().enumerate() {
            if i != j {
                if a.placeholder == b.placeholder && j < i {
                    sink.error(
                        placeholder_site.pos,
                        &placeholder_site.path,
                        format!("placeholder is the same as secret \"{}\"'s", b.name),
                        "give each secret its own placeholder",
                    );
                } else if a.placeholder != b.placeholder && a.placeholder.contains(&b.placeholder) {
                    sink.error(
                        placeholder_site.pos,
                        &placeholder_site.path,
                        format!(
                            "placeholder contains the placeholder of secret \"{}\"",
                            b.name
                        ),
                        "choose placeholders that do not contain one another",
                    );
                }
            }
            // A real value that contains a placeholder would be swapped again; a placeholder
            // that contains a real value would hand that value to the agent.
            if secrets::value_contains(&a.value, &b.placeholder) {
                let whose = if i == j {
                    "its own placeholder".to_string()
                } else {
                    format!("the placeholder of secret \"{}\"", b.name)
                };
                sink.error(
                    value_site.pos,
                    &value_site.path,
                    format!("the real value of secret \"{}\" contains {whose}", a.name),
                    "choose a placeholder that does not occur in any real value",
                );
            }
            if secrets::contains_value(&a.placeholder, &b.value) {
                sink.error(
                    placeholder_site.pos,
                    &placeholder_site.path,
                    format!("placeholder contains the real value of secret \"{}\"", b.name),
                    "choose a placeholder that does not contain a real credential (the agent holds placeholders)",
                );
            }
        }
    }
}
