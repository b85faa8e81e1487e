//! `POST /v1/self/requests` and `GET /v1/self/requests/{id}`: the agent asks for a grant.
//! The ask is checked first against the task's `requestable:` bounds — outside, it is refused
//! at once naming the bound; inside, it becomes a held approval of kind `grant`
//! ([`crate::state::approvals`]) that `keyswap approvals` lists with the agent's own words and
//! that `keyswap approve` / `deny`, the webhook or `exec --ask` answer. Approved, the grant is
//! added to the task (never to its policy) for the task's lifetime; the approval record names
//! who approved it.

use std::sync::Arc;

use http::StatusCode;
use keyswap_config::{within, GrantAsk, HostPattern, PathPatterns, Scheme};

use super::body::{AskBody, RequestView};
use super::{Answer, INTERNAL_HOST};
use crate::audit::decision::Reason;
use crate::pipeline::context::ConnContext;
use crate::state::agent_side::{Grant, GrantRequest, RequestState};
use crate::state::approvals::{sanitise_note, Held, Outcome, Why};
use crate::state::shared::Shared;
use crate::state::tasks::LiveTask;

/// Refused before it is looked at: the ask itself is malformed.
fn bad(message: impl Into<String>) -> (StatusCode, Reason, String) {
    (StatusCode::BAD_REQUEST, Reason::BadRequest, message.into())
}

pub(super) fn ask(shared: &Arc<Shared>, ctx: &ConnContext, body: &[u8]) -> Answer {
    let asked: AskBody = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not a grant request ({e}); send {{\"host\",\"port\",\"methods\",\"paths\",\"secrets\",\"why\"}}"
        ))
    })?;
    let grant = checked_grant(&asked)?;
    let why = asked.why.as_deref().and_then(sanitise_note);
    let task = &ctx.task;
    let snapshot = shared.snapshot();
    let timeout = snapshot.config.approval.timeout.as_secs();
    let secrets = grant
        .secrets
        .iter()
        .map(|name| snapshot.config.secret_by_name(name).ok_or(name))
        .collect::<Result<Vec<_>, _>>();
    let bounds = snapshot.requestable_of(task);
    let name = |id| snapshot.config.secret(id).name.clone();
    let inside = match &secrets {
        Err(unknown) => Err(format!("secret {unknown} is not one this task may ask for")),
        Ok(secrets) => {
            let ask = GrantAsk {
                host: &grant.host,
                port: grant.port,
                methods: grant.methods.as_deref(),
                paths: grant.paths.as_deref(),
                secrets,
            };
            within(bounds, &ask, &name)
        }
    };
    if let Err(bound) = inside {
        let state = RequestState::Refused(bound.clone());
        let id = task.agent.file_request(grant, why, state);
        let view = task.agent.request(&id).map(|r| view(&r, timeout));
        let mut json = serde_json::to_value(view).unwrap_or_default();
        json["message"] = format!("refused at once: {bound}").into();
        return Ok((StatusCode::FORBIDDEN, json));
    }
    let held = Held {
        conn: ctx.conn_id,
        method: grant.methods.as_ref().map_or("*".into(), |m| m.join(",")),
        scheme: Scheme::Https,
        host: grant.host.clone(),
        port: grant.port,
        path: Some(grant.paths.as_ref().map_or("/**".into(), |p| p.join(","))),
        rule: None,
        secrets: grant.secrets.clone(),
        why: Why::Grant,
        agent_why: why.clone(),
    };
    let id = task
        .agent
        .file_request(grant.clone(), why, RequestState::Pending);
    tokio::spawn(wait_for_human(
        shared.clone(),
        task.clone(),
        id.clone(),
        grant,
        held,
    ));
    let view = task.agent.request(&id).map(|r| view(&r, timeout));
    Ok((
        StatusCode::ACCEPTED,
        serde_json::to_value(view).unwrap_or_default(),
    ))
}

/// Holds the grant for a human; approved, adds it to the task before the agent can see it
/// approved.
async fn wait_for_human(
    shared: Arc<Shared>,
    task: Arc<LiveTask>,
    id: String,
    grant: Grant,
    held: Held,
) {
    let snapshot = shared.snapshot();
    let outcome = shared
        .approvals
        .hold(&snapshot, &shared.audit, &task, held)
        .await;
    let state = match outcome {
        Outcome::Approved => {
            task.agent.add_grant(grant);
            RequestState::Approved
        }
        Outcome::Denied(note) => RequestState::Denied(note),
        Outcome::TimedOut => RequestState::TimedOut,
        Outcome::QueueFull => RequestState::Refused(
            "this task already has the most requests waiting for a human; wait for answers".into(),
        ),
        Outcome::TaskEnded => RequestState::Refused("the task ended".into()),
    };
    task.agent.set_state(&id, state);
}

pub(super) fn poll(shared: &Arc<Shared>, task: &LiveTask, id: &str) -> Answer {
    match task.agent.request(id) {
        Some(request) => Ok((
            StatusCode::OK,
            serde_json::to_value(view(
                &request,
                shared.snapshot().config.approval.timeout.as_secs(),
            ))
            .unwrap_or_default(),
        )),
        None => Err((
            StatusCode::NOT_FOUND,
            Reason::BadRequest,
            format!(
                "this task has no request {}",
                id.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// The ask's shape: a valid host pattern, port, tokens as methods, valid path patterns.
fn checked_grant(asked: &AskBody) -> Result<Grant, (StatusCode, Reason, String)> {
    let host = asked.host.trim().to_ascii_lowercase();
    HostPattern::parse(&host).map_err(|e| bad(format!("host: {e}")))?;
    if host == INTERNAL_HOST {
        return Err(bad(format!("{INTERNAL_HOST} cannot be granted")));
    }
    let port = asked.port.unwrap_or(443);
    if port == 0 {
        return Err(bad("port: use a port from 1 to 65535"));
    }
    let methods = match &asked.methods {
        Some(list) if list.is_empty() => return Err(bad("methods is empty; omit it for any")),
        Some(list) => {
            let token = |m: &String| {
                !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            };
            if let Some(m) = list.iter().find(|m| !token(m)) {
                return Err(bad(format!(
                    "\"{}\" is not an HTTP method",
                    m.chars().take(20).collect::<String>()
                )));
            }
            Some(list.iter().map(|m| m.to_ascii_uppercase()).collect())
        }
        None => None,
    };
    let paths = match &asked.paths {
        Some(list) if list.is_empty() => return Err(bad("paths is empty; omit it for any")),
        Some(list) => {
            // Shown to the human in `keyswap approvals`: no control character may reach a
            // terminal, and a path has no whitespace.
            if list
                .iter()
                .any(|p| p.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                return Err(bad(
                    "paths: a path pattern holds a control character or whitespace",
                ));
            }
            PathPatterns::new(list).map_err(|errors| {
                let e = &errors[0];
                bad(format!("paths: {}; {}", e.message, e.fix))
            })?;
            Some(list.clone())
        }
        None => None,
    };
    let mut secrets = asked.secrets.clone();
    secrets.dedup();
    Ok(Grant {
        host,
        port,
        methods,
        paths,
        secrets,
    })
}

fn view(request: &GrantRequest, timeout_secs: u64) -> RequestView {
    let reason = match &request.state {
        RequestState::Denied(note) => note.clone(),
        RequestState::Refused(why) => Some(why.clone()),
        RequestState::TimedOut => {
            Some("nobody answered in time; ask again later or ask the operator".into())
        }
        RequestState::Pending | RequestState::Approved => None,
    };
    RequestView {
        id: request.id.clone(),
        status: request.state.as_str().to_string(),
        grant: request.grant.clone(),
        why: request.why.clone(),
        asked_at: request.asked_at.clone(),
        reason,
        poll: format!("https://{INTERNAL_HOST}/v1/self/requests/{}", request.id),
        timeout_secs,
    }
}
