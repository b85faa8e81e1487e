//! Step 4b, limit: a matched rule's `rate:` and `budget:` for the task, checked after every
//! other check of the request and right before it is sent upstream.
//!
//! Counts live on the task ([`crate::state::usage::TaskUsage`] in its [`LiveTask`]), one entry per rule *key*
//! (the rule's `id:`, or what it matches: see `keyswap_config::limits`), so that a reload
//! keeps a running task's counts for every rule it still has, applies a lowered budget to the
//! count already used, and drops the counts of rules that are gone. Ending a task (revocation,
//! expiry, removal by a reload) drops its counts.
//!
//! What counts: a request that reached this step, i.e. one that is about to be sent upstream
//! (it counts even if the upstream then fails, or its body is refused midway, since part of
//! it may already have gone out). A request refused before (route, placeholder, stale secret,
//! malformed) never used the credential and does not count; nor does one refused here.
//!
//! Cost: a rule without limits costs nothing; one with limits costs one `DashMap` read and
//! one or two atomic operations (the rate limiter is `governor`'s lock-free GCRA cell).
//!
//! This is the count of one keyswap. With `store:` the pipeline charges through the fleet's
//! budget module instead (one count in the store for every replica), which shares the two
//! refusals below.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyswap_config::{Config, Rule};

use crate::api::RuleUsageInfo;
use crate::audit::decision::{Denial, Reason};
use crate::state::metrics::BudgetSample;
use crate::state::tasks::{LiveTask, TaskSource};

/// Charges one request of `task` to `rule`: refused with `rate_limited` (and the seconds
/// until a retry can pass) or `budget_exhausted`; a refused request is not counted.
pub fn charge(task: &LiveTask, rule: &Rule) -> Result<(), Denial> {
    if rule.budget.is_none() && rule.rate.is_none() {
        return Ok(());
    }
    let entry = task.usage.rule(&rule.key);
    if let Some(rate) = rule.rate {
        entry
            .take_token(rate)
            .map_err(|seconds| rate_limited(task, rule, seconds))?;
    }
    match rule.budget {
        None => {
            entry.used.fetch_add(1, Ordering::Relaxed);
        }
        Some(budget) => {
            entry
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used < budget.requests).then_some(used + 1)
                })
                .map_err(|_| budget_exhausted(task, rule))?;
        }
    }
    Ok(())
}

/// The refusal of a request past `rule`'s rate: a retry passes after `seconds`.
pub fn rate_limited(task: &LiveTask, rule: &Rule, seconds: u64) -> Denial {
    let rate = rule.rate.map(|r| r.to_string()).unwrap_or_default();
    Denial::new(
        Reason::RateLimited,
        format!(
            "task {} may send at most {rate} requests on the rule for {}; retry after {seconds} s",
            task.id, rule.key
        ),
    )
    .retry_after(seconds)
}

/// The refusal of a request past `rule`'s budget.
pub fn budget_exhausted(task: &LiveTask, rule: &Rule) -> Denial {
    let requests = rule.budget.map_or(0, |b| b.requests);
    Denial::new(
        Reason::BudgetExhausted,
        format!(
            "task {} has used its budget of {requests} requests on the rule for {}; \
             ask the operator for a new task or a larger budget",
            task.id, rule.key
        ),
    )
}

/// The rules `task` acts under in `config` (as [`crate::state::snapshot::Snapshot::rules_of`]).
pub fn rules_in<'c>(config: &'c Config, task: &LiveTask) -> Option<&'c [Rule]> {
    match &task.source {
        TaskSource::Config => config.task(&task.id).map(|t| t.rules.as_slice()),
        TaskSource::Runtime { policy } => config.policy(policy).map(|p| p.rules.as_slice()),
    }
}

/// Used and remaining requests of every rule of `task` that has a budget or a rate, in rule
/// order (a key shared by two rules is listed once, at its first rule).
pub fn report(config: &Config, task: &LiveTask) -> Vec<RuleUsageInfo> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for rule in rules_in(config, task).unwrap_or_default() {
        if (rule.budget.is_none() && rule.rate.is_none()) || seen.contains(&&*rule.key) {
            continue;
        }
        seen.push(&rule.key);
        let used = task.usage.used(&rule.key);
        out.push(RuleUsageInfo {
            rule: rule.index,
            key: rule.key.to_string(),
            budget: rule.budget.map(|b| b.requests),
            used,
            remaining: rule.budget.map(|b| b.requests.saturating_sub(used)),
            rate: rule.rate.map(|r| r.to_string()),
        });
    }
    out
}

/// After a reload: every live task keeps only the counts of rules it still has.
pub fn prune(config: &Config, tasks: &[Arc<LiveTask>]) {
    for task in tasks {
        task.usage
            .retain(rules_in(config, task).unwrap_or_default());
    }
}

/// The budget series of every rule with a budget, over `tasks`.
pub fn samples(config: &Config, tasks: &[Arc<LiveTask>]) -> Vec<BudgetSample> {
    let mut out: Vec<BudgetSample> = Vec::new();
    for task in tasks.iter().filter(|t| !t.is_cancelled()) {
        let policy = task.policy.as_deref().unwrap_or("static");
        for info in report(config, task)
            .into_iter()
            .filter(|i| i.budget.is_some())
        {
            let exhausted = u64::from(info.remaining == Some(0));
            match out
                .iter_mut()
                .find(|s| s.policy == policy && s.rule == info.key)
            {
                Some(sample) => {
                    sample.used += info.used;
                    sample.exhausted_tasks += exhausted;
                }
                None => out.push(BudgetSample {
                    policy: policy.to_string(),
                    rule: info.key,
                    used: info.used,
                    exhausted_tasks: exhausted,
                }),
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::tasks::IssuedBy;
    use keyswap_config::Rate;
    use keyswap_config::{Budget, HostPattern, Scheme, SwapIn};

    /// A rule on api.example.com with `budget` requests and `rate`, keyed `key`.
    pub(crate) fn rule(key: &str, budget: Option<u64>, rate: Option<&str>) -> Rule {
        Rule {
            index: 0,
            host: HostPattern::parse("api.example.com").unwrap(),
            port: None,
            methods: None,
            paths: None,
            secrets: Vec::new(),
            tunnel: false,
            swap_in: SwapIn::HEADERS_ONLY,
            headers: None,
            scheme: Scheme::Https,
            allow_cleartext: false,
            approve: None,
            key: Arc::from(key),
            budget: budget.map(|requests| Budget { requests }),
            rate: rate.map(|r| Rate::parse(r).unwrap()),
        }
    }

    fn task() -> LiveTask {
        LiveTask::new(
            "t".into(),
            TaskSource::Config,
            None,
            IssuedBy::Config,
            None,
            None,
        )
    }

    #[test]
    fn budget_refuses_past_its_count_and_a_lower_budget_applies_to_the_count() {
        let t = task();
        let three = rule("r", Some(3), None);
        for _ in 0..3 {
            assert!(charge(&t, &three).is_ok());
        }
        let refused = charge(&t, &three).unwrap_err();
        assert_eq!(refused.reason, Reason::BudgetExhausted);
        assert_eq!(t.usage.used("r"), 3, "a refused request is not counted");
        let five = rule("r", Some(5), None);
        assert!(charge(&t, &five).is_ok());
        assert_eq!(t.usage.used("r"), 4);
        let two = rule("r", Some(2), None);
        assert!(charge(&t, &two).is_err());
        assert!(charge(&t, &rule("other", Some(1), None)).is_ok());
    }

    #[test]
    fn rate_refuses_past_the_burst_with_a_whole_number_of_seconds() {
        let t = task();
        let slow = rule("r", None, Some("2/h"));
        assert!(charge(&t, &slow).is_ok(), "the burst is at least one");
        let refused = charge(&t, &slow).unwrap_err();
        assert_eq!(refused.reason, Reason::RateLimited);
        let seconds = refused.retry_after.unwrap();
        assert!((1..=1800).contains(&seconds), "{seconds}");
        assert_eq!(t.usage.used("r"), 1);
        // A reload that changes the rate starts a new bucket.
        assert!(charge(&t, &rule("r", None, Some("1/h"))).is_ok());
    }

    #[test]
    fn unlimited_rules_are_not_tracked_and_counts_go_with_the_rule_or_the_task() {
        let t = task();
        assert!(charge(&t, &rule("free", None, None)).is_ok());
        assert!(t.usage.is_empty());
        let kept = rule("kept", Some(9), None);
        charge(&t, &kept).unwrap();
        charge(&t, &rule("gone", Some(9), None)).unwrap();
        t.usage.retain(std::slice::from_ref(&kept));
        assert_eq!((t.usage.used("kept"), t.usage.used("gone")), (1, 0));
        t.usage.clear();
        assert_eq!(t.usage.used("kept"), 0);
    }
}
