//! `https://keyswap.internal`: the agent-facing API, answered by keyswap itself inside the
//! task's own proxy connection. The name is reserved: [`crate::doors::decide::decide_target`]
//! hands `keyswap.internal:443` here before any rule is looked at, so it is never resolved,
//! never dialled, and reachable only through a door that identified the task (on the explicit
//! door, the task's proxy credentials; without them the CONNECT gets 407 like any other).
//!
//! Routes (one file per group): `GET /v1/self` ([`self_view`]), `GET /v1/self/refusals`
//! ([`refusals`]), `POST /v1/self/requests` and `GET /v1/self/requests/{id}` ([`requests`]).
//! Every call is one audit record (`internal: true`), written by [`Shared::record`].
//!
//! Never returns a secret value, a task token, or anything of another task: every answer is
//! built from the connection's own task.

pub mod body;
mod refusals;
mod requests;
mod self_view;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keyswap_scrub::body::{full, ProxyBody};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::decision::{Decision, Reason};
use crate::audit::record::{Sent, Started};
use crate::pipeline::conn::{http1_server, http2_server, serve_until};
use crate::pipeline::context::ConnContext;
use crate::pipeline::intercept::{accept_tls, handshake};
use crate::state::shared::Shared;
use crate::wire::target::Target;

/// The reserved name the agent API answers at.
pub const INTERNAL_HOST: &str = "keyswap.internal";
/// The largest request body the API reads.
const MAX_BODY: usize = 16 * 1024;

/// The explicit door's entry: the CONNECT's upgraded stream.
pub async fn run(shared: Arc<Shared>, ctx: ConnContext, on_upgrade: OnUpgrade) {
    let task_conn = ctx.task.connection(&shared.metrics);
    let tls = tokio::select! {
        tls = accept_tls(&shared, &ctx, on_upgrade) => tls,
        _ = task_conn.revoked() => None,
    };
    if let Some(tls) = tls {
        serve(shared, ctx, task_conn.revoked(), tls).await;
    }
}

/// The transparent door's entry: the agent's own stream, its ClientHello replayed.
pub async fn run_stream<IO>(shared: Arc<Shared>, ctx: ConnContext, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let task_conn = ctx.task.connection(&shared.metrics);
    let tls = tokio::select! {
        tls = handshake(&shared, &ctx, io) => tls,
        _ = task_conn.revoked() => None,
    };
    if let Some(tls) = tls {
        serve(shared, ctx, task_conn.revoked(), tls).await;
    }
}

/// Serves the API's requests on one TLS connection until it ends or its task does.
async fn serve<IO>(
    shared: Arc<Shared>,
    ctx: ConnContext,
    revoked: impl std::future::Future<Output = ()>,
    tls: tokio_rustls::server::TlsStream<IO>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let h2_streams = shared.snapshot().config.limits.per_connection.h2_streams;
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req| {
        let (shared, ctx) = (shared.clone(), ctx.clone());
        async move { Ok::<_, Infallible>(answer(&shared, &ctx, req).await) }
    });
    let io = TokioIo::new(tls);
    let served = if h2 {
        serve_until!(
            http2_server(h2_streams).serve_connection(io, service),
            revoked
        )
    } else {
        serve_until!(http1_server().serve_connection(io, service), revoked)
    };
    if let Some(Err(e)) = served {
        tracing::debug!(error = %e, "keyswap.internal connection ended with an error");
    }
}

/// One API call: routed, answered, recorded.
async fn answer(
    shared: &Arc<Shared>,
    ctx: &ConnContext,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Started::now();
    let subject = ctx.request_subject(req.method(), req.uri(), started);
    let (parts, body) = req.into_parts();
    let (status, json, reason) = match route(shared, ctx, &parts, body).await {
        Ok((status, json)) => (status, json, Reason::Allowed),
        Err((status, reason, message)) => {
            let json = serde_json::json!({ "error": reason.as_str(), "message": message });
            (status, json, reason)
        }
    };
    let bytes = Bytes::from(serde_json::to_vec_pretty(&json).unwrap_or_default());
    let sent = Sent {
        status: status.as_u16(),
        resp_bytes: bytes.len() as u64,
        ..Sent::default()
    };
    let decision = Decision {
        internal: true,
        ..Decision::new(reason)
    };
    let why = json.get("message").and_then(|m| m.as_str());
    shared.record(&subject, &decision, sent, why);
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if reason != Reason::Allowed {
        headers.insert(
            crate::audit::decision::REASON_HEADER,
            HeaderValue::from_static(reason.as_str()),
        );
    }
    response
}

/// What a route answers: a status and a JSON body, or a refusal.
pub(crate) type Answer = Result<(StatusCode, serde_json::Value), (StatusCode, Reason, String)>;

async fn route(
    shared: &Arc<Shared>,
    ctx: &ConnContext,
    parts: &http::request::Parts,
    body: Incoming,
) -> Answer {
    check_host(parts)?;
    if ctx.task.is_expired(std::time::SystemTime::now()) || ctx.task.is_cancelled() {
        let message = format!(
            "task {} has ended; ask the operator for a current task",
            ctx.task.id
        );
        return Err((StatusCode::FORBIDDEN, Reason::TaskExpired, message));
    }
    let path = parts.uri.path().trim_end_matches('/');
    let method = &parts.method;
    match (method, path) {
        (&Method::GET, "/v1/self") => Ok((StatusCode::OK, self_view::view(shared, &ctx.task))),
        (&Method::GET, "/v1/self/refusals") => {
            Ok((StatusCode::OK, refusals::view(shared, &ctx.task, parts.uri.query())))
        }
        (&Method::POST, "/v1/self/requests") => {
            let body = read_body(body).await?;
            requests::ask(shared, ctx, &body)
        }
        (&Method::GET, p) if p.starts_with("/v1/self/requests/") => {
            requests::poll(shared, &ctx.task, &p["/v1/self/requests/".len()..])
        }
        _ => Err((
            StatusCode::NOT_FOUND,
            Reason::BadRequest,
            "no such route; keyswap.internal answers GET /v1/self, GET /v1/self/refusals?limit=N, POST /v1/self/requests, GET /v1/self/requests/ID".into(),
        )),
    }
}

/// The request must name keyswap.internal (Host or `:authority`) if it names a host at all.
fn check_host(parts: &http::request::Parts) -> Result<(), (StatusCode, Reason, String)> {
    let named = parts
        .uri
        .authority()
        .map(|a| Target::from_authority(a, 443))
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .map(|h| Target::from_host_header(h.as_bytes(), 443))
        });
    match named {
        None => Ok(()),
        Some(Ok(t)) if t.host == INTERNAL_HOST && t.port == 443 => Ok(()),
        Some(_) => Err((
            StatusCode::MISDIRECTED_REQUEST,
            Reason::AuthorityMismatch,
            format!("this connection is for {INTERNAL_HOST}; open a separate connection (CONNECT) for each host"),
        )),
    }
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, (StatusCode, Reason, String)> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err((
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            format!("the request body could not be read or is larger than {MAX_BODY} bytes"),
        )),
    }
}
