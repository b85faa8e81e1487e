//! The helper process (`keyswap __sandbox FD`): a fresh, single-threaded process, as
//! `unshare(CLONE_NEWUSER)` requires. It builds the sandbox in the order the crate docs draw,
//! reports each step on the control socket, then waits for init and exits with its status.

#![allow(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::{fork, getgid, getppid, getuid, ForkResult};

use crate::control::{self, FromHelper, ToHelper};
use crate::{init, mounts, namespaces, seccomp, Stage};

/// A failed step, as sent to exec.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub errno: Errno,
    pub detail: String,
}

impl Failure {
    pub fn new(stage: Stage, errno: Errno, detail: &str) -> Failure {
        Failure {
            stage,
            errno,
            detail: detail.to_string(),
        }
    }

    pub fn report(&self, control: &OwnedFd) {
        let message = FromHelper::Failed {
            stage: self.stage,
            errno: match self.errno {
                Errno::UnknownErrno => 0,
                e => e as i32,
            },
            detail: self.detail.clone(),
        };
        // exec may be gone: then nobody is left to tell.
        let _ = control::send(control, &message, None);
    }
}

/// The helper's entry point; `fd` is the control socket's descriptor number. Exits 125 when
/// the sandbox cannot be built (exec reports why), else with the command's status.
pub fn helper_main(fd: &str) -> ExitCode {
    let Ok(raw) = fd.parse::<i32>() else {
        eprintln!(
            "keyswap {}: expects a descriptor number",
            crate::HELPER_SUBCOMMAND
        );
        return ExitCode::from(125);
    };
    if raw < 3 {
        return ExitCode::from(125);
    }
    // SAFETY: exec passed this descriptor, open and inherited for this purpose alone.
    let control = unsafe { control::adopt(raw) };
    match build(control) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(()) => ExitCode::from(125),
    }
}

fn build(control: OwnedFd) -> Result<i32, ()> {
    let exec_pid = getppid();
    let report = |failure: Failure| failure.report(&control);
    let identity = match control::receive::<ToHelper>(&control) {
        Ok(Some((ToHelper::Prepare { identity }, _))) => identity,
        _ => return Err(()),
    };
    if let Some(identity) = &identity {
        namespaces::switch_user(identity).map_err(report)?;
    }
    // After any uid change (which clears it): the sandbox dies with exec.
    die_with_parent(exec_pid).map_err(report)?;
    namespaces::enter(getuid().as_raw(), getgid().as_raw()).map_err(report)?;
    namespaces::loopback_up().map_err(report)?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(|e| {
        report(Failure::new(
            Stage::Listener,
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            "bind 127.0.0.1:0",
        ))
    })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    control::send(
        &control,
        &FromHelper::Listening { port },
        Some(listener.as_fd()),
    )
    .map_err(|_| ())?;
    // Only exec serves it: the command must not inherit or accept on it.
    drop(listener);
    let plan = match control::receive::<ToHelper>(&control) {
        Ok(Some((ToHelper::Start(plan), _))) => plan,
        _ => return Err(()),
    };
    let problems = plan.problems();
    if !problems.is_empty() {
        report(Failure::new(
            Stage::Control,
            Errno::EINVAL,
            &problems.join("; "),
        ));
        return Err(());
    }
    mounts::apply(&plan).map_err(report)?;
    let filter = seccomp::build().map_err(report)?;
    let signals = init::block_signals().map_err(report)?;
    // SAFETY: this process is single-threaded (it never started a thread), so the child may
    // do anything the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => init::run(control, *plan, filter, signals),
        Ok(ForkResult::Parent { child }) => {
            // init reports Started or Failed from here on.
            drop(control);
            Ok(init::supervise(child, &signals))
        }
        Err(e) => {
            report(Failure::new(Stage::Spawn, e, "fork"));
            Err(())
        }
    }
}

/// SIGKILL when the parent dies; and if it already died, stop now.
pub fn die_with_parent(parent: nix::unistd::Pid) -> Result<(), Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure::new(Stage::Spawn, e, "PR_SET_PDEATHSIG"))?;
    if getppid() != parent {
        return Err(Failure::new(Stage::Spawn, Errno::ESRCH, "exec has exited"));
    }
    Ok(())
}
