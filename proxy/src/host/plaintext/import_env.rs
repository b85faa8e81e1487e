//! `keyswap import-env`'s pieces: which variables of a `.env` look like credentials, the
//! placeholder that takes a value's place, the 0600 file the value moves to, and the atomic
//! rewrite of a file. The command itself ([`crate::cli`]) strings them together.
//!
//! A value is read from the `.env` into a [`SecretString`] and written only to its secret
//! file; nothing here formats it, and no copy (backup, temp file left behind) survives.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

/// Token prefixes keyswap recognises in a value, longest first, with the API host the token
/// is for (`None`: no single host, e.g. AWS, whose requests are signed, not swapped).
pub const KNOWN_PREFIXES: &[(&str, Option<&str>)] = &[
    ("github_pat_", Some("api.github.com")),
    ("sk-proj-", Some("api.openai.com")),
    ("sk-ant-", Some("api.anthropic.com")),
    ("glpat-", Some("gitlab.com")),
    ("xoxb-", Some("slack.com")),
    ("xoxp-", Some("slack.com")),
    ("ghp_", Some("api.github.com")),
    ("gho_", Some("api.github.com")),
    ("ghu_", Some("api.github.com")),
    ("ghs_", Some("api.github.com")),
    ("ghr_", Some("api.github.com")),
    ("AKIA", None),
    ("ASIA", None),
    ("sk-", Some("api.openai.com")),
];

/// A known token prefix needs at least this many characters after it to count as a token.
const MIN_TOKEN_BODY: usize = 16;

/// The name suffixes (and the infix) of credential variables, upper case.
const NAME_SUFFIXES: &[&str] = &["_TOKEN", "_KEY", "_SECRET"];
const NAME_INFIX: &str = "PASSWORD";

/// Why a variable is taken for a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looks {
    /// Its name (`*_TOKEN`, `*_KEY`, `*_SECRET`, `*PASSWORD*`).
    ByName,
    /// Its value starts with this known token prefix.
    ByShape(&'static str),
}

/// The known prefix `value` starts with, if it is long enough to be such a token.
pub fn known_prefix(value: &str) -> Option<&'static str> {
    KNOWN_PREFIXES
        .iter()
        .map(|(p, _)| *p)
        .find(|p| value.starts_with(p) && value.len() >= p.len() + MIN_TOKEN_BODY)
}

/// Whether variable `name` with `value` looks like a credential, and why.
pub fn looks_like_credential(name: &str, value: &str) -> Option<Looks> {
    if let Some(prefix) = known_prefix(value) {
        return Some(Looks::ByShape(prefix));
    }
    let upper = name.to_ascii_uppercase();
    let by_name = NAME_SUFFIXES.iter().any(|s| upper.ends_with(s))
        || upper.contains(NAME_INFIX)
        || ["TOKEN", "KEY", "SECRET"].contains(&upper.as_str());
    by_name.then_some(Looks::ByName)
}

/// The API host of a token with this known prefix.
pub fn host_for_prefix(prefix: &str) -> Option<&'static str> {
    KNOWN_PREFIXES
        .iter()
        .find(|(p, _)| *p == prefix)
        .and_then(|(_, host)| *host)
}

/// Longest placeholder generated (the config allows 256).
const MAX_PLACEHOLDER: usize = 256;

/// A placeholder of the same shape as `value`: its known prefix, then random characters, as
/// many as the rest of the value has, drawn from the letter cases and digits the rest uses;
/// `-` and `_` stay where they are (clients that check a token's format still accept it). It
/// reveals the value's length and separators, never one of its characters.
pub fn placeholder_for(value: &SecretString) -> Result<String, ring::error::Unspecified> {
    let value = value.expose_secret();
    let prefix = known_prefix(value).unwrap_or("");
    let body = &value[prefix.len()..];
    let mut alphabet = Vec::new();
    let classes: [&[u8]; 3] = [
        b"abcdefghijklmnopqrstuvwxyz",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        b"0123456789",
    ];
    for chars in classes {
        if body.bytes().any(|b| chars.contains(&b)) {
            alphabet.extend_from_slice(chars);
        }
    }
    if alphabet.len() < 16 {
        // Too few kinds of character to be random enough: letters and digits.
        alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789".to_vec();
    }
    let rng = SystemRandom::new();
    let mut out = String::from(prefix);
    let room = MAX_PLACEHOLDER - prefix.len();
    for c in body.chars().take(room) {
        if c == '-' || c == '_' {
            out.push(c);
        } else {
            out.push(random_from(&rng, &alphabet)? as char);
        }
    }
    // A value shorter than 8 bytes is not imported; keep the config's minimum anyway.
    while out.len() < 8 {
        out.push(random_from(&rng, &alphabet)? as char);
    }
    Ok(out)
}

/// One uniformly drawn byte of `alphabet` (rejection sampling, no modulo bias).
fn random_from(rng: &SystemRandom, alphabet: &[u8]) -> Result<u8, ring::error::Unspecified> {
    let limit = 256 - 256 % alphabet.len();
    loop {
        let mut b = [0u8; 1];
        rng.fill(&mut b)?;
        if usize::from(b[0]) < limit {
            return Ok(alphabet[usize::from(b[0]) % alphabet.len()]);
        }
    }
}

/// A secret name (`a-z`, `0-9`, `_`, `-`, at most 64) for variable `var`.
pub fn secret_name(var: &str) -> String {
    let name: String = var
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(60)
        .collect();
    if name.is_empty() {
        "secret".into()
    } else {
        name
    }
}

/// keyswap's state directory for secret files when `--secrets-dir` is not given:
/// `$XDG_STATE_HOME/keyswap/secrets`, else `$HOME/.local/state/keyswap/secrets` — in the
/// user's home, outside any working tree (the project's `./.keyswap/` usually is inside one).
pub fn default_secrets_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("keyswap").join("secrets"))
}

/// Creates `dir` (mode 0700 for what it creates) and returns its canonical path.
pub fn ensure_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    dir.canonicalize()
}

/// Writes `value` to a new file `path`, mode 0600; fails if the file exists.
pub fn write_secret_file(path: &Path, value: &SecretString) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file
        .write_all(value.expose_secret().as_bytes())
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Replaces `path` with `contents` atomically (a temporary file beside it, renamed over it),
/// keeping its permission bits. The temporary file is removed if anything fails.
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".keyswap-rewrite")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    temp.write_all(contents)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Whether git tracks `file` (`git ls-files --error-unmatch`); `None` when git cannot tell
/// (not installed, or not inside a repository).
pub fn tracked_by_git(file: &Path) -> Option<bool> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = file.file_name()?;
    let inside = git(dir, &["rev-parse", "--is-inside-work-tree"])?;
    if !inside.status.success() {
        return None;
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-files", "--error-unmatch", "--"])
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    Some(out.success())
}

/// The top of the git working tree `dir` is in, if any.
pub fn git_toplevel(dir: &Path) -> Option<PathBuf> {
    let out = git(dir, &["rev-parse", "--show-toplevel"])?;
    if !out.status.success() {
        return None;
    }
    let top = String::from_utf8(out.stdout).ok()?;
    PathBuf::from(top.trim_end()).canonicalize().ok()
}

fn git(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_told_by_name_and_by_shape() {
        assert_eq!(
            looks_like_credential("GITHUB_TOKEN", "x"),
            Some(Looks::ByName)
        );
        assert_eq!(
            looks_like_credential("DB_PASSWORD_FILE", "x"),
            Some(Looks::ByName)
        );
        assert_eq!(
            looks_like_credential("GH", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
            Some(Looks::ByShape("ghp_"))
        );
        assert_eq!(
            looks_like_credential("ID", "AKIAIOSFODNN7EXAMPLE"),
            Some(Looks::ByShape("AKIA"))
        );
        assert_eq!(looks_like_credential("PORT", "8080"), None);
        assert_eq!(looks_like_credential("MODE", "sk-short"), None);
    }

    #[test]
    fn a_placeholder_keeps_the_prefix_length_and_separators_only() {
        let value =
            SecretString::from("github_pat_11ABCDEFG0abcdefghij_klmnopqrstuvwxyz0123456789");
        let p = placeholder_for(&value).expect("random");
        assert!(p.starts_with("github_pat_"));
        assert_eq!(p.len(), value.expose_secret().len());
        assert_eq!(p.find('_'), Some(6));
        assert_eq!(p.rfind('_'), value.expose_secret().rfind('_'));
        assert_ne!(p, value.expose_secret());
        let other = placeholder_for(&value).expect("random");
        assert_ne!(p, other);
        let plain = placeholder_for(&SecretString::from("abcdefgh")).expect("random");
        assert_eq!(plain.len(), 8);
        assert!(plain.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn secret_names_are_valid_config_names() {
        assert_eq!(secret_name("GITHUB_TOKEN"), "github_token");
        assert_eq!(secret_name("A.B"), "a_b");
    }
}
