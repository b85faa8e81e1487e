//! The unprivileged user the sandbox tests attack from, and the commands that run as it.
//!
//! Run as root (CI), the tests create — once, idempotently, safely when several test
//! binaries start together (`flock` around `useradd`) — a system user [`AGENT_USER`] with a
//! home directory, and run every command of the agent side as that user through `setpriv`.
//! Run as anyone else, the agent is the current user: the tests still attack from a process
//! of keyswap's own user, which is the threat, but cannot test `keyswap exec --user`; such a
//! test calls [`AgentUser::require_root`], which fails under `CI=true` and prints a notice
//! that cannot be missed elsewhere.
//!
//! Never reads or formats a secret value: the commands get the environment their caller
//! chooses, nothing of the test runner's.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The user the tests create when they run as root.
pub const AGENT_USER: &str = "ksagent";

/// The `PATH` of the agent's commands when they run as [`AGENT_USER`]: the system's
/// directories, none of root's own (its home is not reachable by another user).
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Serialises `useradd` across test binaries (the passwd files' own lock makes a concurrent
/// `useradd` fail rather than wait).
const LOCK_FILE: &str = "/tmp/keyswap-tests-agent-user.lock";

/// The user the agent's commands run as.
#[derive(Debug, Clone)]
pub struct AgentUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The tests run as root and switch to this user for each command (`setpriv`); false when
    /// the agent is the current user.
    pub dedicated: bool,
}

/// The agent user, created on first use when the tests run as root.
pub fn agent_user() -> &'static AgentUser {
    static USER: OnceLock<AgentUser> = OnceLock::new();
    USER.get_or_init(|| match running_as_root() {
        true => dedicated_user(),
        false => current_user(),
    })
}

fn running_as_root() -> bool {
    output_of("id", &["-u"]).trim() == "0"
}

fn output_of(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ksagent`, created if missing, with its home directory.
fn dedicated_user() -> AgentUser {
    let home = format!("/home/{AGENT_USER}");
    let create = format!(
        "getent passwd {AGENT_USER} >/dev/null || useradd --system --user-group --create-home \
         --home-dir {home} --shell /bin/sh {AGENT_USER}"
    );
    let out = Command::new("flock")
        .args([LOCK_FILE, "sh", "-c", &create])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("flock (util-linux) could not run: {e}"));
    assert!(
        out.status.success(),
        "creating the test user {AGENT_USER} with useradd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = output_of("getent", &["passwd", AGENT_USER]);
    let fields: Vec<&str> = entry.trim().split(':').collect();
    assert!(
        fields.len() >= 7,
        "unexpected passwd entry for {AGENT_USER}"
    );
    let number = |s: &str| s.parse::<u32>().expect("a numeric id in the passwd entry");
    let user = AgentUser {
        name: AGENT_USER.to_string(),
        uid: number(fields[2]),
        gid: number(fields[3]),
        home: PathBuf::from(fields[5]),
        dedicated: true,
    };
    assert!(user.uid != 0, "{AGENT_USER} must not be root");
    // An entry made elsewhere may lack its home: the credential-store tests write there.
    std::fs::create_dir_all(&user.home).expect("the agent user's home");
    user.own(&user.home);
    user
}

/// The current user: the agent is keyswap's own user.
fn current_user() -> AgentUser {
    let number = |flag: &str| {
        output_of("id", &[flag])
            .trim()
            .parse::<u32>()
            .expect("a numeric id from id(1)")
    };
    AgentUser {
        name: output_of("id", &["-un"]).trim().to_string(),
        uid: number("-u"),
        gid: number("-g"),
        home: std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
        dedicated: false,
    }
}

impl AgentUser {
    /// `program` run as this user with a clean environment: `HOME` (the user's), `PATH`,
    /// `USER`, `LOGNAME` and `LANG`; the caller adds the test's own variables. Stdin is null.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match self.dedicated {
            true => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={}", self.uid))
                    .arg(format!("--regid={}", self.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
            false => Command::new(program),
        };
        let path = match self.dedicated {
            true => std::ffi::OsString::from(AGENT_PATH),
            false => std::env::var_os("PATH").unwrap_or_else(|| AGENT_PATH.into()),
        };
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        cmd
    }

    /// [`AgentUser::command`] for tokio, killed when dropped.
    pub fn tokio_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.command(program));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Gives `path` (recursively) to this user, so the agent's commands can use it as their
    /// working directory. A no-op when the agent is the current user.
    pub fn own(&self, path: &Path) {
        if !self.dedicated {
            return;
        }
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .output()
            .expect("chown runs");
        assert!(
            out.status.success(),
            "chown -R {} {}: {}",
            self.name,
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether this user can run `program ARGS` successfully (a probe for a tool the test
    /// needs). Under `CI=true` a missing tool fails the test; elsewhere a notice is printed.
    pub fn can_run(&self, program: &str, args: &[&str]) -> bool {
        let works = self
            .command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "`{program} {}` must work for the user {} in CI",
                    args.join(" "),
                    self.name
                );
            }
            notice(&format!(
                "`{program} {}` does not work for {}: a sandbox test did NOT run",
                args.join(" "),
                self.name
            ));
        }
        works
    }

    /// True when the tests run as root with the dedicated user (what `--user` needs). Under
    /// `CI=true` anything else fails the test; elsewhere a notice is printed.
    pub fn require_root(&self, what: &str) -> bool {
        if self.dedicated {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{what} needs root, and CI runs the tests as root");
        }
        notice(&format!("{what} needs root: the test did NOT run"));
        false
    }

    /// `binary`, or a copy of it this user can execute (the build directory may lie under a
    /// home the user cannot traverse). Copied once per binary, into the temp directory.
    pub fn executable(&self, binary: &Path) -> PathBuf {
        if !self.dedicated || self.can_execute(binary) {
            return binary.to_path_buf();
        }
        static COPIES: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> =
            std::sync::Mutex::new(Vec::new());
        let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, copy)) = copies.iter().find(|(from, _)| from == binary) {
            return copy.clone();
        }
        let dir = tempfile::Builder::new()
            .prefix("keyswap-tests-bin-")
            .tempdir()
            .expect("a directory for the agent's copy of the binary")
            .keep();
        let copy = dir.join(binary.file_name().expect("a binary's file name"));
        std::fs::copy(binary, &copy).expect("copy the binary for the agent user");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy's directory");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
        copies.push((binary.to_path_buf(), copy.clone()));
        copy
    }

    fn can_execute(&self, binary: &Path) -> bool {
        self.command("test")
            .arg("-x")
            .arg(binary)
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Straight to stderr: libtest captures `eprintln!` of passing tests.
fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** NOTICE: {text} ***\n");
}
