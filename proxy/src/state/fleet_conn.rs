//! This replica's connection to the fleet's store as the live state holds it: the current
//! connection (none while the store is lost), the store's keys, and the tasks that ended here
//! a moment ago. [`crate::fleet`] connects and uses it; nothing here dials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

/// How long a task that ended here is not looked up again in the store (its removal from
/// the store may still be on its way).
const ENDED_MEMORY: Duration = Duration::from_secs(10);

/// The store's keys under `store.redis.prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Hash: task id → the task's record (JSON, the token as a SHA-256 digest).
    pub tasks: String,
    /// Pub/sub channel of the replicas' events.
    pub events: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            tasks: format!("{prefix}tasks"),
            events: format!("{prefix}events"),
        }
    }
}

/// The connection commands go through, when there is one.
pub struct StoreConn {
    current: ArcSwapOption<MultiplexedConnection>,
    pub keys: Keys,
    ended: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for StoreConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConn")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl StoreConn {
    pub fn new(prefix: &str) -> StoreConn {
        StoreConn {
            current: ArcSwapOption::empty(),
            keys: Keys::new(prefix),
            ended: Mutex::new(HashMap::new()),
        }
    }

    /// A handle on the current connection (cheap: multiplexed connections are shared).
    pub fn current(&self) -> Option<MultiplexedConnection> {
        self.current.load().as_deref().cloned()
    }

    pub fn set(&self, conn: Option<MultiplexedConnection>) {
        self.current.store(conn.map(Arc::new));
    }

    /// Remembers that task `id` ended here.
    pub fn ended(&self, id: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.retain(|_, at| at.elapsed() < ENDED_MEMORY);
        ended.insert(id.to_string(), Instant::now());
    }

    /// Whether task `id` ended here within the last few seconds.
    pub fn recently_ended(&self, id: &str) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.get(id).is_some_and(|at| at.elapsed() < ENDED_MEMORY)
    }
}
