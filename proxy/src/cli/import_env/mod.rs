//! `keyswap import-env FILE`: move a `.env`'s credentials out of the working tree. Each
//! credential-looking variable's value goes to a new 0600 file under `--secrets-dir`, its line
//! in the `.env` gets a placeholder of the same shape, and the `secrets:` entries and rule
//! skeletons are printed (or, with `--write`, merged into the config, which must still load).
//! The value is kept nowhere else: no backup, no temporary file left behind.
//!
//! Exit 0 done (or nothing to import), 1 on a failure, 2 on a usage error. Prints variable
//! and secret names, paths and placeholders, never a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;

use crate::host::plaintext::dotenv::DotEnv;
use crate::host::plaintext::import_env::{
    host_for_prefix, looks_like_credential, placeholder_for, replace_file, secret_name,
    tracked_by_git, write_secret_file, Looks,
};
use crate::host::plaintext::merge::{self, Entry};
use secrets_dir::{free_name, secrets_dir};

mod secrets_dir;

#[derive(Debug, Args)]
pub struct ImportEnvArgs {
    /// The .env file to rewrite.
    pub file: PathBuf,
    /// The config the entries are for (read for the names and placeholders it already has;
    /// written with --write).
    #[arg(long, default_value = "keyswap.yaml")]
    pub config: PathBuf,
    /// Where the values go, one 0600 file per secret; default
    /// $XDG_STATE_HOME/keyswap/secrets (else ~/.local/state/keyswap/secrets). Must be outside
    /// the working tree.
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// The host a variable's rule skeleton names (VARIABLE=HOST, repeatable); default: from
    /// the token's prefix (ghp_ → api.github.com, sk- → api.openai.com, xoxb- → slack.com …).
    #[arg(long = "host", value_name = "NAME=HOST")]
    pub hosts: Vec<String>,
    /// Merge the entries into --config (appended to its secrets:, the rule skeletons as
    /// comments) instead of printing them; the config must still pass `keyswap check`.
    #[arg(long)]
    pub write: bool,
}

const USAGE: u8 = 2;

/// A usage error (exit 2) rather than a failure (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Usage(pub(super) String);

pub fn import_env(args: ImportEnvArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyswap import-env: {}", super::causes(&e));
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// One variable to move.
struct Move {
    var: String,
    line: usize,
    range: std::ops::Range<usize>,
    value: SecretString,
    host: Option<String>,
}

fn run(args: ImportEnvArgs) -> anyhow::Result<()> {
    let hosts = parse_hosts(&args.hosts)?;
    let file = &args.file;
    let dotenv = read_dotenv(file)?;
    let config_text = read_config(&args.config, args.write)?;
    let known_placeholders = placeholders_in(config_text.as_deref().unwrap_or(""));
    let shown = file.display();
    warn_unsupported(&dotenv, &shown.to_string());
    let moves = moves_of(&dotenv, &known_placeholders, &hosts, &shown.to_string());
    if moves.is_empty() {
        eprintln!("keyswap import-env: {shown}: no credential-looking variable to import");
        return Ok(());
    }
    let dir = secrets_dir(args.secrets_dir.as_deref(), file)?;
    let used = config_text
        .as_deref()
        .map(merge::existing_names)
        .unwrap_or_default();
    let (entries, written) = write_secret_files(&moves, used, &dir)?;
    // The merged config is checked before anything in the working tree changes: a merge that
    // would not load leaves the .env and the config as they were.
    let merged = match (&config_text, args.write) {
        (Some(text), true) => match merged_config(text, &entries, &args.config) {
            Ok(merged) => Some(merged),
            Err(e) => {
                undo(&written);
                return Err(e);
            }
        },
        _ => None,
    };
    rewrite_dotenv(file, &dotenv, &moves, &entries, &written)?;
    report_moves(file, &moves, &entries);
    match merged {
        Some(merged) => {
            replace_file(&args.config, merged.as_bytes())
                .with_context(|| format!("writing {}", args.config.display()))?;
            eprintln!(
                "keyswap import-env: added {} secret(s) to {} (rules to add are at its end, commented)",
                entries.len(),
                args.config.display()
            );
        }
        None => print!("{}", merge::printed(&entries)),
    }
    Ok(())
}

/// The `.env` file, parsed; its text is zeroed when dropped.
fn read_dotenv(file: &Path) -> anyhow::Result<DotEnv> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let text = Zeroizing::new(
        String::from_utf8(text)
            .map_err(|_| Usage(format!("{} is not UTF-8 text", file.display())))?,
    );
    Ok(DotEnv::parse(text))
}

/// The config's text: it need not exist unless `--write` merges into it.
fn read_config(config: &Path, write: bool) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(config) {
        Ok(text) => Ok(Some(text)),
        Err(_) if !write => Ok(None),
        Err(e) => Err(Usage(format!("--write: reading {}: {e}", config.display())).into()),
    }
}

/// Names the credential-looking lines the parser could not read, to be moved by hand.
fn warn_unsupported(dotenv: &DotEnv, shown: &str) {
    for skipped in &dotenv.unsupported {
        if looks_like_credential(&skipped.name, "").is_some() {
            eprintln!(
                "keyswap import-env: not imported: {} ({shown}:{}): {}; move it by hand",
                skipped.name, skipped.line, skipped.why
            );
        }
    }
}

/// The credential-looking variables to move: not empty, not already a placeholder, long
/// enough to scrub (a shorter one is named on stderr and left).
fn moves_of(
    dotenv: &DotEnv,
    known_placeholders: &[String],
    hosts: &BTreeMap<String, String>,
    shown: &str,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for a in &dotenv.assignments {
        let value = dotenv.value(a);
        let Some(looks) = looks_like_credential(&a.name, value) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        if known_placeholders.iter().any(|p| p == value) {
            continue;
        }
        if value.len() < keyswap_config::secrets::MIN_VALUE_LEN {
            eprintln!(
                "keyswap import-env: not imported: {} ({shown}:{}): shorter than {} bytes, too short for keyswap to scrub",
                a.name, a.line, keyswap_config::secrets::MIN_VALUE_LEN
            );
            continue;
        }
        let host = hosts.get(&a.name).cloned().or_else(|| match looks {
            Looks::ByShape(prefix) => host_for_prefix(prefix).map(str::to_string),
            Looks::ByName => None,
        });
        moves.push(Move {
            var: a.name.clone(),
            line: a.line,
            range: a.value.clone(),
            value: SecretString::from(value.to_string()),
            host,
        });
    }
    moves
}

/// Writes each value to its own 0600 file under `dir` and makes its placeholder: the
/// `secrets:` entries, and the files written. On a failure nothing written is left behind.
fn write_secret_files(
    moves: &[Move],
    mut used: Vec<String>,
    dir: &Path,
) -> anyhow::Result<(Vec<Entry>, Vec<PathBuf>)> {
    let mut entries = Vec::new();
    let mut written: Vec<PathBuf> = Vec::new();
    for m in moves {
        let name = free_name(&secret_name(&m.var), &used, dir);
        used.push(name.clone());
        let path = dir.join(&name);
        if let Err(e) = write_secret_file(&path, &m.value) {
            undo(&written);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        written.push(path.clone());
        let placeholder = match placeholder_for(&m.value) {
            Ok(p) => p,
            Err(_) => {
                undo(&written);
                bail!("the system's random number generator failed");
            }
        };
        entries.push(Entry {
            name,
            from_file: path,
            placeholder,
            env: m.var.clone(),
            host: m.host.clone(),
        });
    }
    Ok((entries, written))
}

/// Removes the secret files written so far.
fn undo(written: &[PathBuf]) {
    for path in written {
        let _ = std::fs::remove_file(path);
    }
}

/// The `.env` with each moved value replaced by its placeholder (the secret files are removed
/// if it cannot be written).
fn rewrite_dotenv(
    file: &Path,
    dotenv: &DotEnv,
    moves: &[Move],
    entries: &[Entry],
    written: &[PathBuf],
) -> anyhow::Result<()> {
    let replacements: Vec<_> = moves
        .iter()
        .zip(entries)
        .map(|(m, e)| (m.range.clone(), e.placeholder.clone()))
        .collect();
    let rewritten = dotenv.rewritten(&replacements);
    if let Err(e) = replace_file(file, rewritten.as_bytes()) {
        undo(written);
        return Err(e).with_context(|| format!("rewriting {}", file.display()));
    }
    Ok(())
}

/// Where each value went, and a warning when the `.env` is in git's history.
fn report_moves(file: &Path, moves: &[Move], entries: &[Entry]) {
    let shown = file.display();
    for (m, e) in moves.iter().zip(entries) {
        eprintln!(
            "keyswap import-env: {} ({shown}:{}) moved to {} (mode 0600); {shown} now holds a placeholder",
            m.var,
            m.line,
            e.from_file.display()
        );
    }
    if tracked_by_git(file) == Some(true) {
        eprintln!(
            "keyswap import-env: WARNING: {shown} is tracked by git: the real values are still in \
             its history (and in every clone and fork). Rotate them at their issuer, then put the \
             new values in the files above."
        );
    }
}

/// `NAME=HOST` pairs.
fn parse_hosts(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut hosts = BTreeMap::new();
    for pair in pairs {
        let Some((name, host)) = pair
            .split_once('=')
            .filter(|(n, h)| !n.is_empty() && !h.is_empty())
        else {
            return Err(Usage(format!(
                "--host {pair}: write VARIABLE=HOST, e.g. GITHUB_TOKEN=api.github.com"
            ))
            .into());
        };
        hosts.insert(name.to_string(), host.to_string());
    }
    Ok(hosts)
}

/// The placeholders a config's text already holds (a `.env` imported before holds these).
fn placeholders_in(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("placeholder:"))
        .map(|v| {
            v.split(" #")
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\''])
                .to_string()
        })
        .collect()
}

/// The config text with the entries merged in; it must load if the original did.
fn merged_config(text: &str, entries: &[Entry], path: &Path) -> anyhow::Result<String> {
    let merged =
        merge::merge(text, entries).map_err(|e| Usage(format!("{}: {e}", path.display())))?;
    let before = keyswap_config::load_str(text, path, &keyswap_config::ProcessEnv);
    let after = keyswap_config::load_str(&merged, path, &keyswap_config::ProcessEnv);
    match (before, after) {
        (_, Ok(_)) => Ok(merged),
        (Ok(_), Err(errors)) => bail!(
            "{} would not load with the imported secrets, so nothing was changed:\n{errors}",
            path.display()
        ),
        (Err(_), Err(_)) => {
            eprintln!(
                "keyswap import-env: WARNING: {} does not load in this shell, before or after the \
                 merge: run `keyswap check --config {}`",
                path.display(),
                path.display()
            );
            Ok(merged)
        }
    }
}
