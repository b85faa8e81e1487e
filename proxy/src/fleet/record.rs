//! What the store holds and what replicas tell one another, as JSON: a task's record (its
//! token only as a SHA-256 digest) in the hash `<prefix>tasks`, and events on the channel
//! `<prefix>events`. Nothing here holds a token or a secret value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::tasks::{IssuedBy, LiveTask, RevokeWhy, TaskSource};

/// One runtime task as the store holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskRecord {
    pub policy: String,
    /// SHA-256 of the token, lowercase hex.
    pub token_sha256: String,
    /// Milliseconds since the epoch; `None`: never expires.
    pub expires_ms: Option<u64>,
    pub issued_by: String,
    pub issued_at_ms: u64,
    /// The replica it was issued on.
    pub replica: String,
}

/// What a replica tells the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Issued {
        id: String,
        task: TaskRecord,
    },
    Ended {
        id: String,
        why: String,
        replica: String,
    },
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TaskRecord {
    /// The record of a runtime task with a token issued here (`None` for any other).
    pub fn of(task: &LiveTask, replica: &str) -> Option<TaskRecord> {
        let TaskSource::Runtime { policy } = &task.source else {
            return None;
        };
        Some(TaskRecord {
            policy: policy.clone(),
            token_sha256: hex(&task.token_digest()?),
            expires_ms: task.expires().map(millis),
            issued_by: task.issued_by.as_str().to_string(),
            issued_at_ms: millis(task.issued_at),
            replica: replica.to_string(),
        })
    }

    /// Expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_ms.is_some_and(|at| millis(now) >= at)
    }

    /// The task this record describes, known by its token's digest (`None`: a malformed record).
    pub fn live(&self, id: &str) -> Option<LiveTask> {
        if !keyswap_config::valid_task_id(id) {
            return None;
        }
        let issued_by = match self.issued_by.as_str() {
            "exec" => IssuedBy::Exec,
            _ => IssuedBy::Api,
        };
        Some(LiveTask::from_fleet(
            id.to_string(),
            self.policy.clone(),
            issued_by,
            unhex(&self.token_sha256)?,
            self.expires_ms
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            UNIX_EPOCH + Duration::from_millis(self.issued_at_ms),
        ))
    }
}

/// The `why` of an end another replica reported.
pub fn why_of(text: &str) -> RevokeWhy {
    match text {
        "exit" => RevokeWhy::Exit,
        "expired" => RevokeWhy::Expired,
        "reload" => RevokeWhy::Reload,
        _ => RevokeWhy::Api,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn a_record_holds_the_digest_and_never_the_token() {
        let token = "KSTOKEN-0123456789abcdef0123456789";
        let task = LiveTask::new(
            "t-1".into(),
            TaskSource::Runtime { policy: "p".into() },
            Some("p".into()),
            IssuedBy::Api,
            Some(SecretString::from(token.to_string())),
            Some(SystemTime::now() + Duration::from_secs(60)),
        );
        let record = TaskRecord::of(&task, "a").unwrap();
        let text = serde_json::to_string(&Event::Issued {
            id: "t-1".into(),
            task: record.clone(),
        })
        .unwrap();
        assert!(!text.contains(token) && text.contains(&record.token_sha256));
        let back = record.live("t-1").unwrap();
        assert!(back.token_matches(token));
        assert!(!back.token_matches("KSTOKEN-0123456789abcdef012345678"));
        assert_eq!(back.policy.as_deref(), Some("p"));
        assert!(!record.is_expired(SystemTime::now()));
        assert!(record.live("bad id").is_none());
    }
}
