//! What one task has used of its rules' budgets and rates, by rule key. The counting is
//! here; when a request is charged, and what a refusal says, is
//! [`crate::lifecycle::budget`]'s.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use dashmap::mapref::one::Ref;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keyswap_config::{Rate, Rule};

/// One task's counts, by rule key.
#[derive(Default)]
pub struct TaskUsage {
    rules: DashMap<Arc<str>, RuleUsage>,
}

#[derive(Default)]
pub struct RuleUsage {
    /// Requests charged to the rule's budget (counted also when the rule has only a rate).
    pub(crate) used: AtomicU64,
    /// The token bucket of the rule's current rate (a new rate gets a new, full bucket).
    bucket: ArcSwapOption<Bucket>,
}

struct Bucket {
    rate: Rate,
    limiter: DefaultDirectRateLimiter,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        // `replenish_one_per` is never zero: at most u32::MAX per second is > 0 ns apart.
        let quota = Quota::with_period(rate.replenish_one_per())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(rate.burst());
        Bucket {
            rate,
            limiter: RateLimiter::direct(quota),
        }
    }
}

impl RuleUsage {
    /// Takes one token from the bucket of `rate`; `Err(seconds)` until one is available.
    pub(crate) fn take_token(&self, rate: Rate) -> Result<(), u64> {
        let current = self.bucket.load();
        let bucket = match current.as_ref() {
            Some(bucket) if bucket.rate == rate => bucket.clone(),
            _ => {
                let fresh = Arc::new(Bucket::new(rate));
                self.bucket.store(Some(fresh.clone()));
                fresh
            }
        };
        bucket.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Retry-After is whole seconds: round up, so a client that waits that long passes.
            u64::try_from(wait.as_nanos().div_ceil(1_000_000_000))
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }
}

impl TaskUsage {
    /// Requests counted under `key` so far.
    pub fn used(&self, key: &str) -> u64 {
        self.rules
            .get(key)
            .map_or(0, |u| u.used.load(Ordering::Relaxed))
    }

    /// The counts of rule `key`; the common case is a read of an existing entry, only a
    /// rule's first request inserts.
    pub(crate) fn rule(&self, key: &Arc<str>) -> Ref<'_, Arc<str>, RuleUsage> {
        match self.rules.get(&**key) {
            Some(entry) => entry,
            None => self.rules.entry(key.clone()).or_default().downgrade(),
        }
    }

    /// Whether no rule has a count.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Drops every count (the task has ended).
    pub(crate) fn clear(&self) {
        self.rules.clear();
    }

    /// Keeps only the counts of rules in `rules` (after a reload).
    pub(crate) fn retain(&self, rules: &[Rule]) {
        self.rules
            .retain(|key, _| rules.iter().any(|r| r.key == *key));
    }
}
