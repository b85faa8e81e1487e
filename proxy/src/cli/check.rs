//! `keyswap check`'s account of what it read: every environment variable the config made it
//! read (names only, never a value) and every file and command a secret came from, so that
//! an operator sees which environment `run` and a reload will need; and what `keyswap exec`'s
//! sandbox will hide and make read-only. Never prints a value.

use std::cell::RefCell;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use keyswap_config::{
    protected_paths, sandbox_plan_paths, Config, EnvSource, ProcessEnv, Protected, Protection,
    SandboxPaths, SecretSource,
};

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
                SecretSource::Lease => {
                    let kind = secret.lease.as_ref().map_or("", |l| l.kind());
                    let _ = writeln!(
                        out,
                        "  secret {} is minted per task ({kind}) and revoked when the task ends",
                        secret.name
                    );
                }
            }
        }
        if config.secrets.iter().any(|s| s.lease.is_some()) {
            let _ = writeln!(out, "{}", lease_state_notice(config));
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

/// Where the lease state file is and what it holds now (counted, never shown): it holds the
/// credentials a restart must revoke, so it is worth knowing about.
fn lease_state_notice(config: &Config) -> String {
    let path = config.lease_state_file();
    let now = match std::fs::read(&path) {
        Err(_) => "none recorded now".to_string(),
        Ok(bytes) => {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(body) => {
                    let held = body["leases"].as_array().map_or(0, Vec::len);
                    format!("{held} recorded now; `keyswap run` revokes those not expired when it starts")
                }
                Err(_) => "it cannot be read; `keyswap run` moves it aside".to_string(),
            }
        }
    };
    format!(
        "  notice: lease state file {} (0600, in state_dir, hidden from exec's sandbox) holds the credentials\n  \
         minted for tasks and not yet revoked, and the GitHub installation tokens their revocation needs: {now}",
        path.display()
    )
}

/// What `keyswap exec` will hide from the command and make read-only, for this user's `HOME`
/// and `XDG_RUNTIME_DIR`: one path a line with why, `(absent)` when it does not exist now.
pub(super) fn sandbox_report(config: &Config, config_file: &Path) -> String {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    sandbox_lines(config, config_file, home.as_deref(), runtime_dir.as_deref())
}

fn sandbox_lines(
    config: &Config,
    config_file: &Path,
    home: Option<&Path>,
    runtime_dir: Option<&Path>,
) -> String {
    let mut out = String::new();
    let plan = match home {
        Some(home) => {
            let _ = writeln!(
                out,
                "sandbox (what `keyswap exec` hides from the command; HOME={}, or the --user's home)",
                home.display()
            );
            sandbox_plan_paths(config, Some(config_file), home, runtime_dir)
        }
        None => {
            let _ = writeln!(
                out,
                "sandbox (what `keyswap exec` hides from the command; HOME is not set, so the \
                 credential stores and ~/ paths of the command's home are not listed)"
            );
            let cwd = std::env::current_dir().unwrap_or_default();
            let mut plan = SandboxPaths::default();
            for p in protected_paths(config, Some(config_file)) {
                let p = Protected {
                    path: cwd.join(&p.path),
                    ..p
                };
                match p.mode {
                    Protection::Hide => plan.hide.push(p),
                    Protection::ReadOnly => plan.read_only.push(p),
                }
            }
            plan
        }
    };
    let rows: Vec<(&str, &Path, &str)> = plan
        .hide
        .iter()
        .map(|p| ("hide", p.path.as_path(), p.why.as_str()))
        .chain(
            plan.read_only
                .iter()
                .map(|p| ("read-only", p.path.as_path(), p.why.as_str())),
        )
        .chain(
            plan.expose
                .iter()
                .map(|p| ("expose", p.as_path(), "sandbox.expose")),
        )
        .collect();
    let width = rows
        .iter()
        .map(|(_, path, _)| path.display().to_string().chars().count())
        .max()
        .unwrap_or(0);
    for (mode, path, why) in rows {
        let absent = match std::fs::symlink_metadata(path) {
            Ok(_) => "",
            Err(_) => " (absent)",
        };
        let shown = path.display().to_string();
        let _ = writeln!(out, "  {mode:<9}  {shown:<width$}  {why}{absent}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn the_sandbox_section_lists_paths_with_why_and_marks_absent_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("github.txt");
        std::fs::write(&secret, "KSREAL-sandbox-report-0123456789").expect("write");
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
        let yaml = format!(
            "version: 1\nca_dir: {ca}\nsecrets:\n  github:\n    from_file: {secret}\n    placeholder: ghp_keyswap_report_000000000\nsandbox:\n  read_only: [~/bin]\n  expose: [~/.npmrc]\n",
            ca = dir.path().join("ca").display(),
            secret = secret.display()
        );
        let config = keyswap_config::load_str(&yaml, Path::new("k.yaml"), &ProcessEnv)
            .unwrap_or_else(|e| panic!("{e}"));
        let report = sandbox_lines(&config, Path::new("/etc/k.yaml"), Some(&home), None);
        let line = |what: &str| {
            report
                .lines()
                .find(|l| l.contains(what))
                .unwrap_or_else(|| panic!("{what} not in\n{report}"))
                .to_string()
        };
        let secret_line = line("secret github (from_file)");
        assert!(secret_line.starts_with("  hide "), "{secret_line}");
        assert!(secret_line.contains(&secret.display().to_string()));
        assert!(!secret_line.contains("(absent)"), "{secret_line}");
        let ca_line = line("CA private key");
        assert!(ca_line.contains(&dir.path().join("ca/ca-key.pem").display().to_string()));
        assert!(ca_line.ends_with("(absent)"), "{ca_line}");
        assert!(!line("ssh keys").contains("(absent)"));
        assert!(line("GitHub CLI token").ends_with("(absent)"));
        assert!(line("config file").starts_with("  read-only  /etc/k.yaml"));
        assert!(line("sandbox.read_only").contains(&home.join("bin").display().to_string()));
        assert!(line("sandbox.expose").starts_with("  expose "));
        assert!(!report.contains(&format!("{}  npm token", home.join(".npmrc").display())));
        assert!(!report.contains("KSREAL"), "a value in:\n{report}");
    }

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
