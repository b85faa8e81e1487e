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

mod child;
mod embedded;

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use keyswap_sandbox::Prepared;

use super::sandbox::{
    agent_identity, no_sandbox_warning, sandbox_for, serve_listener, start_plan, AgentIdentity,
};
use super::task::{socket_answers, AdminArgs};
use crate::admin::client::{AdminClient, AdminTarget, LifelineHandle};
use crate::api::{IssueRequest, IssuedTask};
use crate::server::ProxyHandle;
use crate::state::tasks::RevokeWhy;
use child::{child_env, run_child, Signals};
use embedded::start_embedded;

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
    let mut request = issue_request(&args);
    // Opened before anything is issued: --ask without a terminal must not start the agent.
    let tty = match args.ask {
        true => Some(super::ask::open_tty()?),
        false => None,
    };
    // The namespaces first: the agent's environment names the sandbox's listener.
    let prepared = prepare_sandbox(sandboxed, identity.as_ref()).await?;
    if let Some(prepared) = &prepared {
        request.agent_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], prepared.port)));
        request.sandbox = Some(sandbox_for(identity.as_ref())?);
    }
    let target = args.admin.target()?;
    let ask_target = target.clone();
    let Task {
        mut issuer,
        issued,
        lifeline,
        withheld,
    } = issue(&args, target, &request).await?;
    tracing::info!(task = %issued.id, policy = %issued.policy, expires = %issued.expires, sandboxed, "running the command as a task");
    eprintln!("{MCP_HINT}");
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
    end_task(issuer, &issued.id, lifeline).await;
    status
}

/// The one line exec prints on how an agent registers keyswap's MCP server.
const MCP_HINT: &str = "keyswap exec: the agent can see its grants and ask for more over MCP \
    (claude mcp add keyswap -- keyswap mcp; any MCP client: the command `keyswap mcp`)";

/// The issue request: a lifeline, so a killed exec leaves no task behind.
fn issue_request(args: &ExecArgs) -> IssueRequest {
    IssueRequest {
        policy: args.policy.clone(),
        ttl: args.ttl.clone(),
        id: args.id.clone(),
        lifeline: true,
        by: Some("exec".into()),
        agent_addr: None,
        sandbox: None,
    }
}

/// The sandbox's namespaces and listener, or the warning of `--no-sandbox`.
async fn prepare_sandbox(
    sandboxed: bool,
    identity: Option<&AgentIdentity>,
) -> anyhow::Result<Option<Prepared>> {
    if !sandboxed {
        eprintln!("{}", no_sandbox_warning());
        return Ok(None);
    }
    let prepared = keyswap_sandbox::prepare(
        std::path::Path::new("/proc/self/exe"),
        identity.map(|i| i.ids.clone()),
    )
    .await?;
    Ok(Some(prepared))
}

/// The task the command runs as, where it lives, and the variables the command must not
/// inherit.
struct Task {
    issuer: Issuer,
    issued: IssuedTask,
    lifeline: Option<LifelineHandle>,
    withheld: BTreeSet<String>,
}

/// Issues the task at the running keyswap `target` names if one answers (with a lifeline),
/// else at a keyswap started in this process.
async fn issue(
    args: &ExecArgs,
    target: AdminTarget,
    request: &IssueRequest,
) -> anyhow::Result<Task> {
    // Variables holding credentials exec used: the command must not inherit them.
    let mut withheld = BTreeSet::new();
    if let AdminTarget::Tcp { .. } = &target {
        withheld.insert(args.admin.admin_token_env.clone());
    }
    let use_running = match &target {
        AdminTarget::Socket(path) => args.admin.admin.is_some() || socket_answers(path).await,
        AdminTarget::Tcp { .. } => true,
    };
    if use_running {
        let client = AdminClient::new(target);
        let (issued, lifeline) = client
            .issue_with_lifeline(request)
            .await
            .with_context(|| format!("issuing a task at {}", client.target))?;
        // The proxy's own credential variables: names only.
        withheld.extend(issued.withheld_env.iter().cloned());
        return Ok(Task {
            issuer: Issuer::Remote(client),
            issued,
            lifeline: Some(lifeline),
            withheld,
        });
    }
    let embedded = start_embedded(&args.admin.config, args.allow_plaintext).await?;
    withheld.extend(embedded.withheld);
    let issued = embedded
        .handle
        .issue(request)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Task {
        issuer: Issuer::Embedded(Box::new(embedded.handle)),
        issued,
        lifeline: None,
        withheld,
    })
}

/// Revokes the task (`why=exit`), then lets its lifeline go and stops an embedded keyswap.
async fn end_task(issuer: Issuer, id: &str, lifeline: Option<LifelineHandle>) {
    let revoked = match &issuer {
        Issuer::Remote(client) => client
            .revoke(id, "exit")
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Issuer::Embedded(handle) => handle
            .revoke(id, RevokeWhy::Exit)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}")),
    };
    drop(lifeline);
    if let Err(e) = revoked {
        // Already gone (expired, revoked by an operator) is not a failure of the command.
        tracing::debug!(task = %id, error = %e, "task already ended");
    }
    if let Issuer::Embedded(handle) = issuer {
        (*handle).shutdown().await;
    }
}

/// Same-user processes cannot read exec's memory or environment (`/proc/PID/environ`,
/// `/proc/PID/mem`, ptrace), a crash writes no core file, and the command's orphans re-parent
/// to exec, so they stay in the ancestry the admin API refuses.
fn harden_self() -> anyhow::Result<()> {
    crate::host::process_guard::harden_self()?;
    crate::host::process_guard::become_subreaper()?;
    Ok(())
}
