//! Real secret values: reading them from the environment, a file or a command, and the
//! checks that keep them safe to swap into headers and to scrub from responses.
//!
//! This is the only module that looks inside a [`SecretString`]. It must never put a value
//! (or a command's output, or its stderr, which is discarded) into an error, a warning or
//! a log; errors name the secret's source only (variable name, file path, `argv[0]`).
//! Intermediate buffers are zeroized; the value ends up only in a `SecretString`.
//! Relative file paths and commands are resolved from the process's working directory
//! (commands are looked up in `PATH`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secrecy::zeroize::Zeroizing;

use crate::error::io_reason;
use crate::model::SecretSource;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// Values shorter than this cannot be scrubbed from responses without also rewriting
/// unrelated text (and are too weak to be real credentials anyway).
pub const MIN_VALUE_LEN: usize = 8;
/// A credential is small; anything bigger is a wrong file or a chatty command.
const MAX_VALUE_LEN: usize = 64 * 1024;
/// `from_command` must finish within this time (e.g. a password manager waiting for a
/// prompt that never comes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `from_env` and `token_env` are read from: the process environment in production,
/// a map in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (`std::env::var`; a value that is not UTF-8 counts as unset).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where a secret's value comes from.
pub(crate) enum Source<'a> {
    Env(&'a str),
    File(&'a Path),
    Command(&'a [String]),
}

impl Source<'_> {
    /// The owned form kept in the model (for refreshes).
    pub fn to_model(&self) -> SecretSource {
        match self {
            Source::Env(name) => SecretSource::Env(name.to_string()),
            Source::File(path) => SecretSource::File(path.to_path_buf()),
            Source::Command(argv) => SecretSource::Command(argv.to_vec()),
        }
    }

    /// Names the source for messages (never includes the value or command arguments,
    /// which may carry sensitive references).
    pub fn describe(&self) -> String {
        match self {
            Source::Env(name) => format!("environment variable {name}"),
            Source::File(path) => format!("file {}", path.display()),
            Source::Command(argv) => {
                format!("command `{}`", argv.first().map_or("", String::as_str))
            }
        }
    }
}

/// Why a value could not be read or is not acceptable. Never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub message: String,
    pub fix: String,
}

fn source_error(message: impl Into<String>, fix: impl Into<String>) -> SourceError {
    SourceError {
        message: message.into(),
        fix: fix.into(),
    }
}

/// Reads `source` again with every check of a load (a refresh). The error names the
/// source and says how to fix it; it never contains a value or a command's output.
pub fn reread(source: &SecretSource, env: &dyn EnvSource) -> Result<SecretString, String> {
    let source = match source {
        SecretSource::Env(name) => Source::Env(name),
        SecretSource::File(path) => Source::File(path),
        SecretSource::Command(argv) => Source::Command(argv),
        SecretSource::Lease => return Err("a lease secret is minted, not read".to_string()),
    };
    read_value(&source, env).map_err(|e| format!("{}; {}", e.message, e.fix))
}

/// Reads and checks a secret's value.
pub(crate) fn read_value(
    source: &Source<'_>,
    env: &dyn EnvSource,
) -> Result<SecretString, SourceError> {
    let what = source.describe();
    let (mut bytes, fix) = match source {
        Source::Env(name) => {
            let value = env.var(name).ok_or_else(|| {
                source_error(
                    format!("{what} is not set"),
                    format!("export {name} before starting keyswap"),
                )
            })?;
            (
                Zeroizing::new(value.into_bytes()),
                format!("set {name} to the credential alone"),
            )
        }
        Source::File(path) => (
            read_file(path)?,
            "put the credential alone in the file".to_string(),
        ),
        Source::Command(argv) => (
            run(argv)?,
            "make the command print only the credential".to_string(),
        ),
    };
    if !matches!(source, Source::Env(_)) {
        // Files and commands end their output with a newline by convention.
        let strip = if bytes.ends_with(b"\r\n") {
            2
        } else {
            usize::from(bytes.ends_with(b"\n"))
        };
        let keep = bytes.len() - strip;
        bytes.truncate(keep);
    }
    if let Some(problem) = value_problem(&bytes) {
        return Err(source_error(
            format!("the value from {what} {problem}"),
            fix,
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| source_error(format!("the value from {what} is not valid UTF-8"), fix))?;
    // An exact-size copy: `bytes` (zeroized on drop) is the only other copy.
    Ok(SecretString::from(Box::<str>::from(text)))
}

/// Reads a PEM private key (several lines): the text as read, which must be UTF-8 and hold a
/// `PRIVATE KEY` block. Errors name the source, never a byte of the key.
pub(crate) fn read_pem(
    source: &Source<'_>,
    env: &dyn EnvSource,
) -> Result<SecretString, SourceError> {
    let what = source.describe();
    let bytes = match source {
        Source::Env(name) => Zeroizing::new(
            env.var(name)
                .ok_or_else(|| {
                    source_error(
                        format!("{what} is not set"),
                        format!("export {name} before starting keyswap"),
                    )
                })?
                .into_bytes(),
        ),
        Source::File(path) => read_file(path)?,
        Source::Command(argv) => run(argv)?,
    };
    let fix =
        "use the PEM file GitHub gave for the App (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)";
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| source_error(format!("the key from {what} is not valid UTF-8"), fix))?;
    if !text.contains("-----BEGIN") || !text.contains("PRIVATE KEY-----") {
        return Err(source_error(
            format!("the key from {what} is not a PEM private key"),
            fix,
        ));
    }
    Ok(SecretString::from(Box::<str>::from(text)))
}

/// An audit chain key must be too long to guess: the chain is only as strong as the key.
pub const MIN_AUDIT_KEY_LEN: usize = 32;

/// Reads `audit.key_file`: the HMAC key of the audit chain, the file's bytes without one
/// trailing newline, at least [`MIN_AUDIT_KEY_LEN`] bytes. Errors name the path, never a
/// byte of the key. Used by the config load and by `keyswap audit verify --key-file`.
pub fn read_audit_key(path: &Path) -> Result<SecretSlice<u8>, SourceError> {
    let mut bytes = read_file(path)?;
    let strip = if bytes.ends_with(b"\r\n") {
        2
    } else {
        usize::from(bytes.ends_with(b"\n"))
    };
    let keep = bytes.len() - strip;
    bytes.truncate(keep);
    if bytes.len() < MIN_AUDIT_KEY_LEN {
        return Err(source_error(
            format!(
                "file {} holds {} bytes, too short for an audit key (at least {MIN_AUDIT_KEY_LEN})",
                path.display(),
                bytes.len()
            ),
            format!(
                "generate one: `head -c 32 /dev/urandom | base64 > {0} && chmod 600 {0}`",
                path.display()
            ),
        ));
    }
    // An exact-size copy: `bytes` (zeroized on drop) is the only other copy.
    Ok(SecretSlice::from(bytes.to_vec()))
}

/// The admin API's bearer token lets its holder issue credentials for any policy: it must
/// be too long to guess.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// A task's token is the only thing between an agent and every other task's grants: it
/// must be too long to guess.
pub const MIN_TASK_TOKEN_LEN: usize = 16;

/// Reads a task's proxy password from `token_env`: at least [`MIN_TASK_TOKEN_LEN`] bytes.
pub(crate) fn read_token(name: &str, env: &dyn EnvSource) -> Result<SecretString, SourceError> {
    let fix = format!(
        "set it to a random token of at least {MIN_TASK_TOKEN_LEN} bytes, e.g. `export {name}=$(head -c 24 /dev/urandom | base64)`"
    );
    let token = read_env_token(name, env, &fix)?;
    if token.expose_secret().len() < MIN_TASK_TOKEN_LEN {
        return Err(source_error(
            format!(
                "the value of environment variable {name} is shorter than {MIN_TASK_TOKEN_LEN} bytes, too short for a task token"
            ),
            fix,
        ));
    }
    Ok(token)
}

/// Reads the admin API's bearer token from `admin.token_env`: a task token's checks, and at
/// least [`MIN_ADMIN_TOKEN_LEN`] bytes.
pub(crate) fn read_admin_token(
    name: &str,
    env: &dyn EnvSource,
) -> Result<SecretString, SourceError> {
    // What to do about a token that is empty or too short.
    let fix = format!(
        "set it to a random token of at least {MIN_ADMIN_TOKEN_LEN} bytes, e.g. `export {name}=$(head -c 24 /dev/urandom | base64)`"
    );
    let token = read_env_token(name, env, &fix)?;
    if token.expose_secret().len() < MIN_ADMIN_TOKEN_LEN {
        return Err(source_error(
            format!(
                "the value of environment variable {name} is shorter than {MIN_ADMIN_TOKEN_LEN} bytes, too short for the admin API's bearer token"
            ),
            fix,
        ));
    }
    Ok(token)
}

/// Reads a parent proxy's `user:password` from `upstream.proxy.auth_env`.
pub(crate) fn read_proxy_auth(
    name: &str,
    env: &dyn EnvSource,
) -> Result<SecretString, SourceError> {
    let fix =
        format!("set it to user:password, e.g. `export {name}=alice:$(cat ~/.proxy-password)`");
    let credentials = read_env_token(name, env, &fix)?;
    if !credentials.expose_secret().contains(':') {
        return Err(source_error(
            format!(
                "the value of environment variable {name} has no ':' between user and password"
            ),
            fix,
        ));
    }
    Ok(credentials)
}

/// Reads the shared store's password from `store.redis.password_env`.
pub(crate) fn read_store_password(
    name: &str,
    env: &dyn EnvSource,
) -> Result<SecretString, SourceError> {
    read_env_token(
        name,
        env,
        "set it to the store's password (Redis `requirepass` or an ACL user's)",
    )
}

fn read_env_token(
    name: &str,
    env: &dyn EnvSource,
    empty_fix: &str,
) -> Result<SecretString, SourceError> {
    let value = Zeroizing::new(env.var(name).ok_or_else(|| {
        source_error(
            format!("environment variable {name} is not set"),
            format!("export {name} before starting keyswap"),
        )
    })?);
    if value.is_empty() {
        return Err(source_error(
            format!("environment variable {name} is empty"),
            empty_fix,
        ));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7F) {
        return Err(source_error(
            format!("the value of environment variable {name} contains a control character"),
            "use a token of printable characters",
        ));
    }
    Ok(SecretString::from(Box::<str>::from(value.as_str())))
}

/// What is wrong with a value, in words that do not reveal it.
fn value_problem(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("is empty".into());
    }
    if bytes.len() < MIN_VALUE_LEN {
        return Some(format!(
            "is shorter than {MIN_VALUE_LEN} bytes, too short to be scrubbed from responses safely"
        ));
    }
    if bytes.len() > MAX_VALUE_LEN {
        return Some(format!("is longer than {MAX_VALUE_LEN} bytes"));
    }
    if bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Some("contains a line break or NUL, which cannot be sent in a header".into());
    }
    if bytes.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7F) {
        return Some("contains a control character, which cannot be sent in a header".into());
    }
    None
}

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SourceError> {
    let what = format!("file {}", path.display());
    let fail = |e: std::io::Error| {
        source_error(
            format!("{what} cannot be read: {}", io_reason(&e)),
            "check the path (relative to the working directory) and its permissions",
        )
    };
    let file = std::fs::File::open(path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    if len > MAX_VALUE_LEN as u64 {
        return Err(source_error(
            format!("{what} is larger than {MAX_VALUE_LEN} bytes"),
            "point from_file at a file holding only the credential",
        ));
    }
    // Sized up front so that reading never reallocates (a reallocation would leave a copy
    // of the value in freed memory).
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_VALUE_LEN + 1));
    file.take(MAX_VALUE_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(fail)?;
    Ok(buf)
}

fn run(argv: &[String]) -> Result<Zeroizing<Vec<u8>>, SourceError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(source_error(
            "from_command is empty",
            "write the command as a list, e.g. [op, read, \"op://vault/item\"]",
        ));
    };
    let what = format!("command `{program}`");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            source_error(
                format!("{what} could not be started: {}", io_reason(&e)),
                "check that the program exists and is executable (it is looked up in PATH)",
            )
        })?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(source_error(
            format!("{what} has no output pipe"),
            "run keyswap again",
        ));
    };
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_VALUE_LEN + 1));
        let result = stdout
            .take(MAX_VALUE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = sender.send(result);
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let timed_out = || {
        source_error(
            format!(
                "{what} did not finish within {} seconds",
                COMMAND_TIMEOUT.as_secs()
            ),
            "make sure it runs without prompting (stdin is closed)",
        )
    };
    let output = match receiver.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(source_error(
                format!("{what}'s output could not be read: {}", io_reason(&e)),
                "run the command by hand to check it",
            ));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(source_error(
                    format!("{what} could not be waited for: {}", io_reason(&e)),
                    "run keyswap again",
                ))
            }
        }
    };
    if !status.success() {
        return Err(source_error(
            format!("{what} failed ({status})"),
            "run the command by hand to see why (its output is never shown by keyswap)",
        ));
    }
    Ok(output)
}

/// Placeholder syntax: 8–256 visible ASCII characters.
pub(crate) fn placeholder_problem(placeholder: &str) -> Option<SourceError> {
    let len = placeholder.chars().count();
    let fix = "use 8 to 256 visible ASCII characters, e.g. \"ks-github-placeholder-0001\"";
    if len < 8 {
        return Some(source_error(
            format!("placeholder \"{placeholder}\" is shorter than 8 characters"),
            fix,
        ));
    }
    if len > 256 {
        return Some(source_error(
            "placeholder is longer than 256 characters",
            fix,
        ));
    }
    if let Some(bad) = placeholder.chars().find(|c| !('!'..='~').contains(c)) {
        return Some(source_error(
            format!(
                "placeholder \"{}\" contains {bad:?}; only visible ASCII characters are allowed",
                placeholder.escape_debug()
            ),
            fix,
        ));
    }
    None
}

/// Whether `text` (a placeholder or a token) contains the real `value`.
///
/// Ignoring ASCII case, as the response scrubber matches: a placeholder equal to a value but
/// for case would hand the agent the value.
pub(crate) fn contains_value(text: &str, value: &SecretString) -> bool {
    text.to_ascii_lowercase()
        .contains(&value.expose_secret().to_ascii_lowercase())
}

/// Whether the real `value` contains `text` (a placeholder), ignoring ASCII case.
pub(crate) fn value_contains(value: &SecretString, text: &str) -> bool {
    value
        .expose_secret()
        .to_ascii_lowercase()
        .contains(&text.to_ascii_lowercase())
}

/// Whether a token contains a real value.
pub(crate) fn token_contains_value(token: &SecretString, value: &SecretString) -> bool {
    token.expose_secret().contains(value.expose_secret())
}

/// Whether two tokens are the same.
pub(crate) fn same_token(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}

/// Leading or trailing whitespace is usually a copy-paste slip (and some servers trim it).
pub(crate) fn has_outer_whitespace(value: &SecretString) -> bool {
    let v = value.expose_secret();
    v.trim() != v
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "unit-real-value-0123456789";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expose(s: &SecretString) -> &str {
        s.expose_secret()
    }

    #[test]
    fn env_values_are_read_and_checked() {
        let e = env(&[
            ("GOOD", VALUE),
            ("SHORT", "abc"),
            ("NL", "abcdefgh\n"),
            ("EMPTY", ""),
        ]);
        assert_eq!(
            expose(&read_value(&Source::Env("GOOD"), &e).unwrap()),
            VALUE
        );
        let missing = read_value(&Source::Env("NOPE"), &e).unwrap_err();
        assert_eq!(missing.message, "environment variable NOPE is not set");
        assert!(read_value(&Source::Env("SHORT"), &e)
            .unwrap_err()
            .message
            .contains("shorter than 8"));
        assert!(read_value(&Source::Env("NL"), &e)
            .unwrap_err()
            .message
            .contains("line break"));
        assert!(read_value(&Source::Env("EMPTY"), &e)
            .unwrap_err()
            .message
            .contains("is empty"));
        for err in [
            read_value(&Source::Env("SHORT"), &e),
            read_value(&Source::Env("NL"), &e),
        ] {
            let err = err.unwrap_err();
            assert!(!err.message.contains("abc") && !err.fix.contains("abc"));
        }
    }

    #[test]
    fn files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("lf", format!("{VALUE}\n"), Ok(VALUE)),
            ("crlf", format!("{VALUE}\r\n"), Ok(VALUE)),
            ("none", VALUE.to_string(), Ok(VALUE)),
            ("two", format!("{VALUE}\n\n"), Err("line break")),
            ("short", "abc\n".to_string(), Err("shorter than 8")),
        ];
        for (name, content, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let got = read_value(&Source::File(&path), &env(&[]));
            match want {
                Ok(v) => assert_eq!(expose(&got.unwrap()), v, "{name}"),
                Err(m) => assert!(got.unwrap_err().message.contains(m), "{name}"),
            }
        }
        let err = read_value(&Source::File(&dir.path().join("absent")), &env(&[])).unwrap_err();
        assert!(
            err.message.contains("cannot be read: not found"),
            "{}",
            err.message
        );
    }

    #[test]
    fn commands_run_without_leaking_output() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = argv(&["printf", "%s\\n", VALUE]);
        assert_eq!(
            expose(&read_value(&Source::Command(&ok), &env(&[])).unwrap()),
            VALUE
        );

        let fails = argv(&[
            "sh",
            "-c",
            "echo leaked-output-123; echo leaked-stderr >&2; exit 3",
        ]);
        let err = read_value(&Source::Command(&fails), &env(&[])).unwrap_err();
        assert!(
            err.message.starts_with("command `sh` failed"),
            "{}",
            err.message
        );
        assert!(!format!("{err:?}").contains("leaked"));

        let absent = argv(&["/nonexistent/keyswap-test-program"]);
        let err = read_value(&Source::Command(&absent), &env(&[])).unwrap_err();
        assert!(
            err.message.contains("could not be started"),
            "{}",
            err.message
        );

        let stdin_closed = argv(&[
            "sh",
            "-c",
            "read x; printf '%s' \"${x:-from-closed-stdin}\"",
        ]);
        let v = read_value(&Source::Command(&stdin_closed), &env(&[])).unwrap();
        assert_eq!(expose(&v), "from-closed-stdin");
    }

    #[test]
    fn placeholders_and_tokens() {
        assert!(placeholder_problem("ghp_keyswap_github_0000").is_none());
        assert!(placeholder_problem("short")
            .unwrap()
            .message
            .contains("shorter than 8"));
        assert!(placeholder_problem("has space inside")
            .unwrap()
            .message
            .contains("visible ASCII"));
        assert!(placeholder_problem(&"x".repeat(257)).is_some());
        let e = env(&[
            ("T", "task-token-0123456"),
            ("S", "task-token-1234"),
            ("E", ""),
        ]);
        assert!(read_token("T", &e).is_ok());
        let short = read_token("S", &e).unwrap_err();
        assert!(short.message.contains("shorter than 16 bytes"), "{short:?}");
        assert!(!short.message.contains("task-token") && !short.fix.contains("task-token"));
        assert!(read_token("E", &e).unwrap_err().message.contains("empty"));
        assert_eq!(
            read_token("X", &e).unwrap_err().message,
            "environment variable X is not set"
        );
    }

    #[test]
    fn admin_tokens_are_long_and_never_shown() {
        let long = "admin-token-0123456789";
        let e = env(&[
            ("LONG", long),
            ("SHORT", "admin-token-123"),
            ("TASK", "task-token-0123456789"),
            ("E", ""),
        ]);
        assert_eq!(expose(&read_admin_token("LONG", &e).unwrap()), long);
        let short = read_admin_token("SHORT", &e).unwrap_err();
        assert!(short.message.contains("shorter than 16 bytes"), "{short:?}");
        assert!(!short.message.contains("admin-token-123") && !short.fix.contains("admin-token"));
        assert!(read_admin_token("E", &e)
            .unwrap_err()
            .fix
            .contains("random token"));
        let a = read_admin_token("LONG", &e).unwrap();
        assert!(same_token(&a, &read_admin_token("LONG", &e).unwrap()));
        assert!(!same_token(&a, &read_token("TASK", &e).unwrap()));
    }
}
