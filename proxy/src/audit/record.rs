//! The audit record of a request, built one way: [`AuditRecord::new`] from what the request
//! was ([`Subject`]), how it was decided ([`Decision`]) and what was sent back ([`Sent`]).
//! [`AuditRecord::log`] writes the one INFO line per request from the same record, so the
//! log, the audit file and the metrics never tell different stories.
//!
//! Records hold secret *names* and query *keys*, never a value.

use std::time::{Instant, SystemTime};

use keyswap_config::normalize_path;
use serde::Serialize;

use crate::audit::decision::{Carried, Decision, Reason};

/// The two front doors: the explicit proxy listener and the transparent listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Explicit,
    Transparent,
}

impl Via {
    /// The audit record's `via`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Explicit => "explicit",
            Via::Transparent => "transparent",
        }
    }
}

/// When a request (or connection) started: the monotonic instant its duration is measured
/// from, and the wall-clock time its record shows.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Started {
    pub fn now() -> Started {
        Started {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A task as a record names it.
#[derive(Debug, Clone)]
pub struct TaskName {
    pub id: String,
    /// The task's policy (`None`: a static task with its own rules).
    pub policy: Option<String>,
}

/// What a request (or a CONNECT, or a redirected connection) was, as known when it arrived:
/// everything its record says besides the decision and what was sent back.
#[derive(Debug, Clone)]
pub struct Subject {
    pub conn: u64,
    pub via: Via,
    /// `None` when no task was identified.
    pub task: Option<TaskName>,
    /// `CONNECT` for a connection-level record.
    pub method: String,
    /// `https`, `http`, or `tcp` (a redirected connection on a port not read as either).
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    /// The normalised path; the path as sent, cut at 512 bytes, when it could not be
    /// normalised; `None` for a CONNECT.
    pub path: Option<String>,
    pub query_keys: Vec<String>,
    pub started: Started,
}

impl Subject {
    /// A connection-level subject (a CONNECT, or a redirected connection): no path.
    pub fn connection(
        conn: u64,
        via: Via,
        task: Option<TaskName>,
        scheme: &'static str,
        host: String,
        port: u16,
        started: Started,
    ) -> Subject {
        Subject {
            conn,
            via,
            task,
            method: "CONNECT".into(),
            scheme,
            host,
            port,
            path: None,
            query_keys: Vec::new(),
            started,
        }
    }
}

/// What reached the agent: the status (0 when no HTTP response was sent) and the body bytes
/// each way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub status: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
}

impl Sent {
    /// Only a status: nothing streamed (a refusal, or a connection closed without a response).
    pub fn status(status: u16) -> Sent {
        Sent {
            status,
            ..Sent::default()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Always `"request"`; lifecycle records ([`LifecycleRecord`]) name their own event.
    pub event: &'static str,
    pub ts: String,
    pub task: Option<String>,
    /// `bad_token` only: the task the agent's `Proxy-Authorization` *claimed* to be, when
    /// that names a task keyswap knows (its token was wrong). Absent for a name that is no
    /// task: that could be a token typed into the wrong field, which is never written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_task: Option<String>,
    /// The task's policy (`None`: unknown task, or a static task with its own rules).
    pub policy: Option<String>,
    pub conn: u64,
    /// The door: `"explicit"` (HTTPS_PROXY) or `"transparent"` (redirected).
    pub via: &'static str,
    pub method: String,
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    /// The normalised path that was matched (and, if allowed, forwarded); the path as sent,
    /// cut at 512 bytes, only when it could not be normalised (`bad_request`).
    pub path: Option<String>,
    pub query_keys: Vec<String>,
    pub rule: Option<usize>,
    /// Names of the secrets whose real values were sent upstream (empty when nothing was).
    pub secrets: Vec<String>,
    /// Learn mode: the secrets whose placeholders the request carried, forwarded as they were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<Carried>,
    /// A `tunnel: true` connection, spliced without interception.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tunnel: bool,
    /// Answered by keyswap itself (`keyswap.internal`), never resolved or dialled.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// `allowed`, `denied`, `error` or `learned`: [`crate::audit::decision::Reason::decision`].
    pub decision: &'static str,
    pub reason: &'static str,
    /// The status the agent received; 0 when no HTTP response was sent.
    pub status: u16,
    /// The parent proxy's status when it refused the upstream connection (`upstream.proxy`);
    /// absent otherwise. Never its headers or body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_status: Option<u16>,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    /// Milliseconds from the request (or CONNECT) to its end, to the microsecond.
    pub ms: f64,
}

/// Milliseconds since `started`, rounded to whole microseconds (three decimals).
pub fn elapsed_ms(started: std::time::Instant) -> f64 {
    started.elapsed().as_micros() as f64 / 1000.0
}

/// A lifecycle event, in the same file as the request records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
// One is built per lifecycle event (not per request) and handed to the sink by value: the
// size of the approval variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LifecycleRecord {
    TaskIssued {
        ts: String,
        task: String,
        policy: Option<String>,
        expires: Option<String>,
        by: &'static str,
    },
    TaskRevoked {
        ts: String,
        task: String,
        policy: Option<String>,
        why: &'static str,
        connections_closed: u64,
        requests: u64,
    },
    SecretRefreshed {
        ts: String,
        secret: String,
        ok: bool,
    },
    /// How a request that waited for a human ended: who answered (`by`: `uid:N` for the
    /// admin socket's peer, `token:NAME` for the TCP listener's token), with which scope,
    /// and the human's reason text for a denial. Joined to the request's own record by
    /// `task` and `conn`.
    Approval {
        ts: String,
        id: String,
        task: String,
        policy: Option<String>,
        conn: u64,
        method: String,
        host: String,
        port: u16,
        path: Option<String>,
        rule: Option<usize>,
        secrets: Vec<String>,
        /// `grant` for a grant the agent asked for (keyswap.internal); absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<&'static str>,
        /// A grant request: the agent's own reason, sanitised.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_why: Option<String>,
        /// `approved`, `denied`, `timeout` or `task_ended`.
        answer: &'static str,
        /// `once`, `task` or `rule` when approved.
        scope: Option<&'static str>,
        by: Option<String>,
        note: Option<String>,
        waited_ms: f64,
    },
    /// A credential lease's mint, refresh or revocation ([`crate::audit::credential`]).
    #[serde(untagged)]
    Credential(crate::audit::credential::CredentialRecord),
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The keys of a query string, never its values; at most 32 keys of 64 bytes each.
pub fn query_keys(query: Option<&str>) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .take(32)
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let mut end = key.len().min(64);
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key[..end].to_string()
        })
        .collect()
}

impl AuditRecord {
    /// The only constructor of a request record.
    pub fn new(subject: &Subject, decision: &Decision, sent: Sent) -> AuditRecord {
        let reason = decision.reason;
        AuditRecord {
            event: "request",
            ts: timestamp(subject.started.wall),
            task: subject.task.as_ref().map(|t| t.id.clone()),
            claimed_task: decision.claimed_task.clone(),
            policy: subject.task.as_ref().and_then(|t| t.policy.clone()),
            conn: subject.conn,
            via: subject.via.as_str(),
            method: subject.method.clone(),
            scheme: subject.scheme,
            host: subject.host.clone(),
            port: subject.port,
            path: subject.path.clone(),
            query_keys: subject.query_keys.clone(),
            rule: decision.rule,
            secrets: decision.secrets.clone(),
            carried: decision.carried.clone(),
            tunnel: decision.tunnel,
            internal: decision.internal,
            decision: reason.decision(),
            reason: reason.as_str(),
            status: sent.status,
            parent_status: decision.parent_status,
            req_bytes: sent.req_bytes,
            resp_bytes: sent.resp_bytes,
            ms: elapsed_ms(subject.started.mono),
        }
    }

    /// The metrics' `policy` label: the task's policy, `static` for a static task, `none`
    /// when no task was identified.
    pub fn policy_label(&self) -> &str {
        match (&self.policy, &self.task) {
            (Some(policy), _) => policy.as_str(),
            (None, Some(_)) => "static",
            (None, None) => "none",
        }
    }

    /// The one log line of this request: what was asked, by whom, and how it ended. `why`
    /// is the refusal's explanation (the one the agent read), naming hosts, paths, tasks and
    /// secret names only.
    pub fn log(&self, reason: Reason, why: Option<&str>) {
        let message = match self.decision {
            "allowed" => "request allowed",
            "denied" => "request refused",
            "learned" => "request forwarded in learn mode",
            _ => "request failed",
        };
        // Where a refusal's or failure's cause lies: the agent, the upstream, or keyswap.
        let origin = match reason {
            Reason::Allowed => "-",
            other => other.origin().as_str(),
        };
        // One macro for both levels: `tracing`'s level must be a constant.
        macro_rules! decision_line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    conn = self.conn,
                    via = %self.via,
                    task = %self.task.as_deref().unwrap_or("-"),
                    method = %self.method,
                    scheme = %self.scheme,
                    host = %self.host,
                    port = self.port,
                    path = %self.path.as_deref().unwrap_or("-"),
                    rule = %OrDash(self.rule),
                    reason = %self.reason,
                    origin,
                    status = self.status,
                    ms = self.ms,
                    why = %why.unwrap_or("-"),
                    "{message}"
                )
            };
        }
        // Refusals and failures at INFO; allowed requests at DEBUG, under this module's
        // target (`KEYSWAP_LOG=info,keyswap::audit=debug` turns the access log on): at INFO,
        // formatting and writing a line for every allowed request cost more CPU than the rest
        // of keyswap's own work on it (see the README's performance section).
        match reason {
            Reason::Allowed => decision_line!(tracing::Level::DEBUG),
            _ => decision_line!(tracing::Level::INFO),
        }
    }
}

/// Most of a path written to the audit when it cannot be normalised.
const MAX_RAW_PATH: usize = 512;

/// The path as the audit shows it: normalised, or (when it cannot be) as sent, cut short.
pub fn audit_path(raw: &str) -> String {
    shown_path(raw, normalize_path(raw).ok().as_deref())
}

/// [`audit_path`] for a caller that has normalised the path already.
pub fn shown_path(raw: &str, normalised: Option<&str>) -> String {
    truncate(normalised.unwrap_or(raw), MAX_RAW_PATH)
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// An optional value for a log field: the value, or `-`.
struct OrDash(Option<usize>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A refused CONNECT's record, for tests of the sink.
    pub(crate) fn record(conn: u64) -> AuditRecord {
        let subject = Subject::connection(
            conn,
            Via::Explicit,
            None,
            "https",
            String::new(),
            0,
            Started::now(),
        );
        AuditRecord::new(
            &subject,
            &Decision::new(Reason::HostNotAllowed),
            Sent::status(403),
        )
    }

    #[test]
    fn ms_has_microsecond_precision_and_claimed_task_is_omitted_when_absent() {
        let started = std::time::Instant::now() - std::time::Duration::from_nanos(1_234_567);
        let ms = elapsed_ms(started);
        let shown = serde_json::to_string(&ms).unwrap();
        let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{shown}");
        assert!(ms >= 1.234, "{ms}");
        let line = serde_json::to_string(&record(1)).unwrap();
        assert!(!line.contains("claimed_task"), "{line}");
        let mut claimed = record(2);
        claimed.claimed_task = Some("fix-42".into());
        let value = serde_json::to_value(&claimed).unwrap();
        assert_eq!(value["claimed_task"], "fix-42");
    }

    #[test]
    fn audit_paths_are_normalised_or_cut() {
        assert_eq!(audit_path("/a/./b/../c"), "/a/c");
        assert_eq!(audit_path(&"/x".repeat(600)).len(), MAX_RAW_PATH);
    }

    #[test]
    fn query_keys_never_include_values() {
        assert_eq!(
            query_keys(Some("per_page=10&token=abc&flag&&x=")),
            vec!["per_page", "token", "flag", "x"]
        );
        assert!(query_keys(None).is_empty());
    }
}
