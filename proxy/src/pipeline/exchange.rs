//! One request through an allowed connection, as named steps over one per-request
//! [`Exchange`]: decide ([`route::decide`]) → approve ([`approve::approve`]) → swap
//! ([`outbound::swap_in`]) → charge ([`budget::charge`]) → rewrite ([`outbound::rewrite`]) →
//! send ([`inbound::send`]) → scrub ([`inbound::scrub`]) → record (one [`Decision`], written
//! by [`Shared::record`]). Used for intercepted HTTPS and for plain-HTTP forwarding alike,
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
use crate::lifecycle::budget;
use crate::pipeline::context::ConnContext;
use crate::pipeline::swap::NotGranted;
use crate::pipeline::{approve, inbound, learn, outbound, route};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::wire::headers::is_websocket_upgrade;

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
    /// Learn mode let it through: allowed, it is recorded as `learned`.
    pub learned: bool,
    /// Learn mode: the placeholders it carried, forwarded as they were.
    pub carried: Vec<Carried>,
}

impl Exchange {
    fn begin(ctx: &ConnContext, req: &Request<Incoming>, path: Result<&str, &PathError>) -> Self {
        let subject = ctx.request_subject_with_path(
            req.method(),
            req.uri(),
            shown_path(req.uri().path(), path.ok()),
            Started::now(),
        );
        Exchange {
            subject,
            rule: None,
            secrets: Vec::new(),
            req_bytes: Arc::new(AtomicU64::new(0)),
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

/// Serves one request of an identified connection.
pub async fn exchange(
    shared: Arc<Shared>,
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let snapshot = shared.snapshot();
    // Normalised once: what is matched, forwarded and audited.
    let path = normalize_path(req.uri().path());
    let mut ex = Exchange::begin(&ctx, &req, path.as_ref().map(String::as_str));
    let version = req.version();
    ctx.task.count_request();
    match forward(&shared, &snapshot, &ctx, req, path.as_deref(), &mut ex).await {
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
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, Denial> {
    let upgrade = is_websocket_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let decided = route::decide(snapshot, ctx, &parts, path, SystemTime::now());
    if let Ok(routed) = &decided {
        ex.rule = routed.matched.index();
    }
    let routed = approve::approve(shared, snapshot, ctx, &parts, decided).await?;
    ex.rule = routed.matched.index();
    ex.subject.path = Some(routed.path.clone());

    let swapped = if routed.matched.is_learned() {
        ex.learned = true;
        ex.carried = learn::carried(snapshot, &parts, &routed);
        outbound::unswapped(&parts)
    } else {
        outbound::swap_in(snapshot, ctx, &mut parts, &routed)?
    };
    budget::charge(&ctx.task, routed.matched.rule())?;
    let outgoing = outbound::rewrite(snapshot, ctx, parts, body, &routed, swapped, upgrade, ex)?;
    let sent = inbound::send(snapshot, outgoing.request, &outgoing.meta, ex).await;
    if let Some(ids) = outgoing.meta.body_refused.get() {
        // The body failed on purpose: this is a refusal, not an upstream failure.
        let misplaced = NotGranted(ids.clone()).into();
        let rule = routed.matched.rule();
        return Err(outbound::misplaced_denial(
            snapshot,
            ctx,
            rule,
            &routed.path,
            misplaced,
        ));
    }
    let response = sent.map_err(|err| inbound::upstream_failed(shared, err, ex))?;
    inbound::scrub(
        shared,
        snapshot,
        ctx,
        response,
        outgoing.meta,
        agent_upgrade,
        ex,
    )
}
