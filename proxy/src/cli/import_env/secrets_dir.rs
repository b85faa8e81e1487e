//! Where `keyswap import-env` puts the values: a secrets directory outside the working tree
//! of the `.env` (the agent works there and would read them), and a file name in it that
//! neither the config nor the directory has yet. Reads and creates directories only; never
//! sees a value.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Usage;
use crate::host::plaintext::import_env::{default_secrets_dir, ensure_dir, git_toplevel};

/// The secrets directory, created, canonical, and outside the working tree of `file`.
pub(super) fn secrets_dir(given: Option<&Path>, file: &Path) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_path_buf(),
        None => default_secrets_dir().ok_or_else(|| {
            Usage("neither XDG_STATE_HOME nor HOME is set: pass --secrets-dir DIR".into())
        })?,
    };
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("resolving {}", parent.display()))?;
    let tree = git_toplevel(&parent).unwrap_or(parent);
    // Checked before the directory is created: a refusal leaves nothing in the tree.
    if resolved(&dir)?.starts_with(&tree) {
        return Err(Usage(format!(
            "the secrets directory {} is inside the working tree {}, where the agent would read \
             the values: pass --secrets-dir with a directory outside it",
            dir.display(),
            tree.display()
        ))
        .into());
    }
    ensure_dir(&dir).with_context(|| format!("creating {}", dir.display()))
}

/// `path` made absolute with its longest existing ancestor resolved (links followed), for a
/// path that may not exist yet.
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::env::current_dir()
        .context("reading the working directory")?
        .join(path);
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(canonical, |p, c| p.join(c)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// `base`, or `base_2`, `base_3`… : a name neither the config nor the directory has yet.
pub(super) fn free_name(base: &str, used: &[String], dir: &Path) -> String {
    let taken = |n: &str| used.iter().any(|u| u == n) || dir.join(n).symlink_metadata().is_ok();
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_string())
}
