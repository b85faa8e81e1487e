//! A rule's usage limits and identity: `budget:`, `rate:` and `id:` → [`Budget`], [`Rate`]
//! and the rule's key; and the check that no two rules of one allow list share an `id:`.

use std::sync::Arc;

use super::Site;
use crate::error::Sink;
use crate::limits::{valid_rule_id, Budget, Rate, RateError};
use crate::model::Rule;
use crate::raw::{RawBudget, RawRule};
use crate::read::Located;

/// `budget: {requests: N}` with N ≥ 1.
pub(super) fn check_budget(raw: &Located<RawBudget>, sink: &mut Sink<'_>) -> Option<Budget> {
    let Some(requests) = &raw.value.requests else {
        sink.missing(raw, "requests", "add e.g. `budget: {requests: 500}`");
        return None;
    };
    if requests.value == 0 {
        sink.at(
            requests,
            "a budget of 0 requests would refuse every request on this rule",
            "write a number of requests of at least 1, or remove the rule",
        );
        return None;
    }
    Some(Budget {
        requests: requests.value,
    })
}

/// `rate: N/s`, `N/m` or `N/h` with N ≥ 1.
pub(super) fn check_rate(raw: &Located<String>, sink: &mut Sink<'_>) -> Option<Rate> {
    match Rate::parse(&raw.value) {
        Ok(rate) => Some(rate),
        Err(RateError::Zero) => {
            sink.at(
                raw,
                format!(
                    "a rate of \"{}\" would refuse every request on this rule",
                    raw.value.escape_debug()
                ),
                "write a rate of at least 1, e.g. 1/m, or remove the rule",
            );
            None
        }
        Err(RateError::Form) => {
            sink.at(
                raw,
                format!("\"{}\" is not a rate", raw.value.escape_debug()),
                "write a number of requests per second, minute or hour, e.g. 5/s, 100/m or 1000/h",
            );
            None
        }
    }
}

/// `id:` of a rule.
pub(super) fn check_id(raw: &Located<String>, sink: &mut Sink<'_>) -> Option<Arc<str>> {
    if valid_rule_id(&raw.value) {
        Some(Arc::from(raw.value.as_str()))
    } else {
        sink.at(
            raw,
            format!("\"{}\" is not a valid rule id", raw.value.escape_debug()),
            "use 1 to 64 characters of A-Z, a-z, 0-9, \".\", \"_\" and \"-\"",
        );
        None
    }
}

/// A tunnel is not intercepted: its requests cannot be counted, only its CONNECTs.
pub(super) fn check_not_tunnel(r: &RawRule, sink: &mut Sink<'_>) {
    let fields = [
        (r.budget.as_ref().map(Site::from), "budget"),
        (r.rate.as_ref().map(Site::from), "rate"),
    ];
    for (site, field) in fields {
        if let Some(site) = site {
            sink.error(
                site.pos,
                &site.path,
                format!("tunnel: true cannot be combined with {field}: a tunnel is not intercepted, so its requests cannot be counted"),
                format!("remove {field}, or remove tunnel: true"),
            );
        }
    }
}

/// Two rules of one list with the same `id:` would share one budget count by accident.
pub(super) fn check_unique_ids(list: &[Located<RawRule>], sink: &mut Sink<'_>) {
    for (j, later) in list.iter().enumerate() {
        let Some(id) = &later.value.id else { continue };
        let first = list[..j]
            .iter()
            .position(|r| r.value.id.as_ref().is_some_and(|e| e.value == id.value));
        if let Some(first) = first {
            sink.at(
                id,
                format!("rule id \"{}\" is already used by allow[{first}]", id.value),
                "give each rule its own id",
            );
        }
    }
}

/// Like [`check_unique_ids`] for a task's own rules against those of the policy it names
/// (both share the task's counts).
pub(super) fn check_ids_apart_from_policy(
    policy_name: &str,
    policy_rules: &[Rule],
    list: &[Located<RawRule>],
    sink: &mut Sink<'_>,
) {
    for raw in list {
        let Some(id) = &raw.value.id else { continue };
        if let Some(taken) = policy_rules.iter().find(|r| *r.key == *id.value) {
            sink.at(
                id,
                format!(
                    "rule id \"{}\" is already used by policy {policy_name}'s allow[{}]",
                    id.value, taken.index
                ),
                "give this rule another id",
            );
        }
    }
}
