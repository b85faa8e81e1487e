//! The lease step, between hold and swap: a request that carries the placeholder of a lease
//! secret (`github_app:`, `oauth2:`) its rule grants gets the task's credential for it —
//! minted now on the task's first such request ([`crate::lifecycle::leases::acquire`]) — and
//! the swap step then uses the task's own placeholder matcher, in which that placeholder
//! stands for the task's credential ([`crate::state::leases`]). A request without one costs
//! a look at the headers it already had.
//!
//! Lease values are swapped in headers (also inside a `Basic` credential, as git sends
//! `x-access-token:<placeholder>`) and the query; a placeholder in a body or a trailer is
//! not swapped for a lease (it goes as a marker that is no credential).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::request::Parts;
use keyswap_config::SecretId;
use keyswap_scrub::replace::Replacer;

use crate::audit::decision::{Denial, Reason};
use crate::lifecycle::leases;
use crate::pipeline::context::ConnContext;
use crate::pipeline::route::Routed;
use crate::pipeline::swap::find_in_headers;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;

/// The task's placeholder matcher when the request carries a granted lease placeholder
/// (its credentials minted); `None` when the snapshot's serves.
pub async fn lease(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    parts: &Parts,
    routed: &Routed<'_>,
) -> Result<Option<Arc<Replacer>>, Denial> {
    let config = &snapshot.config;
    if routed.matched.is_learned() || !config.secrets.iter().any(|s| s.lease.is_some()) {
        return Ok(None);
    }
    let rule = routed.matched.rule();
    let mut found: BTreeSet<SecretId> = find_in_headers(&snapshot.placeholders, &parts.headers)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    if let (true, Some(query)) = (rule.swap_in.query, parts.uri.query()) {
        found.extend(
            snapshot
                .placeholders
                .find_ids(query.as_bytes())
                .map(SecretId),
        );
    }
    found.retain(|id| rule.grants(*id) && config.secret(*id).lease.is_some());
    if found.is_empty() {
        return Ok(None);
    }
    for id in found {
        if let Err(e) = leases::acquire(shared, snapshot, &ctx.task, id).await {
            let name = &config.secret(id).name;
            tracing::warn!(task = %ctx.task.id, secret = %name, error = %e, "no credential could be minted");
            return Err(Denial::new(
                Reason::SecretUnavailable,
                format!(
                    "keyswap could not mint secret {name} for task {}: {e}; ask the operator to check its source",
                    ctx.task.id
                ),
            ));
        }
    }
    shared
        .leases
        .placeholders_for(snapshot, &ctx.task.id)
        .map(Some)
        .map_err(|_| {
            Denial::new(
                Reason::SecretUnavailable,
                "keyswap could not prepare the task's credentials",
            )
        })
}
