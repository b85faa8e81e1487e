//! What each replica of a fleet tells the others about itself: which tasks it holds open
//! connections of (and how many), and which requests wait on it for a human. One JSON value
//! per replica (`<prefix>replica:<name>`, rewritten every [`PRESENCE_EVERY`] and whenever a
//! request starts or stops waiting, expiring after [`PRESENCE_TTL`] so a dead replica drops
//! out), and the sorted set `<prefix>replicas` (name → last write, in milliseconds) that
//! lists them.
//!
//! Holds task ids, counts and what a held request asks (method, host, normalised path,
//! secret names): never a token, a header or a secret value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::lifeline::key;
use super::{timed, FleetError};
use crate::api::ApprovalInfo;
use crate::state::fleet::{FleetLink, StoreState};
use crate::state::shared::Shared;

/// How often a replica rewrites its presence.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// How long a replica's presence outlives its last write.
pub const PRESENCE_TTL: Duration = Duration::from_secs(5);

/// A replica not heard of for this long leaves the set of replicas.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One replica as the others see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Presence {
    pub replica: String,
    /// Task id → open connections on this replica (only tasks with at least one).
    pub conns: BTreeMap<String, u64>,
    /// The requests waiting here for a human.
    pub approvals: Vec<ApprovalInfo>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This replica now.
pub fn own(shared: &Shared, link: &FleetLink) -> Presence {
    Presence {
        replica: link.replica.clone(),
        conns: shared
            .tasks
            .all()
            .iter()
            .filter(|t| t.open_connections() > 0)
            .map(|t| (t.id.clone(), t.open_connections()))
            .collect(),
        approvals: shared.approvals.list(None),
    }
}

/// Writes this replica's presence.
pub async fn write(shared: &Arc<Shared>, link: &FleetLink) -> Result<(), FleetError> {
    let Some(mut redis) = link.conn.current() else {
        return Ok(());
    };
    let Ok(text) = serde_json::to_string(&own(shared, link)) else {
        return Ok(());
    };
    let now = now_ms();
    let forget = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
    let mut pipe = redis::pipe();
    pipe.pset_ex(
        key(link, &format!("replica:{}", link.replica)),
        text,
        PRESENCE_TTL.as_millis() as u64,
    )
    .ignore()
    .zadd(key(link, "replicas"), &link.replica, now)
    .ignore()
    .zrembyscore(key(link, "replicas"), "-inf", forget)
    .ignore();
    timed(pipe.query_async::<()>(&mut redis)).await
}

/// Every other replica's presence (none while the store cannot be reached).
pub async fn others(shared: &Shared) -> Vec<Presence> {
    let Some(link) = shared.fleet.as_ref() else {
        return Vec::new();
    };
    if link.health.state() != StoreState::Connected {
        return Vec::new();
    }
    let Some(mut redis) = link.conn.current() else {
        return Vec::new();
    };
    let Ok(names) = timed(redis.zrange::<_, Vec<String>>(key(link, "replicas"), 0, -1)).await
    else {
        return Vec::new();
    };
    let keys: Vec<String> = names
        .iter()
        .filter(|name| **name != link.replica)
        .map(|name| key(link, &format!("replica:{name}")))
        .collect();
    if keys.is_empty() {
        return Vec::new();
    }
    let Ok(values) = timed(redis.mget::<_, Vec<Option<String>>>(&keys)).await else {
        return Vec::new();
    };
    values
        .into_iter()
        .flatten()
        .filter_map(|text| serde_json::from_str::<Presence>(&text).ok())
        .filter(|p| p.replica != link.replica)
        .collect()
}

/// The replicas holding each task's open connections: this replica's live counts and the
/// others' last written ones.
pub async fn holders(shared: &Shared) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let Some(link) = shared.fleet.as_ref() else {
        return out;
    };
    let mut all = others(shared).await;
    all.push(own(shared, link));
    for presence in all {
        for (task, count) in presence.conns {
            out.entry(task)
                .or_default()
                .insert(presence.replica.clone(), count);
        }
    }
    out
}
