//! Lifelines in a fleet: a lifeline (`keyswap exec`'s open issue response) is held by one
//! replica, and its task lives on every replica. So that the task does not outlive the
//! replica holding the lifeline, the holder keeps a heartbeat key in the store
//! (`<prefix>lifeline:<task>`, expiring after [`LIFELINE_TTL`], refreshed every
//! [`LIFELINE_BEAT`]); the task's id is in the set `<prefix>lifelines`.
//!
//! Every replica sweeps that set every [`LIFELINE_BEAT`] ([`sweep`]): a task whose heartbeat
//! key is gone loses its record in one atomic script, and the one replica whose script
//! removed it ends it fleet-wide (an `ended` event, as any revocation). Polling, not keyspace
//! notifications: those need `notify-keyspace-events` set on the server (often not allowed
//! on a managed Redis), are fire-and-forget (a replica that was reconnecting misses them),
//! and fire only when Redis gets round to expiring the key.
//!
//! A lifeline closed normally ends its task at once, as without a store; the heartbeat key
//! and the set entry are removed then. Nothing here holds a token.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use super::{timed, FleetError};
use crate::lifecycle::tasks;
use crate::state::fleet::FleetLink;
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, RevokeWhy};

/// How long a heartbeat key lives without a refresh: a replica holding a lifeline that dies
/// has its tasks revoked fleet-wide within this (plus one sweep).
pub const LIFELINE_TTL: Duration = Duration::from_secs(3);

/// How often the holder refreshes its heartbeat keys, and every replica sweeps.
pub const LIFELINE_BEAT: Duration = Duration::from_secs(1);

/// The store's key `name` under this fleet's prefix.
pub(crate) fn key(link: &FleetLink, name: &str) -> String {
    // `Keys::new` builds every key as prefix + name; the events channel gives the prefix back.
    let prefix = link.conn.keys.events.strip_suffix("events").unwrap_or("");
    format!("{prefix}{name}")
}

fn heartbeat_key(link: &FleetLink, id: &str) -> String {
    key(link, &format!("lifeline:{id}"))
}

/// Claims task `id` with its `record` and, atomically with it, its heartbeat key and its
/// entry in the set of lifelined tasks. `false`: the id is taken.
const CLAIM: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
return 1";

/// Claims a lifelined task's id in the store (see [`CLAIM`]).
pub async fn claim(
    link: &FleetLink,
    redis: &mut MultiplexedConnection,
    id: &str,
    record: &str,
) -> Result<bool, FleetError> {
    let claimed: i64 = timed(
        redis::cmd("EVAL")
            .arg(CLAIM)
            .arg(3)
            .arg(&link.conn.keys.tasks)
            .arg(heartbeat_key(link, id))
            .arg(key(link, "lifelines"))
            .arg(id)
            .arg(record)
            .arg(&link.replica)
            .arg(LIFELINE_TTL.as_millis() as u64)
            .query_async(redis),
    )
    .await?;
    Ok(claimed == 1)
}

/// Keeps `task`'s heartbeat key alive while its lifeline is held here (until the task
/// ends), then removes it. A refresh that fails is retried at the next beat; past
/// [`LIFELINE_TTL`] the other replicas revoke the task (failing closed).
pub fn beat(shared: &Arc<Shared>, task: &Arc<LiveTask>) {
    let Some(link) = shared.fleet.clone() else {
        return;
    };
    let (task, weak): (Arc<LiveTask>, Weak<Shared>) = (task.clone(), Arc::downgrade(shared));
    tokio::spawn(async move {
        let key = heartbeat_key(&link, &task.id);
        let mut every = tokio::time::interval(LIFELINE_BEAT);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = task.cancelled() => break,
            }
            if weak.strong_count() == 0 {
                return;
            }
            let Some(mut redis) = link.conn.current() else {
                continue;
            };
            let ttl = LIFELINE_TTL.as_millis() as u64;
            let set = redis.pset_ex::<_, _, ()>(&key, &link.replica, ttl);
            if let Err(e) = timed(set).await {
                tracing::debug!(task = %task.id, error = %e, "refreshing a lifeline's heartbeat failed");
            }
        }
        // Ended here (the lifeline closed, or the task was revoked): the record is removed
        // by the end itself; the heartbeat goes now rather than at its expiry.
        if let Some(mut redis) = link.conn.current() {
            let _ = timed(redis.del::<_, ()>(&key)).await;
            let _ = timed(redis.srem::<_, _, ()>(key_of_set(&link), &task.id)).await;
        }
    });
}

fn key_of_set(link: &FleetLink) -> String {
    key(link, "lifelines")
}

/// Removes every lifelined task whose heartbeat key is gone (its holder died or lost the
/// store) from the set and from the tasks, in one step; returns the ids whose record this
/// call removed (each is removed by exactly one replica's sweep).
const SWEEP: &str = r"
local dead = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('SREM', KEYS[1], id)
    if redis.call('HDEL', KEYS[2], id) == 1 then table.insert(dead, id) end
  end
end
return dead";

/// One sweep (see [`SWEEP`]): the tasks whose lifeline's holder is gone end on every
/// replica — here at once, on the others by the `ended` event this replica then sends.
pub async fn sweep(shared: &Arc<Shared>, link: &FleetLink) -> Result<(), FleetError> {
    let Some(mut redis) = link.conn.current() else {
        return Ok(());
    };
    let dead: Vec<String> = timed(
        redis::cmd("EVAL")
            .arg(SWEEP)
            .arg(2)
            .arg(key_of_set(link))
            .arg(&link.conn.keys.tasks)
            .arg(key(link, "lifeline:"))
            .query_async(&mut redis),
    )
    .await?;
    for id in dead {
        tracing::warn!(task = %id, "the replica holding the task's lifeline is gone: the task ends on every replica");
        match shared.tasks.get(&id) {
            // Ends it here and queues the end for the store (the record is gone already;
            // the others hear of it by the event).
            Some(task) => {
                tasks::end(shared, &task, RevokeWhy::Exit, true);
            }
            None => link.task_ended(&id, RevokeWhy::Exit),
        }
    }
    Ok(())
}
