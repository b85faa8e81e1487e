//! Requests waiting for a human, and what humans granted.
//!
//! A request that needs a human (a rule with `approve:`, or no rule at all under
//! `on_unlisted: ask`) is *held*: [`Approvals::hold`] registers it with a oneshot channel and
//! waits for an answer from the admin API ([`Approvals::answer`]), the timeout, or the end of
//! its task — nothing is sent upstream meanwhile. An approval may leave a *grant* behind for
//! the rest of the task's life (`--scope task`: this exact host, method and path; `--scope
//! rule`: the matched rule, or for an unlisted request its host; an `approve: once` rule: the
//! rule). Grants belong to one live task: a task issued again under the same id starts
//! with none.
//!
//! Holds secret *names* and request heads' method, host and normalised path; never a header
//! value, a query value, a secret value or a token. Every answer is audited with who gave it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use keyswap_config::{Approval, Approve, Scheme};
use tokio::sync::oneshot;

use crate::api::ApprovalInfo;
use crate::audit::record::{timestamp, LifecycleRecord};
use crate::audit::sink::AuditSink;
pub use crate::state::held::{
    rule_key, sanitise_note, Answer, AnswerError, Answered, Held, Outcome, Scope, Why,
};
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;
use crate::state::webhook::notify;

struct Waiting {
    id: String,
    task: Arc<LiveTask>,
    held: Held,
    since: SystemTime,
    started: Instant,
    answer: oneshot::Sender<Answer>,
}

/// What one live task was granted by approvals.
#[derive(Default)]
struct Grants {
    /// (scheme, host, port, method, path); a CONNECT has path "".
    exact: HashSet<(Scheme, String, u16, String, String)>,
    /// Unlisted hosts opened with `--scope rule`.
    hosts: HashSet<(Scheme, String, u16)>,
    /// (rule key, host): an `approve:` rule that no longer asks on this host.
    rules: HashSet<(String, String)>,
    /// Rule keys of `approve: once` rules already approved.
    once: HashSet<String>,
}

struct TaskGrants {
    task: Weak<LiveTask>,
    grants: Grants,
}

/// Every waiting request, by id, and every task's grants.
#[derive(Default)]
pub struct Approvals {
    next: AtomicU64,
    /// In a fleet, `<replica>.`: ids are unique across replicas (`ap-<replica>.<n>`).
    id_prefix: String,
    /// Woken when a request starts or stops waiting (a fleet replica then writes its list).
    pub changes: tokio::sync::Notify,
    waiting: Mutex<BTreeMap<String, Waiting>>,
    grants: Mutex<BTreeMap<String, TaskGrants>>,
}

impl Approvals {
    /// The approvals of fleet replica `replica`: its ids are `ap-<replica>.<n>`.
    pub fn of_replica(replica: &str) -> Approvals {
        Approvals {
            id_prefix: format!("{replica}."),
            ..Approvals::default()
        }
    }

    /// Whether an earlier approval already lets this request through without asking.
    pub fn granted(&self, task: &Arc<LiveTask>, held: &Held) -> bool {
        let Ok(all) = self.grants.lock() else {
            return false;
        };
        let Some(entry) = all.get(&task.id).filter(|g| same_task(&g.task, task)) else {
            return false;
        };
        let g = &entry.grants;
        let exact = (
            held.scheme,
            held.host.clone(),
            held.port,
            held.method.clone(),
            held.path.clone().unwrap_or_default(),
        );
        if g.exact.contains(&exact) {
            return true;
        }
        match (&held.why, &held.rule) {
            (Why::Unlisted, _) => g
                .hosts
                .contains(&(held.scheme, held.host.clone(), held.port)),
            (Why::Rule(approve), Some((_, key))) => {
                g.rules.contains(&(key.clone(), held.host.clone()))
                    || (*approve == Approve::Once && g.once.contains(key))
            }
            (Why::Rule(_), None) | (Why::Grant, _) => false,
        }
    }

    /// Holds the request until a human answers, `approval.timeout` passes, or the task
    /// ends. Nothing is sent upstream meanwhile (the caller has not started).
    pub async fn hold(
        &self,
        snapshot: &Snapshot,
        audit: &Arc<dyn AuditSink>,
        task: &Arc<LiveTask>,
        held: Held,
    ) -> Outcome {
        let settings: &Approval = &snapshot.config.approval;
        let (send, receive) = oneshot::channel();
        let id = {
            let Ok(mut waiting) = self.waiting.lock() else {
                return Outcome::TimedOut;
            };
            let of_task = waiting
                .values()
                .filter(|w| Arc::ptr_eq(&w.task, task))
                .count();
            if of_task >= settings.max_pending {
                return Outcome::QueueFull;
            }
            let id = format!(
                "ap-{}{}",
                self.id_prefix,
                self.next.fetch_add(1, Ordering::Relaxed) + 1
            );
            waiting.insert(
                id.clone(),
                Waiting {
                    id: id.clone(),
                    task: task.clone(),
                    held: held.clone(),
                    since: SystemTime::now(),
                    started: Instant::now(),
                    answer: send,
                },
            );
            id
        };
        self.changes.notify_one();
        // Whatever ends the wait (also the agent going away, which drops this future), the
        // request stops being listed.
        let _listed = Listed {
            approvals: self,
            id: id.clone(),
        };
        tracing::info!(approval = %id, task = %task.id, method = %held.method, host = %held.host, path = held.path.as_deref().unwrap_or("-"), why = held.why.as_str(), "request held for a human");
        if let Some(url) = settings.webhook.as_deref() {
            notify(snapshot, url, &self.info_of(&id));
        }
        let started = Instant::now();
        let mut receive = receive;
        let unanswered = tokio::select! {
            answer = &mut receive => return outcome(answer.ok()),
            _ = tokio::time::sleep(settings.timeout) => ("timeout", Outcome::TimedOut),
            _ = task.cancelled() => ("task_ended", Outcome::TaskEnded),
        };
        if self.audit_unanswered(audit, &id, unanswered.0, started) {
            return unanswered.1;
        }
        // Answered in the same instant: the answer (already audited) wins.
        outcome(receive.await.ok())
    }

    /// Answers a waiting request: records the grant an approval leaves, audits who
    /// answered, and wakes the request.
    pub fn answer(
        &self,
        audit: &Arc<dyn AuditSink>,
        id: &str,
        answer: Answer,
    ) -> Result<Answered, AnswerError> {
        let waiting = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(id))
            .ok_or_else(|| AnswerError::Unknown(id.to_string()))?;
        self.changes.notify_one();
        if let Answer::Approve { scope, .. } = &answer {
            self.grant(&waiting.task, &waiting.held, *scope);
        }
        let (verdict, scope, by, note) = match &answer {
            Answer::Approve { scope, by } => ("approved", Some(scope.as_str()), by.clone(), None),
            Answer::Deny { note, by } => ("denied", None, by.clone(), note.clone()),
        };
        tracing::info!(approval = %id, task = %waiting.task.id, answer = verdict, scope = scope.unwrap_or("-"), by = %by, "approval answered");
        audit.lifecycle(record(
            &waiting,
            verdict,
            scope,
            Some(by.clone()),
            note,
            waiting.started.elapsed(),
        ));
        let answered = Answered {
            id: waiting.id.clone(),
            task: waiting.task.id.clone(),
            answer: verdict,
            scope,
            by,
        };
        // The request may have gone meanwhile (its agent hung up): the grant still stands.
        let _ = waiting.answer.send(answer);
        Ok(answered)
    }

    /// The waiting requests, oldest first; only `task`'s when given.
    pub fn list(&self, task: Option<&str>) -> Vec<ApprovalInfo> {
        let Ok(waiting) = self.waiting.lock() else {
            return Vec::new();
        };
        let mut list: Vec<ApprovalInfo> = waiting
            .values()
            .filter(|w| task.is_none_or(|t| w.task.id == t))
            .map(info)
            .collect();
        list.sort_by(|a, b| a.waiting_since.cmp(&b.waiting_since).then(a.id.cmp(&b.id)));
        list
    }

    fn info_of(&self, id: &str) -> Option<ApprovalInfo> {
        self.waiting.lock().ok()?.get(id).map(info)
    }

    fn grant(&self, task: &Arc<LiveTask>, held: &Held, scope: Scope) {
        if held.why == Why::Grant {
            // The grant itself is added by whoever asked for it, for the task's lifetime,
            // whatever the scope: nothing here may open the host to unlisted requests.
            return;
        }
        let Ok(mut all) = self.grants.lock() else {
            return;
        };
        let entry = all.entry(task.id.clone()).or_insert_with(|| TaskGrants {
            task: Arc::downgrade(task),
            grants: Grants::default(),
        });
        if !same_task(&entry.task, task) {
            // The id belongs to a new task now: the old one's grants are gone with it.
            *entry = TaskGrants {
                task: Arc::downgrade(task),
                grants: Grants::default(),
            };
        }
        let g = &mut entry.grants;
        if let (Why::Rule(Approve::Once), Some((_, key))) = (&held.why, &held.rule) {
            g.once.insert(key.clone());
        }
        match scope {
            Scope::Once => {}
            Scope::Task => {
                g.exact.insert((
                    held.scheme,
                    held.host.clone(),
                    held.port,
                    held.method.clone(),
                    held.path.clone().unwrap_or_default(),
                ));
            }
            Scope::Rule => match &held.rule {
                Some((_, key)) => {
                    g.rules.insert((key.clone(), held.host.clone()));
                }
                None => {
                    g.hosts.insert((held.scheme, held.host.clone(), held.port));
                }
            },
        }
    }

    /// Drops the grants of a task that has ended (called when it ends).
    pub fn forget(&self, task: &Arc<LiveTask>) {
        if let Ok(mut all) = self.grants.lock() {
            if all.get(&task.id).is_some_and(|g| same_task(&g.task, task)) {
                all.remove(&task.id);
            }
        }
    }

    /// Audits a hold that ended without an answer; `false` if it had been answered.
    fn audit_unanswered(
        &self,
        audit: &Arc<dyn AuditSink>,
        id: &str,
        verdict: &'static str,
        started: Instant,
    ) -> bool {
        let Some(waiting) = self.waiting.lock().ok().and_then(|mut w| w.remove(id)) else {
            return false;
        };
        self.changes.notify_one();
        tracing::info!(approval = %id, task = %waiting.task.id, answer = verdict, "approval not answered");
        audit.lifecycle(record(
            &waiting,
            verdict,
            None,
            None,
            None,
            started.elapsed(),
        ));
        true
    }

    fn unlist(&self, id: &str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            if waiting.remove(id).is_some() {
                self.changes.notify_one();
            }
        }
    }
}

/// The answer to one `POST /v1/approvals/{id}`.
fn outcome(answer: Option<Answer>) -> Outcome {
    match answer {
        Some(Answer::Approve { .. }) => Outcome::Approved,
        Some(Answer::Deny { note, .. }) => Outcome::Denied(note),
        // The sender went without an answer: only when the proxy is stopping.
        None => Outcome::TaskEnded,
    }
}

/// Removes a waiting request from the list when its hold ends in any way.
struct Listed<'a> {
    approvals: &'a Approvals,
    id: String,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.approvals.unlist(&self.id);
    }
}

fn same_task(weak: &Weak<LiveTask>, task: &Arc<LiveTask>) -> bool {
    std::ptr::eq(weak.as_ptr(), Arc::as_ptr(task))
}

fn info(w: &Waiting) -> ApprovalInfo {
    ApprovalInfo {
        id: w.id.clone(),
        task: w.task.id.clone(),
        policy: w.task.policy.clone(),
        method: w.held.method.clone(),
        scheme: w.held.scheme.as_str().to_string(),
        host: w.held.host.clone(),
        port: w.held.port,
        path: w.held.path.clone(),
        rule: w.held.rule.as_ref().map(|(index, _)| *index),
        why: w.held.why.as_str().to_string(),
        secrets: w.held.secrets.clone(),
        agent_why: w.held.agent_why.clone(),
        replica: None,
        waiting_since: timestamp(w.since),
        waited_secs: w.started.elapsed().as_secs_f64(),
    }
}

fn record(
    w: &Waiting,
    answer: &'static str,
    scope: Option<&'static str>,
    by: Option<String>,
    note: Option<String>,
    waited: Duration,
) -> LifecycleRecord {
    LifecycleRecord::Approval {
        ts: timestamp(SystemTime::now()),
        id: w.id.clone(),
        task: w.task.id.clone(),
        policy: w.task.policy.clone(),
        conn: w.held.conn,
        method: w.held.method.clone(),
        host: w.held.host.clone(),
        port: w.held.port,
        path: w.held.path.clone(),
        rule: w.held.rule.as_ref().map(|(index, _)| *index),
        secrets: w.held.secrets.clone(),
        kind: (w.held.why == Why::Grant).then_some("grant"),
        agent_why: w.held.agent_why.clone(),
        answer,
        scope,
        by,
        note,
        waited_ms: waited.as_secs_f64() * 1000.0,
    }
}
