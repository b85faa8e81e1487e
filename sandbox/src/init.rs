//! Pid 1 of the sandbox, and the waiting both it and the helper do.
//!
//! Init mounts the fresh `/proc`, starts the command under the seccomp filter, reaps every
//! orphan the command leaves (as pid 1 must, or zombies pile up), forwards the signals a
//! process sent it, and exits with the command's status — which ends every other process in
//! the pid namespace, so nothing the command started outlives it.
//!
//! Only signals sent by a process are forwarded (exec forwards what it gets to the helper, the
//! helper to init, init to the command). Signals the terminal generates (Ctrl-C) reach the
//! command directly as a member of the foreground process group; forwarding those too would
//! deliver them twice.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execve, fork, ForkResult, Pid};
use seccompiler::BpfProgram;

use crate::control::{self, FromHelper};
use crate::helper::Failure;
use crate::plan::StartPlan;
use crate::{mounts, seccomp, Stage};

const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Blocks the forwarded signals and SIGCHLD (read through a signalfd instead); children
/// inherit the mask, and the command's is cleared before its `execve`.
pub fn block_signals() -> Result<SigSet, Failure> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        set.add(*signal);
    }
    set.thread_block()
        .map_err(|e| Failure::new(Stage::Spawn, e, "blocking signals"))?;
    Ok(set)
}

/// Init's life: never returns.
pub fn run(control: OwnedFd, plan: StartPlan, filter: BpfProgram, signals: SigSet) -> ! {
    let command = match prepare(&plan) {
        Ok(command) => command,
        Err(failure) => {
            failure.report(&control);
            std::process::exit(125);
        }
    };
    let _ = control::send(&control, &FromHelper::Started, None);
    drop(control);
    let Some(command) = command else {
        eprintln!(
            "keyswap exec: {}: command not found",
            plan.command.first().map(String::as_str).unwrap_or("")
        );
        std::process::exit(127);
    };
    // SAFETY: init is single-threaded (forked from the single-threaded helper).
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => exec_command(&command, &filter),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("keyswap exec: cannot start the command: {}", e.desc());
            std::process::exit(125);
        }
    };
    std::process::exit(supervise(child, &signals))
}

/// What `execve` needs, built before forking. `None` when the program is not found.
struct Command {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn prepare(plan: &StartPlan) -> Result<Option<Command>, Failure> {
    // The sandbox ends with init: if the helper dies (exec was killed), so does everything.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure::new(Stage::Spawn, e, "PR_SET_PDEATHSIG"))?;
    mounts::fresh_proc()?;
    nix::unistd::chdir(&plan.cwd).map_err(|e| {
        Failure::new(
            Stage::Spawn,
            e,
            &format!("entering the working directory {}", plan.cwd.display()),
        )
    })?;
    let cstring = |s: &[u8]| {
        CString::new(s).map_err(|_| {
            Failure::new(
                Stage::Spawn,
                Errno::EINVAL,
                "a NUL byte in the command or its environment",
            )
        })
    };
    let argv = plan
        .command
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = plan
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(program) = plan.command.first() else {
        return Err(Failure::new(Stage::Spawn, Errno::EINVAL, "no command"));
    };
    let Some(path) = find_program(program, plan.var("PATH")) else {
        return Ok(None);
    };
    Ok(Some(Command {
        path: cstring(path.as_os_str().as_bytes())?,
        argv,
        envp,
    }))
}

/// The program as `execvp` would find it, but in the command's `PATH` (the helper's own
/// environment is empty).
fn find_program(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|dir| match dir {
            "" => Path::new(".").join(program),
            dir => Path::new(dir).join(program),
        })
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// In the forked child: a clean signal mask, the filter, then the command.
fn exec_command(command: &Command, filter: &BpfProgram) -> ! {
    let _ = SigSet::empty().thread_set_mask();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(failure) = seccomp::install(filter) {
        eprintln!("keyswap exec: {}", failure.detail);
        std::process::exit(125);
    }
    let e = match execve(&command.path, &command.argv, &command.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    eprintln!(
        "keyswap exec: cannot run {}: {}",
        command.path.to_string_lossy(),
        e.desc()
    );
    std::process::exit(match e {
        Errno::ENOENT => 127,
        _ => 126,
    })
}

/// Waits for `child`, reaping every other child on the way and forwarding process-sent
/// signals to it; returns its status as a shell reports it (128 + N for a signal N).
pub fn supervise(child: Pid, signals: &SigSet) -> i32 {
    let fd = match SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(_) => return wait_plain(child),
    };
    loop {
        let info = match fd.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(_) => return wait_plain(child),
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap(child) {
                return code;
            }
        } else if info.ssi_code <= 0 {
            // SI_USER, SI_QUEUE, SI_TKILL: sent by a process, not by the terminal.
            let _ = kill(child, signal);
        }
    }
}

/// Reaps every exited child; the status of `child` once it is among them.
fn reap(child: Pid) -> Option<i32> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                return Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn wait_plain(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Err(Errno::EINTR) | Ok(_) => continue,
            Err(_) => return 1,
        }
    }
}
