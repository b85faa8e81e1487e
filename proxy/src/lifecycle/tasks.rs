//! What happens to tasks: issue one from a policy, revoke one, let one expire, and bring the
//! static tasks in line with a (re)loaded config. Each ending cancels the task's connections
//! and is audited once (`task_issued` / `task_revoked`) and counted in the metrics.
//!
//! Tokens are generated here and handed out once, in the [`Issued`] value; they are never
//! logged or audited.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use keyswap_config::{Config, OnUnlisted, TtlError};
use secrecy::SecretString;

use crate::api;
use crate::audit::record::{timestamp, LifecycleRecord};
use crate::state::leases::Leases;
use crate::state::shared::Shared;
use crate::state::tasks::{IssuedBy, LiveTask, RevokeWhy, TaskSource};

/// Why a task could not be issued or revoked. The messages name policies and ids only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("no policy named \"{0}\" in the config; `keyswap check` lists the policies")]
    UnknownPolicy(String),
    #[error("\"{0}\" is not a duration; write e.g. 30m, 2h or 1h30m")]
    BadTtl(String),
    #[error("{0}")]
    TtlRefused(TtlError),
    #[error("\"{0}\" is not a valid task id: use 1 to 64 characters of A-Z, a-z, 0-9, \".\", \"_\" and \"-\"")]
    BadId(String),
    #[error("a task with id \"{0}\" already exists; choose another id or revoke that task first")]
    DuplicateId(String),
    #[error("no task \"{0}\"")]
    UnknownTask(String),
    #[error("task \"{0}\" is defined in the config; remove it there and reload to end it")]
    StaticTask(String),
    #[error("\"{0}\" is not who issues a task: use \"exec\" or \"api\"")]
    BadIssuer(String),
    #[error("the system random number generator failed; no token could be made")]
    Random,
    #[error("keyswap cannot reach the store its replicas share tasks through; no task is issued until it is back")]
    StoreUnavailable,
}

impl TaskError {
    /// The `reason` of the admin API's JSON error.
    pub fn reason(&self) -> &'static str {
        match self {
            TaskError::UnknownPolicy(_) => "unknown_policy",
            TaskError::BadTtl(_) => "bad_ttl",
            TaskError::TtlRefused(TtlError::Zero) => "bad_ttl",
            TaskError::TtlRefused(TtlError::AboveMax { .. }) => "ttl_above_max",
            TaskError::BadId(_) => "bad_id",
            TaskError::DuplicateId(_) => "duplicate_id",
            TaskError::UnknownTask(_) => "unknown_task",
            TaskError::StaticTask(_) => "static_task",
            TaskError::BadIssuer(_) => "bad_request",
            TaskError::Random => "internal",
            TaskError::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A task just issued, with the token that is shown this once.
pub struct Issued {
    pub task: Arc<LiveTask>,
    pub token: SecretString,
}

/// Issues a runtime task from a policy of the current config.
pub fn issue(shared: &Arc<Shared>, request: &api::IssueRequest) -> Result<Issued, TaskError> {
    let issued = prepare(shared, request)?;
    register(shared, &issued.task)?;
    Ok(issued)
}

/// Makes a runtime task from a policy of the current config, with its token, without
/// registering it (a fleet first claims its id in the store: [`crate::fleet`]).
pub fn prepare(shared: &Shared, request: &api::IssueRequest) -> Result<Issued, TaskError> {
    let by = match request.by.as_deref() {
        None | Some("api") => IssuedBy::Api,
        Some("exec") => IssuedBy::Exec,
        Some(other) => return Err(TaskError::BadIssuer(other.to_string())),
    };
    let snapshot = shared.snapshot();
    let policy = snapshot
        .config
        .policy(&request.policy)
        .ok_or_else(|| TaskError::UnknownPolicy(request.policy.clone()))?;
    let requested = match &request.ttl {
        None => None,
        Some(text) => Some(
            humantime::parse_duration(text.trim()).map_err(|_| TaskError::BadTtl(text.clone()))?,
        ),
    };
    let ttl = policy.ttl_for(requested).map_err(TaskError::TtlRefused)?;
    let id = match &request.id {
        Some(id) if keyswap_config::valid_task_id(id) => id.clone(),
        Some(id) => return Err(TaskError::BadId(id.clone())),
        None => generated_id(shared, &policy.name)?,
    };
    let token = SecretString::from(random_hex(shared, 16)?);
    let task = Arc::new(LiveTask::new(
        id.clone(),
        TaskSource::Runtime {
            policy: policy.name.clone(),
        },
        Some(policy.name.clone()),
        by,
        Some(token.clone()),
        Some(SystemTime::now() + ttl),
    ));
    Ok(Issued { task, token })
}

/// Registers a prepared task: it can be identified from now on; audited and its expiry armed.
pub fn register(shared: &Arc<Shared>, task: &Arc<LiveTask>) -> Result<(), TaskError> {
    shared
        .tasks
        .insert_new(task.clone())
        .map_err(|_| TaskError::DuplicateId(task.id.clone()))?;
    started(shared, task);
    Ok(())
}

/// Registers a task issued on another replica of the fleet (audited there, not here), and
/// arms its expiry. `false` if a task of that id is already registered here.
pub fn adopt(shared: &Arc<Shared>, task: Arc<LiveTask>) -> bool {
    if shared.tasks.insert_new(task.clone()).is_err() {
        return false;
    }
    tracing::debug!(task = %task.id, "task issued on another replica");
    tokio::spawn(watch_expiry(Arc::downgrade(shared), task));
    true
}

/// Ends `task` because the fleet's store says it ended on another replica (or is gone from
/// the store): its connections here close, and it is audited here, but not told back to the
/// store.
pub fn ended_elsewhere(
    shared: &Shared,
    task: &Arc<LiveTask>,
    why: RevokeWhy,
) -> Option<api::Revoked> {
    end_here(shared, task, why, true)
}

/// Revokes a runtime task (`DELETE /v1/tasks/{id}`).
pub fn revoke(shared: &Shared, id: &str, why: RevokeWhy) -> Result<api::Revoked, TaskError> {
    let task = shared
        .tasks
        .get(id)
        .ok_or_else(|| TaskError::UnknownTask(id.to_string()))?;
    if task.source == TaskSource::Config {
        return Err(TaskError::StaticTask(id.to_string()));
    }
    Ok(end(shared, &task, why, true).unwrap_or_else(|| revoked_value(&task, why)))
}

/// Ends `task`: cancels its connections, optionally removes it, and audits it — once; `None`
/// if it had already ended.
pub fn end(
    shared: &Shared,
    task: &Arc<LiveTask>,
    why: RevokeWhy,
    remove: bool,
) -> Option<api::Revoked> {
    let revoked = end_here(shared, task, why, remove)?;
    // A runtime task ends on every replica of a fleet; a static one is each replica's own
    // config's.
    if let (Some(fleet), TaskSource::Runtime { .. }) = (&shared.fleet, &task.source) {
        fleet.task_ended(&task.id, why);
    }
    Some(revoked)
}

fn end_here(
    shared: &Shared,
    task: &Arc<LiveTask>,
    why: RevokeWhy,
    remove: bool,
) -> Option<api::Revoked> {
    if remove {
        shared.tasks.remove_exact(task);
    }
    // Counted before cancelling: the connections are open until they see the cancellation.
    let revoked = revoked_value(task, why);
    if !task.end() {
        return None;
    }
    shared.approvals.forget(task);
    tracing::info!(task = %task.id, why = why.as_str(), connections = revoked.connections_closed, "task ended");
    shared.audit.lifecycle(LifecycleRecord::TaskRevoked {
        ts: timestamp(SystemTime::now()),
        task: task.id.clone(),
        policy: task.policy.clone(),
        why: why.as_str(),
        connections_closed: revoked.connections_closed,
        requests: revoked.requests,
    });
    shared.metrics.task_revoked(why.as_str());
    crate::lifecycle::leases::release(shared, task, why.as_str());
    Some(revoked)
}

fn revoked_value(task: &LiveTask, why: RevokeWhy) -> api::Revoked {
    api::Revoked {
        id: task.id.clone(),
        why: why.as_str().to_string(),
        connections_closed: task.open_connections(),
        requests: task.requests(),
    }
}

/// Audits and counts a newly registered task and arms its expiry.
fn started(shared: &Arc<Shared>, task: &Arc<LiveTask>) {
    shared.audit.lifecycle(LifecycleRecord::TaskIssued {
        ts: timestamp(task.issued_at),
        task: task.id.clone(),
        policy: task.policy.clone(),
        expires: task.expires().map(timestamp),
        by: task.issued_by.as_str(),
    });
    shared.metrics.task_issued(task.issued_by.as_str());
    tracing::info!(task = %task.id, policy = task.policy.as_deref().unwrap_or("-"), by = task.issued_by.as_str(), "task issued");
    tokio::spawn(watch_expiry(Arc::downgrade(shared), task.clone()));
}

/// Ends the task when it expires (re-arming when a reload moves its expiry). A runtime task
/// is removed; a static one stays so that its requests are refused as `task_expired`.
async fn watch_expiry(shared: Weak<Shared>, task: Arc<LiveTask>) {
    loop {
        let Some(expires) = task.expires() else {
            tokio::select! {
                _ = task.expiry_changed.notified() => continue,
                _ = task.cancelled() => return,
            }
        };
        let wait = expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if !task.is_expired(SystemTime::now()) {
                    continue;
                }
                if let Some(shared) = shared.upgrade() {
                    let remove = task.source != TaskSource::Config;
                    end(&shared, &task, RevokeWhy::Expired, remove);
                }
                return;
            }
            _ = task.expiry_changed.notified() => continue,
            _ = task.cancelled() => return,
        }
    }
}

/// Brings the registry in line with `config` (at start and after every reload): static
/// tasks are added, updated or ended; runtime tasks whose policy is gone are revoked.
pub fn sync(shared: &Arc<Shared>, config: &Config) -> api::Reloaded {
    let mut summary = api::Reloaded {
        tasks_added: Vec::new(),
        tasks_removed: Vec::new(),
        tasks_revoked: Vec::new(),
    };
    let configured: BTreeSet<&str> = config.tasks.keys().map(String::as_str).collect();
    for live in shared.tasks.all() {
        match &live.source {
            TaskSource::Config if !configured.contains(live.id.as_str()) => {
                end(shared, &live, RevokeWhy::Reload, true);
                summary.tasks_removed.push(live.id.clone());
            }
            TaskSource::Runtime { policy }
                if config.policy(policy).is_none() || configured.contains(live.id.as_str()) =>
            {
                end(shared, &live, RevokeWhy::Reload, true);
                summary.tasks_revoked.push(live.id.clone());
            }
            _ => {}
        }
    }
    for task in config.tasks.values() {
        if let Some(live) = shared.tasks.get(&task.id) {
            let same_identity = live.same_token(task.token.as_ref()) && live.policy == task.policy;
            if same_identity && !live.is_cancelled() {
                live.set_expires(task.expires);
                continue;
            }
            if same_identity && task.is_expired(SystemTime::now()) {
                // Expired before and still expired: it stays as it is (refused as expired).
                continue;
            }
            // A new token (or a task that had expired and was extended) starts afresh: the
            // connections opened with the old identity end.
            end(shared, &live, RevokeWhy::Reload, true);
        }
        let live = Arc::new(LiveTask::new(
            task.id.clone(),
            TaskSource::Config,
            task.policy.clone(),
            IssuedBy::Config,
            task.token.clone(),
            task.expires,
        ));
        shared.tasks.replace(live.clone());
        started(shared, &live);
        summary.tasks_added.push(task.id.clone());
    }
    crate::lifecycle::budget::prune(config, &shared.tasks.all());
    summary
}

/// Ends every task without removing it (the proxy is stopping).
pub fn end_all(shared: &Shared) {
    for task in shared.tasks.all() {
        task.end();
    }
}

/// The listing of one task (never its token), with the counts of its limited rules in
/// `config`.
pub fn info(config: &Config, leases: &Leases, task: &LiveTask) -> api::TaskInfo {
    let now = SystemTime::now();
    api::TaskInfo {
        id: task.id.clone(),
        source: match task.source {
            TaskSource::Config => "config",
            TaskSource::Runtime { .. } => "runtime",
        }
        .to_string(),
        policy: task.policy.clone(),
        issued_by: task.issued_by.as_str().to_string(),
        issued_at: timestamp(task.issued_at),
        expires: task.expires().map(timestamp),
        expired: task.is_expired(now),
        open_connections: task.open_connections(),
        requests: task.requests(),
        learning: on_unlisted(config, task) == OnUnlisted::Learn,
        budgets: crate::lifecycle::budget::report(config, task),
        leases: leases
            .of_task(&task.id)
            .iter()
            .map(|lease| api::LeaseInfo {
                secret: lease.secret.clone(),
                minted: timestamp(lease.minted_at),
                expires: timestamp(lease.expires),
                fingerprint: lease.fingerprint.clone(),
            })
            .collect(),
        replicas: std::collections::BTreeMap::new(),
    }
}

/// What `task` does with a request no rule allows under `config`.
pub fn on_unlisted(config: &Config, task: &LiveTask) -> OnUnlisted {
    match &task.source {
        TaskSource::Config => config.task(&task.id).map(|t| t.on_unlisted),
        TaskSource::Runtime { policy } => config.policy(policy).map(|p| p.on_unlisted),
    }
    .unwrap_or_default()
}

/// `<policy>-<8 hex digits>`, cut so the id stays within 64 characters.
fn generated_id(shared: &Shared, policy: &str) -> Result<String, TaskError> {
    let suffix = random_hex(shared, 4)?;
    let keep = policy.len().min(64 - suffix.len() - 1);
    Ok(format!("{}-{suffix}", &policy[..keep]))
}

/// `bytes` random bytes from the TLS provider's CSPRNG, as lowercase hex.
fn random_hex(shared: &Shared, bytes: usize) -> Result<String, TaskError> {
    use std::fmt::Write;
    let mut buf = vec![0u8; bytes];
    shared
        .provider
        .secure_random
        .fill(&mut buf)
        .map_err(|_| TaskError::Random)?;
    let mut out = String::with_capacity(bytes * 2);
    for b in &buf {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}
