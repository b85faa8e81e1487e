//! `GET /v1/self/refusals?limit=N`: the task's last refusals, newest first, each with what
//! would allow it — a grant inside the task's `requestable:` bounds (the body to `POST
//! /v1/self/requests`), or in words what else to do.

use keyswap_config::{within, GrantAsk};

use super::body::{ExplainedRefusal, RefusalsView};
use crate::state::agent_side::{Grant, Refusal, MAX_REFUSALS};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;

/// Refusals shown when no `limit` is given.
const DEFAULT_LIMIT: usize = 10;

pub(super) fn view(shared: &Shared, task: &LiveTask, query: Option<&str>) -> serde_json::Value {
    let limit = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_REFUSALS);
    let snapshot = shared.snapshot();
    let view = RefusalsView {
        task: task.id.clone(),
        refusals: task
            .agent
            .refusals(limit)
            .into_iter()
            .map(|r| explain(&snapshot, task, r))
            .collect(),
    };
    serde_json::to_value(view).unwrap_or_default()
}

fn explain(snapshot: &Snapshot, task: &LiveTask, refusal: Refusal) -> ExplainedRefusal {
    let (to_allow, request) = match refusal.reason.as_str() {
        "host_not_allowed" | "route_not_allowed" | "placeholder_not_allowed" => {
            match requestable(snapshot, task, &refusal) {
                Some(grant) => (
                    "a grant inside this task's requestable bounds would allow it: ask with keyswap_request_access (POST https://keyswap.internal/v1/self/requests), naming the secrets it needs and why".to_string(),
                    Some(grant),
                ),
                None => (
                    "nothing this task may request covers it; ask the operator to add a rule".to_string(),
                    None,
                ),
            }
        }
        "rate_limited" | "task_busy" => ("wait and retry (see Retry-After)".to_string(), None),
        "budget_exhausted" => (
            "the rule's budget is used up for this task; ask the operator".to_string(),
            None,
        ),
        "approval_denied" | "approval_timeout" | "approval_queue_full" => (
            "a human must approve it; try again later or ask the operator".to_string(),
            None,
        ),
        _ => (
            "fix the request as the explanation says, or ask the operator".to_string(),
            None,
        ),
    };
    ExplainedRefusal {
        refusal,
        to_allow,
        request,
    }
}

/// The narrowest grant that would have allowed the refused request, if the task's bounds
/// allow asking for it: this host and port, this method, this exact path (plus the secrets a
/// covering bound allows when the refusal was for a placeholder).
fn requestable(snapshot: &Snapshot, task: &LiveTask, refusal: &Refusal) -> Option<Grant> {
    if refusal.method == "CONNECT" {
        let grant = Grant {
            host: refusal.host.clone(),
            port: refusal.port,
            methods: None,
            paths: None,
            secrets: Vec::new(),
        };
        // A host refused at CONNECT: any bound naming it will do; narrow it when asking.
        let bounds = snapshot.requestable_of(task);
        return bounds
            .iter()
            .any(|b| b.host.matches(&refusal.host) && b.port.unwrap_or(443) == refusal.port)
            .then_some(grant);
    }
    let methods = vec![refusal.method.clone()];
    let paths = vec![refusal.path.clone()?];
    let ask = GrantAsk {
        host: &refusal.host,
        port: refusal.port,
        methods: Some(&methods),
        paths: Some(&paths),
        secrets: &[],
    };
    let name = |id| snapshot.config.secret(id).name.clone();
    let bounds = snapshot.requestable_of(task);
    let index = within(bounds, &ask, &name).ok()?;
    let secrets = match refusal.reason.as_str() {
        "placeholder_not_allowed" => bounds
            .iter()
            .find(|b| b.index == index)
            .map(|b| b.secrets.iter().map(|id| name(*id)).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Some(Grant {
        host: refusal.host.clone(),
        port: refusal.port,
        methods: Some(methods),
        paths: Some(paths),
        secrets,
    })
}
