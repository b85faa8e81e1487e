//! The routes of `/v1/approvals`: list the held requests, and answer one (approve with a
//! scope, or deny with a reason). A denial's reason reaches the agent, so it is scrubbed of
//! every secret value first; who answered is recorded from the caller the guard found.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::failure::{failure, json_body};
use super::state::{AdminState, Caller};
use crate::api::{AnswerRequest, ApprovalList};
use crate::fleet::approvals::AnswerFailed;
use crate::state::approvals::{sanitise_note, Answer, Scope};
use crate::state::shared::Shared;

#[derive(Deserialize)]
pub(super) struct ApprovalsQuery {
    task: Option<String>,
}

pub(super) async fn list_approvals(
    State(state): State<AdminState>,
    Query(query): Query<ApprovalsQuery>,
) -> Response {
    let approvals = crate::fleet::approvals::list(&state.shared, query.task.as_deref()).await;
    Json(ApprovalList { approvals }).into_response()
}

pub(super) async fn answer_approval(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Response {
    let request = match json_body(
        body,
        "{\"answer\":\"approve\",\"scope\":\"once\"} or {\"answer\":\"deny\",\"reason\":\"...\"}",
    ) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let by = caller.map_or_else(|| "unknown".to_string(), |Extension(c)| c.0);
    let answer = match answer_of(&request, by, &state.shared) {
        Ok(answer) => answer,
        Err((reason, message)) => return failure(StatusCode::BAD_REQUEST, reason, message),
    };
    // In a fleet the request may wait on another replica: the answer goes there.
    match crate::fleet::approvals::answer(&state.shared, &id, answer).await {
        Ok(answered) => Json(answered).into_response(),
        Err(AnswerFailed::Unknown(e)) => {
            failure(StatusCode::NOT_FOUND, "unknown_approval", e.to_string())
        }
        Err(e @ AnswerFailed::NoReply(_)) => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "store_unavailable",
            e.to_string(),
        ),
    }
}

/// Why an answer was refused (400): its reason and message.
type BadAnswer = (&'static str, &'static str);

/// The answer `request` gives, answered `by`; or what is wrong with it.
fn answer_of(request: &AnswerRequest, by: String, shared: &Shared) -> Result<Answer, BadAnswer> {
    match (request.answer.as_str(), request.scope.as_deref()) {
        ("approve", scope) => match Scope::parse(scope.unwrap_or("once")) {
            Some(scope) if request.reason.is_none() => Ok(Answer::Approve { scope, by }),
            Some(_) => Err((
                "bad_request",
                "a reason goes with a denial; approve without one",
            )),
            None => Err(("bad_scope", "scope must be \"once\", \"task\" or \"rule\"")),
        },
        ("deny", None) => Ok(Answer::Deny {
            note: request
                .reason
                .as_deref()
                .and_then(sanitise_note)
                .map(|note| scrubbed(shared, note)),
            by,
        }),
        ("deny", Some(_)) => Err((
            "bad_request",
            "a scope goes with an approval; deny without one",
        )),
        _ => Err(("bad_request", "answer must be \"approve\" or \"deny\"")),
    }
}

/// A denial's note with every secret value replaced by its placeholder: a reason pasted
/// with a credential in it must not reach the agent.
fn scrubbed(shared: &Shared, note: String) -> String {
    let scrubber = &shared.snapshot().scrubber;
    match scrubber.replace_all(note.as_bytes()) {
        Some(scrubbed) => String::from_utf8_lossy(&scrubbed).into_owned(),
        None => note,
    }
}
