//! The fleet worker: one task per replica that keeps it in line with the store.
//!
//! A session connects (a multiplexed connection for commands, one for pub/sub), subscribes,
//! sends the ends this replica made while it was cut off, reconciles, and only then marks
//! the store connected. It then applies the other replicas' events as they arrive, sends this
//! replica's ends, reconciles every [`RECONCILE_EVERY`] and pings every [`PING_EVERY`]. Any
//! failure ends the session: the store is lost (the grace starts) and a new session is tried
//! with a bounded back-off.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use keyswap_config::RedisStore;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::record::{why_of, Event, TaskRecord};
use super::{connect, timed, FleetError, PING_EVERY, RECONCILE_EVERY};
use crate::lifecycle::tasks;
use crate::state::fleet::{FleetEvent, FleetLink, StoreState};
use crate::state::shared::Shared;
use crate::state::tasks::{RevokeWhy, TaskSource};

/// Longest wait between two attempts to reach a lost store.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Starts the worker of `shared`'s fleet link; it runs until `stop` changes.
pub fn start(
    shared: &Arc<Shared>,
    store: &RedisStore,
    events: mpsc::UnboundedReceiver<FleetEvent>,
    stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, FleetError> {
    let Some(link) = shared.fleet.clone() else {
        return Ok(None);
    };
    let worker = Worker {
        shared: Arc::downgrade(shared),
        client: connect::client(store)?,
        store: store.display(),
        link,
        events,
        pending: VecDeque::new(),
    };
    Ok(Some(tokio::spawn(worker.run(stop))))
}

struct Worker {
    shared: Weak<Shared>,
    client: redis::Client,
    /// The store's address, for the log.
    store: String,
    link: FleetLink,
    events: mpsc::UnboundedReceiver<FleetEvent>,
    /// Ends made here and not yet written to the store.
    pending: VecDeque<FleetEvent>,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.session(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    let was = self.link.health.state();
                    self.link.health.lost();
                    self.link.conn.set(None);
                    if was == StoreState::Connected {
                        tracing::warn!(store = %self.store, error = %e, "the store is unreachable; known tasks are served for store.grace, none is issued");
                    } else {
                        tracing::debug!(store = %self.store, error = %e, "the store is still unreachable");
                    }
                }
            }
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    event = self.events.recv() => match event {
                        Some(event) => self.pending.push_back(event),
                        None => return,
                    },
                    _ = stop.changed() => return,
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connected session; `Ok` when the proxy stops.
    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), FleetError> {
        let mut conn = timed(self.client.get_multiplexed_async_connection()).await?;
        let mut pubsub = timed(self.client.get_async_pubsub()).await?;
        timed(pubsub.subscribe(&self.link.conn.keys.events)).await?;
        while let Ok(event) = self.events.try_recv() {
            self.pending.push_back(event);
        }
        self.flush(&mut conn).await?;
        self.reconcile(&mut conn).await?;
        self.link.conn.set(Some(conn.clone()));
        self.link.health.connected();
        tracing::info!(store = %self.store, "the store is connected");
        let mut messages = pubsub.on_message();
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.apply(message.get_payload_bytes()),
                    None => return Err(FleetError::Closed),
                },
                event = self.events.recv() => match event {
                    Some(event) => {
                        self.pending.push_back(event);
                        self.flush(&mut conn).await?;
                    }
                    None => return Ok(()),
                },
                _ = reconcile.tick() => self.reconcile(&mut conn).await?,
                _ = ping.tick() => {
                    timed(redis::cmd("PING").query_async::<String>(&mut conn)).await?;
                    self.recover(&mut conn).await?;
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// After a call outside this worker (an issue) found the store lost while this session
    /// still answers: reconciles, then serves again. The session's pub/sub never broke, so no
    /// message was missed; the reconciliation catches what a failed call may have left.
    async fn recover(&mut self, conn: &mut MultiplexedConnection) -> Result<(), FleetError> {
        if self.link.health.state() == StoreState::Connected {
            return Ok(());
        }
        self.flush(conn).await?;
        self.reconcile(conn).await?;
        self.link.health.connected();
        tracing::info!(store = %self.store, "the store answers again");
        Ok(())
    }

    /// Writes the ends made here: the task leaves the store, then the others are told.
    async fn flush(&mut self, conn: &mut MultiplexedConnection) -> Result<(), FleetError> {
        let keys = self.link.conn.keys.clone();
        while let Some(FleetEvent::Ended { id, why }) = self.pending.front().cloned() {
            timed(conn.hdel::<_, _, usize>(&keys.tasks, &id)).await?;
            let event = Event::Ended {
                id,
                why: why.as_str().to_string(),
                replica: self.link.replica.clone(),
            };
            if let Ok(message) = serde_json::to_string(&event) {
                timed(conn.publish::<_, _, usize>(&keys.events, message)).await?;
            }
            self.pending.pop_front();
        }
        Ok(())
    }

    /// Applies another replica's event.
    fn apply(&self, payload: &[u8]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            tracing::debug!("ignored a malformed fleet event");
            return;
        };
        match event {
            Event::Issued { id, task } => {
                let fresh = !task.is_expired(SystemTime::now())
                    && task.replica != self.link.replica
                    && !self.link.conn.recently_ended(&id);
                if let Some(live) = task.live(&id).filter(|_| fresh) {
                    tasks::adopt(&shared, Arc::new(live));
                }
            }
            Event::Ended { id, why, .. } => {
                if let Some(task) = shared.tasks.get(&id) {
                    if matches!(task.source, TaskSource::Runtime { .. }) {
                        tasks::ended_elsewhere(&shared, &task, why_of(&why));
                    }
                }
            }
        }
    }

    /// Brings this replica in line with the store: tasks it lacks are adopted, expired
    /// records removed, and runtime tasks the store no longer holds (revoked while this
    /// replica missed the message) end here.
    async fn reconcile(&mut self, conn: &mut MultiplexedConnection) -> Result<(), FleetError> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let keys = self.link.conn.keys.clone();
        let records: HashMap<String, String> = timed(conn.hgetall(&keys.tasks)).await?;
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for (id, text) in &records {
            let Ok(record) = serde_json::from_str::<TaskRecord>(text) else {
                continue;
            };
            if record.is_expired(now) {
                expired.push(id.clone());
            } else if shared.tasks.get(id).is_none() && !self.link.conn.recently_ended(id) {
                if let Some(live) = record.live(id) {
                    tasks::adopt(&shared, Arc::new(live));
                }
            }
        }
        if !expired.is_empty() {
            timed(conn.hdel::<_, _, usize>(&keys.tasks, &expired)).await?;
        }
        for task in shared.tasks.all() {
            if !matches!(task.source, TaskSource::Runtime { .. }) || records.contains_key(&task.id)
            {
                continue;
            }
            // An issue here may have claimed the id after the read above: ask once more.
            let held: bool = timed(conn.hexists(&keys.tasks, &task.id)).await?;
            if !held {
                tracing::info!(task = %task.id, "task no longer in the store: ended on another replica");
                tasks::ended_elsewhere(&shared, &task, RevokeWhy::Api);
            }
        }
        Ok(())
    }
}
