//! The response on its way back: the send step ([`send`]: the request goes upstream through
//! the snapshot's client, and a failure becomes a refusal the agent can read) and the scrub
//! step ([`scrub`]: every real value, in every form, is replaced in the response's headers and
//! body before the agent sees them; a WebSocket upgrade is handed to
//! [`crate::pipeline::websocket`]). The exchange's record is written when the response body
//! has been sent or dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use keyswap_scrub::body::{boxed, empty, BoxError, Counted, ProxyBody};
use keyswap_scrub::decode::UnknownCoding;
use keyswap_scrub::response::{body_policy, scrub_body, scrub_headers};

use crate::audit::decision::{Denial, Reason};
use crate::error::ErrorChain;
use crate::pipeline::context::ConnContext;
use crate::pipeline::exchange::Exchange;
use crate::pipeline::outbound::Sending;
use crate::pipeline::settle::EndsAfterRequestBody;
use crate::pipeline::{learn, websocket};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::upstream::{connect_error, ConnectError};
use crate::wire::headers::strip_hop_by_hop;

/// The send step: the request goes upstream (HTTP/1.1 for a WebSocket upgrade). From here
/// on the request's secrets count as sent.
pub async fn send(
    snapshot: &Snapshot,
    request: Request<ProxyBody>,
    sending: &Sending,
    ex: &mut Exchange,
) -> Result<Response<Incoming>, UpstreamFailure> {
    // Audited as sent only from here: a refusal before sends nothing.
    ex.secrets = sending.secrets.clone();
    snapshot.upstream.request(request, sending.upgrade).await
}

/// Why the upstream leg failed.
pub type UpstreamFailure = hyper_util::client::legacy::Error;

/// The refusal of a request whose upstream leg failed, logged and counted.
pub fn upstream_failed(shared: &Shared, err: UpstreamFailure, ex: &mut Exchange) -> Denial {
    let connect = connect_error(&err);
    ex.parent_status = connect.and_then(ConnectError::parent_status);
    let (reason, message) = match connect {
        Some(ConnectError::PrivateAddress { host }) => (
            Reason::PrivateAddress,
            format!(
                "{host} resolves to a private or loopback address, which keyswap does not dial; \
                     the operator can add an upstream.resolve entry or set upstream.allow_private"
            ),
        ),
        Some(e) => (
            Reason::UpstreamError,
            format!("the upstream could not be reached: {e}"),
        ),
        None => (
            Reason::UpstreamError,
            "the upstream connection failed".to_string(),
        ),
    };
    let subject = &ex.subject;
    tracing::warn!(conn = subject.conn, host = %subject.host, error = %ErrorChain(&err), "upstream request failed");
    shared.metrics.upstream_error();
    if err.is_connect() {
        // No connection, so no byte of the request (and no secret) left keyswap.
        ex.secrets.clear();
    }
    Denial::new(reason, message)
}

/// The scrub step: the response's status is checked, its headers scrubbed, its body
/// decoded and scrubbed as it streams; the exchange is recorded when the body ends.
pub fn scrub(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    mut response: Response<Incoming>,
    mut sending: Sending,
    agent_upgrade: Option<OnUpgrade>,
    ex: &Exchange,
) -> Result<Response<ProxyBody>, Denial> {
    let switching = check_status(response.status(), &sending)?;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    // The snapshot's scrubber, or one that also knows every minted lease value.
    let scrubber = &shared.leases.scrubber(snapshot);
    let (mut parts, body) = response.into_parts();
    // Before strip_hop_by_hop: Transfer-Encoding names codings the body still carries.
    let bodyless = sending.head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let policy = body_policy(&mut parts.headers, bodyless, !scrubber.is_empty()).map_err(
        |UnknownCoding| {
            Denial::new(
                Reason::UpstreamError,
                "the upstream sent a body in a coding keyswap cannot decode, \
                 so it cannot be scrubbed and was dropped",
            )
        },
    )?;
    strip_hop_by_hop(&mut parts.headers, switching);
    scrub_headers(scrubber, &mut parts, policy, sending.head_request);

    let resp_bytes = Arc::new(AtomicU64::new(0));
    let body_failed = Arc::new(AtomicBool::new(false));
    let on_end = record_on_end(
        shared,
        snapshot,
        ex,
        &sending,
        parts.status,
        &resp_bytes,
        &body_failed,
    );
    if let (Some(agent_upgrade), Some(upstream_upgrade)) = (agent_upgrade, upstream_upgrade) {
        drop(body);
        let task_conn = ctx.task.connection(&shared.metrics);
        let conn = ex.subject.conn;
        websocket::splice(
            task_conn,
            ex.held.clone(),
            conn,
            scrubber.clone(),
            agent_upgrade,
            upstream_upgrade,
        );
        on_end();
        return Ok(Response::from_parts(parts, empty()));
    }
    let body = scrub_body(scrubber, policy, body).map_err(|_| {
        Denial::new(
            Reason::UpstreamError,
            "keyswap could not prepare the response decoder",
        )
    })?;
    let body = match sending.streaming_body.take() {
        Some(watch) => boxed(EndsAfterRequestBody::new(
            body,
            watch,
            sending.body_refused.clone(),
        )),
        None => body,
    };
    let body = NoteFailure {
        inner: body,
        failed: body_failed,
        conn: ex.subject.conn,
    };
    let body = Counted::new(body, resp_bytes).on_end(on_end);
    Ok(Response::from_parts(parts, boxed(body)))
}

/// Refuses a partial response where a secret can be sent, and a protocol switch that was
/// not a WebSocket handshake; `true` for a WebSocket switch.
fn check_status(status: StatusCode, sending: &Sending) -> Result<bool, Denial> {
    if sending.partial_refused && status == StatusCode::PARTIAL_CONTENT {
        return Err(Denial::new(
            Reason::UpstreamError,
            "the upstream sent a partial response (206) on a host where secrets are sent; \
             keyswap forwards only whole responses there",
        ));
    }
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !sending.upgrade {
        // Only a WebSocket handshake may switch protocols: anything else would leave a
        // connection whose later requests are never decided.
        return Err(Denial::new(
            Reason::UpstreamError,
            "the upstream switched protocols on a request that did not ask for WebSocket",
        ));
    }
    Ok(switching)
}

/// What runs when the response body has been sent or dropped: the exchange's one record.
fn record_on_end(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ex: &Exchange,
    sending: &Sending,
    status: StatusCode,
    resp_bytes: &Arc<AtomicU64>,
    body_failed: &Arc<AtomicBool>,
) -> impl FnOnce() + Send + 'static {
    let shared = shared.clone();
    let exchange = ex.clone();
    let body_refused = sending.body_refused.clone();
    let resp_bytes = resp_bytes.clone();
    let body_failed = body_failed.clone();
    let body_seen = sending
        .body_seen
        .clone()
        .map(|seen| (snapshot.clone(), seen));
    move || {
        // An upstream may answer before reading the whole body; a body refused after that
        // still ends the exchange as a refusal. A response body cut after its head was sent
        // (the upstream failed, a decoder or the bomb bound gave up, a real value was found
        // where it cannot be scrubbed) ends it as an error.
        let reason = match body_refused.get() {
            Some(refused) => refused.reason(),
            None if body_failed.load(Ordering::Relaxed) => Reason::UpstreamError,
            None => Reason::Allowed,
        };
        let sent = exchange.sent(status.as_u16(), resp_bytes.load(Ordering::Relaxed));
        let mut decision = exchange.decision(reason);
        if let Some((snapshot, seen)) = &body_seen {
            learn::with_body(snapshot, &mut decision.carried, seen);
        }
        shared.record(&exchange.subject, &decision, sent, None);
    }
}

/// A response body that notes (and logs) the error that cut it, for the audit record.
struct NoteFailure {
    inner: ProxyBody,
    failed: Arc<AtomicBool>,
    conn: u64,
}

impl http_body::Body for NoteFailure {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            if !self.failed.swap(true, Ordering::Relaxed) {
                // Body errors name what failed (a decoder, the bound, the connection), never
                // the bytes.
                tracing::warn!(conn = self.conn, error = %e, "response body cut after its head was sent");
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
