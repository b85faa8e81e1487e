//! Issuing a task fleet-wide, and finding one issued on another replica that this one has
//! not heard of yet.
//!
//! An issue claims the task's id in the store first (`HSETNX`: ids are unique across the
//! fleet), then registers it here, then tells the others. A replica that cannot reach the
//! store issues nothing.

use std::sync::Arc;

use redis::AsyncCommands;

use super::record::{Event, TaskRecord};
use super::timed;
use crate::api::IssueRequest;
use crate::lifecycle::tasks::{self, Issued, TaskError};
use crate::state::fleet::StoreState;
use crate::state::shared::Shared;
use crate::state::tasks::LiveTask;

/// Issues a runtime task on every replica (see the module docs); without a store, here.
pub async fn issue(shared: &Arc<Shared>, request: &IssueRequest) -> Result<Issued, TaskError> {
    let Some(link) = &shared.fleet else {
        return tasks::issue(shared, request);
    };
    let conn = &link.conn;
    if link.health.state() != StoreState::Connected {
        return Err(TaskError::StoreUnavailable);
    }
    let issued = tasks::prepare(shared, request)?;
    let record = TaskRecord::of(&issued.task, &link.replica).ok_or(TaskError::Random)?;
    let text = serde_json::to_string(&record).map_err(|_| TaskError::Random)?;
    let Some(mut redis) = conn.current() else {
        return Err(TaskError::StoreUnavailable);
    };
    let id = issued.task.id.clone();
    // A lifelined task is claimed with its heartbeat (fleet::lifeline), in one step: no sweep
    // can see the one without the other.
    let claimed = if request.lifeline {
        super::lifeline::claim(link, &mut redis, &id, &text).await
    } else {
        timed(redis.hset_nx(&conn.keys.tasks, &id, &text)).await
    }
    .map_err(|e| lost(link, &e))?;
    if !claimed {
        return Err(TaskError::DuplicateId(id));
    }
    if let Err(e) = tasks::register(shared, &issued.task) {
        // Another replica's message registered the id here first: only possible if that
        // replica wrote over our claim, which HSETNX rules out; give the id back anyway.
        let _ = timed(redis.hdel::<_, _, usize>(&conn.keys.tasks, &id)).await;
        return Err(e);
    }
    let event = Event::Issued { id, task: record };
    if let Ok(message) = serde_json::to_string(&event) {
        // The task is in the store already: a replica that misses this message finds it
        // when an agent presents it, or at its next reconciliation.
        if let Err(e) = timed(redis.publish::<_, _, usize>(&conn.keys.events, message)).await {
            tracing::warn!(error = %e, "telling the fleet about an issued task failed");
        }
    }
    Ok(issued)
}

fn lost(link: &crate::state::fleet::FleetLink, e: &super::FleetError) -> TaskError {
    tracing::warn!(error = %e, "the store refused or did not answer an issue");
    link.health.lost();
    TaskError::StoreUnavailable
}

/// The task `id` from the store, when this replica does not know it yet (an agent presented
/// it before the issue's message arrived). Registered here if found; `None` when the store
/// has no such task, cannot be reached, or the task ended here a moment ago.
pub async fn find(shared: &Arc<Shared>, id: &str) -> Option<Arc<LiveTask>> {
    let link = shared.fleet.as_ref()?;
    let conn = &link.conn;
    if link.health.state() != StoreState::Connected
        || !keyswap_config::valid_task_id(id)
        || conn.recently_ended(id)
    {
        return None;
    }
    let mut redis = conn.current()?;
    let text: Option<String> = timed(redis.hget(&conn.keys.tasks, id)).await.ok()?;
    let record: TaskRecord = serde_json::from_str(&text?).ok()?;
    if record.is_expired(std::time::SystemTime::now()) {
        return None;
    }
    let task = Arc::new(record.live(id)?);
    tasks::adopt(shared, task.clone());
    shared.tasks.get(id)
}
