//! `sandbox:`: the paths `keyswap exec`'s sandbox hides, exposes or makes read-only. Each is
//! absolute, relative to the working directory, or `~/...` (kept symbolic: the agent user's
//! home is known only to exec). `expose` may not name what keyswap always protects, nor what
//! `hide` or `read_only` lists. Nothing here reads a file or touches a secret.

use std::path::{Component, Path, PathBuf};

use super::Checker;
use crate::error::Sink;
use crate::model::{Config, Sandbox, SandboxPath};
use crate::raw::RawSandbox;
use crate::read::Located;
use crate::sandbox::{clean, in_home_store, protected_paths, Protection};

const PATH_FIX: &str =
    "write an absolute path, a path relative to the working directory, or ~/... (the home of the user the command runs as)";

/// The section as written, with where each `expose` entry was written (for the checks that
/// need the whole config).
pub(super) struct Checked<'r> {
    pub sandbox: Sandbox,
    exposed: Vec<(&'r Located<String>, SandboxPath)>,
}

pub(super) fn check_sandbox<'r>(
    raw: Option<&'r Located<RawSandbox>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Checked<'r> {
    let Some(raw) = raw else {
        return Checked {
            sandbox: Sandbox::default(),
            exposed: Vec::new(),
        };
    };
    let hide = paths(raw.value.hide.as_ref(), sink);
    let read_only = paths(raw.value.read_only.as_ref(), sink);
    let exposed = paths(raw.value.expose.as_ref(), sink);
    let cwd = std::env::current_dir().unwrap_or_default();
    let key = |p: &SandboxPath| match p {
        SandboxPath::Path(path) => SandboxPath::Path(clean(&cwd, path)),
        home => home.clone(),
    };
    for (site, path) in &exposed {
        let path = key(path);
        let listed = [("hide", &hide), ("read_only", &read_only)];
        let clash = listed.iter().find_map(|(list, entries)| {
            entries
                .iter()
                .find(|(_, p)| within(&path, &key(p)))
                .map(|(other, p)| (*list, *other, key(p)))
        });
        if let Some((list, other, other_key)) = clash {
            let (this, other) = (&site.value, &other.value);
            let message = match other_key == path {
                true => format!("\"{this}\" is also in sandbox.{list} (as \"{other}\")"),
                false => format!("\"{this}\" is inside \"{other}\", which sandbox.{list} lists"),
            };
            sink.at(
                site,
                message,
                format!("keep it in one list: sandbox.{list} applies whatever expose says"),
            );
            continue;
        }
        if let SandboxPath::Home(rest) = &path {
            if let Some(store) = in_home_store(rest) {
                checker.warn(
                    sink.file,
                    site.pos,
                    &site.path,
                    format!(
                        "\"{}\" is inside ~/{store}, a default credential store, which stays hidden; expose ~/{store} to show it",
                        site.value
                    ),
                );
            }
        }
    }
    Checked {
        sandbox: Sandbox {
            hide: hide.into_iter().map(|(_, p)| p).collect(),
            expose: exposed.iter().map(|(_, p)| p.clone()).collect(),
            read_only: read_only.into_iter().map(|(_, p)| p).collect(),
        },
        exposed,
    }
}

/// `expose` may not name a path keyswap always protects (the files secrets are read from,
/// the CA key, the admin socket, the audit log and its key, the config, `tasks_dir`), nor a
/// path inside one. A `~/` entry cannot be compared here; the plan drops it if it is one.
pub(super) fn check_expose(checked: &Checked<'_>, config: &Config, sink: &mut Sink<'_>) {
    let cwd = std::env::current_dir().unwrap_or_default();
    let protected = protected_paths(config, Some(sink.file));
    for (site, path) in &checked.exposed {
        let SandboxPath::Path(path) = path else {
            continue;
        };
        let path = clean(&cwd, path);
        let Some(guard) = protected
            .iter()
            .find(|p| path.starts_with(clean(&cwd, &p.path)))
        else {
            continue;
        };
        let always = match guard.mode {
            Protection::Hide => "always hides",
            Protection::ReadOnly => "always makes read-only",
        };
        let what = match path == clean(&cwd, &guard.path) {
            true => format!(
                "\"{}\" is the {}, which keyswap {always}",
                site.value, guard.why
            ),
            false => format!(
                "\"{}\" is inside {} (the {}), which keyswap {always}",
                site.value,
                guard.path.display(),
                guard.why
            ),
        };
        sink.at(
            site,
            what,
            "remove it from expose: the paths that hold or control credentials stay protected whatever expose says",
        );
    }
}

/// Whether `inner` is `outer` or inside it (both in the same form).
fn within(inner: &SandboxPath, outer: &SandboxPath) -> bool {
    match (inner, outer) {
        (SandboxPath::Path(i), SandboxPath::Path(o))
        | (SandboxPath::Home(i), SandboxPath::Home(o)) => i.starts_with(o),
        _ => false,
    }
}

fn paths<'r>(
    list: Option<&'r Located<Vec<Located<String>>>>,
    sink: &mut Sink<'_>,
) -> Vec<(&'r Located<String>, SandboxPath)> {
    list.map(|l| l.value.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| parse(entry, sink).map(|path| (entry, path)))
        .collect()
}

/// One path as written.
fn parse(entry: &Located<String>, sink: &mut Sink<'_>) -> Option<SandboxPath> {
    let text = entry.value.as_str();
    let refuse = |sink: &mut Sink<'_>, message: String| {
        sink.at(entry, message, PATH_FIX);
        None
    };
    if text.trim().is_empty() {
        return refuse(sink, "the path is empty".into());
    }
    if text.contains('\0') {
        return refuse(sink, "the path contains a NUL byte".into());
    }
    if text == "~" {
        return Some(SandboxPath::Home(PathBuf::new()));
    }
    if let Some(rest) = text.strip_prefix("~/") {
        let rest: PathBuf = Path::new(rest)
            .components()
            .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
            .collect();
        return Some(SandboxPath::Home(rest));
    }
    if text.starts_with('~') {
        return refuse(
            sink,
            format!("\"{text}\" names another user's home (only ~/ is understood)"),
        );
    }
    if text.starts_with('$') || text.contains("${") {
        return refuse(
            sink,
            format!("\"{text}\" holds a variable, and keyswap does not expand variables"),
        );
    }
    Some(SandboxPath::Path(PathBuf::from(text)))
}
