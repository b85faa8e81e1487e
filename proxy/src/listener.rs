//! The explicit proxy listener (`HTTPS_PROXY` / `HTTP_PROXY`): accepts connections and
//! answers each request on them — a CONNECT (identify → target → intercept or tunnel) or an
//! absolute-form plain-HTTP request (identify → target → forward).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyswap_config::{first_rule_for_host, Scheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::body::{empty, ProxyBody};
use crate::decision::{Denial, Reason};
use crate::forward::exchange;
use crate::headers::head_too_large;
use crate::identify::{identify, Unidentified};
use crate::intercept;
use crate::lifecycle::closing::serve_until;
use crate::lifecycle::registry::{LiveTask, TaskConnection};
use crate::metrics::Metrics;
use crate::refusal;
use crate::route::{ConnContext, Via};
use crate::server::Shared;
use crate::target::Target;
use crate::tunnel;
use crate::upstream::ConnectError;

/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (and read buffer) accepted on an HTTP/1 connection.
pub use crate::headers::MAX_HEAD_BYTES;
/// Most header fields accepted in one HTTP/1 request.
pub const MAX_HEADERS: usize = 128;

pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_agent(shared.clone(), stream));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

/// The HTTP/1 server settings used toward agents.
pub fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// The HTTP/2 server settings used toward agents (inside intercepted TLS).
pub fn http2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Rapid reset (CVE-2023-44487): bound streams reset before they are served.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// The tasks a plain-HTTP proxy connection has served requests for: the connection is
/// registered under each, and closes when any of them ends.
#[derive(Default)]
struct PlainConnTasks {
    registered: Mutex<Vec<TaskConnection>>,
    ended: CancellationToken,
}

impl PlainConnTasks {
    fn register(&self, task: &Arc<LiveTask>, metrics: &Arc<Metrics>) {
        let Ok(mut registered) = self.registered.lock() else {
            return;
        };
        if registered.iter().any(|c| Arc::ptr_eq(c.task(), task)) {
            return;
        }
        let task_conn = task.connection(metrics);
        let revoked = task_conn.revoked();
        let ended = self.ended.clone();
        registered.push(task_conn);
        tokio::spawn(async move {
            tokio::select! {
                _ = revoked => ended.cancel(),
                _ = ended.cancelled() => {}
            }
        });
    }
}

impl Drop for PlainConnTasks {
    fn drop(&mut self) {
        // Ends the watchers spawned by `register`.
        self.ended.cancel();
    }
}

async fn serve_agent(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    // Where this agent reached keyswap: what a 407 tells it to put in its proxy URL.
    let local = stream.local_addr().unwrap_or(shared.listen);
    let tasks = Arc::new(PlainConnTasks::default());
    let ended = tasks.ended.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let tasks = tasks.clone();
        async move { Ok::<_, Infallible>(proxy_request(shared, conn_id, local, tasks, req).await) }
    });
    let connection = http1_server()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    match serve_until!(connection, ended.cancelled_owned()) {
        Some(Err(e)) => {
            tracing::debug!(conn = conn_id, error = %e, "agent connection ended with an error")
        }
        None => tracing::debug!(conn = conn_id, "plain-HTTP connection closed: task ended"),
        Some(Ok(())) => {}
    }
}

/// The 400 for a request whose head exceeds 64 KiB (hyper's own limit is on the raw bytes;
/// this is the same bound on the parsed head), on either front door.
pub(crate) fn refuse_oversized_head<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    head_too_large(req.method(), req.uri(), req.headers()).then(|| {
        Denial::new(
            Reason::BadRequest,
            "the request head is larger than 64 KiB; send fewer or smaller headers",
        )
        .response(true)
    })
}

async fn proxy_request(
    shared: Arc<Shared>,
    conn_id: u64,
    local: SocketAddr,
    tasks: Arc<PlainConnTasks>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some(refusal) = refuse_oversized_head(&req) {
        return refusal;
    }
    if req.method() == Method::CONNECT {
        return connect(shared, conn_id, local, req).await;
    }
    match req.uri().scheme_str() {
        Some("http") => plain(shared, conn_id, local, &tasks, req).await,
        Some(_) => Denial::new(
            Reason::BadRequest,
            "send https:// requests through a CONNECT tunnel (set HTTPS_PROXY)",
        )
        .response(true),
        None => Denial::new(
            Reason::BadRequest,
            "keyswap is a proxy: set HTTPS_PROXY / HTTP_PROXY to http://TASK:TOKEN@this-address",
        )
        .response(true),
    }
}

/// Who a refusal of a CONNECT (or of a plain request before its task is known) is for.
struct Refusing<'a> {
    conn_id: u64,
    method: &'a Method,
    task: Option<&'a Arc<LiveTask>>,
    /// For `bad_token`: the known task the credentials named.
    claimed_task: Option<String>,
    target: Option<&'a Target>,
    /// Plain-HTTP requests only: the normalised path.
    path: Option<String>,
    scheme: Scheme,
    started: (Instant, SystemTime),
}

/// A refusal answered on the proxy connection itself (407, 400, a tunnel rule's 403),
/// audited with the target even when the task is not known.
fn refuse_connect(shared: &Shared, who: Refusing<'_>, denial: Denial) -> Response<ProxyBody> {
    let response = denial.response(denial.reason == Reason::BadRequest);
    tracing::info!(
        conn = who.conn_id,
        task = who.task.map_or("-", |t| t.id.as_str()),
        method = %who.method,
        target = %who.target.map_or_else(|| "-".to_string(), Target::to_string),
        path = who.path.as_deref().unwrap_or("-"),
        reason = %denial.reason,
        "request refused at the proxy"
    );
    let mut record = AuditRecord::for_connect(
        who.conn_id,
        who.task.map(|t| &**t),
        who.target,
        denial.reason,
        response.status().as_u16(),
        who.started,
    );
    record.method = who.method.as_str().to_string();
    record.scheme = who.scheme.as_str();
    record.claimed_task = who.claimed_task;
    record.path = who.path;
    shared.record_request(record);
    response
}

/// identify → target → intercept, tunnel, or deliver the refusal inside the tunnel.
async fn connect(
    shared: Arc<Shared>,
    conn_id: u64,
    local: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = (Instant::now(), SystemTime::now());
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    // Parsed before identity so that even a 407 is audited with where the agent was going.
    let parsed = req.uri().authority().map(Target::from_connect);
    let method = Method::CONNECT;
    let mut who = Refusing {
        conn_id,
        method: &method,
        task: None,
        claimed_task: None,
        target: parsed.as_ref().and_then(|t| t.as_ref().ok()),
        path: None,
        scheme: Scheme::Https,
        started,
    };
    let task = match identify(config, &shared.tasks, req.headers(), local) {
        Ok(task) => task,
        Err(Unidentified {
            denial,
            claimed_task,
        }) => {
            who.claimed_task = claimed_task;
            return refuse_connect(&shared, who, denial);
        }
    };
    who.task = Some(&task);
    let target = match &parsed {
        Some(Ok(target)) => target.clone(),
        Some(Err(e)) => {
            let denial = Denial::new(Reason::BadRequest, format!("bad CONNECT target: {e}"));
            return refuse_connect(&shared, who, denial);
        }
        None => {
            let denial = Denial::new(Reason::BadRequest, "CONNECT needs host:port");
            return refuse_connect(&shared, who, denial);
        }
    };
    let rules = snapshot.rules_of(&task).unwrap_or_default();
    let rule = first_rule_for_host(rules, Scheme::Https, &target.host, target.port);
    let ctx = ConnContext {
        conn_id,
        task: task.clone(),
        scheme: Scheme::Https,
        target: target.clone(),
        via: Via::Explicit,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    if task.is_expired(SystemTime::now()) {
        let denial = Denial::new(
            Reason::TaskExpired,
            format!(
                "task {} has expired; ask the operator to extend it",
                task.id
            ),
        );
        // A `tunnel: true` host's client need not trust keyswap's CA: refuse the CONNECT.
        if rule.is_some_and(|r| r.tunnel) {
            return refuse_connect(&shared, who, denial);
        }
        return refuse_inside(&shared, ctx, denial, on_upgrade, started);
    }
    if rule.is_none() {
        let refusal = Denial::new(
            Reason::HostNotAllowed,
            format!(
                "{target} is not in task {}'s allowlist; ask the operator to add a rule",
                task.id
            ),
        );
        // Under on_unlisted: ask the CONNECT waits for a human; approved, it is intercepted.
        if let Err(denial) =
            crate::approval::ask_connect(&shared, &snapshot, &task, conn_id, &target, refusal).await
        {
            return refuse_inside(&shared, ctx, denial, on_upgrade, started);
        }
    }
    if let Some(rule) = rule.filter(|r| r.tunnel) {
        let upstream = match snapshot.upstream.dialer.dial(&target).await {
            Ok(stream) => stream,
            Err(e) => {
                let reason = match e {
                    ConnectError::PrivateAddress { .. } => Reason::PrivateAddress,
                    _ => Reason::UpstreamError,
                };
                return refuse_connect(&shared, who, Denial::new(reason, e.to_string()));
            }
        };
        tokio::spawn(tunnel::splice(
            shared.clone(),
            ctx,
            rule.index,
            on_upgrade,
            upstream,
            started,
        ));
    } else {
        tokio::spawn(intercept::run(shared.clone(), ctx, on_upgrade));
    }
    connect_ok()
}

/// The 200 that opens a tunnel.
fn connect_ok() -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Answers the CONNECT with 200 and delivers `denial` inside the tunnel ([`refusal`]): no
/// client shows a refused CONNECT's reason, every client shows a response's.
fn refuse_inside(
    shared: &Arc<Shared>,
    ctx: ConnContext,
    denial: Denial,
    on_upgrade: hyper::upgrade::OnUpgrade,
    started: (Instant, SystemTime),
) -> Response<ProxyBody> {
    tracing::debug!(
        conn = ctx.conn_id,
        task = %ctx.task.id,
        target = %ctx.target,
        reason = %denial.reason,
        "CONNECT accepted to answer its requests with a refusal"
    );
    tokio::spawn(refusal::serve(
        shared.clone(),
        ctx,
        denial,
        on_upgrade,
        started,
    ));
    connect_ok()
}

/// Plain-HTTP forwarding of an absolute-form request: identify → target → forward.
async fn plain(
    shared: Arc<Shared>,
    conn_id: u64,
    local: SocketAddr,
    tasks: &PlainConnTasks,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = (Instant::now(), SystemTime::now());
    let snapshot = shared.snapshot();
    let task = match identify(&snapshot.config, &shared.tasks, req.headers(), local) {
        Ok(task) => task,
        Err(Unidentified {
            denial,
            claimed_task,
        }) => {
            let target = req
                .uri()
                .authority()
                .and_then(|a| Target::from_authority(a, 80).ok());
            let who = Refusing {
                conn_id,
                method: req.method(),
                task: None,
                claimed_task,
                target: target.as_ref(),
                path: Some(refusal::audit_path(req.uri().path())),
                scheme: Scheme::Http,
                started,
            };
            return refuse_connect(&shared, who, denial);
        }
    };
    if !task.is_cancelled() {
        tasks.register(&task, &shared.metrics);
    }
    let target = match req.uri().authority().map(|a| Target::from_authority(a, 80)) {
        Some(Ok(target)) => target,
        _ => {
            return Denial::new(Reason::BadRequest, "the request URI names no valid host")
                .response(true);
        }
    };
    let ctx = Arc::new(ConnContext {
        conn_id,
        task,
        scheme: Scheme::Http,
        target,
        via: Via::Explicit,
    });
    match exchange(shared, ctx, req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
