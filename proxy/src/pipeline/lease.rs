//! The lease step, between hold and swap: a request that carries the placeholder of a lease
//! secret (`github_app:`, `oauth2:`) its rule grants gets the task's credential for it —
//! minted now on the task's first such request ([`crate::lifecycle::leases::acquire`]) — and
//! the swap step then uses the task's own placeholder matcher, in which that placeholder
//! stands for the task's credential ([`crate::state::leases`]). A request without one costs
//! a look at the headers it already had.
//!
//! Lease values are swapped wherever the rule swaps: headers (also inside a `Basic`
//! credential, as git sends `x-access-token:<placeholder>`), the query, the body and the
//! trailers. The body and the trailers stream after the request is sent, too late to mint:
//! a request whose rule swaps in its body (`swap_in: [body]`), or that declares trailers
//! (a `Trailer` header), gets the credentials of every lease secret its rule grants before
//! it goes (minted then if need be); any other request of a task that already holds a
//! credential its rule grants is swapped with the task's matcher too. A lease placeholder
//! in an undeclared trailer of a task holding no credential for it goes as a marker that is
//! no credential.

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
/// (its credentials minted), swaps in its body, or `declares_trailers` (a `Trailer` header
/// came with it), or the task already holds a credential its rule grants; `None` when the
/// snapshot's serves.
pub async fn lease(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    parts: &Parts,
    routed: &Routed<'_>,
    declares_trailers: bool,
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
    let granted_leases = rule
        .secrets
        .iter()
        .copied()
        .filter(|id| config.secret(*id).lease.is_some());
    if rule.swap_in.body || declares_trailers {
        found.extend(granted_leases.clone());
    }
    found.retain(|id| rule.grants(*id) && config.secret(*id).lease.is_some());
    if found.is_empty() {
        let held = shared.leases.of_task(&ctx.task.id);
        let holds_granted = granted_leases
            .map(|id| &config.secret(id).name)
            .any(|name| held.iter().any(|lease| &lease.secret == name));
        if !holds_granted {
            return Ok(None);
        }
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
