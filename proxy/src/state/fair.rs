//! The fair-use counters of `limits:`: for each task, the requests it has in flight and the
//! upstream connections it holds, each bounded by a semaphore sized from
//! `limits.per_task`; and keyswap's one cap on upstream connections, derived from its
//! descriptor limit (see [`crate::host::fds`]).
//!
//! Data and its invariants only: waiting for a slot, and the `task_busy` refusal when none
//! comes free, are [`crate::pipeline::fair`]'s. A slot is a permit: dropping it frees it, so
//! no path (a failed exchange, a dropped body, a cancelled task) can leak one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use keyswap_config::TaskLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The semaphores of one task, sized from the limits in force when they were made.
struct Sized {
    limits: TaskLimits,
    in_flight: Arc<Semaphore>,
    upstream: Arc<Semaphore>,
}

impl Sized {
    fn new(limits: TaskLimits) -> Sized {
        Sized {
            limits,
            in_flight: Arc::new(Semaphore::new(limits.in_flight)),
            upstream: Arc::new(Semaphore::new(limits.upstream_connections)),
        }
    }
}

/// One task's slots. Sized on first use from the snapshot's `limits.per_task`; a reload that
/// changes the limits gives the task fresh semaphores (permits held under the old ones are
/// released to them, so for a moment the task may hold up to both sizes).
#[derive(Default)]
pub struct TaskSlots {
    sized: ArcSwapOption<Sized>,
    /// Requests in flight now (the `keyswap_task_in_flight_requests` gauge).
    in_flight: Arc<AtomicU64>,
}

/// One request of a task counted in flight; freed when dropped.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    count: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TaskSlots {
    fn sized(&self, limits: TaskLimits) -> Arc<Sized> {
        loop {
            let current = self.sized.load_full();
            if let Some(sized) = &current {
                if sized.limits == limits {
                    return sized.clone();
                }
            }
            let next = Arc::new(Sized::new(limits));
            let previous = self.sized.compare_and_swap(&current, Some(next.clone()));
            let swapped = match (&*previous, &current) {
                (Some(p), Some(c)) => Arc::ptr_eq(p, c),
                (None, None) => true,
                _ => false,
            };
            if swapped {
                return next;
            }
        }
    }

    /// A request slot if one is free now (`in_flight` bounds requests admitted, including
    /// those waiting for an upstream connection, so it is never waited for).
    pub fn try_in_flight(&self, limits: TaskLimits) -> Option<InFlight> {
        let permit = self
            .sized(limits)
            .in_flight
            .clone()
            .try_acquire_owned()
            .ok()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            _permit: permit,
            count: self.in_flight.clone(),
        })
    }

    /// Waits for one of the task's upstream-connection slots (the caller bounds the wait).
    pub async fn upstream(&self, limits: TaskLimits) -> Option<OwnedSemaphorePermit> {
        self.sized(limits)
            .upstream
            .clone()
            .acquire_owned()
            .await
            .ok()
    }

    /// Requests of the task in flight now.
    pub fn in_flight_now(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// keyswap's cap on upstream connections, so that the descriptors left keep accepting,
/// refusing and the admin socket working whatever the tasks do.
pub struct UpstreamCap {
    semaphore: Arc<Semaphore>,
    cap: usize,
}

impl UpstreamCap {
    pub fn new(cap: usize) -> UpstreamCap {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        UpstreamCap {
            semaphore: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// Waits for a slot (the caller bounds the wait).
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().acquire_owned().await.ok()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Upstream connections held now.
    pub fn in_use(&self) -> usize {
        self.cap - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_flight: usize, upstream_connections: usize) -> TaskLimits {
        TaskLimits {
            in_flight,
            upstream_connections,
        }
    }

    #[tokio::test]
    async fn in_flight_is_bounded_counted_and_freed_on_drop() {
        let slots = TaskSlots::default();
        let l = limits(2, 1);
        let a = slots.try_in_flight(l).expect("first");
        let _b = slots.try_in_flight(l).expect("second");
        assert!(
            slots.try_in_flight(l).is_none(),
            "a third is over the bound"
        );
        assert_eq!(slots.in_flight_now(), 2);
        drop(a);
        assert_eq!(slots.in_flight_now(), 1);
        assert!(slots.try_in_flight(l).is_some());
    }

    #[tokio::test]
    async fn new_limits_give_fresh_slots() {
        let slots = TaskSlots::default();
        let _held = slots.try_in_flight(limits(1, 1)).expect("first");
        assert!(slots.try_in_flight(limits(1, 1)).is_none());
        assert!(slots.try_in_flight(limits(3, 1)).is_some());
        let _up = slots.upstream(limits(3, 1)).await.expect("upstream");
        let cap = UpstreamCap::new(2);
        let _one = cap.acquire().await.expect("slot");
        assert_eq!((cap.in_use(), cap.cap()), (1, 2));
    }
}
