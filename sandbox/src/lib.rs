//! The sandbox `keyswap exec` runs the agent in, on Linux, with no privilege and no helper
//! program: unprivileged user namespaces.
//!
//! ```text
//! keyswap exec ──spawn──▶ helper (`keyswap __sandbox FD`, this crate's [`helper_main`])
//!   │  ◀── Listening{port} + the listener's fd ──   unshare(user, mount, net, pid, ipc)
//!   │                                               uid/gid map to the user's own; lo up;
//!   │                                               a listener on the sandbox's 127.0.0.1
//!   │  ── Start{plan} ──▶                           private /tmp and /dev/shm, paths hidden
//!   │                                               or made read-only
//!   │                                    fork ──▶ init (pid 1: fresh /proc, reaps, forwards
//!   │  ◀── Started / Failed ──                      signals) ──fork──▶ seccomp ──▶ the command
//!   ▼
//! serves the agent on the listener it was handed (or relays it to a running proxy)
//! ```
//!
//! The two steps exist because the agent's environment names the listener's port, which is
//! known only once the network namespace exists: `exec` issues the task in between.
//!
//! What this crate guarantees once [`Prepared::start`] returned: the command sees its own
//! process tree only; its network is loopback, where the one listener is keyswap's; every
//! path of the plan's `hide` reads as empty (a file: `/dev/null` bound over it; a directory: an
//! empty read-only tmpfs) and every `read_only` path refuses writes; `ioctl(TIOCSTI)` and the
//! kernel keyring calls fail with `EPERM`; the command gains no privilege (`no_new_privs`, its
//! capabilities drop at `execve` because its uid inside is not 0). Mounts made here are locked
//! for any user namespace the command creates, so it cannot unmount them to see beneath.
//!
//! What it never does: read or pass a secret value (the plan holds paths, the command and its
//! environment, which `exec` has already stripped), or run anything with more privilege than
//! the user who started it.
//!
//! `unsafe` is denied here except in the modules that need a syscall nix does not wrap safely
//! (`fork`, the loopback ioctls, adopting received descriptors); each use says why it is sound.
#![deny(unsafe_code)]

mod control;
mod helper;
mod init;
mod mounts;
mod namespaces;
mod plan;
mod seccomp;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

pub use helper::helper_main;
pub use plan::{Identity, StartPlan};

use control::{FromHelper, ToHelper};

/// The hidden subcommand the helper runs as (`keyswap __sandbox FD`).
pub const HELPER_SUBCOMMAND: &str = "__sandbox";

/// How long the helper may take to answer a step: namespace and mount set-up take
/// milliseconds; a helper that does not answer is stuck and is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stage {
    /// Dropping to `--user` (exec run as root).
    User,
    /// `unshare` of the user namespace (with the others).
    UserNamespace,
    /// Writing the uid/gid maps of the new user namespace.
    IdMap,
    /// Bringing the loopback interface up in the new network namespace.
    Loopback,
    /// Binding the agent's listener.
    Listener,
    /// Private `/tmp`, hidden and read-only paths.
    Mounts,
    /// The fresh `/proc` of the new pid namespace.
    Proc,
    /// Building or installing the seccomp filter.
    Seccomp,
    /// Forking init or the command.
    Spawn,
    /// Talking to the helper.
    Control,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::User => "switching to the --user account",
            Stage::UserNamespace => "creating a user namespace",
            Stage::IdMap => "mapping the user's uid and gid into the user namespace",
            Stage::Loopback => "bringing up loopback in the sandbox's network namespace",
            Stage::Listener => "binding the agent's proxy listener in the sandbox",
            Stage::Mounts => {
                "hiding paths from the command (private /tmp, hidden and read-only paths)"
            }
            Stage::Proc => "mounting a fresh /proc for the sandbox's pid namespace",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Spawn => "starting the sandbox's init",
            Stage::Control => "talking to the sandbox helper",
        }
    }
}

/// Why the sandbox could not be set up. Every variant is a reason not to run the command.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel refuses unprivileged user namespaces: the message says how to allow them.
    #[error("{}", unavailable_message(*.stage, *.errno, .detail))]
    Unavailable {
        stage: Stage,
        errno: i32,
        detail: String,
    },
    /// Another step failed.
    #[error("{}: {detail}{}", .stage.describe(), errno_suffix(*.errno))]
    Setup {
        stage: Stage,
        errno: i32,
        detail: String,
    },
    #[error("sandbox helper: {0}")]
    Io(#[from] io::Error),
}

fn errno_suffix(errno: i32) -> String {
    match errno {
        0 => String::new(),
        n => format!(" ({})", nix::errno::Errno::from_raw(n).desc()),
    }
}

fn unavailable_message(stage: Stage, errno: i32, detail: &str) -> String {
    let cause = match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::ENOSPC => {
            "the user-namespace limit is reached or set to 0 (sysctl user.max_user_namespaces)"
        }
        nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => {
            "the kernel or a security module refuses unprivileged user namespaces"
        }
        nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL => {
            "this kernel was built without user namespaces"
        }
        _ => "the kernel refused",
    };
    format!(
        "{}: {detail}{} — {cause}.\n\
         keyswap exec sandboxes the command with unprivileged user namespaces and runs nothing \
         unsandboxed unless told to. Fixes:\n\
         \x20 - sudo sysctl -w user.max_user_namespaces=15000          (the limit is 0)\n\
         \x20 - sudo sysctl -w kernel.unprivileged_userns_clone=1      (older Debian kernels)\n\
         \x20 - sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor \
         profile for keyswap with `userns,`   (Ubuntu 23.10+)\n\
         \x20 - in a container: allow unshare(CLONE_NEWUSER) in its seccomp profile, or run exec \
         on the host\n\
         \x20 - or pass --no-sandbox: the command then runs as you, outside any namespace, and can \
         read what you can read and connect where you can connect",
        stage.describe(),
        errno_suffix(errno),
    )
}

impl SandboxError {
    fn from_helper(stage: Stage, errno: i32, detail: String) -> SandboxError {
        match stage {
            Stage::UserNamespace | Stage::IdMap => SandboxError::Unavailable {
                stage,
                errno,
                detail,
            },
            _ => SandboxError::Setup {
                stage,
                errno,
                detail,
            },
        }
    }

    fn control(detail: impl Into<String>) -> SandboxError {
        SandboxError::Setup {
            stage: Stage::Control,
            errno: 0,
            detail: detail.into(),
        }
    }
}

/// A sandbox whose namespaces exist and whose listener is bound, waiting for its plan.
pub struct Prepared {
    /// The helper: it exits with the command's status (128 + N for a signal N).
    pub child: tokio::process::Child,
    /// The listener on the sandbox's `127.0.0.1:port`; accepting on it serves the agent.
    pub listener: std::net::TcpListener,
    pub port: u16,
    control: OwnedFd,
}

/// Starts the helper (`exe __sandbox FD`, normally `/proc/self/exe`) and waits until its
/// namespaces and listener exist. With `identity`, the helper first switches to that user
/// (exec run as root with `--user`).
pub async fn prepare(
    exe: &std::path::Path,
    identity: Option<Identity>,
) -> Result<Prepared, SandboxError> {
    let (ours, theirs) = control::pair()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(HELPER_SUBCOMMAND)
        .arg(theirs.as_raw_fd().to_string())
        // The helper's own environment stays empty: the command's is in the plan.
        .env_clear()
        .kill_on_drop(true);
    control::inherit_in_child(&mut command, &theirs);
    let mut child = command.spawn()?;
    drop(theirs);
    let ours = match send_and_wait(ours, ToHelper::Prepare { identity }).await {
        Ok((ours, FromHelper::Listening { port }, Some(fd))) => (ours, port, fd),
        Ok((
            _,
            FromHelper::Failed {
                stage,
                errno,
                detail,
            },
            _,
        )) => {
            let _ = child.wait().await;
            return Err(SandboxError::from_helper(stage, errno, detail));
        }
        Ok((_, other, _)) => {
            let _ = child.kill().await;
            return Err(SandboxError::control(format!(
                "unexpected answer {other:?}"
            )));
        }
        Err(e) => {
            let _ = child.kill().await;
            return Err(e);
        }
    };
    let (control, port, fd) = ours;
    Ok(Prepared {
        child,
        listener: std::net::TcpListener::from(fd),
        port,
        control,
    })
}

impl Prepared {
    /// Sends the plan; returns once the command has been started (or why it could not be).
    /// The returned child is the helper, whose exit status is the command's.
    pub async fn start(self, plan: StartPlan) -> Result<Started, SandboxError> {
        let Prepared {
            mut child,
            listener,
            control,
            ..
        } = self;
        match send_and_wait(control, ToHelper::Start(Box::new(plan))).await {
            Ok((_, FromHelper::Started, _)) => Ok(Started { child, listener }),
            Ok((
                _,
                FromHelper::Failed {
                    stage,
                    errno,
                    detail,
                },
                _,
            )) => {
                let _ = child.wait().await;
                Err(SandboxError::from_helper(stage, errno, detail))
            }
            Ok((_, other, _)) => {
                let _ = child.kill().await;
                Err(SandboxError::control(format!(
                    "unexpected answer {other:?}"
                )))
            }
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }
}

/// A running sandbox.
pub struct Started {
    /// The helper: it exits with the command's status (128 + N for a signal N) and forwards
    /// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to it.
    pub child: tokio::process::Child,
    /// The agent's listener (the same as [`Prepared::listener`]).
    pub listener: std::net::TcpListener,
}

async fn send_and_wait(
    control: OwnedFd,
    message: ToHelper,
) -> Result<(OwnedFd, FromHelper, Option<OwnedFd>), SandboxError> {
    let exchange = tokio::task::spawn_blocking(move || {
        control::send(&control, &message, None)?;
        let (answer, fd) = control::receive::<FromHelper>(&control)?
            .ok_or_else(|| io::Error::other("the helper exited without answering"))?;
        Ok::<_, io::Error>((control, answer, fd))
    });
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(e))) => Err(SandboxError::control(e.to_string())),
        Ok(Err(e)) => Err(SandboxError::control(e.to_string())),
        Err(_) => Err(SandboxError::control("the helper did not answer in time")),
    }
}
