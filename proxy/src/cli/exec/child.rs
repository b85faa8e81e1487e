//! The command `keyswap exec` runs, outside a sandbox or inside one: its environment (exec's
//! own less every credential variable and the user's agent sockets, plus the task's), and the
//! signals exec forwards to it until it exits. Never puts a real value in the environment.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::sandbox::AgentIdentity;

/// Session variables that hand the command the user's agents (ssh-agent, gpg-agent, D-Bus).
const SESSION_VARS: &[&str] = &[
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// The command's whole environment: exec's own, less the withheld and session variables,
/// with the task's variables added (after the removals: a secret's `env:` may reuse the name
/// its `from_env` reads, and the command gets the placeholder). As another user, that user's
/// HOME, USER and LOGNAME.
pub(super) fn child_env(
    task: &BTreeMap<String, String>,
    withheld: &BTreeSet<String>,
    identity: Option<&AgentIdentity>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| !withheld.contains(name) && !SESSION_VARS.contains(&name.as_str()))
        .collect();
    if let Some(identity) = identity {
        env.remove("XDG_RUNTIME_DIR");
        env.remove("MAIL");
        env.insert("HOME".into(), identity.home.display().to_string());
        env.insert("USER".into(), identity.name.clone());
        env.insert("LOGNAME".into(), identity.name.clone());
    }
    env.extend(task.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Runs the command unsandboxed (`--no-sandbox`) with exactly `env`.
pub(super) async fn run_child(
    signals: Signals,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let (program, args) = command.split_first().context("no command given")?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    signals.supervise(child).await
}

/// The signals exec forwards to its child: SIGINT, SIGTERM and SIGHUP.
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn listen() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Forwards signals until the child exits; its exit status (128 + N when a signal N ended
    /// it, as shells report).
    pub(super) async fn supervise(
        mut self,
        mut child: tokio::process::Child,
    ) -> anyhow::Result<ExitCode> {
        let pid = child.id().map(|id| Pid::from_raw(id as i32));
        let status = loop {
            let forward = tokio::select! {
                status = child.wait() => break status?,
                _ = self.interrupt.recv() => Signal::SIGINT,
                _ = self.terminate.recv() => Signal::SIGTERM,
                _ = self.hangup.recv() => Signal::SIGHUP,
            };
            if let Some(pid) = pid {
                let _ = kill(pid, forward);
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let code = match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        };
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
}
