//! Step 4b, between decide and swap: a request that needs a human waits for one.
//!
//! Two kinds wait: a request whose matched rule has `approve:` (`each`: every request;
//! `once`: until the first yes of the task), and — when the task's `on_unlisted` is `ask` —
//! a request or a CONNECT that no rule allows. Nothing is sent upstream while it waits
//! ([`crate::state::approvals`] holds it). An approved unlisted request goes on under
//! [`Rule::approved_exact`]: its host only, **no secret** (a placeholder it carries is still
//! refused as `placeholder_not_allowed`; granting a secret is a config change, not a click).
//!
//! Messages name hosts, paths, tasks and secret names only.

use std::sync::Arc;

use http::request::Parts;
use keyswap_config::{normalize_path, OnUnlisted, Rule, Scheme};

use crate::audit::decision::{Denial, Reason};
use crate::pipeline::context::ConnContext;
use crate::pipeline::learn;
use crate::pipeline::route::{Matched, Routed};
use crate::state::approvals::{rule_key, Held, Outcome, Why};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;
use crate::wire::headers::METHOD_OVERRIDE_HEADERS;
use crate::wire::target::Target;

/// The index of the rule an approved unlisted request goes on under: one past any index a
/// config can have. Never shown: [`Matched::Approved`] names no rule.
const APPROVED_RULE_INDEX: usize = usize::MAX;

/// The approve step: `decided` is what [`crate::pipeline::route::decide`] said. A request
/// whose rule has `approve:` waits for a human ([`approve_rule`]); one that no rule allows
/// waits under `on_unlisted: ask` ([`ask_unlisted`]) or goes on unswapped under
/// `on_unlisted: learn` ([`crate::pipeline::learn::learn`]); anything else stands as decided.
pub async fn approve<'c>(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &ConnContext,
    parts: &Parts,
    decided: Result<Routed<'c>, Denial>,
) -> Result<Routed<'c>, Denial> {
    match decided {
        Ok(routed) => {
            approve_rule(
                shared,
                snapshot,
                ctx,
                parts,
                routed.matched.rule(),
                &routed.path,
            )
            .await?;
            Ok(routed)
        }
        Err(denial) if learn::learning(snapshot, &ctx.task) => {
            learn::learn(snapshot, ctx, parts, denial)
        }
        Err(denial) => {
            let (rule, path) = ask_unlisted(shared, snapshot, ctx, parts, denial).await?;
            Ok(Routed {
                matched: Matched::Approved(Box::new(rule)),
                path,
            })
        }
    }
}

/// What `task` does with a request no rule allows, in this snapshot.
pub fn on_unlisted(snapshot: &Snapshot, task: &LiveTask) -> OnUnlisted {
    crate::lifecycle::tasks::on_unlisted(&snapshot.config, task)
}

/// A rule with `approve:` matched: waits for a human unless an earlier approval covers it.
async fn approve_rule(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &ConnContext,
    parts: &Parts,
    rule: &Rule,
    path: &str,
) -> Result<(), Denial> {
    let Some(approve) = rule.approve else {
        return Ok(());
    };
    let held = Held {
        rule: Some((rule.index, rule_key(rule))),
        secrets: secrets_carried(snapshot, parts, rule),
        ..held_request(ctx, parts, path, Why::Rule(approve))
    };
    wait(shared, snapshot, &ctx.task, held, Some(rule.index)).await
}

/// `decide` refused a request that no rule allows. Under `on_unlisted: ask` (and with no
/// method-override header, which would make the human approve one method and the upstream
/// run another) it waits for a human; approved, it goes on under the returned rule and path.
/// Otherwise the refusal stands.
async fn ask_unlisted(
    shared: &Shared,
    snapshot: &Snapshot,
    ctx: &ConnContext,
    parts: &Parts,
    refused: Denial,
) -> Result<(Rule, String), Denial> {
    let askable = matches!(
        refused.reason,
        Reason::HostNotAllowed | Reason::RouteNotAllowed
    ) && !METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|name| parts.headers.contains_key(*name))
        && on_unlisted(snapshot, &ctx.task) == OnUnlisted::Ask;
    if !askable {
        return Err(refused);
    }
    // decide normalised it already; a path that does not normalise never reaches here.
    let Ok(path) = normalize_path(parts.uri.path()) else {
        return Err(refused);
    };
    let held = held_request(ctx, parts, &path, Why::Unlisted);
    wait(shared, snapshot, &ctx.task, held, None).await?;
    let rule = Rule::approved_exact(
        &ctx.target.host,
        ctx.target.port,
        ctx.scheme,
        APPROVED_RULE_INDEX,
    );
    Ok((rule, path))
}

/// A CONNECT to a host no rule lists. Under `on_unlisted: ask` it waits for a human (the
/// CONNECT gets no answer meanwhile); approved, the tunnel is intercepted and each request
/// in it is decided — and, unlisted, asked about — on its own. Otherwise `refusal` stands.
pub async fn ask_connect(
    shared: &Shared,
    snapshot: &Snapshot,
    task: &Arc<LiveTask>,
    conn: u64,
    target: &Target,
    refusal: Denial,
) -> Result<(), Denial> {
    if on_unlisted(snapshot, task) != OnUnlisted::Ask {
        return Err(refusal);
    }
    let held = Held {
        conn,
        method: "CONNECT".into(),
        scheme: Scheme::Https,
        host: target.host.clone(),
        port: target.port,
        path: None,
        rule: None,
        secrets: Vec::new(),
        why: Why::Unlisted,
        agent_why: None,
    };
    wait(shared, snapshot, task, held, None).await
}

/// A request held for `why`, before any rule or secret is named.
fn held_request(ctx: &ConnContext, parts: &Parts, path: &str, why: Why) -> Held {
    Held {
        conn: ctx.conn_id,
        method: parts.method.as_str().to_string(),
        scheme: ctx.scheme,
        host: ctx.target.host.clone(),
        port: ctx.target.port,
        path: Some(path.to_string()),
        rule: None,
        secrets: Vec::new(),
        why,
        agent_why: None,
    }
}

/// Lets the request through at once if an approval already covers it, else holds it.
async fn wait(
    shared: &Shared,
    snapshot: &Snapshot,
    task: &Arc<LiveTask>,
    held: Held,
    rule: Option<usize>,
) -> Result<(), Denial> {
    if shared.approvals.granted(task, &held) {
        return Ok(());
    }
    let what = match &held.path {
        Some(path) => format!("{} {path} on {}", held.method, held.host),
        None => format!("CONNECT to {}:{}", held.host, held.port),
    };
    let why = match rule {
        Some(index) => format!("rule {index} of task {} needs a human's approval", task.id),
        None => format!("task {} has no rule for it", task.id),
    };
    match shared.approvals.hold(snapshot, &shared.audit, task, held).await {
        Outcome::Approved => Ok(()),
        Outcome::Denied(note) => {
            let mut message = format!("a human denied {what} ({why})");
            if let Some(note) = note {
                message.push_str(": ");
                message.push_str(&note);
            }
            Err(Denial::new(Reason::ApprovalDenied, message))
        }
        Outcome::TimedOut => Err(Denial::new(
            Reason::ApprovalTimeout,
            format!("{what} waited for a human's approval ({why}) and nobody answered in time; try again later or ask the operator"),
        )),
        Outcome::QueueFull => Err(Denial::new(
            Reason::ApprovalQueueFull,
            format!("{what} needs a human's approval ({why}), but task {} already has the most requests waiting; wait for answers before sending more", task.id),
        )),
        Outcome::TaskEnded => Err(Denial::new(
            Reason::NoTask,
            format!("task {} ended while {what} waited for approval", task.id),
        )
        .closing()),
    }
}

/// Names of the secrets the rule grants whose placeholders the request carries in its
/// headers or query (every granted one when the rule swaps in bodies, which are not read
/// before the answer).
fn secrets_carried(snapshot: &Snapshot, parts: &Parts, rule: &Rule) -> Vec<String> {
    let mut ids: Vec<usize> = Vec::new();
    if rule.swap_in.body {
        ids.extend(rule.secrets.iter().map(|id| id.0));
    }
    let mut look = |bytes: &[u8]| {
        for id in snapshot.placeholders.find_ids(bytes) {
            ids.push(id);
        }
    };
    for value in parts.headers.values() {
        look(value.as_bytes());
    }
    if let Some(query) = parts.uri.query() {
        look(query.as_bytes());
    }
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter(|id| rule.secrets.iter().any(|granted| granted.0 == *id))
        .map(|id| snapshot.config.secrets[id].name.clone())
        .collect()
}
