//! What `keyswap exec` tells the sandbox (crate `keyswap-sandbox`): as whom the command runs,
//! what it must not see, and how the agent's listener inside is served.
//!
//! Paths only: nothing here reads or formats a secret value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keyswap_config::SandboxPaths;
use keyswap_sandbox::{Identity, StartPlan};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{IssuedTask, SandboxFor};
use crate::server::ProxyHandle;

/// The user the command runs as when exec runs as root (`--user NAME`).
pub struct AgentIdentity {
    pub ids: Identity,
    pub name: String,
    pub home: PathBuf,
}

/// Who the command runs as: exec's own user, or `--user` when exec is root. A sandboxed
/// command is never root: its capabilities inside would reach whatever root's namespace mounts.
pub fn agent_identity(
    user: Option<&str>,
    no_sandbox: bool,
) -> anyhow::Result<Option<AgentIdentity>> {
    let root = nix::unistd::geteuid().is_root();
    let Some(name) = user else {
        if root && !no_sandbox {
            bail!(
                "keyswap exec is running as root, and it will not run the command as root: \
                 pass --user NAME to run it sandboxed as that user (or --no-sandbox to run it \
                 as root, unsandboxed)"
            );
        }
        return Ok(None);
    };
    if no_sandbox {
        bail!("--user runs the command in the sandbox as that user; it does not combine with --no-sandbox");
    }
    if !root {
        bail!("--user needs root: without it keyswap exec runs the command as you");
    }
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .with_context(|| format!("no user named {name}"))?;
    if user.uid.is_root() {
        bail!("--user {name} is root; name an unprivileged user");
    }
    let c_name = std::ffi::CString::new(name).context("a NUL byte in --user")?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .with_context(|| format!("reading the groups of {name}"))?;
    Ok(Some(AgentIdentity {
        ids: Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        },
        name: name.to_string(),
        home: user.dir,
    }))
}

/// What `--no-sandbox` gives up, printed before the command starts.
pub fn no_sandbox_warning() -> String {
    "keyswap exec: WARNING: --no-sandbox: the command runs as you, outside any sandbox. It can \
     read every file you can (from_file secrets, the CA private key, the config, ~/.ssh, \
     ~/.aws, ~/.config/gh ...), use your ssh-agent and other sockets, connect anywhere without \
     going through keyswap, and see your other processes. keyswap's own memory and environment \
     stay unreadable to it, and the admin socket still refuses it."
        .to_string()
}

/// Whose sandbox it is, for the proxy's answer: the agent user's home and session runtime
/// directory (hidden whole).
pub fn sandbox_for(identity: Option<&AgentIdentity>) -> anyhow::Result<SandboxFor> {
    if let Some(identity) = identity {
        let runtime = PathBuf::from(format!("/run/user/{}", identity.ids.uid));
        return Ok(SandboxFor {
            home: identity.home.clone(),
            runtime_dir: Some(runtime),
        });
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|home| home.is_absolute())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|user| user.dir)
        })
        .context("no home directory: set HOME")?;
    Ok(SandboxFor {
        home,
        runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    })
}

/// The sandbox's plan: the proxy's paths hidden and read-only, keyswap's trust files and the
/// exposed paths kept visible when they lie in the private `/tmp`.
pub fn start_plan(
    command: &[String],
    env: BTreeMap<String, String>,
    task_env: &BTreeMap<String, String>,
    paths: &SandboxPaths,
) -> anyhow::Result<StartPlan> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let absolute = |p: &Path| cwd.join(p);
    // The trust files the command's runtimes read (a CA directory under /tmp in tests).
    let mut keep: Vec<PathBuf> = ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"]
        .iter()
        .filter_map(|name| task_env.get(*name))
        .filter_map(|file| Path::new(file).parent().map(absolute))
        .collect();
    keep.extend(paths.expose.iter().map(|p| absolute(p)));
    Ok(StartPlan {
        command: command.to_vec(),
        env: env.into_iter().collect(),
        cwd: cwd.clone(),
        hide: paths.hide.iter().map(|p| absolute(&p.path)).collect(),
        read_only: paths.read_only.iter().map(|p| absolute(&p.path)).collect(),
        keep,
    })
}

/// Serves the agent's listener inside the sandbox: the embedded proxy accepts on it itself;
/// against a running proxy, exec relays each connection to the proxy's own listener.
pub fn serve_listener(
    embedded: Option<&mut ProxyHandle>,
    issued: &IssuedTask,
    listener: &std::net::TcpListener,
) -> anyhow::Result<()> {
    let listener = listener
        .try_clone()
        .context("sharing the sandbox's listener")?;
    if let Some(handle) = embedded {
        return handle.serve_explicit(listener).map_err(anyhow::Error::from);
    }
    let Some(mut proxy) = issued.listen else {
        bail!("the running keyswap did not say where it listens (is it older than this exec?)");
    };
    if proxy.ip().is_unspecified() {
        proxy.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    tokio::spawn(relay(listener, proxy));
    Ok(())
}

async fn relay(listener: TcpListener, proxy: SocketAddr) {
    loop {
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "sandbox listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut outbound = match TcpStream::connect(proxy).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, %proxy, "sandbox listener: cannot reach keyswap");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
