//! keyswap's own process against the user's other processes, and the ancestry of a process
//! that talks to the admin socket.
//!
//! [`harden_self`] makes the process non-dumpable (`PR_SET_DUMPABLE 0`) and turns core dumps
//! off (`RLIMIT_CORE 0`): the kernel then refuses `/proc/PID/environ`, `/proc/PID/mem`,
//! `/proc/PID/maps` and ptrace to every process without `CAP_SYS_PTRACE`, the same user's
//! included, and a crash writes no core file holding a secret. `keyswap run` and
//! `keyswap exec` call it before the config (and so any secret) is read. The environment and
//! memory are readable only between the process's start and that call, before any secret is
//! loaded from a file or a command (a `from_env` variable is in the environment from the
//! start: that short window is what is left).
//!
//! [`become_subreaper`] is for `keyswap exec`: orphans of its command re-parent to exec
//! instead of init, so a command that double-forks stays exec's descendant and the admin
//! API's ancestry check still sees it.
//!
//! [`lineage`] walks a process's ancestors through `PPid:` in `/proc/PID/status` and notes
//! the nearest one whose command line is `keyswap exec …` (argv\[0\]'s file name is keyswap's
//! own, and the subcommand is `exec`). The command line is what can be trusted here: exec is
//! non-dumpable, so its command's processes cannot rewrite exec's memory, and
//! `/proc/PID/exe` of a non-dumpable process is unreadable to others.
//!
//! Limits, written down so nobody relies on more: a peer whose pid is 0 (it lives in a pid
//! namespace the proxy cannot see) cannot be walked at all, and the admin API allows it with a
//! warning; a peer that exits between `connect` and the walk, or any `/proc` read that fails
//! mid-walk, makes the walk an error (the admin API then refuses); a command whose `exec` was
//! killed is re-parented to init (or to the next subreaper up) and is no longer anyone's
//! descendant — `exec`'s lifeline revokes its task then, but only the sandbox (a pid
//! namespace that dies with exec) ends the command itself.
//!
//! Never reads or formats anything but pids, `PPid:` lines and command lines.

use std::ffi::OsStr;
use std::path::Path;

/// At most this many ancestors are walked (a pid chain is far shorter; a longer one means
/// `/proc` is lying or changing under the walk).
pub const MAX_ANCESTORS: usize = 4096;

/// A hardening step the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("could not turn core dumps off (setrlimit RLIMIT_CORE 0): {0}")]
    CoreLimit(#[source] nix::Error),
    #[error(
        "could not make keyswap's process non-dumpable (prctl PR_SET_DUMPABLE 0), so the \
         user's other processes could read its memory and environment: {0}"
    )]
    Dumpable(#[source] nix::Error),
    #[error("could not make this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] nix::Error),
}

/// Makes this process non-dumpable with no core dumps: its `/proc/PID/environ`,
/// `/proc/PID/mem` and ptrace are refused to the same user's other processes. Call it before
/// any secret is read; an error must stop the caller (fail closed).
pub fn harden_self() -> Result<(), GuardError> {
    use nix::sys::resource::{setrlimit, Resource};
    // The limit first: with dumpable 0 a crash writes no core anyway (suid_dumpable is 0 on
    // most systems), but a core pattern that pipes to a handler would still get one.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(GuardError::CoreLimit)?;
    nix::sys::prctl::set_dumpable(false).map_err(GuardError::Dumpable)?;
    Ok(())
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants re-parent to this process.
pub fn become_subreaper() -> Result<(), GuardError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(GuardError::Subreaper)
}

/// The ancestors of a process, as far as the walk needed to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Strict ancestors, nearest first (the walk stops at the first `keyswap exec`, or at
    /// the process whose parent is 0).
    pub ancestors: Vec<i32>,
    /// The nearest strict ancestor whose command line is `keyswap exec …`.
    pub exec_ancestor: Option<i32>,
}

/// Why a walk did not finish: the peer cannot be told apart from an agent.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no PPid: line")]
    NoParent { path: String },
    #[error("more than {MAX_ANCESTORS} ancestors")]
    TooDeep,
}

/// The ancestors of `pid` under `proc_root` (`/proc`), noting the nearest `keyswap exec`
/// (a process whose argv\[0\] file name is `own_name`, keyswap's own binary's file name).
pub fn lineage(proc_root: &Path, pid: i32, own_name: &OsStr) -> Result<Lineage, LineageError> {
    let mut ancestors = Vec::new();
    let mut current = pid;
    for _ in 0..MAX_ANCESTORS {
        let parent = parent_of(proc_root, current)?;
        if parent <= 0 {
            return Ok(Lineage {
                ancestors,
                exec_ancestor: None,
            });
        }
        ancestors.push(parent);
        let cmdline = read(proc_root, parent, "cmdline")?;
        if is_keyswap_exec(&cmdline, own_name) {
            return Ok(Lineage {
                ancestors,
                exec_ancestor: Some(parent),
            });
        }
        current = parent;
    }
    Err(LineageError::TooDeep)
}

/// The file name of the binary this process runs (what a `keyswap exec` ancestor's
/// argv\[0\] ends with); `None` if `/proc/self/exe` cannot be read.
pub fn own_binary_name() -> Option<std::ffi::OsString> {
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    // A binary replaced while running (an upgrade) reads as "keyswap (deleted)".
    Some(
        name.strip_suffix(" (deleted)")
            .unwrap_or(&name)
            .to_string()
            .into(),
    )
}

/// Whether a NUL-separated command line is `own_name [--log-format F] exec …`.
pub fn is_keyswap_exec(cmdline: &[u8], own_name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|b| *b == 0);
    let Some(argv0) = args.next() else {
        return false;
    };
    let name = Path::new(OsStr::from_bytes(argv0)).file_name();
    if own_name.is_empty() || name != Some(own_name) {
        return false;
    }
    // The subcommand is the first argument that is not a global option (or its value).
    while let Some(arg) = args.next() {
        match arg {
            b"--log-format" => {
                args.next();
            }
            _ if arg.starts_with(b"--log-format=") => {}
            _ => return arg == b"exec",
        }
    }
    false
}

fn parent_of(proc_root: &Path, pid: i32) -> Result<i32, LineageError> {
    let status = read(proc_root, pid, "status")?;
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| LineageError::NoParent {
            path: format!("{}/{pid}/status", proc_root.display()),
        })
}

fn read(proc_root: &Path, pid: i32, file: &str) -> Result<Vec<u8>, LineageError> {
    let path = proc_root.join(pid.to_string()).join(file);
    std::fs::read(&path).map_err(|source| LineageError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyswap() -> &'static OsStr {
        OsStr::new("keyswap")
    }

    #[test]
    fn a_keyswap_exec_command_line_is_recognised() {
        for cmdline in [
            &b"keyswap\0exec\0--policy\0p\0--\0sh\0"[..],
            b"/usr/local/bin/keyswap\0exec\0",
            b"./keyswap\0--log-format\0json\0exec\0--policy\0p\0",
            b"keyswap\0--log-format=json\0exec\0",
        ] {
            assert!(
                is_keyswap_exec(cmdline, keyswap()),
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }

    #[test]
    fn other_command_lines_are_not_an_exec() {
        for cmdline in [
            &b""[..],
            b"keyswap\0run\0--config\0exec\0",
            b"keyswap\0",
            b"keyswap-exec\0exec\0",
            b"sh\0exec\0",
            b"keyswapx\0exec\0",
            b"/tmp/keyswap/sh\0exec\0",
            b"keyswap\0--log-format\0exec\0run\0",
            b"keyswap\0--config\0exec\0",
        ] {
            assert!(
                !is_keyswap_exec(cmdline, keyswap()),
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
        assert!(!is_keyswap_exec(b"keyswap\0exec\0", OsStr::new("")));
    }

    /// A fake `/proc`: `(pid, ppid, cmdline)` per process.
    fn fake_proc(processes: &[(i32, i32, &[u8])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for (pid, ppid, cmdline) in processes {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(
                dir.join("status"),
                format!("Name:\tx\nPid:\t{pid}\nPPid:\t{ppid}\nUid:\t0\n"),
            )
            .expect("status");
            std::fs::write(dir.join("cmdline"), cmdline).expect("cmdline");
        }
        root
    }

    #[test]
    fn the_walk_finds_an_exec_ancestor_above_a_daemonised_grandchild() {
        let proc_root = fake_proc(&[
            (1, 0, b"init\0"),
            (10, 1, b"bash\0"),
            (20, 10, b"/opt/keyswap\0exec\0--policy\0p\0--\0sh\0"),
            (30, 20, b"sh\0-c\0x\0"),
            (40, 30, b"curl\0"),
        ]);
        let walked = lineage(proc_root.path(), 40, keyswap()).expect("walk");
        assert_eq!(walked.ancestors, vec![30, 20]);
        assert_eq!(walked.exec_ancestor, Some(20));
        // The exec itself is not its own ancestor.
        let walked = lineage(proc_root.path(), 20, keyswap()).expect("walk");
        assert_eq!(walked.ancestors, vec![10, 1]);
        assert_eq!(walked.exec_ancestor, None);
    }

    #[test]
    fn a_missing_ancestor_fails_the_walk() {
        let proc_root = fake_proc(&[(40, 30, b"curl\0")]);
        assert!(matches!(
            lineage(proc_root.path(), 40, keyswap()),
            Err(LineageError::Read { .. })
        ));
    }

    #[test]
    fn a_cycle_is_cut_at_the_bound() {
        let proc_root = fake_proc(&[(5, 6, b"a\0"), (6, 5, b"b\0")]);
        assert!(matches!(
            lineage(proc_root.path(), 5, keyswap()),
            Err(LineageError::TooDeep)
        ));
    }

    #[test]
    fn the_real_proc_walk_reaches_init() {
        let me = std::process::id() as i32;
        let walked = lineage(Path::new("/proc"), me, keyswap()).expect("walk /proc");
        assert!(!walked.ancestors.is_empty());
        assert!(walked.ancestors.len() < MAX_ANCESTORS);
    }
}
