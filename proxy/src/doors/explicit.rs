//! The explicit proxy listener (`HTTPS_PROXY` / `HTTP_PROXY`): accepts connections and
//! answers each request on them — a CONNECT (identify → target → intercept or tunnel) or an
//! absolute-form plain-HTTP request (identify → target → forward).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyswap_config::Scheme;
use keyswap_scrub::body::{empty, ProxyBody};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::audit::decision::{Decision, Denial, Reason};
use crate::audit::record::{audit_path, Sent, Started, Subject, Via};
use crate::doors::decide::{decide_target, Handling, TargetRefusal};
use crate::doors::identify::{claimed_task_id, identify, Unidentified};
use crate::doors::refusal;
use crate::pipeline::conn::{http1_server, refuse_oversized_head, serve_until};
use crate::pipeline::context::ConnContext;
use crate::pipeline::exchange;
use crate::pipeline::{agent_api, intercept, tunnel};
use crate::state::metrics::Metrics;
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, TaskConnection};
use crate::wire::target::Target;

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

pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
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
        .closing()
        .response(),
        None => Denial::new(
            Reason::BadRequest,
            "keyswap is a proxy: set HTTPS_PROXY / HTTP_PROXY to http://TASK:TOKEN@this-address",
        )
        .closing()
        .response(),
    }
}

/// The task of a request on the explicit door, from its `Proxy-Authorization`; `local` is
/// where the agent reached keyswap (what a 407 tells it to put in its proxy URL).
///
/// In a fleet, a task this replica does not know yet (issued on another a moment ago) is
/// looked up once in the store; a known task never is.
async fn identify_agent(
    shared: &Arc<Shared>,
    headers: &http::HeaderMap,
    local: SocketAddr,
) -> Result<Arc<LiveTask>, Unidentified> {
    let found = identify(&shared.snapshot().config, &*shared.tasks, headers, local);
    let unknown = match (&found, &shared.fleet) {
        (Err(refused), Some(_)) if refused.claimed_task.is_none() => {
            claimed_task_id(headers).filter(|id| shared.tasks.get(id).is_none())
        }
        _ => None,
    };
    match unknown {
        Some(id) if crate::fleet::find(shared, &id).await.is_some() => {
            identify(&shared.snapshot().config, &*shared.tasks, headers, local)
        }
        _ => found,
    }
}

/// A refusal answered on the proxy connection itself (407, 400, a tunnel host's 403),
/// recorded with the target even when the task is not known.
fn refuse_on_proxy(
    shared: &Shared,
    subject: &Subject,
    mut denial: Denial,
    claimed_task: Option<String>,
) -> Response<ProxyBody> {
    denial.close = denial.reason == Reason::BadRequest;
    let response = denial.response();
    let decision = Decision {
        claimed_task,
        parent_status: denial.parent_status,
        ..Decision::new(denial.reason)
    };
    let sent = Sent::status(response.status().as_u16());
    shared.record(subject, &decision, sent, Some(&denial.message));
    response
}

/// identify → target → decide → intercept, tunnel, or deliver the refusal inside the tunnel.
async fn connect(
    shared: Arc<Shared>,
    conn_id: u64,
    local: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Started::now();
    // Parsed before identity so that even a 407 is recorded with where the agent was going.
    let parsed = req.uri().authority().map(Target::from_connect);
    let (host, port) = match &parsed {
        Some(Ok(target)) => (target.host.clone(), target.port),
        _ => (String::new(), 0),
    };
    let mut subject =
        Subject::connection(conn_id, Via::Explicit, None, "https", host, port, started);
    let task = match identify_agent(&shared, req.headers(), local).await {
        Ok(task) => task,
        Err(Unidentified {
            denial,
            claimed_task,
        }) => return refuse_on_proxy(&shared, &subject, denial, claimed_task),
    };
    subject.task = Some(task.name());
    let target = match parsed {
        Some(Ok(target)) => target,
        Some(Err(e)) => {
            let denial = Denial::new(Reason::BadRequest, format!("bad CONNECT target: {e}"));
            return refuse_on_proxy(&shared, &subject, denial, None);
        }
        None => {
            let denial = Denial::new(Reason::BadRequest, "CONNECT needs host:port");
            return refuse_on_proxy(&shared, &subject, denial, None);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let handling = decide_target(&shared, &task, conn_id, &target).await;
    let ctx = ConnContext {
        conn_id,
        task,
        scheme: Scheme::Https,
        target,
        via: Via::Explicit,
    };
    match handling {
        Err(TargetRefusal {
            denial,
            tunnel_host: true,
        }) => refuse_on_proxy(&shared, &subject, denial, None),
        Err(TargetRefusal { denial, .. }) => {
            refuse_inside(&shared, ctx, denial, on_upgrade, started)
        }
        Ok(Handling::Tunnel { rule }) => {
            let dialled = tunnel::dial(&shared, &ctx).await;
            match dialled {
                Ok(upstream) => {
                    let splice =
                        tunnel::splice(shared.clone(), ctx, rule, on_upgrade, upstream, started);
                    tokio::spawn(splice);
                    connect_ok()
                }
                Err(denial) => refuse_on_proxy(&shared, &subject, denial, None),
            }
        }
        Ok(Handling::Intercept) => {
            tokio::spawn(intercept::run(shared.clone(), ctx, on_upgrade));
            connect_ok()
        }
        Ok(Handling::Internal) => {
            tokio::spawn(agent_api::run(shared.clone(), ctx, on_upgrade));
            connect_ok()
        }
    }
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
    started: Started,
) -> Response<ProxyBody> {
    tracing::debug!(
        conn = ctx.conn_id,
        task = %ctx.task.id,
        target = %ctx.target,
        reason = %denial.reason,
        "CONNECT accepted to answer its requests with a refusal"
    );
    let serve = refusal::serve(shared.clone(), ctx, denial, on_upgrade, started);
    tokio::spawn(serve);
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
    let started = Started::now();
    let task = match identify_agent(&shared, req.headers(), local).await {
        Ok(task) => task,
        Err(Unidentified {
            denial,
            claimed_task,
        }) => {
            let target = req
                .uri()
                .authority()
                .and_then(|a| Target::from_authority(a, 80).ok());
            let (host, port) = target.map_or((String::new(), 0), |t| (t.host, t.port));
            let subject = Subject {
                method: req.method().as_str().to_string(),
                path: Some(audit_path(req.uri().path())),
                ..Subject::connection(conn_id, Via::Explicit, None, "http", host, port, started)
            };
            return refuse_on_proxy(&shared, &subject, denial, claimed_task);
        }
    };
    if !task.is_cancelled() {
        tasks.register(&task, &shared.metrics);
    }
    let target = match req.uri().authority().map(|a| Target::from_authority(a, 80)) {
        Some(Ok(target)) => target,
        _ => {
            return Denial::new(Reason::BadRequest, "the request URI names no valid host")
                .closing()
                .response();
        }
    };
    let ctx = ConnContext::plain(conn_id, task, target, Via::Explicit);
    exchange::plain(shared, ctx, req).await
}
