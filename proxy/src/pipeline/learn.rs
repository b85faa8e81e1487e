//! Learn mode (`on_unlisted: learn`): a request no rule allows is forwarded with **no secret
//! swapped in** and recorded as `learned`, with the secrets whose placeholders it carried and
//! where it carried them, so that `keyswap learn` can write the rules the run needed.
//!
//! Nothing real can leave while learning: the request goes on under a rule made for it that
//! grants no secret, the swap step is skipped (a placeholder goes upstream as the placeholder),
//! and the response is scrubbed like any other. Rules that match behave exactly as usual.
//!
//! Records name secrets and header names only, never a value.

use std::collections::BTreeMap;

use http::request::Parts;
use keyswap_config::{normalize_path, OnUnlisted, Rule, SecretId};

use crate::audit::decision::{Carried, Denial, Reason};
use crate::lifecycle::tasks::on_unlisted;
use crate::pipeline::context::ConnContext;
use crate::pipeline::route::{Matched, Routed};
use crate::pipeline::swap::{check_uri, find_in_headers};
use crate::pipeline::swap_body::BodySeen;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;
use crate::wire::headers::METHOD_OVERRIDE_HEADERS;

/// The index of the rule a learned request goes on under: one past any index a config can
/// have. Never shown: [`Matched::Learned`] names no rule.
const LEARNED_RULE_INDEX: usize = usize::MAX;

/// Whether `task` is in learn mode in this snapshot.
pub fn learning(snapshot: &Snapshot, task: &LiveTask) -> bool {
    on_unlisted(&snapshot.config, task) == OnUnlisted::Learn
}

/// `decide` refused a request that no rule allows: in learn mode it goes on, unswapped,
/// under a rule for its host alone that grants nothing. A request with a method-override
/// header stays refused (what was recorded would not be what the upstream ran), and so does
/// every other refusal (a mismatched authority, a malformed request, an expired task).
pub fn learn<'c>(
    snapshot: &Snapshot,
    ctx: &ConnContext,
    parts: &Parts,
    refused: Denial,
) -> Result<Routed<'c>, Denial> {
    let learnable = matches!(
        refused.reason,
        Reason::HostNotAllowed | Reason::RouteNotAllowed
    ) && !METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|name| parts.headers.contains_key(*name))
        && learning(snapshot, &ctx.task);
    if !learnable {
        return Err(refused);
    }
    // decide normalised it already; a path that does not normalise never reaches here.
    let Ok(path) = normalize_path(parts.uri.path()) else {
        return Err(refused);
    };
    let rule = Rule::approved_exact(
        &ctx.target.host,
        ctx.target.port,
        ctx.scheme,
        LEARNED_RULE_INDEX,
    );
    Ok(Routed {
        matched: Matched::Learned(Box::new(rule)),
        path,
    })
}

/// What the request body is scanned against: the rule's grants; for a learned request (whose
/// rule grants nothing and swaps nothing) every secret, so that its placeholders go upstream
/// as they are, noted in the returned cell for the record ([`with_body`]).
pub fn body_grants(snapshot: &Snapshot, routed: &Routed<'_>) -> (Vec<SecretId>, Option<BodySeen>) {
    if routed.matched.is_learned() {
        let every = (0..snapshot.config.secrets.len()).map(SecretId).collect();
        (every, Some(BodySeen::default()))
    } else {
        (routed.matched.rule().secrets.clone(), None)
    }
}

/// Adds to `carried` the secrets whose placeholders the body carried (`seen`).
pub fn with_body(snapshot: &Snapshot, carried: &mut Vec<Carried>, seen: &BodySeen) {
    let seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for id in seen.iter() {
        let secret = &snapshot.config.secret(*id).name;
        match carried.iter_mut().find(|c| &c.secret == secret) {
            Some(entry) => entry.body = true,
            None => carried.push(Carried {
                secret: secret.clone(),
                headers: Vec::new(),
                uri: false,
                body: true,
            }),
        }
    }
    carried.sort();
}

/// The secrets whose placeholders a learned request carries in its headers (also inside a
/// `Basic` credential) and its URI, each with the header names it was found in. The body's
/// are added as it streams ([`with_body`]).
pub fn carried(snapshot: &Snapshot, parts: &Parts, routed: &Routed<'_>) -> Vec<Carried> {
    let mut by_id: BTreeMap<usize, (Vec<String>, bool)> = BTreeMap::new();
    for (name, id) in find_in_headers(&snapshot.placeholders, &parts.headers) {
        by_id
            .entry(id.0)
            .or_default()
            .0
            .push(name.as_str().to_string());
    }
    // The rule learned requests go on under grants nothing: every placeholder in the URI
    // comes back as not granted.
    if let Err(in_uri) = check_uri(
        &snapshot.placeholders,
        parts.uri.path(),
        &routed.path,
        parts.uri.query(),
        routed.matched.rule(),
    ) {
        for id in in_uri.0 {
            by_id.entry(id.0).or_default().1 = true;
        }
    }
    by_id
        .into_iter()
        .map(|(id, (mut headers, uri))| {
            headers.sort();
            headers.dedup();
            Carried {
                secret: snapshot.config.secrets[id].name.clone(),
                headers,
                uri,
                body: false,
            }
        })
        .collect()
}
