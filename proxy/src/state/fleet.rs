//! The fleet as the live state sees it (`store:`): whether the shared store is reachable
//! ([`StoreHealth`]), and the channel by which this replica tells the store that one of its
//! tasks ended ([`FleetLink`]). The store itself (Redis) is [`crate::fleet`]'s; nothing here
//! opens a connection, and nothing here holds a token or a secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::audit::decision::{Denial, Reason};
use crate::state::fleet_conn::StoreConn;
pub use crate::state::metrics_store::StoreState;
use crate::state::tasks::RevokeWhy;

/// Whether the store is reachable, and since when it is not. Read on the request path: one
/// atomic load (and a clock read while the store is lost).
#[derive(Debug)]
pub struct StoreHealth {
    grace: Duration,
    origin: Instant,
    /// Milliseconds after `origin` (plus one) at which the store was lost; 0 = connected.
    lost_at: AtomicU64,
}

impl StoreHealth {
    /// A replica that has not reached its store yet: lost since now (it knows no fleet task,
    /// and issues none until the store answers).
    pub fn new(grace: Duration) -> StoreHealth {
        StoreHealth {
            grace,
            origin: Instant::now(),
            lost_at: AtomicU64::new(1),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The store answered (and this replica is in line with it again).
    pub fn connected(&self) {
        self.lost_at.store(0, Ordering::Release);
    }

    /// The store stopped answering; the first loss is kept (the grace runs from it).
    pub fn lost(&self) {
        let now = self.millis() + 1;
        let _ = self
            .lost_at
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn state(&self) -> StoreState {
        match self.lost_at.load(Ordering::Acquire) {
            0 => StoreState::Connected,
            lost => {
                let for_ms = (self.millis() + 1).saturating_sub(lost);
                if u128::from(for_ms) < self.grace.as_millis() {
                    StoreState::Grace
                } else {
                    StoreState::Down
                }
            }
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

/// What this replica tells the store about its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// A runtime task ended here (revoked, expired, lifeline lost, reload): it ends on every
    /// replica.
    Ended { id: String, why: RevokeWhy },
}

/// This replica's link to the fleet: the store's health and the events to send it.
#[derive(Debug, Clone)]
pub struct FleetLink {
    pub health: Arc<StoreHealth>,
    /// This replica's name in the store (which replica holds a task's connections).
    pub replica: String,
    /// The connection to the store, its keys, and what ended here a moment ago.
    pub conn: Arc<StoreConn>,
    events: mpsc::UnboundedSender<FleetEvent>,
}

impl FleetLink {
    /// A link and the receiving end the fleet worker reads.
    pub fn new(
        grace: Duration,
        replica: String,
        prefix: &str,
    ) -> (FleetLink, mpsc::UnboundedReceiver<FleetEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let link = FleetLink {
            health: Arc::new(StoreHealth::new(grace)),
            replica,
            conn: Arc::new(StoreConn::new(prefix)),
            events,
        };
        (link, receiver)
    }

    /// A runtime task ended on this replica. Queued: written to the store as soon as it is
    /// reachable (a revocation made while it is not is never lost on this side).
    pub fn task_ended(&self, id: &str, why: RevokeWhy) {
        self.conn.ended(id);
        let _ = self.events.send(FleetEvent::Ended {
            id: id.to_string(),
            why,
        });
    }

    /// The refusal of every request while the store has been lost for longer than the grace.
    pub fn refusal(&self) -> Option<Denial> {
        (self.health.state() == StoreState::Down).then(|| {
            Denial::new(
                Reason::StoreUnavailable,
                "keyswap cannot reach the store its replicas share tasks through, and refuses \
                 every request until it is back; retry later",
            )
            .retry_after(5)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_moves_from_grace_to_down_and_back() {
        let health = StoreHealth::new(Duration::from_secs(3600));
        assert_eq!(health.state(), StoreState::Grace);
        health.connected();
        assert_eq!(health.state(), StoreState::Connected);
        health.lost();
        assert_eq!(health.state(), StoreState::Grace);
        let gone = StoreHealth::new(Duration::from_millis(0));
        assert_eq!(gone.state(), StoreState::Down);
        gone.connected();
        assert_eq!(gone.state(), StoreState::Connected);
    }
}
