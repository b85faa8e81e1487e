//! Lease secrets (`github_app:`, `oauth2:`) and a policy's narrowing of them (`github:`,
//! `oauth2:`). The source credentials are read through [`crate::secrets`] like any value;
//! messages name fields and sources, never a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{Checker, Site};
use crate::error::Sink;
use crate::lease_sources::{
    GithubApp, GithubScope, LeaseScope, LeaseSource, OAuth2, RawGithubApp, RawOauth2,
    RawPolicyGithub, RawPolicyOauth2, RawValueSource,
};
use crate::raw::{RawPolicy, RawSecret};
use crate::read::Located;
use crate::secrets::{self, Source};

/// The default `github_app.api`.
pub const GITHUB_API: &str = "https://api.github.com";

/// What a lease secret's `value` holds: never sent (the pipeline swaps the task's minted
/// value), and no credential if it ever were.
pub(crate) fn unminted_marker(name: &str) -> SecretString {
    SecretString::from(format!("keyswap-lease-not-minted-{name}"))
}

/// The lease source of a secret that names `github_app:` or `oauth2:` (and nothing else for
/// its value), with the site problems with it are reported at.
pub(super) fn check_lease(
    name: &Located<String>,
    raw: &Located<RawSecret>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(LeaseSource, Site)> {
    let r = &raw.value;
    let mut others: Vec<(&str, Site)> = Vec::new();
    if let Some(v) = &r.from_env {
        others.push(("from_env", v.into()));
    }
    if let Some(v) = &r.from_file {
        others.push(("from_file", v.into()));
    }
    if let Some(v) = &r.from_command {
        others.push(("from_command", v.into()));
    }
    if let Some(v) = &r.refresh {
        others.push(("refresh", v.into()));
    }
    let kind = if r.github_app.is_some() {
        "github_app"
    } else {
        "oauth2"
    };
    if let (Some(_), Some(o)) = (&r.github_app, &r.oauth2) {
        others.push(("oauth2", o.into()));
    }
    for (field, site) in &others {
        sink.error(
            site.pos,
            &site.path,
            format!("secret \"{}\" has both {kind} and {field}", name.value),
            format!("a {kind} secret is minted per task: remove {field}"),
        );
    }
    if !others.is_empty() {
        return None;
    }
    if let Some(app) = &r.github_app {
        let source = check_github_app(app, sink, checker)?;
        return Some((LeaseSource::GithubApp(source), Site::from(app)));
    }
    let oauth = r.oauth2.as_ref()?;
    let source = check_oauth2(oauth, sink, checker)?;
    Some((LeaseSource::OAuth2(source), Site::from(oauth)))
}

fn check_github_app(
    raw: &Located<RawGithubApp>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<GithubApp> {
    let r = &raw.value;
    let app_id = required(
        raw,
        r.app_id.as_ref(),
        "app_id",
        "add the App's id, e.g. `app_id: 123456`",
        sink,
    );
    let installation_id = required(
        raw,
        r.installation_id.as_ref(),
        "installation_id",
        "add the installation's id (the number at the end of the installation's settings URL)",
        sink,
    );
    let api = match &r.api {
        Some(api) => check_https(api, sink),
        None => Some(GITHUB_API.to_string()),
    };
    let key = match &r.private_key {
        Some(key) => read_source(key, true, sink, checker),
        None => {
            sink.missing(
                raw,
                "private_key",
                "add `private_key: {from_file: ./keys/app.pem}`",
            );
            None
        }
    };
    let (private_key, private_key_file, env) = key?;
    Some(GithubApp {
        env_vars: env.into_iter().collect(),
        app_id: app_id?,
        installation_id: installation_id?,
        private_key,
        private_key_file,
        api: api?,
    })
}

fn check_oauth2(
    raw: &Located<RawOauth2>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<OAuth2> {
    let r = &raw.value;
    let token_url = match &r.token_url {
        Some(url) => check_https(url, sink),
        None => {
            sink.missing(
                raw,
                "token_url",
                "add the provider's token endpoint, e.g. https://example.com/oauth/token",
            );
            None
        }
    };
    let mut read = |field: &str, value: Option<&Located<RawValueSource>>| match value {
        Some(v) => read_source(v, false, sink, checker),
        None => {
            sink.missing(raw, field, format!("add `{field}: {{from_env: VARIABLE}}`"));
            None
        }
    };
    let client_id = read("client_id", r.client_id.as_ref());
    let client_secret = read("client_secret", r.client_secret.as_ref());
    let refresh = match r.refresh_token.as_ref() {
        Some(v) => match &v.value.from_file {
            Some(path) => read_refresh_token(path, sink, checker),
            None => {
                sink.missing(v, "from_file", "providers rotate refresh tokens: write `refresh_token: {from_file: ./state/NAME.refresh}` so keyswap can keep the new one");
                None
            }
        },
        None => read("refresh_token", None),
    };
    let scope = r.scope.as_ref().map(|s| s.value.trim().to_string());
    let (refresh_token, file, _) = refresh?;
    let (client_id, _, id_env) = client_id?;
    let (client_secret, _, secret_env) = client_secret?;
    Some(OAuth2 {
        env_vars: id_env.into_iter().chain(secret_env).collect(),
        token_url: token_url?,
        client_id,
        client_secret,
        refresh_token,
        refresh_token_file: file?,
        scope: scope.filter(|s| !s.is_empty()),
    })
}

fn required<P, T: Copy>(
    parent: &Located<P>,
    value: Option<&Located<T>>,
    field: &str,
    fix: &str,
    sink: &mut Sink<'_>,
) -> Option<T> {
    match value {
        Some(v) => Some(v.value),
        None => {
            sink.missing(parent, field, fix);
            None
        }
    }
}

/// An `https://` URL, without a trailing `/`.
fn check_https(url: &Located<String>, sink: &mut Sink<'_>) -> Option<String> {
    let text = url.value.trim().trim_end_matches('/');
    let host = text.strip_prefix("https://").unwrap_or("");
    if host.is_empty() || host.starts_with('/') || text.contains(char::is_whitespace) {
        sink.at(
            url,
            format!("\"{}\" is not an https:// URL", url.value),
            "write the URL with https://, e.g. https://api.github.com",
        );
        return None;
    }
    Some(text.to_string())
}

/// Reads one source credential; `pem`: a multi-line PEM key rather than a one-line value.
/// Returns the value and the file it was read from.
fn read_source(
    raw: &Located<RawValueSource>,
    pem: bool,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(SecretString, Option<PathBuf>, Option<String>)> {
    let r = &raw.value;
    let argv: Vec<String>;
    let (source, site, file) = match (&r.from_env, &r.from_file, &r.from_command) {
        (Some(env), None, None) => (Source::Env(&env.value), Site::from(env), None),
        (None, Some(path), None) => (
            Source::File(Path::new(&path.value)),
            Site::from(path),
            Some(PathBuf::from(&path.value)),
        ),
        (None, None, Some(command)) if !command.value.is_empty() => {
            argv = command.value.iter().map(|a| a.value.clone()).collect();
            (Source::Command(&argv), Site::from(command), None)
        }
        _ => {
            sink.at(
                raw,
                "needs exactly one of from_env, from_file or from_command",
                "keep exactly one of from_env, from_file or from_command",
            );
            return None;
        }
    };
    let read = if pem {
        secrets::read_pem(&source, checker.env)
    } else {
        secrets::read_value(&source, checker.env)
    };
    match read {
        Ok(value) => Some((value, file, r.from_env.as_ref().map(|e| e.value.clone()))),
        Err(e) => {
            sink.error(site.pos, &site.path, e.message, e.fix);
            None
        }
    }
}

/// The refresh token's file, read like a `from_file` value.
fn read_refresh_token(
    path: &Located<String>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(SecretString, Option<PathBuf>, Option<String>)> {
    match secrets::read_value(&Source::File(Path::new(&path.value)), checker.env) {
        Ok(value) => Some((value, Some(PathBuf::from(&path.value)), None)),
        Err(e) => {
            sink.at(path, e.message, e.fix);
            None
        }
    }
}

/// A policy's `github:`, `oauth2:` and `aws:`.
pub(super) fn check_scope(raw: &RawPolicy, sink: &mut Sink<'_>) -> LeaseScope {
    LeaseScope {
        github: raw.github.as_ref().map(|g| check_github_scope(g, sink)),
        oauth2_scope: raw
            .oauth2
            .as_ref()
            .and_then(|o: &Located<RawPolicyOauth2>| o.value.scope.as_ref())
            .map(|s| s.value.trim().to_string())
            .filter(|s| !s.is_empty()),
        aws_session_policy: super::sts::check_policy_aws(raw, sink),
    }
}

const LEVELS: [&str; 3] = ["read", "write", "admin"];

fn check_github_scope(raw: &Located<RawPolicyGithub>, sink: &mut Sink<'_>) -> GithubScope {
    let repositories = raw.value.repositories.as_ref().map(|list| {
        list.value
            .iter()
            .filter(|repo| {
                let ok = !repo.value.is_empty()
                    && repo
                        .value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    sink.at(
                        repo,
                        format!("\"{}\" is not a repository name", repo.value),
                        "write the name without its owner, e.g. widget for acme/widget",
                    );
                }
                ok
            })
            .map(|repo| repo.value.clone())
            .collect()
    });
    let permissions = raw.value.permissions.as_ref().map(|entries| {
        let mut map = BTreeMap::new();
        for (name, level) in &entries.value.0 {
            if !LEVELS.contains(&level.value.as_str()) {
                sink.at(
                    level,
                    format!("\"{}\" is not a permission level", level.value),
                    "write read, write or admin",
                );
                continue;
            }
            map.insert(name.value.clone(), level.value.clone());
        }
        map
    });
    GithubScope {
        repositories,
        permissions,
    }
}
