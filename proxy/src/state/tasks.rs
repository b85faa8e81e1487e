//! The live tasks: every task that can be identified right now, static (from the config) or
//! issued at runtime, with its token, expiry, counters and the cancellation token that every
//! one of its connections watches.
//!
//! A task's *rules* are not held here: they are looked up per request in the config
//! snapshot (a static task's own rules, a runtime task's policy), so a reload applies to open
//! connections and a request never mixes two snapshots. Never formats a token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::audit::record::TaskName;
use crate::state::agent_side::AgentSide;
use crate::state::fair::TaskSlots;
use crate::state::metrics::Metrics;
use crate::state::token_digest::{digest_of, Digest, TokenDigest};
use crate::state::usage::TaskUsage;
use crate::wire::token::TokenFinder;

/// Where a task came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSource {
    /// `tasks:` or `tasks_dir` in the config; its rules are the config task's.
    Config,
    /// Issued through the admin API (or `exec`); its rules are the policy's.
    Runtime { policy: String },
}

/// Who issued a task (the `by` of its `task_issued` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuedBy {
    Exec,
    Api,
    Config,
}

impl IssuedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuedBy::Exec => "exec",
            IssuedBy::Api => "api",
            IssuedBy::Config => "config",
        }
    }
}

/// Why a task ended (the `why` of its `task_revoked` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeWhy {
    /// The command `exec` ran has exited, or `exec` itself died (its lifeline dropped).
    Exit,
    /// `DELETE /v1/tasks/{id}` / `keyswap task revoke`.
    Api,
    Expired,
    /// A reload removed the task, changed its token, or removed its policy.
    Reload,
}

impl RevokeWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeWhy::Exit => "exit",
            RevokeWhy::Api => "api",
            RevokeWhy::Expired => "expired",
            RevokeWhy::Reload => "reload",
        }
    }
}

/// One task that can be identified now.
pub struct LiveTask {
    pub id: String,
    pub source: TaskSource,
    /// The policy it was issued from or names (`None`: a static task with its own rules).
    pub policy: Option<String>,
    pub issued_by: IssuedBy,
    pub issued_at: SystemTime,
    token: Option<SecretString>,
    /// The token as a needle, built once here for every request of the task to be searched.
    token_finder: Option<TokenFinder>,
    /// A task issued on another replica of the fleet is known by its token's digest only.
    digest: Option<TokenDigest>,
    /// Nanoseconds since the epoch; 0 = never expires. Changed by a reload.
    expires_nanos: AtomicU64,
    /// Wakes the expiry watcher when `expires_nanos` changes.
    pub(crate) expiry_changed: Notify,
    cancel: CancellationToken,
    open_connections: AtomicU64,
    requests: AtomicU64,
    /// Budget and rate counts per rule key ([`crate::state::usage`]); dropped when the task ends.
    pub usage: TaskUsage,
    /// Requests in flight and upstream connections held, bounded by `limits.per_task`.
    pub slots: TaskSlots,
    /// Its refusals and its agent's grant requests and approved grants (keyswap.internal).
    pub agent: AgentSide,
    /// Set once by whoever ends the task, so it is audited exactly once.
    ended: Mutex<bool>,
}

impl std::fmt::Debug for LiveTask {
    // Written by hand so the token can never be formatted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTask")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn to_nanos(at: Option<SystemTime>) -> u64 {
    at.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1))
        .unwrap_or(0)
}

impl LiveTask {
    pub fn new(
        id: String,
        source: TaskSource,
        policy: Option<String>,
        issued_by: IssuedBy,
        token: Option<SecretString>,
        expires: Option<SystemTime>,
    ) -> LiveTask {
        LiveTask {
            id,
            source,
            policy,
            issued_by,
            issued_at: SystemTime::now(),
            token_finder: token
                .as_ref()
                .and_then(|t| TokenFinder::new(t.expose_secret().as_bytes())),
            token,
            digest: None,
            expires_nanos: AtomicU64::new(to_nanos(expires)),
            expiry_changed: Notify::new(),
            cancel: CancellationToken::new(),
            open_connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            usage: TaskUsage::default(),
            slots: TaskSlots::default(),
            agent: AgentSide::default(),
            ended: Mutex::new(false),
        }
    }

    /// A runtime task issued on another replica of the fleet, known here by its token's
    /// digest.
    pub fn from_fleet(
        id: String,
        policy: String,
        issued_by: IssuedBy,
        digest: Digest,
        expires: Option<SystemTime>,
        issued_at: SystemTime,
    ) -> LiveTask {
        let mut task = LiveTask::new(
            id,
            TaskSource::Runtime {
                policy: policy.clone(),
            },
            Some(policy),
            issued_by,
            None,
            expires,
        );
        task.digest = Some(TokenDigest::new(digest));
        task.issued_at = issued_at;
        task
    }

    /// The SHA-256 digest of the task's token, what the fleet's store holds instead of it
    /// (`None`: a task without a token).
    pub fn token_digest(&self) -> Option<Digest> {
        match (&self.token, &self.digest) {
            (_, Some(known)) => Some(*known.digest()),
            (Some(token), None) => Some(digest_of(token.expose_secret().as_bytes())),
            (None, None) => None,
        }
    }

    /// The task as an audit record names it.
    pub fn name(&self) -> TaskName {
        TaskName {
            id: self.id.clone(),
            policy: self.policy.clone(),
        }
    }

    pub fn expires(&self) -> Option<SystemTime> {
        match self.expires_nanos.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(UNIX_EPOCH + Duration::from_nanos(nanos)),
        }
    }

    pub(crate) fn set_expires(&self, expires: Option<SystemTime>) {
        self.expires_nanos
            .store(to_nanos(expires), Ordering::Release);
        self.expiry_changed.notify_one();
    }

    /// Expired at `now` (a task whose expiry is `now` is expired).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires().is_some_and(|expires| now >= expires)
    }

    /// Whether `presented` is this task's token, compared in constant time. A task without a
    /// token accepts any.
    pub fn token_matches(&self, presented: &str) -> bool {
        if let Some(known) = &self.digest {
            return known.matches(presented);
        }
        match &self.token {
            None => true,
            Some(expected) => expected
                .expose_secret()
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into(),
        }
    }

    /// The task's token as a needle, to refuse a request that carries it (`None`: no token).
    pub fn token_finder(&self) -> Option<&TokenFinder> {
        self.token_finder
            .as_ref()
            .or_else(|| self.digest.as_ref().and_then(TokenDigest::finder))
    }

    /// The same token (both absent, or equal), for reloads.
    pub(crate) fn same_token(&self, other: Option<&SecretString>) -> bool {
        match (&self.token, other) {
            (None, None) => true,
            (Some(a), Some(b)) => a
                .expose_secret()
                .as_bytes()
                .ct_eq(b.expose_secret().as_bytes())
                .into(),
            _ => false,
        }
    }

    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the task has been revoked or has expired (its connections are closing).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Registers one connection of this task. The connection watches
    /// [`TaskConnection::revoked`] and ends when it resolves; dropping the value deregisters.
    pub fn connection(self: &Arc<Self>, metrics: &Arc<Metrics>) -> TaskConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        metrics.connection_opened();
        TaskConnection {
            task: self.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Marks the task ended and cancels every connection. Returns `false` if it had already
    /// ended (so the caller audits only once).
    pub(crate) fn end(&self) -> bool {
        let Ok(mut ended) = self.ended.lock() else {
            return false;
        };
        if *ended {
            return false;
        }
        *ended = true;
        self.cancel.cancel();
        self.usage.clear();
        true
    }

    pub(crate) fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }
}

/// One open connection of a task (an intercepted TLS connection, a tunnel, a WebSocket, a
/// plain-HTTP proxy connection). Counted while it lives.
pub struct TaskConnection {
    task: Arc<LiveTask>,
    metrics: Arc<Metrics>,
}

impl TaskConnection {
    pub fn task(&self) -> &Arc<LiveTask> {
        &self.task
    }

    /// Resolves when the task is revoked or expires: the connection must then close.
    pub fn revoked(&self) -> WaitForCancellationFutureOwned {
        self.task.cancelled()
    }
}

impl Drop for TaskConnection {
    fn drop(&mut self) {
        self.task.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connection_closed();
    }
}

/// Where the live tasks are kept: the seam a shared store (several keyswap replicas) plugs
/// into. Every door and the lifecycle reach tasks through it; no caller knows the store.
pub trait TaskStore: Send + Sync {
    /// The live task named `id`.
    fn get(&self, id: &str) -> Option<Arc<LiveTask>>;
    /// Adds `task` unless its id is taken; returns it back if it was.
    fn insert_new(&self, task: Arc<LiveTask>) -> Result<(), Arc<LiveTask>>;
    /// Adds or replaces; returns the task it replaced.
    fn replace(&self, task: Arc<LiveTask>) -> Option<Arc<LiveTask>>;
    /// Removes `task` if it is still the one registered under its id.
    fn remove_exact(&self, task: &Arc<LiveTask>) -> bool;
    /// Every live task, by id.
    fn all(&self) -> Vec<Arc<LiveTask>>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tasks of one keyswap process, in memory: a lookup is one hash-map read, whatever the
/// number of tasks.
#[derive(Default)]
pub struct MemoryTasks {
    tasks: DashMap<String, Arc<LiveTask>>,
}

impl TaskStore for MemoryTasks {
    fn get(&self, id: &str) -> Option<Arc<LiveTask>> {
        self.tasks.get(id).map(|t| t.value().clone())
    }

    fn insert_new(&self, task: Arc<LiveTask>) -> Result<(), Arc<LiveTask>> {
        match self.tasks.entry(task.id.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => Err(task),
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(task);
                Ok(())
            }
        }
    }

    fn replace(&self, task: Arc<LiveTask>) -> Option<Arc<LiveTask>> {
        self.tasks.insert(task.id.clone(), task)
    }

    fn remove_exact(&self, task: &Arc<LiveTask>) -> bool {
        self.tasks
            .remove_if(&task.id, |_, current| Arc::ptr_eq(current, task))
            .is_some()
    }

    fn all(&self) -> Vec<Arc<LiveTask>> {
        let mut tasks: Vec<Arc<LiveTask>> = self.tasks.iter().map(|t| t.value().clone()).collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        tasks
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, token: Option<&str>) -> Arc<LiveTask> {
        Arc::new(LiveTask::new(
            id.into(),
            TaskSource::Config,
            None,
            IssuedBy::Config,
            token.map(|t| SecretString::from(t.to_string())),
            None,
        ))
    }

    #[test]
    fn tokens_compare_exactly() {
        let t = task("a", Some("token-0123456789abcdef"));
        assert!(t.token_matches("token-0123456789abcdef"));
        assert!(!t.token_matches("token-0123456789abcde"));
        assert!(!t.token_matches(""));
        assert!(task("b", None).token_matches("anything"));
        assert!(format!("{t:?}").contains("\"a\"") && !format!("{t:?}").contains("token-"));
    }

    #[test]
    fn connections_are_counted_and_cancelled_once() {
        let t = task("a", None);
        let metrics = Arc::new(Metrics::new(crate::state::metrics::MetricSources {
            leaves_minted: Box::new(|| 0),
            audit_records_dropped: Box::new(|| 0),
        }));
        let c1 = t.connection(&metrics);
        let c2 = t.connection(&metrics);
        assert_eq!(t.open_connections(), 2);
        drop(c1);
        assert_eq!(t.open_connections(), 1);
        assert!(t.end());
        assert!(!t.end(), "a task ends once");
        assert!(t.is_cancelled());
        drop(c2);
        assert_eq!(t.open_connections(), 0);
    }

    #[test]
    fn expiry_can_change() {
        let t = task("a", None);
        assert!(!t.is_expired(SystemTime::now()));
        let past = SystemTime::now() - Duration::from_secs(1);
        t.set_expires(Some(past));
        assert!(t.is_expired(SystemTime::now()));
        t.set_expires(None);
        assert_eq!(t.expires(), None);
    }

    #[test]
    fn registry_refuses_duplicate_ids_and_removes_only_the_same_task() {
        let registry = MemoryTasks::default();
        let first = task("a", None);
        assert!(registry.insert_new(first.clone()).is_ok());
        assert!(registry.insert_new(task("a", None)).is_err());
        let other = task("a", None);
        assert!(!registry.remove_exact(&other));
        assert!(registry.remove_exact(&first));
        assert!(registry.is_empty());
    }
}
