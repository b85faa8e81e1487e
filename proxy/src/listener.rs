//! The explicit proxy listener (`HTTPS_PROXY` / `HTTP_PROXY`): accepts connections and
//! answers each request on them — a CONNECT (identify → target → intercept or tunnel) or an
//! absolute-form plain-HTTP request (identify → target → forward).

use std::convert::Infallible;
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
use crate::identify::identify;
use crate::intercept;
use crate::lifecycle::closing::serve_until;
use crate::lifecycle::registry::{LiveTask, TaskConnection};
use crate::metrics::Metrics;
use crate::route::ConnContext;
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
    let tasks = Arc::new(PlainConnTasks::default());
    let ended = tasks.ended.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let tasks = tasks.clone();
        async move { Ok::<_, Infallible>(proxy_request(shared, conn_id, tasks, req).await) }
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

async fn proxy_request(
    shared: Arc<Shared>,
    conn_id: u64,
    tasks: Arc<PlainConnTasks>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if head_too_large(req.method(), req.uri(), req.headers()) {
        return Denial::new(
            Reason::BadRequest,
            "the request head is larger than 64 KiB; send fewer or smaller headers",
        )
        .response(true);
    }
    if req.method() == Method::CONNECT {
        return connect(shared, conn_id, req).await;
    }
    match req.uri().scheme_str() {
        Some("http") => plain(shared, conn_id, &tasks, req).await,
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

/// A refusal of the CONNECT itself, audited.
fn refuse_connect(
    shared: &Shared,
    conn_id: u64,
    task: Option<&Arc<LiveTask>>,
    target: Option<&Target>,
    denial: Denial,
    started: (Instant, SystemTime),
) -> Response<ProxyBody> {
    let response = denial.response(denial.reason == Reason::BadRequest);
    tracing::info!(conn = conn_id, task = task.map_or("-", |t| t.id.as_str()), reason = %denial.reason, "CONNECT refused");
    shared.record_request(AuditRecord::for_connect(
        conn_id,
        task.map(|t| &**t),
        target,
        denial.reason,
        response.status().as_u16(),
        started,
    ));
    response
}

/// identify → target → intercept or tunnel.
async fn connect(
    shared: Arc<Shared>,
    conn_id: u64,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = (Instant::now(), SystemTime::now());
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    let task = match identify(config, &shared.tasks, req.headers()) {
        Ok(task) => task,
        Err(denial) => return refuse_connect(&shared, conn_id, None, None, denial, started),
    };
    let refuse = |target: Option<&Target>, denial| {
        refuse_connect(&shared, conn_id, Some(&task), target, denial, started)
    };
    let target = match req.uri().authority().map(Target::from_connect) {
        Some(Ok(target)) => target,
        Some(Err(e)) => {
            return refuse(
                None,
                Denial::new(Reason::BadRequest, format!("bad CONNECT target: {e}")),
            )
        }
        None => {
            return refuse(
                None,
                Denial::new(Reason::BadRequest, "CONNECT needs host:port"),
            )
        }
    };
    if task.is_expired(SystemTime::now()) {
        return refuse(
            Some(&target),
            Denial::new(
                Reason::TaskExpired,
                format!(
                    "task {} has expired; ask the operator to extend it",
                    task.id
                ),
            ),
        );
    }
    let rules = snapshot.rules_of(&task).unwrap_or_default();
    let rule = first_rule_for_host(rules, Scheme::Https, &target.host, target.port);
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
            return refuse(Some(&target), denial);
        }
    }
    let ctx = ConnContext {
        conn_id,
        task: task.clone(),
        scheme: Scheme::Https,
        target: target.clone(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    if let Some(rule) = rule.filter(|r| r.tunnel) {
        let upstream = match snapshot.upstream.dialer.dial(&target).await {
            Ok(stream) => stream,
            Err(e) => {
                let reason = match e {
                    ConnectError::PrivateAddress { .. } => Reason::PrivateAddress,
                    _ => Reason::UpstreamError,
                };
                return refuse(Some(&target), Denial::new(reason, e.to_string()));
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
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Plain-HTTP forwarding of an absolute-form request: identify → target → forward.
async fn plain(
    shared: Arc<Shared>,
    conn_id: u64,
    tasks: &PlainConnTasks,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = (Instant::now(), SystemTime::now());
    let snapshot = shared.snapshot();
    let task = match identify(&snapshot.config, &shared.tasks, req.headers()) {
        Ok(task) => task,
        Err(denial) => return refuse_connect(&shared, conn_id, None, None, denial, started),
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
    });
    match exchange(shared, ctx, req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
