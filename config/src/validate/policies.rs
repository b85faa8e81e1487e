//! `policies:`: named allowlists that tasks are issued from at runtime, each with a default
//! TTL and a cap on the TTL a task may ask for; a static task may name one with `policy:`.
//! Rules are checked in `rules`. Never sees a secret value.

use std::collections::BTreeMap;
use std::time::Duration;

use humantime::format_duration;

use super::rules::{check_rules, warn_shadowed, warn_unscoped_headers};
use super::tasks::{valid_id, Defined};
use super::{check_duration, Checker};
use crate::error::Sink;
use crate::model::{Policy, DEFAULT_POLICY_MAX_TTL, DEFAULT_POLICY_TTL};
use crate::raw::{RawOnUnlisted, RawPolicy};
use crate::read::{Entries, Located};

const POLICY_NAME_FIX: &str =
    "policy names are 1 to 64 characters of A-Z, a-z, 0-9, \".\", \"_\" and \"-\"";

/// Every policy, by name, with the rules that had no error (a policy with an error still
/// counts as defined, so that tasks naming it get no second error).
pub(super) fn check_policies(
    raw: Option<&Located<Entries<Located<RawPolicy>>>>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> BTreeMap<String, Policy> {
    let mut policies = BTreeMap::new();
    for (name, raw) in raw.map(|r| r.value.0.as_slice()).unwrap_or_default() {
        if !valid_id(&name.value) {
            sink.at(
                name,
                format!("\"{}\" is not a valid policy name", name.value),
                format!("rename it: {POLICY_NAME_FIX}"),
            );
        }
        let (ttl, max_ttl) = check_ttls(&raw.value, sink);
        let (rules, sites) = check_rules(raw.value.allow.as_ref(), defined, sink, checker);
        let learning =
            raw.value.on_unlisted.as_ref().map(|r| r.value) == Some(RawOnUnlisted::Learn);
        super::approval::warn_learning(
            raw.value.on_unlisted.as_ref(),
            &format!("policy {}", name.value),
            sink.file,
            checker,
        );
        if raw.value.allow.as_ref().is_none_or(|a| a.value.is_empty()) && !learning {
            checker.warn(
                sink.file,
                raw.pos,
                &raw.path,
                format!(
                    "policy {} has no allow rules, so its tasks can reach nothing",
                    name.value
                ),
            );
        }
        warn_shadowed(&rules, &sites, sink.file, checker);
        warn_unscoped_headers(&rules, &sites, defined.secrets, sink.file, checker);
        let policy = Policy {
            name: name.value.clone(),
            ttl,
            max_ttl,
            on_unlisted: super::approval::on_unlisted(raw.value.on_unlisted.as_ref())
                .unwrap_or_default(),
            rules,
            requestable: super::requestable::check_requestable(
                raw.value.requestable.as_ref(),
                defined,
                sink,
            ),
            lease_scope: super::leases::check_scope(&raw.value, sink),
        };
        policies.insert(name.value.clone(), policy);
    }
    policies
}

/// `ttl` and `max_ttl`. A missing one follows the other: `max_ttl` is never below an
/// explicit `ttl`, and the default `ttl` never above an explicit `max_ttl`.
fn check_ttls(raw: &RawPolicy, sink: &mut Sink<'_>) -> (Duration, Duration) {
    let ttl = raw.ttl.as_ref().and_then(|t| check_ttl(t, sink));
    let max_ttl = raw.max_ttl.as_ref().and_then(|t| check_ttl(t, sink));
    match (ttl, max_ttl) {
        (Some(ttl), Some(max_ttl)) => {
            if let (Some(site), true) = (&raw.ttl, ttl > max_ttl) {
                sink.at(
                    site,
                    format!(
                        "ttl {} is longer than max_ttl {}",
                        format_duration(ttl),
                        format_duration(max_ttl)
                    ),
                    "lower ttl to at most max_ttl, or raise max_ttl",
                );
            }
            (ttl, max_ttl)
        }
        (Some(ttl), None) => (ttl, ttl.max(DEFAULT_POLICY_MAX_TTL)),
        (None, Some(max_ttl)) => (DEFAULT_POLICY_TTL.min(max_ttl), max_ttl),
        (None, None) => (DEFAULT_POLICY_TTL, DEFAULT_POLICY_MAX_TTL),
    }
}

fn check_ttl(value: &Located<String>, sink: &mut Sink<'_>) -> Option<Duration> {
    let ttl = check_duration(value, sink)?;
    if ttl.is_zero() {
        let field = value.path.rsplit('.').next().unwrap_or("ttl");
        sink.at(
            value,
            format!("{field} is zero, so every task would expire at once"),
            "write a duration longer than zero, e.g. 1h",
        );
        return None;
    }
    Some(ttl)
}
