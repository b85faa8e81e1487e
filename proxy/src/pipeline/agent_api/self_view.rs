//! `GET /v1/self`: the task as its agent may know it — id, policy, expiry, every rule with
//! the secrets it may use by placeholder and variable name, budgets used and left, the
//! grants a human added, and the `requestable:` bounds. Never a value or a token.

use std::time::SystemTime;

use keyswap_config::{OnUnlisted, Requestable, Rule};

use super::body::{BoundView, BudgetView, RuleView, SecretView, SelfView};
use crate::audit::record::timestamp;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;

pub(super) fn view(shared: &Shared, task: &LiveTask) -> serde_json::Value {
    let snapshot = shared.snapshot();
    let rules = snapshot.rules_of(task).unwrap_or_default();
    let expires = task.expires();
    let view = SelfView {
        task: task.id.clone(),
        policy: task.policy.clone(),
        expires: expires.map(timestamp),
        expires_in_secs: expires.map(|at| {
            at.duration_since(SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }),
        on_unlisted: match crate::lifecycle::tasks::on_unlisted(&snapshot.config, task) {
            OnUnlisted::Deny => "deny",
            OnUnlisted::Ask => "ask",
            OnUnlisted::Learn => "learn",
        }
        .to_string(),
        rules: rules
            .iter()
            .map(|r| rule_view(&snapshot, task, r, Some(r.index)))
            .collect(),
        grants: snapshot
            .granted_rules_of(task)
            .iter()
            .map(|r| rule_view(&snapshot, task, r, None))
            .collect(),
        requestable: snapshot
            .requestable_of(task)
            .iter()
            .map(|b| bound_view(&snapshot, b))
            .collect(),
    };
    serde_json::to_value(view).unwrap_or_default()
}

pub(super) fn rule_view(
    snapshot: &Snapshot,
    task: &LiveTask,
    rule: &Rule,
    index: Option<usize>,
) -> RuleView {
    let budget = rule.budget.map(|b| {
        let used = task.usage.used(&rule.key);
        BudgetView {
            requests: b.requests,
            used,
            left: b.requests.saturating_sub(used),
        }
    });
    RuleView {
        index,
        scheme: rule.scheme.as_str().to_string(),
        host: rule.host.to_string(),
        port: rule.port.unwrap_or(rule.scheme.default_port()),
        methods: rule.methods.clone(),
        paths: rule.paths.as_ref().map(|p| p.sources().to_vec()),
        tunnel: rule.tunnel,
        approve: rule.approve.map(|a| a.as_str().to_string()),
        secrets: rule
            .secrets
            .iter()
            .map(|id| {
                let secret = snapshot.config.secret(*id);
                SecretView {
                    name: secret.name.clone(),
                    placeholder: secret.placeholder.clone(),
                    env: secret.env.clone(),
                }
            })
            .collect(),
        budget,
        rate: rule.rate.map(|r| r.to_string()),
    }
}

fn bound_view(snapshot: &Snapshot, bound: &Requestable) -> BoundView {
    BoundView {
        index: bound.index,
        host: bound.host.to_string(),
        port: bound.port.unwrap_or(443),
        methods: bound.methods.clone(),
        paths: bound.paths.as_ref().map(|p| p.sources().to_vec()),
        secrets: bound
            .secrets
            .iter()
            .map(|id| snapshot.config.secret(*id).name.clone())
            .collect(),
    }
}
