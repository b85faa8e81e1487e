//! `keyswap check`'s account of what it read: every environment variable the config made it
//! read (names only, never a value) and every file and command a secret came from, so that
//! an operator sees which environment `run` and a reload will need. Never prints a value.

use std::cell::RefCell;
use std::fmt::Write;

use keyswap_config::{Config, EnvSource, ProcessEnv, SecretSource};

/// An environment (the process's for `check`), remembering the name of every variable read
/// (in order, once).
pub(super) struct RecordingEnv<'e> {
    inner: &'e dyn EnvSource,
    read: RefCell<Vec<String>>,
}

impl RecordingEnv<'static> {
    /// The process environment, which `run` reads too.
    pub(super) fn process() -> Self {
        RecordingEnv::over(&ProcessEnv)
    }
}

impl<'e> RecordingEnv<'e> {
    pub(super) fn over(inner: &'e dyn EnvSource) -> Self {
        RecordingEnv {
            inner,
            read: RefCell::default(),
        }
    }
}

impl EnvSource for RecordingEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|n| n == name) {
            read.push(name.to_string());
        }
        self.inner.var(name)
    }
}

impl RecordingEnv<'_> {
    /// The lines that say what was read, for a config that loaded.
    pub(super) fn report(&self, config: &Config) -> String {
        let mut out = String::new();
        let read = self.read.borrow();
        let width = read.iter().map(String::len).max().unwrap_or(0);
        if read.is_empty() {
            let _ = writeln!(out, "environment (none read)");
        } else {
            let _ = writeln!(out, "environment (read from this shell; values not shown)");
        }
        for name in read.iter() {
            let secrets: Vec<&str> = config
                .secrets
                .iter()
                .filter(|s| matches!(&s.source, SecretSource::Env(n) if n == name))
                .map(|s| s.name.as_str())
                .collect();
            let what = if secrets.is_empty() {
                "token_env of a task or of admin".to_string()
            } else {
                format!("secret {} (from_env)", secrets.join(", "))
            };
            let _ = writeln!(out, "  {name:<width$}  {what}");
        }
        for secret in &config.secrets {
            match &secret.source {
                SecretSource::Env(_) => {}
                SecretSource::File(path) => {
                    let _ = writeln!(
                        out,
                        "  secret {} read from file {}",
                        secret.name,
                        path.display()
                    );
                }
                SecretSource::Command(argv) => {
                    let program = argv.first().map_or("", String::as_str);
                    let _ = writeln!(
                        out,
                        "  secret {} read from command `{program}`",
                        secret.name
                    );
                }
            }
        }
        if !read.is_empty() || !config.secrets.is_empty() {
            let _ = writeln!(
                out,
                "  `keyswap run` reads these when it starts, from its own environment; a reload (SIGHUP,\n  \
                 `keyswap reload`) reads them again there, from the running proxy's environment, not this shell's"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn check_names_the_variables_it_read_and_never_their_values() {
        let values = HashMap::from([
            (
                "KS_CHECK_SECRET".to_string(),
                "KSREAL-check-0123456789".to_string(),
            ),
            (
                "KS_CHECK_TOKEN".to_string(),
                "check-task-token-0123".to_string(),
            ),
            (
                "KS_CHECK_UNUSED".to_string(),
                "never-read-0123456789".to_string(),
            ),
        ]);
        let yaml = r#"
version: 1
secrets:
  github:
    from_env: KS_CHECK_SECRET
    placeholder: ghp_keyswap_check_0000000000
    headers: [authorization]
  npm:
    from_command: [printf, "%s", "KSREAL-check-command-value"]
    placeholder: npm_keyswap_check_0000000000
    headers: [authorization]
tasks:
  t:
    token_env: KS_CHECK_TOKEN
    allow:
      - host: api.github.com
        secrets: [github, npm]
"#;
        let env = RecordingEnv::over(&values);
        let config = keyswap_config::load_str(yaml, Path::new("k.yaml"), &env)
            .unwrap_or_else(|e| panic!("{e}"));
        let report = env.report(&config);
        assert!(
            report.contains("  KS_CHECK_SECRET  secret github (from_env)\n"),
            "{report}"
        );
        assert!(
            report.contains("  KS_CHECK_TOKEN   token_env of a task or of admin\n"),
            "{report}"
        );
        assert!(
            report.contains("  secret npm read from command `printf`\n"),
            "{report}"
        );
        assert!(report.contains("not this shell's"), "{report}");
        assert!(!report.contains("KS_CHECK_UNUSED"), "{report}");
        for value in values.values() {
            assert!(!report.contains(value.as_str()), "a value in:\n{report}");
        }
        assert!(!report.contains("KSREAL"), "a value in:\n{report}");
    }
}
