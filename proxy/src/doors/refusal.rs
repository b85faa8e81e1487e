//! Refusals an agent can read: a CONNECT from an identified task that may not reach its
//! target (`host_not_allowed`, `task_expired`) is answered 200, and the refusal is delivered
//! *inside* the tunnel, where HTTP clients show it — no client shows the body or headers of
//! a refused CONNECT.
//!
//! keyswap cannot know what the agent will send until it has answered the CONNECT, and a
//! 200 cannot be taken back. So after the 200 the first byte decides:
//! - a TLS handshake (0x16): completed with a leaf for the CONNECT host from the leaf cache
//!   (minting sends nothing anywhere), then every request, HTTP/1.1 or h2, gets the 403 with
//!   `x-keyswap-reason` and the one-paragraph body;
//! - an HTTP request in clear text: the same 403 directly;
//! - anything else, or nothing within the handshake timeout: the connection is closed with
//!   no byte written (an unknown protocol cannot be told anything), and the refusal is audited
//!   with status 0.
//!
//! Nothing here can dial an upstream: this module has no path to [`crate::upstream`]. A
//! refusal connection answers what the agent sent first and then closes (HTTP/1.1
//! `Connection: close`, h2 GOAWAY), so the agent's next attempt opens a new CONNECT that is
//! decided afresh (a reload may have added the host meanwhile). A live task's revocation
//! closes it at any point; an expired task has already ended, and its connection lives only
//! for that one answer.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use keyswap_config::model::DEFAULT_H2_STREAMS;
use keyswap_scrub::body::ProxyBody;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::audit::decision::{Decision, Denial, Reason};
use crate::audit::record::{Sent, Started};
use crate::pipeline::conn::{
    http1_server, http2_server, Rewind, HEADER_READ_TIMEOUT, REVOKE_GRACE,
};
use crate::pipeline::context::ConnContext;
use crate::pipeline::intercept::{handshake, HANDSHAKE_TIMEOUT};
use crate::state::shared::Shared;

/// Serves one refusal connection to its end (see the module docs), then audits the CONNECT
/// itself if no request inside was answered.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: ConnContext,
    denial: Denial,
    on_upgrade: OnUpgrade,
    started: Started,
) {
    // An expired task has ended (or is ending: its expiry watcher cancels it), and watching
    // it would close the connection before the agent could read why.
    let task_conn =
        (denial.reason != Reason::TaskExpired).then(|| ctx.task.connection(&shared.metrics));
    let revoked = async {
        match &task_conn {
            Some(task_conn) => task_conn.revoked().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(revoked);
    let refuser = Refuser {
        shared: shared.clone(),
        ctx: Arc::new(ctx),
        denial: Arc::new(denial),
        answered: Arc::new(AtomicU64::new(0)),
        done: CancellationToken::new(),
    };
    let why_unanswered = answer(&refuser, on_upgrade, revoked).await;
    let Refuser {
        ctx,
        denial,
        answered,
        ..
    } = refuser;
    if answered.load(Ordering::Relaxed) == 0 {
        let why = format!("{}; {why_unanswered}", denial.message);
        let subject = ctx.connection_subject(started);
        shared.record(
            &subject,
            &Decision::new(denial.reason),
            Sent::status(0),
            Some(&why),
        );
    }
}

/// What one refusal connection shares between its requests.
#[derive(Clone)]
struct Refuser {
    shared: Arc<Shared>,
    ctx: Arc<ConnContext>,
    denial: Arc<Denial>,
    /// Requests answered so far.
    answered: Arc<AtomicU64>,
    /// Cancelled once the first answer is ready: the connection then closes.
    done: CancellationToken,
}

impl Refuser {
    fn service(
        &self,
        scheme: &'static str,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<ProxyBody>, Infallible>>,
    > + Clone {
        let this = self.clone();
        service_fn(move |req| {
            let response = refuse(&this.shared, &this.ctx, &this.denial, scheme, req);
            this.answered.fetch_add(1, Ordering::Relaxed);
            this.done.cancel();
            std::future::ready(Ok(response))
        })
    }
}

/// `serve_once!(connection, done, revoked)`: serves until the first answer is ready (then
/// closes gracefully: the answers in flight finish, no new request is read, bounded by
/// [`HEADER_READ_TIMEOUT`] against an agent that stops reading) or the task ends (closed
/// after [`REVOKE_GRACE`]). A macro for the reason `serve_until!` is one.
macro_rules! serve_once {
    ($connection:expr, $done:expr, $revoked:expr) => {{
        let mut connection = std::pin::pin!($connection);
        tokio::select! {
            // A revocation wins over a request that arrives at the same time.
            biased;
            _ = $revoked.as_mut() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(REVOKE_GRACE, connection).await;
            }
            _ = connection.as_mut() => {}
            _ = $done.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = tokio::time::timeout(HEADER_READ_TIMEOUT, connection.as_mut()) => {}
                    _ = $revoked.as_mut() => {}
                }
            }
        }
    }};
}

/// Reads what the agent sent first and answers it; returns why nothing was answered, for
/// the log, when that is the case.
async fn answer(
    refuser: &Refuser,
    on_upgrade: OnUpgrade,
    mut revoked: Pin<&mut impl std::future::Future<Output = ()>>,
) -> &'static str {
    let opened = tokio::select! {
        biased;
        _ = revoked.as_mut() => return "the task ended",
        opened = open(refuser, on_upgrade) => opened,
    };
    let done = &refuser.done;
    match opened {
        Ok(Opened::Tls(tls)) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(*tls);
            if h2 {
                let connection =
                    http2_server(DEFAULT_H2_STREAMS).serve_connection(io, refuser.service("https"));
                serve_once!(connection, done, revoked);
            } else {
                let connection = http1_server().serve_connection(io, refuser.service("https"));
                serve_once!(connection, done, revoked);
            }
        }
        Ok(Opened::Plain(io)) => {
            let connection =
                http1_server().serve_connection(TokioIo::new(io), refuser.service("http"));
            serve_once!(connection, done, revoked);
        }
        Err(why) => return why,
    }
    "the agent sent no complete request"
}

enum Opened {
    Tls(Box<tokio_rustls::server::TlsStream<RewoundTunnel>>),
    Plain(RewoundTunnel),
}

/// The tunnel, its first byte read: TLS (handshake done) or clear-text HTTP.
async fn open(refuser: &Refuser, on_upgrade: OnUpgrade) -> Result<Opened, &'static str> {
    let upgraded = on_upgrade.await.map_err(|_| "the CONNECT upgrade failed")?;
    let mut io = TokioIo::new(upgraded);
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, io.read(&mut first)).await {
        Err(_) => return Err("the agent sent nothing"),
        Ok(Err(_)) | Ok(Ok(0)) => return Err("the agent closed the tunnel"),
        Ok(Ok(_)) => {}
    }
    let io = Rewind::new(Bytes::copy_from_slice(&first), io);
    match first[0] {
        // A TLS handshake record.
        0x16 => handshake(&refuser.shared, &refuser.ctx, io)
            .await
            .map(|tls| Opened::Tls(Box::new(tls)))
            .ok_or("the TLS handshake did not complete"),
        // The first letter of an HTTP method: a clear-text request through the tunnel.
        b'A'..=b'Z' => Ok(Opened::Plain(io)),
        _ => Err("the agent spoke neither TLS nor HTTP"),
    }
}

/// The refusal of one request inside a refusal connection, audited and logged with its
/// method and normalised path. The body is never read.
fn refuse(
    shared: &Shared,
    ctx: &ConnContext,
    denial: &Denial,
    scheme: &'static str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut subject = ctx.request_subject(req.method(), req.uri(), Started::now());
    subject.scheme = scheme;
    // HTTP/1.1: close after this answer; h2 has no Connection header (GOAWAY follows).
    let mut denial = denial.clone();
    denial.close = req.version() < Version::HTTP_2;
    let response = denial.response();
    let sent = Sent::status(response.status().as_u16());
    shared.record(
        &subject,
        &Decision::new(denial.reason),
        sent,
        Some(&denial.message),
    );
    response
}

/// The upgraded CONNECT stream with its first byte put back.
pub type RewoundTunnel = Rewind<TokioIo<Upgraded>>;
