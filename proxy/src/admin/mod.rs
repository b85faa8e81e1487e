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

pub mod client;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use bytes::Bytes;
use http_body::Frame;
use keyswap_config::{Admin, Config, SecretSource};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{
    AnswerRequest, Answered, ApiError, ApprovalList, IssueRequest, IssuedTask, TaskList,
};
use crate::error::ProxyError;
use crate::host::child_env::{task_env, ProxyEndpoint, TrustFiles};
use crate::host::process_guard::{self, Lineage};
use crate::lifecycle::tasks::{self, Issued, TaskError};
use crate::state::approvals::{sanitise_note, Answer, Scope};
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, RevokeWhy};

/// How often a lifeline response writes a newline: a write to a peer that has gone fails,
/// which is how a killed `exec` is noticed within a second.
pub const LIFELINE_HEARTBEAT: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    /// The CA bundle and trust store an issued task's environment points at.
    trust: TrustFiles,
    config_path: Option<PathBuf>,
    stop: watch::Receiver<bool>,
    lifelines: Arc<LifelineHolders>,
}

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
            check_socket_peer,
        )),
        stop.clone(),
    ))];
    let mut tcp_addr = None;
    if let (Some(listen), Some(token)) = (admin.listen, admin.token.clone()) {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Io {
                what: format!("admin API: listen on {listen}"),
                source,
            })?;
        tcp_addr = listener.local_addr().ok();
        let token = Arc::new(token);
        let caller = Caller(format!(
            "token:{}",
            admin.token_env.as_deref().unwrap_or("admin")
        ));
        let app = router(state).layer(axum::middleware::from_fn(move |req, next| {
            require_bearer(token.clone(), caller.clone(), req, next)
        }));
        let mut stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin API (TCP) stopped");
            }
        }));
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

/// Who called the admin API, as the audit names them.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The peer of an admin socket connection (`SO_PEERCRED`) and its ancestors, read once
/// when the connection is accepted.
#[derive(Debug, Clone)]
struct SocketPeer {
    uid: Option<u32>,
    pid: Option<i32>,
    ancestry: Ancestry,
}

#[derive(Debug, Clone)]
enum Ancestry {
    /// pid 0: the peer is in a pid namespace this proxy cannot see; nothing to walk.
    Unseen,
    Walked(Arc<Lineage>),
    /// The peer could not be placed (why, for the log): it is refused.
    Unknown(Arc<str>),
}

impl Connected<IncomingStream<'_, UnixListener>> for SocketPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let Ok(cred) = stream.io().peer_cred() else {
            return SocketPeer {
                uid: None,
                pid: None,
                ancestry: Ancestry::Unknown("SO_PEERCRED failed".into()),
            };
        };
        let ancestry = match cred.pid() {
            Some(0) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "admin socket peer is in a pid namespace keyswap cannot see: its ancestry \
                     is not checked"
                );
                Ancestry::Unseen
            }
            Some(pid) => walk(pid),
            None => Ancestry::Unknown("SO_PEERCRED gave no pid".into()),
        };
        SocketPeer {
            uid: Some(cred.uid()),
            pid: cred.pid(),
            ancestry,
        }
    }
}

/// The peer's ancestors, from `/proc` (a few small reads per ancestor).
fn walk(pid: i32) -> Ancestry {
    let Some(own) = process_guard::own_binary_name() else {
        return Ancestry::Unknown("keyswap cannot read its own /proc/self/exe".into());
    };
    match process_guard::lineage(Path::new("/proc"), pid, &own) {
        Ok(lineage) => Ancestry::Walked(Arc::new(lineage)),
        Err(e) => Ancestry::Unknown(e.to_string().into()),
    }
}

/// The pid of the socket peer that sent a request (absent on TCP and for pid 0).
#[derive(Debug, Clone, Copy)]
struct PeerPid(i32);

/// The pids of the processes that hold a lifeline issued on the socket (a `keyswap exec`
/// each), with how many each holds: their descendants are an exec's command.
#[derive(Default)]
struct LifelineHolders(Mutex<HashMap<i32, usize>>);

impl LifelineHolders {
    fn hold(self: &Arc<Self>, pid: i32) -> HeldLifeline {
        *self.held().entry(pid).or_default() += 1;
        HeldLifeline {
            holders: self.clone(),
            pid,
        }
    }

    /// The nearest of `ancestors` that holds a lifeline.
    fn nearest_in(&self, ancestors: &[i32]) -> Option<i32> {
        let held = self.held();
        ancestors.iter().copied().find(|pid| held.contains_key(pid))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i32, usize>> {
        // A panic elsewhere while holding the lock leaves the map whole: keep using it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A lifeline's holder, recorded until the lifeline ends.
struct HeldLifeline {
    holders: Arc<LifelineHolders>,
    pid: i32,
}

impl Drop for HeldLifeline {
    fn drop(&mut self) {
        let mut held = self.holders.held();
        if let Some(count) = held.get_mut(&self.pid) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.pid);
            }
        }
    }
}

/// Why `peer` must be refused, if it must: it descends from a `keyswap exec`, or cannot be
/// told apart from a process that does.
fn refusal(peer: &SocketPeer, lifelines: &LifelineHolders) -> Option<String> {
    match &peer.ancestry {
        Ancestry::Unseen => None,
        Ancestry::Unknown(why) => Some(format!("its ancestry could not be read ({why})")),
        Ancestry::Walked(lineage) => {
            if let Some(exec) = lineage.exec_ancestor {
                return Some(format!("it descends from keyswap exec (pid {exec})"));
            }
            lifelines
                .nearest_in(&lineage.ancestors)
                .map(|holder| format!("it descends from the holder of a lifeline (pid {holder})"))
        }
    }
}

/// Refuses a peer that descends from a `keyswap exec`, on every route; tags the others with
/// who they are (for the audit of approvals) and their pid (for lifelines).
async fn check_socket_peer(
    State(lifelines): State<Arc<LifelineHolders>>,
    ConnectInfo(peer): ConnectInfo<SocketPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(why) = refusal(&peer, &lifelines) {
        tracing::warn!(
            peer_pid = peer.pid.unwrap_or(0),
            peer_uid = peer.uid.map_or_else(|| "unknown".to_string(), |uid| uid.to_string()),
            method = %req.method(),
            path = req.uri().path(),
            why = %why,
            "admin API refused a peer that may be an agent (sandboxed_peer)"
        );
        let mut response = failure(
            StatusCode::FORBIDDEN,
            SANDBOXED_PEER,
            "this process runs under keyswap exec (or keyswap cannot tell that it does not): \
             the admin API does not take requests from an agent's command; the operator \
             issues, approves and revokes from outside it",
        );
        response.headers_mut().insert(
            "x-keyswap-reason",
            header::HeaderValue::from_static(SANDBOXED_PEER),
        );
        return response;
    }
    let name = match peer.uid {
        Some(uid) => format!("uid:{uid}"),
        None => "uid:unknown".to_string(),
    };
    req.extensions_mut().insert(Caller(name));
    if let Some(pid) = peer.pid.filter(|pid| *pid > 0) {
        req.extensions_mut().insert(PeerPid(pid));
    }
    next.run(req).await
}

/// The reason of a refusal of an agent's process on the admin socket.
pub const SANDBOXED_PEER: &str = "sandboxed_peer";

async fn serve_unix(listener: UnixListener, app: Router, mut stop: watch::Receiver<bool>) {
    let app = app.into_make_service_with_connect_info::<SocketPeer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin API (socket) stopped");
    }
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/tasks", post(issue).get(list))
        .route("/v1/tasks/{id}", get(show).delete(revoke))
        .route("/v1/reload", post(reload))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", post(answer_approval))
        .fallback(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin API route; see the README's admin API section",
            )
        })
        .with_state(state)
}

/// Every request on the TCP listener needs the admin bearer token (compared in constant
/// time); the unix socket is guarded by its file mode instead.
async fn require_bearer(
    token: Arc<SecretString>,
    caller: Caller,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = token
        .expose_secret()
        .as_bytes()
        .ct_eq(presented.trim().as_bytes())
        .into();
    if ok {
        req.extensions_mut().insert(caller);
        next.run(req).await
    } else {
        let mut response = failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <the admin token from admin.token_env>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"keyswap-admin\""),
        );
        response
    }
}

fn failure(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = ApiError {
        reason: reason.to_string(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

fn task_failure(e: TaskError) -> Response {
    let status = match e {
        TaskError::UnknownTask(_) => StatusCode::NOT_FOUND,
        TaskError::DuplicateId(_) | TaskError::StaticTask(_) => StatusCode::CONFLICT,
        TaskError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    failure(status, e.reason(), e.to_string())
}

/// The answer to an issue: id, token, proxy URL, expiry and the agent's environment, which
/// points at `request.agent_addr` (where the agent reaches the proxy) or at the proxy's own
/// listener; for a sandboxed exec, the paths to hide, from the config read from `config_file`.
pub fn issued_task(
    shared: &Shared,
    trust: &TrustFiles,
    issued: &Issued,
    request: &IssueRequest,
    config_file: Option<&Path>,
) -> IssuedTask {
    let task = &issued.task;
    let snapshot = shared.snapshot();
    let placeholders: Vec<(String, String)> = snapshot
        .rules_of(task)
        .map(keyswap_config::granted_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|id| snapshot.config.secret(id))
        .filter_map(|s| s.env.clone().map(|env| (env, s.placeholder.clone())))
        .collect();
    let env = task_env(
        ProxyEndpoint {
            task: &task.id,
            token: Some(issued.token.expose_secret()),
            addr: request.agent_addr.unwrap_or(shared.listen),
        },
        trust,
        &placeholders,
    );
    IssuedTask {
        id: task.id.clone(),
        policy: task.policy.clone().unwrap_or_default(),
        token: issued.token.expose_secret().to_string(),
        proxy_url: env.get("HTTPS_PROXY").cloned().unwrap_or_default(),
        expires: task
            .expires()
            .map(crate::audit::record::timestamp)
            .unwrap_or_default(),
        env,
        listen: Some(shared.listen),
        sandbox: request.sandbox.as_ref().map(|agent| {
            keyswap_config::sandbox_plan_paths(
                &snapshot.config,
                config_file,
                &agent.home,
                agent.runtime_dir.as_deref(),
            )
        }),
        withheld_env: credential_variables(&snapshot.config),
    }
}

/// The variables `config` reads a credential from: secrets' `from_env`, tasks' `token_env`
/// and `admin.token_env` (sorted, once each). Names are not secret; `keyswap exec` keeps
/// them out of its command's environment.
pub fn credential_variables(config: &Config) -> Vec<String> {
    let secrets = config.secrets.iter().filter_map(|s| match &s.source {
        SecretSource::Env(name) => Some(name.clone()),
        SecretSource::File(_) | SecretSource::Command(_) => None,
    });
    let tasks = config.tasks.values().filter_map(|t| t.token_env.clone());
    let names: BTreeSet<String> = secrets
        .chain(tasks)
        .chain(config.admin.token_env.clone())
        .collect();
    names.into_iter().collect()
}

async fn issue(
    State(state): State<AdminState>,
    peer: Option<Extension<PeerPid>>,
    body: Result<Json<IssueRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "the body must be JSON like {{\"policy\":\"github-rw\",\"ttl\":\"30m\"}}: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    let issued = match tasks::issue(&state.shared, &request) {
        Ok(issued) => issued,
        Err(e) => return task_failure(e),
    };
    let answer = issued_task(
        &state.shared,
        &state.trust,
        &issued,
        &request,
        state.config_path.as_deref(),
    );
    if !request.lifeline {
        return (StatusCode::CREATED, Json(answer)).into_response();
    }
    let Ok(mut first) = serde_json::to_vec(&answer) else {
        tasks::end(&state.shared, &issued.task, RevokeWhy::Exit, true);
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding failed",
        );
    };
    first.push(b'\n');
    let body = LifelineBody {
        first: Some(Bytes::from(first)),
        heartbeat: tokio::time::interval(LIFELINE_HEARTBEAT),
        stop: Box::pin(wait_stop(state.stop.clone())),
        guard: Lifeline {
            shared: state.shared.clone(),
            task: issued.task.clone(),
            holder: peer.map(|Extension(PeerPid(pid))| state.lifelines.hold(pid)),
        },
    };
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::new(body),
    )
        .into_response()
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Revokes its task when dropped: the lifeline response ended (the client went away).
/// Until then its holder's descendants are refused on the socket.
struct Lifeline {
    shared: Arc<Shared>,
    task: Arc<LiveTask>,
    holder: Option<HeldLifeline>,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // The holder first: once the task is seen gone, its holder is no longer anyone's
        // lifeline (only exec's own descendants were ever refused for it).
        self.holder.take();
        tasks::end(&self.shared, &self.task, RevokeWhy::Exit, true);
    }
}

/// The body of a lifeline response: the issued task as one JSON line, then a newline every
/// [`LIFELINE_HEARTBEAT`] until the task ends, the proxy stops, or the client goes away.
struct LifelineBody {
    first: Option<Bytes>,
    heartbeat: tokio::time::Interval,
    stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    guard: Lifeline,
}

impl http_body::Body for LifelineBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.guard.task.is_cancelled() || self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match self.heartbeat.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\n"))))),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn list(State(state): State<AdminState>) -> Response {
    let snapshot = state.shared.snapshot();
    let tasks = state
        .shared
        .tasks
        .all()
        .iter()
        .map(|t| tasks::info(&snapshot.config, t))
        .collect();
    Json(TaskList { tasks }).into_response()
}

async fn show(State(state): State<AdminState>, UrlPath(id): UrlPath<String>) -> Response {
    match state.shared.tasks.get(&id) {
        Some(task) => Json(tasks::info(&state.shared.snapshot().config, &task)).into_response(),
        None => task_failure(TaskError::UnknownTask(id)),
    }
}

#[derive(Deserialize)]
struct RevokeQuery {
    why: Option<String>,
}

async fn revoke(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<RevokeQuery>,
) -> Response {
    let why = match query.why.as_deref() {
        None | Some("api") => RevokeWhy::Api,
        Some("exit") => RevokeWhy::Exit,
        Some(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "why must be \"api\" or \"exit\"",
            )
        }
    };
    match tasks::revoke(&state.shared, &id, why) {
        Ok(revoked) => Json(revoked).into_response(),
        Err(e) => task_failure(e),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let Some(path) = state.config_path.clone() else {
        return failure(
            StatusCode::CONFLICT,
            "no_config_file",
            "this keyswap was not started from a config file, so there is nothing to reload",
        );
    };
    // Log rotation: logrotate renames the audit file, then asks for a reload.
    let shared = state.shared.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        shared.audit.reopen_blocking();
        keyswap_config::load(&path)
    })
    .await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(errors)) => {
            tracing::error!(errors = %errors, "config not reloaded; keeping the running one");
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                format!("the config was not reloaded; the running one stays:\n{errors}"),
            );
        }
        Err(_) => {
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the config load did not finish",
            )
        }
    };
    match crate::lifecycle::reload::reload(&state.shared, config) {
        // The reload logs its own one-line summary of what changed.
        Ok(summary) => Json(summary).into_response(),
        Err(e) => failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            format!("the config was not reloaded; the running one stays: {e}"),
        ),
    }
}

#[derive(Deserialize)]
struct ApprovalsQuery {
    task: Option<String>,
}

async fn list_approvals(
    State(state): State<AdminState>,
    Query(query): Query<ApprovalsQuery>,
) -> Response {
    let approvals = state.shared.approvals.list(query.task.as_deref());
    Json(ApprovalList { approvals }).into_response()
}

async fn answer_approval(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "the body must be JSON like {{\"answer\":\"approve\",\"scope\":\"once\"}} or {{\"answer\":\"deny\",\"reason\":\"...\"}}: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    let by = caller.map_or_else(|| "unknown".to_string(), |Extension(c)| c.0);
    let answer = match (request.answer.as_str(), request.scope.as_deref()) {
        ("approve", scope) => match Scope::parse(scope.unwrap_or("once")) {
            Some(scope) if request.reason.is_none() => Answer::Approve { scope, by },
            Some(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a reason goes with a denial; approve without one",
                )
            }
            None => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "bad_scope",
                    "scope must be \"once\", \"task\" or \"rule\"",
                )
            }
        },
        ("deny", None) => Answer::Deny {
            note: request
                .reason
                .as_deref()
                .and_then(sanitise_note)
                .map(|note| {
                    // A reason pasted with a credential in it must not reach the agent.
                    let scrubber = &state.shared.snapshot().scrubber;
                    match scrubber.replace_all(note.as_bytes()) {
                        Some(scrubbed) => String::from_utf8_lossy(&scrubbed).into_owned(),
                        None => note,
                    }
                }),
            by,
        },
        ("deny", Some(_)) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a scope goes with an approval; deny without one",
            )
        }
        _ => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "answer must be \"approve\" or \"deny\"",
            )
        }
    };
    match state
        .shared
        .approvals
        .answer(&state.shared.audit, &id, answer)
    {
        Ok(answered) => Json(Answered {
            id: answered.id,
            task: answered.task,
            answer: answered.answer.to_string(),
            scope: answered.scope.map(str::to_string),
            by: answered.by,
        })
        .into_response(),
        Err(e) => failure(StatusCode::NOT_FOUND, "unknown_approval", e.to_string()),
    }
}
