//! The agent's side of one live task, as `https://keyswap.internal` shows it: the task's last
//! refusals (a bounded ring), the grants its agent asked for (each a request the agent polls)
//! and those a human approved, which act as rules of the task for its lifetime — never of its
//! policy, and gone with the task.
//!
//! Holds hosts, ports, methods, path patterns, reasons and secret *names*; never a secret
//! value, a header value or a token. The agent's own words (`why`) are kept as sanitised text.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use keyswap_config::{
    granted_rule, within, Config, GrantAsk, HostPattern, PathPatterns, Requestable, Rule,
};

use crate::audit::record::{timestamp, Subject};

/// The most refusals a task keeps (the oldest is dropped first).
pub const MAX_REFUSALS: usize = 50;
/// The most grant requests a task keeps (the oldest answered one is dropped first).
pub const MAX_REQUESTS: usize = 50;

/// One refused request of the task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub ts: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub reason: String,
    /// The explanation the agent received.
    pub explanation: String,
}

impl Refusal {
    /// The refusal recorded for `subject`.
    pub fn of(subject: &Subject, reason: &str, why: Option<&str>) -> Refusal {
        Refusal {
            ts: timestamp(SystemTime::now()),
            method: subject.method.clone(),
            host: subject.host.clone(),
            port: subject.port,
            path: subject.path.clone(),
            reason: reason.to_string(),
            explanation: why.unwrap_or_default().to_string(),
        }
    }
}

/// A grant as asked for: HTTPS to `host:port`, these methods and paths (`None`: any), these
/// secrets by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub host: String,
    pub port: u16,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub secrets: Vec<String>,
}

impl Grant {
    /// The rule this grant makes in `config`, if it is still inside `bounds` and names only
    /// secrets that still exist (a reload that narrows the bounds narrows the grants).
    pub fn rule(&self, config: &Config, bounds: &[Requestable], index: usize) -> Option<Rule> {
        let secrets = self
            .secrets
            .iter()
            .map(|name| config.secret_by_name(name))
            .collect::<Option<Vec<_>>>()?;
        let ask = GrantAsk {
            host: &self.host,
            port: self.port,
            methods: self.methods.as_deref(),
            paths: self.paths.as_deref(),
            secrets: &secrets,
        };
        let name = |id| config.secret(id).name.clone();
        within(bounds, &ask, &name).ok()?;
        let host = HostPattern::parse(&self.host).ok()?;
        let paths = match &self.paths {
            Some(paths) => Some(PathPatterns::new(paths).ok()?),
            None => None,
        };
        Some(granted_rule(
            host,
            self.port,
            self.methods.clone(),
            paths,
            secrets,
            index,
        ))
    }
}

/// Where a grant request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for a human.
    Pending,
    Approved,
    /// With the human's (sanitised) reason, if they gave one.
    Denied(Option<String>),
    TimedOut,
    /// Refused without a human: outside the bounds, or too many waiting, or the task ended.
    Refused(String),
}

impl RequestState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied(_) => "denied",
            RequestState::TimedOut => "timed_out",
            RequestState::Refused(_) => "refused",
        }
    }
}

/// One grant request of the agent.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub id: String,
    pub asked_at: String,
    pub grant: Grant,
    /// The agent's reason, sanitised.
    pub why: Option<String>,
    pub state: RequestState,
}

/// The agent's side of one task (see the module docs).
#[derive(Default)]
pub struct AgentSide {
    next: AtomicU64,
    refusals: Mutex<VecDeque<Refusal>>,
    requests: Mutex<VecDeque<GrantRequest>>,
    grants: Mutex<Vec<Grant>>,
}

impl AgentSide {
    pub fn note_refusal(&self, refusal: Refusal) {
        if let Ok(mut ring) = self.refusals.lock() {
            if ring.len() >= MAX_REFUSALS {
                ring.pop_front();
            }
            ring.push_back(refusal);
        }
    }

    /// The last `limit` refusals, newest first.
    pub fn refusals(&self, limit: usize) -> Vec<Refusal> {
        self.refusals
            .lock()
            .map(|ring| ring.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// Files a request in `state`; returns its id (`req-N`, unique within the task).
    pub fn file_request(&self, grant: Grant, why: Option<String>, state: RequestState) -> String {
        let id = format!("req-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        if let Ok(mut requests) = self.requests.lock() {
            if requests.len() >= MAX_REQUESTS {
                let answered = requests
                    .iter()
                    .position(|r| r.state != RequestState::Pending);
                requests.remove(answered.unwrap_or(0));
            }
            requests.push_back(GrantRequest {
                id: id.clone(),
                asked_at: timestamp(SystemTime::now()),
                grant,
                why,
                state,
            });
        }
        id
    }

    pub fn set_state(&self, id: &str, state: RequestState) {
        if let Ok(mut requests) = self.requests.lock() {
            if let Some(request) = requests.iter_mut().find(|r| r.id == id) {
                request.state = state;
            }
        }
    }

    pub fn request(&self, id: &str) -> Option<GrantRequest> {
        let requests = self.requests.lock().ok()?;
        requests.iter().find(|r| r.id == id).cloned()
    }

    /// Adds an approved grant (once).
    pub fn add_grant(&self, grant: Grant) {
        if let Ok(mut grants) = self.grants.lock() {
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
    }

    pub fn grants(&self) -> Vec<Grant> {
        self.grants.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The rules the approved grants make in `config` under `bounds`, in the order approved.
    pub fn rules(&self, config: &Config, bounds: &[Requestable]) -> Vec<Rule> {
        let grants = self.grants();
        grants
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.rule(config, bounds, i))
            .collect()
    }
}
