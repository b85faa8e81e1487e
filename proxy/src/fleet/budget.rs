//! Budgets and rates fleet-wide (`store:`): a rule's `budget:` and `rate:` are counted in the
//! store, so that a budget of N allows exactly N requests across every replica, under any
//! concurrency, and a rate holds for the fleet as a whole.
//!
//! One request is one `EVALSHA` of [`SCRIPT`], which Redis runs atomically: it checks the
//! rate (a GCRA: the key holds the rule's theoretical arrival time, in microseconds of the
//! store's own clock, `TIME`, so replicas' clocks play no part), then the budget, and only if
//! both pass counts the request and moves the arrival time on. Nothing is read by a replica
//! and written back, so two replicas can never both take the last request. The script is
//! sent to the store once (`redis::Script` sends its SHA-1 and loads it only when the store
//! answers `NOSCRIPT`, e.g. after a restart).
//!
//! Keys: `<prefix>budget:<task>@<issue>:<rule key>` (the count) and
//! `<prefix>rate:<task>@<issue>:<rule key>` (the arrival time), where `<issue>` is the
//! runtime task's issue time in milliseconds (the same on every replica: it travels in the
//! task's record), so a task id issued again after a revocation starts from zero; a task
//! from the config file has `config` there and shares its counts with every replica that
//! has it. The count expires with the task (`PEXPIREAT` its expiry; a config task without
//! `expires:` keeps its count), the arrival time as soon as the bucket is full again.
//!
//! What is never done: a rule without a budget or a rate costs no round trip to the store;
//! nothing here is written but a count and a time (no token, no secret).
//!
//! When the store cannot be reached (the grace, see [`crate::fleet`]), a request on a rule
//! with a budget or a rate is refused with 503 `store_unavailable`: the fleet's count cannot
//! be kept exact without the store, and counting on this replica alone would let each cut-off
//! replica spend the whole budget again. Requests on other rules are served through the
//! grace; past it, every request is refused anyway. A store that fails one script call
//! refuses that request the same way; whether the store is lost is the fleet worker's to say.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use keyswap_config::Rule;

use super::timed;
use crate::audit::decision::{Denial, Reason};
use crate::lifecycle::budget;
use crate::state::fleet::{FleetLink, StoreState};
use crate::state::fleet_conn::Keys;
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, TaskSource};

/// The check and the count, atomically. KEYS: the count, the arrival time. ARGV: the budget
/// (-1: none), the rate's emission interval in µs (0: no rate), the burst tolerance in µs,
/// the task's expiry in ms since the epoch (0: never). Answers `{0, used}` (counted),
/// `{1, used}` (budget exhausted) or `{2, ms}` (rate limited: a retry passes after ms).
const LUA: &str = r"
local budget = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local now, tat
if interval > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local wait = tat - tonumber(ARGV[3]) - now
  if wait > 0 then
    return {2, math.ceil(wait / 1000)}
  end
end
if budget >= 0 and used >= budget then
  return {1, used}
end
used = redis.call('INCR', KEYS[1])
if ARGV[4] ~= '0' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
if interval > 0 then
  tat = tat + interval
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
end
return {0, used}
";

/// The script and its SHA-1, computed once: a constant, not state.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LUA));

/// What the store answered for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Counted: the rule's count across the fleet, this request included.
    Counted(u64),
    /// The budget is spent (the count stays).
    BudgetExhausted,
    /// Past the rate: a retry passes after this many milliseconds.
    RateLimited { retry_ms: u64 },
}

/// Charges one request of `task` to `rule`: through the store with `store:`, else on this
/// replica ([`budget::charge`]). A rule without a budget or a rate returns at once.
pub async fn charge(shared: &Shared, task: &LiveTask, rule: &Rule) -> Result<(), Denial> {
    if rule.budget.is_none() && rule.rate.is_none() {
        return Ok(());
    }
    let Some(link) = &shared.fleet else {
        return budget::charge(task, rule);
    };
    match charge_in_store(link, task, rule).await {
        Some(Charged::Counted(used)) => {
            // This replica's view of the count (`task show`, metrics): the fleet's, as of now.
            task.usage
                .rule(&rule.key)
                .used
                .fetch_max(used, Ordering::Relaxed);
            Ok(())
        }
        Some(Charged::BudgetExhausted) => Err(budget::budget_exhausted(task, rule)),
        Some(Charged::RateLimited { retry_ms }) => {
            // Retry-After is whole seconds: round up, so a client that waits that long passes.
            let seconds = retry_ms.div_ceil(1000).max(1);
            Err(budget::rate_limited(task, rule, seconds))
        }
        None => Err(Denial::new(
            Reason::StoreUnavailable,
            format!(
                "keyswap cannot reach the store that counts the fleet's budgets and rates, so \
                 requests on the rule for {} are refused until it is back; retry later",
                rule.key
            ),
        )
        .retry_after(5)),
    }
}

/// One run of [`SCRIPT`]; `None` when the store is not connected or did not answer.
async fn charge_in_store(link: &FleetLink, task: &LiveTask, rule: &Rule) -> Option<Charged> {
    if link.health.state() != StoreState::Connected {
        return None;
    }
    let mut conn = link.conn.current()?;
    let (count, arrival) = keys(prefix(&link.conn.keys), task, rule);
    let (interval, tolerance) = rule.rate.map_or((0, 0), |rate| {
        let interval = micros(rate.replenish_one_per()).max(1);
        (interval, interval * u64::from(rate.burst().get() - 1))
    });
    let budget = rule
        .budget
        .map_or(-1, |b| i64::try_from(b.requests).unwrap_or(i64::MAX));
    let expires = task.expires().map_or(0, millis);
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(count)
        .key(arrival)
        .arg(budget)
        .arg(interval)
        .arg(tolerance)
        .arg(expires);
    let answer = timed(invocation.invoke_async::<(i64, i64)>(&mut conn)).await;
    match answer {
        Ok((0, used)) => Some(Charged::Counted(u64::try_from(used).unwrap_or(0))),
        Ok((1, _)) => Some(Charged::BudgetExhausted),
        Ok((2, ms)) => Some(Charged::RateLimited {
            retry_ms: u64::try_from(ms).unwrap_or(0),
        }),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "the store did not count a budgeted request; refused");
            None
        }
    }
}

/// The keys of `task`'s count and arrival time on `rule` (see the module docs).
pub fn keys(prefix: &str, task: &LiveTask, rule: &Rule) -> (String, String) {
    let issue = match task.source {
        TaskSource::Config => "config".to_string(),
        TaskSource::Runtime { .. } => millis(task.issued_at).to_string(),
    };
    let scope = format!("{}@{issue}:{}", task.id, rule.key);
    (
        format!("{prefix}budget:{scope}"),
        format!("{prefix}rate:{scope}"),
    )
}

/// `store.redis.prefix`, as the fleet's keys were built from it (`<prefix>tasks`).
fn prefix(keys: &Keys) -> &str {
    keys.tasks.strip_suffix("tasks").unwrap_or_default()
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tasks::IssuedBy;
    use std::time::Duration;

    fn rule(key: &str) -> Rule {
        crate::lifecycle::budget::tests::rule(key, Some(1), None)
    }

    #[test]
    fn keys_name_the_prefix_the_task_its_issue_and_the_rule() {
        let runtime = LiveTask::from_fleet(
            "t-1".into(),
            "p".into(),
            IssuedBy::Api,
            [0; 32],
            None,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        );
        let (count, arrival) = keys("ks:", &runtime, &rule("api"));
        assert_eq!(count, "ks:budget:t-1@1700000000123:api");
        assert_eq!(arrival, "ks:rate:t-1@1700000000123:api");
        let config = LiveTask::new(
            "static".into(),
            TaskSource::Config,
            None,
            IssuedBy::Config,
            None,
            None,
        );
        assert_eq!(
            keys("ks:", &config, &rule("r")).0,
            "ks:budget:static@config:r"
        );
        let store = Keys::new("ks:");
        assert_eq!(prefix(&store), "ks:");
    }
}
