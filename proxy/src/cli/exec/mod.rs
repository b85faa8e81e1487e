//! `keyswap exec --policy P -- CMD…`: issue a task for the length of one command.
//!
//! With a running proxy (its admin socket answers, or `--admin` names one) the task is issued
//! there with a *lifeline*: the issuing request stays open for the command's lifetime, so
//! if `exec` is killed the proxy sees the connection drop and revokes. Without one, keyswap
//! runs inside this process on an ephemeral loopback port. Either way the command gets the
//! task's environment, receives the signals `exec` gets (SIGINT, SIGTERM, SIGHUP), and
//! `exec` revokes the task when it exits and exits with its status.
//!
//! The command is the agent, and runs in a sandbox (crate `keyswap-sandbox`, set up through
//! [`super::sandbox`]): its own pid, network, mount and IPC namespaces, where the proxy
//! variables point at a listener exec serves inside the sandbox (embedded) or relays to the
//! running proxy, and where the config's secret files, the CA key, the admin socket, the audit
//! log and the user's credential stores are hidden. `--no-sandbox` runs it as a plain child,
//! with a warning. Either way it never inherits a variable `exec` or the proxy reads a
//! credential from (the config's `from_env`, `token_env` and `admin.token_env`; embedded, also
//! any variable whose value holds a real secret; `--admin-token-env` for a TCP admin API), nor
//! the user's agent sockets (`SSH_AUTH_SOCK`, D-Bus, gpg-agent). exec itself is non-dumpable
//! and a child subreaper, so neither the command nor its orphans can read its memory or leave
//! its process tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::Args;
use keyswap_certs::CertificateAuthority;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::sandbox::{
    agent_identity, no_sandbox_warning, sandbox_for, serve_listener, start_plan, AgentIdentity,
};
use super::task::{socket_answers, AdminArgs};
use crate::admin::client::{AdminClient, AdminTarget};
use crate::api::IssueRequest;
use crate::server::{ProxyHandle, ProxyOptions};
use crate::state::tasks::RevokeWhy;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The policy the task is issued from.
    #[arg(long)]
    pub policy: String,
    /// e.g. 30m or 2h; default: the policy's ttl; at most its max_ttl.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Default: POLICY-<random>.
    #[arg(long)]
    pub id: Option<String>,
    /// Prompt on this terminal (/dev/tty, not the command's stdin) for each of the task's
    /// requests that wait for a human: y = approve once, t = approve for the task, n = deny.
    #[arg(long)]
    pub ask: bool,
    /// Run the command without the sandbox: it then runs as this user, outside any namespace,
    /// and can reach whatever this user can (see the warning exec prints).
    #[arg(long)]
    pub no_sandbox: bool,
    /// As root: the user the command runs as (a name from the password database).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Start the command even when real secret values are in files under its working
    /// directory (exec, running keyswap itself, searches them first and refuses).
    #[arg(long)]
    pub allow_plaintext: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// Where the task lives while the command runs.
enum Issuer {
    Remote(AdminClient),
    Embedded(Box<ProxyHandle>),
}

pub fn exec(args: ExecArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keyswap exec: {e}");
            return ExitCode::from(125);
        }
    };
    let result = runtime.block_on(run(args));
    // A prompt of --ask may still be reading the terminal: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            // 125: exec itself failed (as `env`, `nice` and container runtimes do).
            eprintln!("keyswap exec: {}", super::causes(&e));
            ExitCode::from(125)
        }
    }
}

async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    // Before any secret is read: same-user processes cannot read exec's memory or environment.
    harden_self()?;
    // Listening before any child starts: a signal that arrives once one runs is forwarded,
    // never taken by exec's default action.
    let signals = Signals::listen()?;
    let sandboxed = !args.no_sandbox;
    let identity = agent_identity(args.user.as_deref(), args.no_sandbox)?;
    let mut request = IssueRequest {
        policy: args.policy.clone(),
        ttl: args.ttl.clone(),
        id: args.id.clone(),
        lifeline: true,
        by: Some("exec".into()),
        agent_addr: None,
        sandbox: None,
    };
    // Opened before anything is issued: --ask without a terminal must not start the agent.
    let tty = match args.ask {
        true => Some(super::ask::open_tty()?),
        false => None,
    };
    // The namespaces first: the agent's environment names the sandbox's listener.
    let prepared = match sandboxed {
        true => Some(
            keyswap_sandbox::prepare(
                std::path::Path::new("/proc/self/exe"),
                identity.as_ref().map(|i| i.ids.clone()),
            )
            .await?,
        ),
        false => {
            eprintln!("{}", no_sandbox_warning());
            None
        }
    };
    if let Some(prepared) = &prepared {
        request.agent_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], prepared.port)));
        request.sandbox = Some(sandbox_for(identity.as_ref())?);
    }
    let target = args.admin.target()?;
    // Variables holding credentials exec used: the command must not inherit them.
    let mut withheld = BTreeSet::new();
    if let AdminTarget::Tcp { .. } = &target {
        withheld.insert(args.admin.admin_token_env.clone());
    }
    let use_running = match &target {
        AdminTarget::Socket(path) => args.admin.admin.is_some() || socket_answers(path).await,
        AdminTarget::Tcp { .. } => true,
    };
    let ask_target = target.clone();
    let (mut issuer, issued, lifeline) = if use_running {
        let client = AdminClient::new(target);
        let (issued, lifeline) = client
            .issue_with_lifeline(&request)
            .await
            .with_context(|| format!("issuing a task at {}", client.target))?;
        // The proxy's own credential variables: names only.
        withheld.extend(issued.withheld_env.iter().cloned());
        (Issuer::Remote(client), issued, Some(lifeline))
    } else {
        let embedded = start_embedded(&args.admin.config, args.allow_plaintext).await?;
        withheld.extend(embedded.withheld);
        let issued = embedded
            .handle
            .issue(&request)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        (Issuer::Embedded(Box::new(embedded.handle)), issued, None)
    };
    tracing::info!(task = %issued.id, policy = %issued.policy, expires = %issued.expires, sandboxed, "running the command as a task");
    let prompter = tty.map(|tty| {
        let source = match &issuer {
            Issuer::Remote(_) => super::ask::Source::Remote(AdminClient::new(ask_target)),
            Issuer::Embedded(handle) => super::ask::Source::Embedded(handle.shared().clone()),
        };
        tokio::spawn(super::ask::prompt_loop(tty, source, issued.id.clone()))
    });
    let env = child_env(&issued.env, &withheld, identity.as_ref());
    let status = match prepared {
        Some(prepared) => {
            let embedded = match &mut issuer {
                Issuer::Embedded(handle) => Some(&mut **handle),
                Issuer::Remote(_) => None,
            };
            serve_listener(embedded, &issued, &prepared.listener)?;
            let paths = issued.sandbox.as_ref().context(
                "the running keyswap did not say what to hide (is it older than this exec?)",
            )?;
            let plan = start_plan(&args.command, env, &issued.env, paths)?;
            let started = prepared.start(plan).await?;
            signals.supervise(started.child).await
        }
        None => run_child(signals, &args.command, &env).await,
    };
    if let Some(prompter) = prompter {
        prompter.abort();
    }
    let revoked = match &issuer {
        Issuer::Remote(client) => client
            .revoke(&issued.id, "exit")
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Issuer::Embedded(handle) => handle
            .revoke(&issued.id, RevokeWhy::Exit)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}")),
    };
    drop(lifeline);
    if let Err(e) = revoked {
        // Already gone (expired, revoked by an operator) is not a failure of the command.
        tracing::debug!(task = %issued.id, error = %e, "task already ended");
    }
    if let Issuer::Embedded(handle) = issuer {
        (*handle).shutdown().await;
    }
    status
}

/// Same-user processes cannot read exec's memory or environment (`/proc/PID/environ`,
/// `/proc/PID/mem`, ptrace), a crash writes no core file, and the command's orphans re-parent
/// to exec, so they stay in the ancestry the admin API refuses.
fn harden_self() -> anyhow::Result<()> {
    crate::host::process_guard::harden_self()?;
    crate::host::process_guard::become_subreaper()?;
    Ok(())
}

/// The process environment, noting the name of every variable read: a config load reads
/// only `from_env`, `token_env` and `admin.token_env`, each a credential.
#[derive(Default)]
struct ReadVars(Mutex<BTreeSet<String>>);

impl keyswap_config::EnvSource for ReadVars {
    fn var(&self, name: &str) -> Option<String> {
        if let Ok(mut read) = self.0.lock() {
            read.insert(name.to_string());
        }
        std::env::var(name).ok()
    }
}

/// keyswap started inside exec, and what exec learnt from its config.
struct Embedded {
    handle: ProxyHandle,
    /// Variables the config read credentials from, and any variable whose value holds a real
    /// secret value (whatever its name).
    withheld: BTreeSet<String>,
}

/// keyswap in this process: the config's rules and secrets, an ephemeral loopback port, no
/// admin socket (nothing outside this process needs one).
async fn start_embedded(config_path: &Path, allow_plaintext: bool) -> anyhow::Result<Embedded> {
    let path = config_path.to_path_buf();
    let (config, read) = tokio::task::spawn_blocking(move || {
        let read = ReadVars::default();
        let config = keyswap_config::load_with(&path, &read);
        (config, read.0.into_inner().unwrap_or_default())
    })
    .await?;
    let config = config.map_err(|e| {
        anyhow::anyhow!(
            "no running keyswap answered, and {} is not valid to start one:\n{e}",
            config_path.display()
        )
    })?;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config");
    }
    let config = refuse_plaintext_in_reach(config, allow_plaintext).await?;
    let mut withheld = read;
    withheld.extend(variables_holding_secrets(&config));
    let ca = CertificateAuthority::load_or_create(&config.ca_dir)?;
    let options = ProxyOptions {
        listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        // Not served (no admin API): named so a sandboxed command's plan keeps it read-only.
        config_path: Some(config_path.to_path_buf()),
        ..ProxyOptions::default()
    };
    Ok(Embedded {
        handle: ProxyHandle::start(config, ca, options).await?,
        withheld,
    })
}

/// Searches the command's working directory for the config's real values (in every form the
/// scrubber knows) and refuses to go on when one is there, unless `allow_plaintext`: the agent
/// would read it without keyswap. Only where exec holds the values (keyswap embedded).
async fn refuse_plaintext_in_reach(
    config: keyswap_config::Config,
    allow_plaintext: bool,
) -> anyhow::Result<keyswap_config::Config> {
    use crate::host::plaintext::{self, ScanBudget, ScanSet};
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let (config, report) = tokio::task::spawn_blocking(move || {
        let report = ScanSet::from_config(&config)
            .map(|set| plaintext::check_working_tree(&set, &cwd, ScanBudget::EXEC));
        (config, report)
    })
    .await?;
    let report = report.context("building the search for plaintext secrets")?;
    if let Some(note) = plaintext::incomplete_note(&report, ScanBudget::EXEC) {
        eprintln!("keyswap exec: {}", note.trim_end());
    }
    if report.is_clean() {
        return Ok(config);
    }
    if allow_plaintext {
        eprintln!("{}", plaintext::allow_plaintext_warning(&report));
        return Ok(config);
    }
    let refusal = plaintext::exec_refusal(&report);
    anyhow::bail!("{}", refusal.trim_start_matches("keyswap exec: "))
}

/// Names of this process's variables whose value contains a real secret value.
fn variables_holding_secrets(config: &keyswap_config::Config) -> Vec<String> {
    use secrecy::ExposeSecret;
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let value = value.to_string_lossy();
            let holds = config.secrets.iter().any(|secret| {
                let real = secret.value.expose_secret();
                !real.is_empty() && value.contains(real)
            });
            holds.then(|| name.to_string_lossy().into_owned())
        })
        .collect()
}

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
fn child_env(
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
async fn run_child(
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
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Forwards signals until the child exits; its exit status (128 + N when a signal N ended
    /// it, as shells report).
    async fn supervise(mut self, mut child: tokio::process::Child) -> anyhow::Result<ExitCode> {
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
