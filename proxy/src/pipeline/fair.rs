//! Fair use of keyswap among tasks (`limits:`): one task's flood must not leave another
//! task's requests unanswered.
//!
//! Two bounds per task and one for the process, all permits of a semaphore
//! ([`crate::state::fair`]), held by a value whose drop frees them:
//!
//! - **In flight** (`limits.per_task.in_flight`): taken when a request has been decided (and
//!   approved), held until its response body has been sent or dropped and its request body
//!   has ended — whichever is later — or until the exchange fails. It is never waited for: the
//!   requests in flight *are* the task's queue, so one past it is refused at once.
//! - **Upstream connections** (`limits.per_task.upstream_connections`) and keyswap's cap
//!   ([`crate::host::fds::upstream_cap`]): taken after the in-flight slot, before the request
//!   goes to the pooled client, held as long. A request waits up to [`QUEUE_WAIT`] for one;
//!   then it is refused with `task_busy` (429, `Retry-After`). A tunnel and a WebSocket hold
//!   one for their whole life.
//!
//! Why a permit held by the request, not one carried into the connector: hyper-util's legacy
//! client gives each HTTP/1.1 request a connection of its own (an idle pooled one, or a new
//! one) for as long as its request and response bodies stream, so a task's requests holding
//! N permits can never occupy more than N upstream connections at once — which is what one
//! task could otherwise exhaust. A connector permit would have to follow the connection into
//! the shared pool, where an idle connection belongs to no task. The cost of the choice:
//! toward an HTTP/2 upstream, where requests share a connection, the bound counts requests,
//! so a task has at most `upstream_connections` requests on the wire there too. Idle pooled
//! connections hold no permit: they are about as many per host as were once in use at the
//! same time (a connect the client started for a request that then took an idle connection
//! may add one), bounded further by `pool_max_idle_per_host` and the 90 s idle timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use crate::audit::decision::{Denial, Reason};
use crate::state::fair::InFlight;
use crate::state::metrics_fair::Bound;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;

/// How long a request (or a tunnel) waits for an upstream-connection slot before `task_busy`:
/// long enough to ride out a burst, short enough that an agent's client has not given up.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a `task_busy` refusal.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// One upstream connection's slots: the task's and the process's.
pub struct UpstreamSlot {
    _task: OwnedSemaphorePermit,
    _process: OwnedSemaphorePermit,
}

/// What one request holds from its decision to its end; dropping it frees every slot.
pub struct Held {
    _in_flight: InFlight,
    _upstream: UpstreamSlot,
}

/// Takes the slots one request needs: in flight, then an upstream connection.
pub async fn hold(
    shared: &Shared,
    snapshot: &Snapshot,
    task: &LiveTask,
) -> Result<Arc<Held>, Denial> {
    let limits = snapshot.config.limits.per_task;
    let Some(in_flight) = task.slots.try_in_flight(limits) else {
        return Err(busy(shared, Bound::InFlight, limits.in_flight, task));
    };
    let upstream = upstream_slot(shared, snapshot, task).await?;
    Ok(Arc::new(Held {
        _in_flight: in_flight,
        _upstream: upstream,
    }))
}

/// An upstream-connection slot of `task` (and of the process), waited for up to
/// [`QUEUE_WAIT`]; for a request or a tunnel.
pub async fn upstream_slot(
    shared: &Shared,
    snapshot: &Snapshot,
    task: &LiveTask,
) -> Result<UpstreamSlot, Denial> {
    let limits = snapshot.config.limits.per_task;
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    let Ok(Some(task_permit)) =
        tokio::time::timeout_at(deadline, task.slots.upstream(limits)).await
    else {
        return Err(busy(
            shared,
            Bound::UpstreamConnections,
            limits.upstream_connections,
            task,
        ));
    };
    let Ok(Some(process)) = tokio::time::timeout_at(deadline, shared.upstream_cap.acquire()).await
    else {
        return Err(busy(
            shared,
            Bound::Process,
            shared.upstream_cap.cap(),
            task,
        ));
    };
    Ok(UpstreamSlot {
        _task: task_permit,
        _process: process,
    })
}

/// The `task_busy` refusal for `bound`, counted.
fn busy(shared: &Shared, bound: Bound, limit: usize, task: &LiveTask) -> Denial {
    shared.metrics.fair.task_busy(bound);
    let message = match bound {
        Bound::InFlight => format!(
            "task {} already has {limit} requests in flight (limits.per_task.in_flight); \
             retry when some have finished",
            task.id
        ),
        Bound::UpstreamConnections => format!(
            "task {} already holds {limit} upstream connections (limits.per_task.upstream_connections) \
             and none came free within {} s; retry when some have finished",
            task.id,
            QUEUE_WAIT.as_secs()
        ),
        Bound::Process => format!(
            "keyswap holds the {limit} upstream connections its file descriptor limit allows \
             and none came free within {} s; retry shortly",
            QUEUE_WAIT.as_secs()
        ),
    };
    Denial::new(Reason::TaskBusy, message).retry_after(RETRY_AFTER_SECONDS)
}
