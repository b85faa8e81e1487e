//! One request through an allowed connection, top to bottom:
//! decide ([`crate::route`]) → approve ([`crate::approval`]) → swap ([`crate::swap`]) → upstream → scrub ([`crate::scrub`])
//! → audit ([`crate::audit`]). Used for intercepted HTTPS and for plain-HTTP forwarding alike.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use keyswap_config::{normalize_path, PathError, SecretId};

use crate::approval;
use crate::audit::{elapsed_ms, query_keys, timestamp, AuditRecord};
use crate::body::{boxed, empty, Counted, ProxyBody};
use crate::decision::{Denial, Reason};
use crate::decode::{self, UnknownCoding};
use crate::headers::{is_websocket_upgrade, strip_hop_by_hop};
use crate::route::{decide, ConnContext, Refused, Routed};
use crate::scrub::{body_policy, scrub_body, scrub_headers};
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::swap::{
    check_uri, swap_headers, swap_query, BodyRefusal, Misplaced, ScanBody, SnapshotPlaceholders,
};
use crate::upstream::{connect_error, ConnectError};
use crate::websocket;

/// What the audit record of one exchange accumulates on the way through.
#[derive(Clone)]
struct Exchange {
    started: Instant,
    at: SystemTime,
    conn: u64,
    via: &'static str,
    task: String,
    policy: Option<String>,
    method: String,
    scheme: &'static str,
    host: String,
    port: u16,
    path: String,
    query_keys: Vec<String>,
    rule: Option<usize>,
    secrets: Vec<String>,
    req_bytes: Arc<AtomicU64>,
}

impl Exchange {
    fn record(&self, reason: Reason, status: StatusCode, resp_bytes: u64) -> AuditRecord {
        AuditRecord {
            event: "request",
            ts: timestamp(self.at),
            task: Some(self.task.clone()),
            claimed_task: None,
            policy: self.policy.clone(),
            conn: self.conn,
            via: self.via,
            method: self.method.clone(),
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            path: Some(self.path.clone()),
            query_keys: self.query_keys.clone(),
            rule: self.rule,
            secrets: self.secrets.clone(),
            decision: reason.decision(),
            reason: reason.as_str(),
            status: status.as_u16(),
            req_bytes: self.req_bytes.load(Ordering::Relaxed),
            resp_bytes,
            ms: elapsed_ms(self.started),
        }
    }
}

/// Serves one request of an identified connection.
pub async fn exchange(
    shared: Arc<Shared>,
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snapshot = shared.snapshot();
    // Normalised once: what is matched, forwarded and audited.
    let path = normalize_path(req.uri().path());
    let mut ex = Exchange {
        started: Instant::now(),
        at: SystemTime::now(),
        conn: ctx.conn_id,
        via: ctx.via.as_str(),
        task: ctx.task.id.clone(),
        policy: ctx.task.policy.clone(),
        method: req.method().as_str().to_string(),
        scheme: ctx.scheme.as_str(),
        host: ctx.target.host.clone(),
        port: ctx.target.port,
        path: match &path {
            Ok(normalised) => truncate(normalised, 512),
            Err(_) => truncate(req.uri().path(), 512),
        },
        query_keys: query_keys(req.uri().query()),
        rule: None,
        secrets: Vec::new(),
        req_bytes: Arc::new(AtomicU64::new(0)),
    };
    let version = req.version();
    ctx.task.count_request();
    match forward(&shared, &snapshot, &ctx, req, path.as_deref(), &mut ex).await {
        Ok(response) => Ok(response),
        Err(refused) => {
            ex.rule = refused.rule.or(ex.rule);
            let close = refused.close && version < Version::HTTP_2;
            let response = refused.denial.response(close);
            tracing::info!(
                conn = ex.conn,
                task = %ex.task,
                method = %ex.method,
                host = %ex.host,
                path = %ex.path,
                reason = %refused.denial.reason,
                "request refused"
            );
            shared.record_request(ex.record(refused.denial.reason, response.status(), 0));
            Ok(response)
        }
    }
}

async fn forward(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    mut req: Request<Incoming>,
    path: Result<&str, &PathError>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, Refused> {
    let upgrade = is_websocket_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Decide, then wait for a human where the task says so (approve:, on_unlisted: ask).
    let mut approved_rule = None;
    let routed = match decide(snapshot, ctx, &parts, path, SystemTime::now()) {
        Ok(routed) => {
            ex.rule = Some(routed.rule.index);
            ex.path = routed.path.clone();
            approval::approve_rule(shared, snapshot, ctx, &parts, routed.rule, &routed.path)
                .await?;
            routed
        }
        Err(refused) => {
            let (rule, path) =
                approval::ask_unlisted(shared, snapshot, ctx, &parts, refused).await?;
            Routed {
                rule: approved_rule.insert(rule),
                path,
            }
        }
    };
    let rule = routed.rule;
    // An approved unlisted request has no configured rule to name.
    let rule_index = (rule.index != approval::APPROVED_RULE_INDEX).then_some(rule.index);
    ex.rule = rule_index;
    ex.path = routed.path.clone();
    let refuse_with_rule = |denial: Denial| Refused {
        denial,
        rule: rule_index,
        close: false,
    };

    // Swap.
    let misplaced = |misplaced: Misplaced| {
        let message = match misplaced {
            Misplaced::NotGranted(ids) => {
                let names: Vec<&str> = ids
                    .iter()
                    .map(|id| snapshot.config.secret(*id).name.as_str())
                    .collect();
                format!(
                    "the request carries the placeholder of secret {} which task {} may not send to {} {}; \
                     remove it or ask the operator to grant it on this route",
                    names.join(", "),
                    ctx.task.id,
                    ctx.target.host,
                    routed.path
                )
            }
            Misplaced::OutOfScope { secret, header } => format!(
                "the placeholder of secret {} may not be sent in header {header} to {}; \
                 send it only in the headers the operator named for it ({})",
                snapshot.config.secret(secret).name,
                ctx.target.host,
                scope_of(rule, snapshot.config.secret(secret)),
            ),
        };
        refuse_with_rule(Denial::new(Reason::PlaceholderNotAllowed, message))
    };
    let not_granted = |n: crate::swap::NotGranted| misplaced(n.into());
    check_uri(
        &snapshot.placeholders,
        parts.uri.path(),
        &routed.path,
        parts.uri.query(),
        rule,
    )
    .map_err(not_granted)?;
    let header_swap = swap_headers(
        &snapshot.placeholders,
        &mut parts.headers,
        rule,
        &snapshot.config,
        rule.swap_in.headers,
    )
    .map_err(misplaced)?;
    let mut used: BTreeSet<SecretId> = header_swap.used;
    let mut query = parts.uri.query().map(str::to_string);
    if rule.swap_in.query {
        if let Some(q) = query.as_deref() {
            if let Some(swapped) =
                swap_query(&snapshot.placeholders, q, Some(rule), &mut used).map_err(not_granted)?
            {
                query = Some(swapped);
            }
        }
    }
    let swap_body = rule.swap_in.body && !snapshot.placeholders.is_empty();
    if swap_body {
        // Which granted secrets the body carries is only known once it has streamed; every
        // secret the rule grants is named so the audit never under-reports.
        used.extend(rule.secrets.iter().copied());
    }
    // Audited as sent only once the request goes upstream (a refusal before sends nothing).
    let secrets_sent: Vec<String> = used
        .iter()
        .map(|id| snapshot.config.secret(*id).name.clone())
        .collect();
    if let Some(stale) = used.iter().find(|id| snapshot.stale[id.0]) {
        return Err(refuse_with_rule(Denial::new(
            Reason::SecretUnavailable,
            format!(
                "secret {} could not be refreshed, so keyswap does not send it; ask the operator to check its source",
                snapshot.config.secret(*stale).name
            ),
        )));
    }

    // Limit: the last check before anything goes upstream (see budget.rs for what counts).
    crate::budget::charge(&ctx.task, rule).map_err(refuse_with_rule)?;

    // Upstream request.
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let partial_refused = could_hold_secret(snapshot, ctx);
    if partial_refused {
        // Two partial responses could each return half of a stored value, which no scrubber
        // can recognise: where a secret can be sent, whole representations only.
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
    }
    parts.headers.remove(header::HOST);
    if upgrade {
        // Compressed WebSocket frames could hide a secret from the scrubber in websocket.rs.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if !used.is_empty() {
        // Keep the response scrubbable (see scrub::body_policy).
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    } else if let Some(accepted) = decode::decodable_accept_encoding(&parts.headers) {
        parts.headers.insert(header::ACCEPT_ENCODING, accepted);
    }
    let mut path_and_query = routed.path.clone();
    if let Some(q) = &query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    parts.uri = Uri::builder()
        .scheme(ctx.scheme.as_str())
        .authority(ctx.target.to_string())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Refused {
            denial: Denial::new(Reason::BadRequest, "the request URI could not be rebuilt"),
            rule: rule_index,
            close: true,
        })?;
    parts.version = Version::HTTP_11;
    let head_request = parts.method == http::Method::HEAD;
    let counted = Counted::new(body, ex.req_bytes.clone());
    // Every body is scanned, whether or not the rule swaps in it: an ungranted placeholder
    // refuses the request even after part of the body has gone upstream.
    let body_refused = BodyRefusal::default();
    let body: ProxyBody = if snapshot.placeholders.is_empty() {
        boxed(counted)
    } else {
        if swap_body {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        boxed(ScanBody::new(
            counted,
            SnapshotPlaceholders(snapshot.clone()),
            rule.secrets.clone(),
            swap_body,
            body_refused.clone(),
        ))
    };
    let upstream_req = Request::from_parts(parts, body);
    let client = if upgrade {
        &snapshot.upstream.http1
    } else {
        &snapshot.upstream.any
    };
    ex.secrets = secrets_sent;
    let response = client.request(upstream_req).await;
    if let Some(ids) = body_refused.get() {
        // The body failed on purpose: this is a refusal, not an upstream failure.
        return Err(not_granted(crate::swap::NotGranted(ids.clone())));
    }
    let response = response.map_err(|err| {
        let (reason, message) = match connect_error(&err) {
            Some(ConnectError::PrivateAddress { host }) => (
                Reason::PrivateAddress,
                format!("{host} resolves to a private or loopback address, which keyswap does not dial; \
                         the operator can add an upstream.resolve entry or set upstream.allow_private"),
            ),
            Some(e) => (Reason::UpstreamError, format!("the upstream could not be reached: {e}")),
            None => (Reason::UpstreamError, "the upstream connection failed".to_string()),
        };
        tracing::warn!(conn = ex.conn, host = %ex.host, error = %ErrorChain(&err), "upstream request failed");
        shared.metrics.upstream_error();
        if err.is_connect() {
            // No connection, so no byte of the request (and no secret) left keyswap.
            ex.secrets.clear();
        }
        refuse_with_rule(Denial::new(reason, message))
    })?;

    // Scrub.
    let scrubber = &snapshot.scrubber;
    let mut response = response;
    if partial_refused && response.status() == StatusCode::PARTIAL_CONTENT {
        return Err(refuse_with_rule(Denial::new(
            Reason::UpstreamError,
            "the upstream sent a partial response (206) on a host where secrets are sent; \
             keyswap forwards only whole responses there",
        )));
    }
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !upgrade {
        // Only a WebSocket handshake may switch protocols: anything else would leave a
        // connection whose later requests are never decided.
        return Err(refuse_with_rule(Denial::new(
            Reason::UpstreamError,
            "the upstream switched protocols on a request that did not ask for WebSocket",
        )));
    }
    let upstream_upgrade = (switching && upgrade).then(|| hyper::upgrade::on(&mut response));
    let (mut resp_parts, resp_body) = response.into_parts();
    // Before strip_hop_by_hop: Transfer-Encoding names codings the body still carries.
    let bodyless = head_request
        || resp_parts.status.is_informational()
        || resp_parts.status == StatusCode::NO_CONTENT
        || resp_parts.status == StatusCode::NOT_MODIFIED;
    let policy = body_policy(&mut resp_parts.headers, bodyless, !scrubber.is_empty()).map_err(
        |UnknownCoding| {
            refuse_with_rule(Denial::new(
                Reason::UpstreamError,
                "the upstream sent a body in a coding keyswap cannot decode, \
                 so it cannot be scrubbed and was dropped",
            ))
        },
    )?;
    strip_hop_by_hop(&mut resp_parts.headers, switching && upgrade);
    scrub_headers(scrubber, &mut resp_parts, policy, head_request);

    // Audit (when the response body has been sent or dropped).
    let status = resp_parts.status;
    let resp_bytes = Arc::new(AtomicU64::new(0));
    let record_bytes = resp_bytes.clone();
    let audit_shared = shared.clone();
    let exchange = ex.clone();
    let body_failed = Arc::new(AtomicBool::new(false));
    let record_failed = body_failed.clone();
    let on_end = move || {
        // An upstream may answer before reading the whole body; a body refused after that
        // still ends the exchange as a refusal. A response body cut after its head was sent
        // (the upstream failed, a decoder or the bomb bound gave up, a real value was found
        // where it cannot be scrubbed) ends it as an error.
        let reason = match body_refused.get() {
            Some(_) => Reason::PlaceholderNotAllowed,
            None if record_failed.load(Ordering::Relaxed) => Reason::UpstreamError,
            None => Reason::Allowed,
        };
        let record = exchange.record(reason, status, record_bytes.load(Ordering::Relaxed));
        audit_shared.record_request(record);
    };

    if let (Some(agent_upgrade), Some(upstream_upgrade)) = (agent_upgrade, upstream_upgrade) {
        drop(resp_body);
        websocket::splice(
            ctx.task.connection(&shared.metrics),
            ex.conn,
            scrubber.clone(),
            agent_upgrade,
            upstream_upgrade,
        );
        on_end();
        return Ok(Response::from_parts(resp_parts, empty()));
    }
    let body = scrub_body(scrubber, policy, resp_body).map_err(|_| {
        refuse_with_rule(Denial::new(
            Reason::UpstreamError,
            "keyswap could not prepare the response decoder",
        ))
    })?;
    let body = NoteFailure {
        inner: body,
        failed: body_failed,
        conn: ex.conn,
    };
    let body = Counted::new(body, resp_bytes).on_end(on_end);
    Ok(Response::from_parts(resp_parts, boxed(body)))
}

/// A response body that notes (and logs) the error that cut it, for the audit record.
struct NoteFailure {
    inner: ProxyBody,
    failed: Arc<AtomicBool>,
    conn: u64,
}

impl http_body::Body for NoteFailure {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

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

/// Whether any of the task's rules for this host and port grants a secret: then a value may
/// be stored there and read back, so partial responses are not allowed.
fn could_hold_secret(snapshot: &Snapshot, ctx: &ConnContext) -> bool {
    snapshot.rules_of(&ctx.task).is_some_and(|rules| {
        rules.iter().any(|rule| {
            !rule.secrets.is_empty()
                && rule.matches_host(ctx.scheme, &ctx.target.host, ctx.target.port)
        })
    })
}

/// The headers a secret may be swapped into on a rule, for a refusal message.
fn scope_of(rule: &keyswap_config::Rule, secret: &keyswap_config::Secret) -> String {
    let mut names: Vec<&str> = match (&rule.headers, &secret.headers) {
        (Some(r), Some(s)) => r
            .iter()
            .filter(|n| s.contains(n))
            .map(String::as_str)
            .collect(),
        (Some(only), None) | (None, Some(only)) => only.iter().map(String::as_str).collect(),
        (None, None) => Vec::new(),
    };
    names.dedup();
    names.join(", ")
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Displays an error with its sources, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
