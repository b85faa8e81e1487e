//! One request through an allowed connection, as named steps over one per-request
//! [`Exchange`]: decide ([`route::decide`]) → approve ([`approve::approve`]) → hold the
//! task's slots ([`fair::hold`]) → swap
//! ([`outbound::swap_in`]; an AWS signature is taken off first, [`sign_aws::prepare`]) → charge ([`budget::charge`]) → rewrite ([`outbound::rewrite`]) →
//! sign AWS requests again ([`sign_aws::sign`]) → send ([`inbound::send`]) → settle (the request body decided, [`settle::settle`]) → scrub
//! ([`inbound::scrub`]) → record (one [`Decision`], written by [`Shared::record`]). Before
//! any of them, [`token_body::guard_head`] strips hop-by-hop headers and refuses the task's
//! token in the head. Used for intercepted HTTPS and for plain-HTTP forwarding alike,
//! whichever door the connection came in by.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use keyswap_config::{normalize_path, PathError};
use keyswap_scrub::body::ProxyBody;

use crate::audit::decision::{Carried, Decision, Denial, Reason};
use crate::audit::record::{shown_path, Sent, Started, Subject};
use crate::fleet::budget;
use crate::pipeline::context::ConnContext;
use crate::pipeline::fair::{self, Held};
use crate::pipeline::outbound::Outgoing;
use crate::pipeline::route::Routed;
use crate::pipeline::settle::{self, Settled};
use crate::pipeline::swap::token_in_uri;
use crate::pipeline::{approve, inbound, learn, lease, outbound, route, sign_aws, token_body};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::wire::headers::is_websocket_upgrade;
use crate::wire::token::TokenFinder;

/// What the record of one exchange accumulates on the way through.
#[derive(Clone)]
pub struct Exchange {
    pub subject: Subject,
    /// The configured rule that matched, once one has.
    pub rule: Option<usize>,
    /// The secrets sent upstream, once the request is sent.
    pub secrets: Vec<String>,
    /// Request body bytes read from the agent so far.
    pub req_bytes: Arc<AtomicU64>,
    /// The task's slots this request holds, once decided ([`fair::hold`]); freed when the
    /// last of the exchange's clones (the request body's, the response body's) is dropped.
    pub held: Option<Arc<Held>>,
    /// The parent proxy's status when it refused the upstream connection.
    pub parent_status: Option<u16>,
    /// Learn mode let it through: allowed, it is recorded as `learned`.
    pub learned: bool,
    /// Learn mode: the placeholders it carried, forwarded as they were.
    pub carried: Vec<Carried>,
}

impl Exchange {
    /// `uri_token`: the URI carries the task's token ([`token_in_uri`]), which the record
    /// must not show.
    fn begin(
        ctx: &ConnContext,
        req: &Request<Incoming>,
        path: Result<&str, &PathError>,
        uri_token: bool,
    ) -> Self {
        let mut subject = ctx.request_subject_with_path(
            req.method(),
            req.uri(),
            shown_path(req.uri().path(), path.ok()),
            Started::now(),
        );
        if let Some(token) = ctx.task.token_finder().filter(|_| uri_token) {
            withhold_token(&mut subject, token, req.uri());
        }
        Exchange {
            subject,
            rule: None,
            secrets: Vec::new(),
            req_bytes: Arc::new(AtomicU64::new(0)),
            held: None,
            parent_status: None,
            learned: false,
            carried: Vec::new(),
        }
    }

    /// The request's one decision (a learned request that went through is `learned`).
    pub fn decision(&self, reason: Reason) -> Decision {
        let reason = match reason {
            Reason::Allowed if self.learned => Reason::Learned,
            other => other,
        };
        Decision {
            carried: self.carried.clone(),
            parent_status: self.parent_status,
            ..Decision {
                rule: self.rule,
                secrets: self.secrets.clone(),
                ..Decision::new(reason)
            }
        }
    }

    pub fn sent(&self, status: u16, resp_bytes: u64) -> Sent {
        Sent {
            status,
            req_bytes: self.req_bytes.load(Ordering::Relaxed),
            resp_bytes,
        }
    }
}

/// A path or query key that carries the task's token is not written to the audit or the log
/// (the request is refused for it by [`token_body::guard_head`]).
fn withhold_token(subject: &mut Subject, token: &TokenFinder, uri: &http::Uri) {
    if token_in_uri(
        token,
        uri.path(),
        subject.path.as_deref().unwrap_or(""),
        None,
    )
    .is_some()
    {
        subject.path = Some("[withheld: it carries the task token]".to_string());
    }
    for key in &mut subject.query_keys {
        if token_in_uri(token, key, key, None).is_some() {
            *key = "[withheld]".to_string();
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
    // Looked for once: the record withholds it, guard_head refuses the request for it.
    let uri_token = ctx.task.token_finder().and_then(|token| {
        let raw = req.uri().path();
        token_in_uri(
            token,
            raw,
            path.as_deref().unwrap_or(raw),
            req.uri().query(),
        )
    });
    let mut ex = Exchange::begin(
        &ctx,
        &req,
        path.as_ref().map(String::as_str),
        uri_token.is_some(),
    );
    let version = req.version();
    ctx.task.count_request();
    let forwarded = forward(
        &shared,
        &snapshot,
        &ctx,
        req,
        path.as_deref(),
        uri_token,
        &mut ex,
    );
    match forwarded.await {
        Ok(response) => Ok(response),
        Err(mut denial) => {
            // h2 has no Connection header; its stream ends, the connection stays.
            denial.close &= version < Version::HTTP_2;
            let response = denial.response();
            let sent = ex.sent(response.status().as_u16(), 0);
            shared.record(
                &ex.subject,
                &ex.decision(denial.reason),
                sent,
                Some(&denial.message),
            );
            Ok(response)
        }
    }
}

/// One plain-HTTP request of either door, its connection context made for it.
pub async fn plain(
    shared: Arc<Shared>,
    ctx: ConnContext,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    match exchange(shared, Arc::new(ctx), req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The steps, in order; the first refusal ends the exchange.
async fn forward(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    mut req: Request<Incoming>,
    path: Result<&str, &PathError>,
    uri_token: Option<&'static str>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, Denial> {
    let upgrade = is_websocket_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Read before the hop-by-hop fields go: a lease must be minted before declared trailers.
    let declares_trailers = req.headers().contains_key(http::header::TRAILER);
    let (mut parts, body) = req.into_parts();
    token_body::guard_head(ctx, &mut parts, uri_token, upgrade)?;
    if let Some(denial) = shared.store_refusal() {
        return Err(denial);
    }

    let decided = route::decide(snapshot, ctx, &parts, path, SystemTime::now());
    if let Ok(routed) = &decided {
        ex.rule = routed.matched.index();
    }
    let routed = approve::approve(shared, snapshot, ctx, &parts, decided).await?;
    ex.rule = routed.matched.index();
    ex.subject.path = Some(routed.path.clone());
    ex.held = Some(fair::hold(shared, snapshot, &ctx.task).await?);

    let mut signing = None;
    let swapped = if routed.matched.is_learned() {
        ex.learned = true;
        ex.carried = learn::carried(snapshot, &parts, &routed);
        outbound::unswapped(&parts)
    } else {
        signing = sign_aws::prepare(snapshot, ctx, &mut parts, routed.matched.rule())?;
        let leased =
            lease::lease(shared, snapshot, ctx, &parts, &routed, declares_trailers).await?;
        let placeholders = leased.as_deref().unwrap_or(&snapshot.placeholders);
        outbound::swap_in(snapshot, placeholders, ctx, &mut parts, &routed)?.with_leases(leased)
    };
    budget::charge(shared, &ctx.task, routed.matched.rule()).await?;
    let mut outgoing = outbound::rewrite(
        snapshot,
        ctx,
        parts,
        body,
        &routed,
        swapped,
        upgrade,
        &ex.req_bytes,
        ex.held.clone(),
    )?;
    if let Some(signing) = &signing {
        let rule = routed.matched.rule();
        sign_aws::sign(
            shared,
            snapshot,
            ctx,
            rule,
            &routed.path,
            signing,
            &mut outgoing,
        )
        .await?;
    }
    let response = send_and_settle(shared, snapshot, ctx, &routed, outgoing, ex).await?;
    inbound::scrub(
        shared,
        snapshot,
        ctx,
        response.0,
        response.1,
        agent_upgrade,
        ex,
    )
}

/// Sends the request and waits until its body is decided ([`settle`]): a refused body
/// refuses the exchange even when the upstream answered first, and that answer is dropped.
async fn send_and_settle(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    routed: &Routed<'_>,
    outgoing: Outgoing,
    ex: &mut Exchange,
) -> Result<(Response<Incoming>, outbound::Sending), Denial> {
    let Outgoing {
        request,
        mut meta,
        body_watch,
    } = outgoing;
    let sent = inbound::send(snapshot, request, &meta, ex).await;
    // A success answer while the upstream still reads the body is full duplex (a stream of
    // both ways, as gRPC and streaming APIs do): it is relayed now and only its end waits for
    // the body. Any other answer waits here: an early refusal must not hide a refused body.
    let settled = match &sent {
        Ok(response) if response.status().is_success() && body_watch.still_streaming() => {
            meta.streaming_body = Some(body_watch);
            Settled::Decided
        }
        Ok(_) => settle::settle(body_watch).await,
        Err(_) => Settled::Decided,
    };
    if let Some(refused) = meta.body_refused.get() {
        // The body failed on purpose: this is a refusal, not an upstream failure.
        let rule = routed.matched.rule();
        let refused = refused.clone();
        return Err(outbound::body_denial(
            snapshot,
            ctx,
            rule,
            &routed.path,
            refused,
        ));
    }
    if settled == Settled::TooLong {
        return Err(Denial::new(Reason::BadRequest, outbound::UNREAD_TOO_LONG).closing());
    }
    let response = sent.map_err(|err| inbound::upstream_failed(shared, err, ex))?;
    if let Some(swapped) = meta.trailer_secrets.get() {
        for id in swapped {
            let name = &snapshot.config.secret(*id).name;
            if !ex.secrets.contains(name) {
                ex.secrets.push(name.clone());
            }
        }
    }
    Ok((response, meta))
}
