//! What the sandbox is asked to do, built by `exec` and checked by the helper.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The user the helper becomes before it creates any namespace (exec run as root with
/// `--user`): the command's uid and gid inside map to these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The command and what it must not see.
#[derive(Clone, Serialize, Deserialize)]
pub struct StartPlan {
    /// The program (looked up in the plan's own `PATH` when it has no `/`) and its arguments.
    pub command: Vec<String>,
    /// The command's whole environment: nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// The command's working directory.
    pub cwd: PathBuf,
    /// Absolute paths the command must not read: a file reads as empty, a directory is empty.
    /// Paths that do not exist are skipped.
    pub hide: Vec<PathBuf>,
    /// Absolute paths the command may read but not change.
    pub read_only: Vec<PathBuf>,
    /// Absolute paths under `/tmp` or `/dev/shm` that stay visible although those become
    /// private (the working directory, keyswap's CA trust files, `sandbox.expose` entries).
    pub keep: Vec<PathBuf>,
}

impl std::fmt::Debug for StartPlan {
    // The environment holds the task's proxy URL (its token): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("StartPlan")
            .field("program", &self.command.first())
            .field("args", &self.command.len().saturating_sub(1))
            .field("env", &names)
            .field("cwd", &self.cwd)
            .field("hide", &self.hide)
            .field("read_only", &self.read_only)
            .field("keep", &self.keep)
            .finish()
    }
}

/// Directories the sandbox replaces with a private, empty tmpfs: what other processes of the
/// user leave there (tmux, screen and editor-server sockets, ssh-agent sockets, X11 sockets)
/// would let the command act outside the sandbox.
pub const PRIVATE_DIRS: &[&str] = &["/tmp", "/dev/shm"];

impl StartPlan {
    /// The plan's problems, if any: every path must be absolute, the command non-empty.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.command.is_empty() {
            problems.push("no command".to_string());
        }
        if !self.cwd.is_absolute() {
            problems.push(format!(
                "working directory {} is not absolute",
                self.cwd.display()
            ));
        }
        for (what, paths) in [
            ("hide", &self.hide),
            ("read_only", &self.read_only),
            ("keep", &self.keep),
        ] {
            for path in paths.iter().filter(|p| !p.is_absolute()) {
                problems.push(format!("{what}: {} is not absolute", path.display()));
            }
        }
        problems
    }

    /// The value of `name` in the command's environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
