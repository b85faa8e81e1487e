//! The admin API: HTTP/1.1 over a unix socket (mode 0600; whoever can open it is the
//! operator), and optionally over TCP for sidecars, where every request must carry
//! `Authorization: Bearer <admin token>`.
//!
//! ```text
//! POST   /v1/tasks        {"policy","ttl","id","lifeline"} → IssuedTask (the only response with a token)
//! GET    /v1/tasks        → TaskList (never a token)
//! GET    /v1/tasks/{id}   → TaskInfo
//! DELETE /v1/tasks/{id}   → Revoked   (?why=exit from `keyswap exec`)
//! POST   /v1/reload       → Reloaded  (reads the config file again)
//! GET    /v1/approvals    → ApprovalList (?task=ID: only that task's)
//! POST   /v1/approvals/{id} {"answer":"approve"|"deny","scope","reason"} → Answered
//! ```
//!
//! Who called is known for the audit of approvals: on the socket, the peer's UID
//! (`uid:N`, from `SO_PEERCRED`); on TCP, the name of the token's variable (`token:NAME`).
//!
//! Errors are JSON [`ApiError`]s. A `lifeline` issue keeps its response open and revokes the
//! task when the connection drops, so a killed `keyswap exec` cannot leave its task behind.
//!
//! **The agent is refused.** Whoever can open the socket is the operator, except a process
//! descended from a `keyswap exec` — its command, the agent, runs as the same user and could
//! otherwise issue itself a task from any policy or approve its own held request. When a
//! connection is accepted, its peer's ancestors are walked once ([`process_guard::lineage`]);
//! every request on it then gets 403 `sandboxed_peer` (also in `x-keyswap-reason`) if a
//! strict ancestor is (a) the peer of a live lifeline issued on this socket (exec's pid, for
//! as long as the lifeline lives) or (b) a process whose command line is `keyswap exec …`.
//! exec itself (the peer, not an ancestor) issues, revokes and answers `--ask`. exec is a
//! child subreaper, so a command that double-forks stays its descendant. A walk that fails
//! (a `/proc` read error, the peer gone) refuses; a peer whose pid is 0 (in a pid namespace
//! this proxy cannot see) cannot be walked and is allowed with a warning. Every refusal is a
//! WARN line naming the peer's pid and uid. The TCP listener has no peer to walk: its bearer
//! token, which exec withholds from the command, is the check there.

mod approvals;
mod bearer;
pub mod client;
mod failure;
mod issued;
mod lifeline;
mod peer;
mod reload;
mod state;
mod tasks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use keyswap_config::Admin;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ProxyError;
use crate::host::child_env::TrustFiles;
use crate::state::shared::Shared;

pub use issued::{credential_variables, issued_task};
pub use lifeline::LIFELINE_HEARTBEAT;
pub use peer::SANDBOXED_PEER;
pub use state::Caller;

use failure::failure;
use state::AdminState;

/// The admin listeners that were started.
pub struct AdminServed {
    pub tcp_addr: Option<SocketAddr>,
    pub handles: Vec<JoinHandle<()>>,
}

/// Binds the unix socket (and the TCP listener if configured) and serves until `stop`.
pub async fn start(
    shared: Arc<Shared>,
    trust: TrustFiles,
    admin: &Admin,
    config_path: Option<PathBuf>,
    stop: watch::Receiver<bool>,
) -> Result<AdminServed, ProxyError> {
    let state = AdminState {
        shared,
        trust,
        config_path,
        stop: stop.clone(),
        lifelines: Arc::default(),
    };
    let unix = bind_socket(&admin.socket).await?;
    let mut handles = vec![tokio::spawn(serve_unix(
        unix,
        router(state.clone()).layer(axum::middleware::from_fn_with_state(
            state.lifelines.clone(),
            peer::check_socket_peer,
        )),
        stop.clone(),
    ))];
    let mut tcp_addr = None;
    if let (Some(listen), Some(token)) = (admin.listen, admin.token.clone()) {
        let (listener, local) = crate::host::listen::bind(listen, "admin API").await?;
        tcp_addr = Some(local);
        let token = Arc::new(token);
        let caller = Caller(format!(
            "token:{}",
            admin.token_env.as_deref().unwrap_or("admin")
        ));
        let app = router(state).layer(axum::middleware::from_fn(move |req, next| {
            bearer::require_bearer(token.clone(), caller.clone(), req, next)
        }));
        handles.push(tokio::spawn(serve_tcp(listener, app, stop.clone())));
        tracing::info!(addr = ?tcp_addr, "admin API listening on TCP (bearer token required)");
    }
    tracing::info!(socket = %admin.socket.display(), "admin API listening");
    Ok(AdminServed { tcp_addr, handles })
}

/// Binds the socket with mode 0600. A socket file left by a proxy that is gone is replaced;
/// one that answers belongs to a running proxy and is an error.
async fn bind_socket(path: &Path) -> Result<UnixListener, ProxyError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, source| ProxyError::Io {
        what: format!("admin socket {}: {what}", path.display()),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("creating its directory", e))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io(
                "another keyswap is serving it",
                std::io::Error::new(std::io::ErrorKind::AddrInUse, "stop it or set admin.socket"),
            ));
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600", e))?;
    Ok(listener)
}

async fn serve_unix(listener: UnixListener, app: Router, stop: watch::Receiver<bool>) {
    let app = app.into_make_service_with_connect_info::<peer::SocketPeer>();
    let served = axum::serve(listener, app).with_graceful_shutdown(stopped(stop));
    if let Err(e) = served.await {
        tracing::error!(error = %e, "admin API (socket) stopped");
    }
}

async fn serve_tcp(listener: TcpListener, app: Router, stop: watch::Receiver<bool>) {
    let served = axum::serve(listener, app).with_graceful_shutdown(stopped(stop));
    if let Err(e) = served.await {
        tracing::error!(error = %e, "admin API (TCP) stopped");
    }
}

/// Resolves when the proxy stops.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.changed().await;
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/tasks", post(tasks::issue).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show).delete(tasks::revoke))
        .route("/v1/reload", post(reload::reload))
        .route("/v1/approvals", get(approvals::list_approvals))
        .route("/v1/approvals/{id}", post(approvals::answer_approval))
        .fallback(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin API route; see the README's admin API section",
            )
        })
        .with_state(state)
}
