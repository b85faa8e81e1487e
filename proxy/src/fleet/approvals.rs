//! Approvals in a fleet: a held request waits on the replica that holds its connection, and
//! is listed and answered on any replica.
//!
//! Each replica's waiting requests are in its presence ([`super::presence`]); a listing is
//! this replica's own plus every other one's. An answer given on a replica that does not
//! hold the request goes to the holder on its channel `<prefix>answers:<replica>`; the
//! holder answers the request as if it had been answered there (audited there, with who
//! answered), and replies on the one-off channel the answering replica named. What crosses
//! the store: the request's id, the answer, its scope, the (already scrubbed) reason and who
//! answered — never a token or a secret value.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::lifeline::key;
use super::presence;
use super::{connect, timed};
use crate::api::{Answered, ApprovalInfo};
use crate::state::approvals::{Answer, AnswerError, Scope};
use crate::state::fleet::FleetLink;
use crate::state::shared::Shared;

/// How long an answer given here waits for the replica holding the request to confirm it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an answer could not be given.
#[derive(Debug, thiserror::Error)]
pub enum AnswerFailed {
    #[error(transparent)]
    Unknown(#[from] AnswerError),
    #[error("the replica {0} holding the request did not confirm the answer; list the approvals again and retry")]
    NoReply(String),
}

/// An answer on its way to the replica holding the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerMessage {
    pub id: String,
    /// `approve` or `deny`.
    pub answer: String,
    pub scope: Option<String>,
    pub note: Option<String>,
    pub by: String,
    /// The channel the holder replies on.
    pub reply_to: String,
}

/// The holder's reply: what was answered, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerReply {
    pub answered: Option<Answered>,
    pub error: Option<String>,
}

/// The channel on which `replica` receives answers.
pub fn channel(link: &FleetLink, replica: &str) -> String {
    key(link, &format!("answers:{replica}"))
}

/// The waiting requests of the whole fleet (only `task`'s when given), oldest first; those
/// held on another replica name it.
pub async fn list(shared: &Shared, task: Option<&str>) -> Vec<ApprovalInfo> {
    let mut all = shared.approvals.list(task);
    for presence in presence::others(shared).await {
        all.extend(
            presence
                .approvals
                .into_iter()
                .filter(|a| task.is_none_or(|t| a.task == t))
                .map(|mut a| {
                    a.replica = Some(presence.replica.clone());
                    a
                }),
        );
    }
    all.sort_by(|a, b| a.waiting_since.cmp(&b.waiting_since).then(a.id.cmp(&b.id)));
    all
}

/// Answers request `id`: here if it waits here, else on the replica that holds it.
pub async fn answer(
    shared: &Arc<Shared>,
    id: &str,
    answer: Answer,
) -> Result<Answered, AnswerFailed> {
    match shared.approvals.answer(&shared.audit, id, answer.clone()) {
        Ok(answered) => return Ok(wire(answered)),
        Err(AnswerError::Unknown(_)) if shared.fleet.is_some() => {}
        Err(e) => return Err(e.into()),
    }
    let unknown = || AnswerFailed::Unknown(AnswerError::Unknown(id.to_string()));
    let holder = presence::others(shared)
        .await
        .into_iter()
        .find(|p| p.approvals.iter().any(|a| a.id == id))
        .map(|p| p.replica)
        .ok_or_else(unknown)?;
    let reply = ask(shared, &holder, id, answer)
        .await
        .ok_or_else(|| AnswerFailed::NoReply(holder.clone()))?;
    reply.answered.ok_or_else(unknown)
}

fn wire(answered: crate::state::approvals::Answered) -> Answered {
    Answered {
        id: answered.id,
        task: answered.task,
        answer: answered.answer.to_string(),
        scope: answered.scope.map(str::to_string),
        by: answered.by,
    }
}

/// Sends `answer` to `holder` and waits for its reply (`None`: no reply in time, or the
/// store failed).
async fn ask(shared: &Shared, holder: &str, id: &str, answer: Answer) -> Option<AnswerReply> {
    let link = shared.fleet.as_ref()?;
    let store = shared.snapshot().config.store.clone()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let reply_to = key(link, &format!("reply:{}:{nanos}", link.replica));
    let (answer, scope, note, by) = match answer {
        Answer::Approve { scope, by } => ("approve", Some(scope.as_str().to_string()), None, by),
        Answer::Deny { note, by } => ("deny", None, note, by),
    };
    let message = serde_json::to_string(&AnswerMessage {
        id: id.to_string(),
        answer: answer.to_string(),
        scope,
        note,
        // The holder audits who answered, and through which replica.
        by: format!("{by} via {}", link.replica),
        reply_to: reply_to.clone(),
    })
    .ok()?;
    let client = connect::client(&store.redis).ok()?;
    let mut pubsub = timed(client.get_async_pubsub()).await.ok()?;
    timed(pubsub.subscribe(&reply_to)).await.ok()?;
    let mut redis = link.conn.current()?;
    let heard: usize = timed(redis.publish(channel(link, holder), message))
        .await
        .ok()?;
    if heard == 0 {
        return None;
    }
    let mut replies = pubsub.on_message();
    let payload = tokio::time::timeout(ANSWER_TIMEOUT, replies.next())
        .await
        .ok()??;
    serde_json::from_slice(payload.get_payload_bytes()).ok()
}

/// Answers, here, a request another replica was asked to answer, and replies to it.
pub async fn answered_elsewhere(shared: &Arc<Shared>, link: &FleetLink, payload: &[u8]) {
    let Ok(message) = serde_json::from_slice::<AnswerMessage>(payload) else {
        tracing::debug!("ignored a malformed answer from another replica");
        return;
    };
    let answer = match (message.answer.as_str(), message.scope.as_deref()) {
        ("approve", scope) => Scope::parse(scope.unwrap_or("once")).map(|scope| Answer::Approve {
            scope,
            by: message.by.clone(),
        }),
        ("deny", None) => Some(Answer::Deny {
            note: message.note.clone(),
            by: message.by.clone(),
        }),
        _ => None,
    };
    let reply = match answer.map(|a| shared.approvals.answer(&shared.audit, &message.id, a)) {
        Some(Ok(answered)) => AnswerReply {
            answered: Some(wire(answered)),
            error: None,
        },
        Some(Err(e)) => AnswerReply {
            answered: None,
            error: Some(e.to_string()),
        },
        None => AnswerReply {
            answered: None,
            error: Some("malformed answer".into()),
        },
    };
    let (Some(mut redis), Ok(text)) = (link.conn.current(), serde_json::to_string(&reply)) else {
        return;
    };
    if let Err(e) = timed(redis.publish::<_, _, usize>(&message.reply_to, text)).await {
        tracing::debug!(error = %e, "replying to another replica's answer failed");
    }
}
