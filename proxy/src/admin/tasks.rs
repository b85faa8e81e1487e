//! The routes of `/v1/tasks`: issue (with or without a lifeline), list, show and revoke.
//! Only the issue answer carries a token; list and show never do.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::failure::{failure, json_body, task_failure};
use super::issued::issued_task;
use super::lifeline;
use super::state::{AdminState, PeerPid};
use crate::api::{IssueRequest, TaskList};
use crate::lifecycle::tasks::{self, TaskError};
use crate::state::tasks::RevokeWhy;

pub(super) async fn issue(
    State(state): State<AdminState>,
    peer: Option<Extension<PeerPid>>,
    body: Result<Json<IssueRequest>, JsonRejection>,
) -> Response {
    let request = match json_body(body, "{\"policy\":\"github-rw\",\"ttl\":\"30m\"}") {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let issued = match crate::fleet::issue(&state.shared, &request).await {
        Ok(issued) => issued,
        Err(e) => return task_failure(e),
    };
    let answer = issued_task(
        &state.shared,
        &state.trust,
        &issued,
        &request,
        state.config_path.as_deref(),
    );
    if !request.lifeline {
        return (StatusCode::CREATED, Json(answer)).into_response();
    }
    // In a fleet, the lifeline is also a heartbeat in the store while this replica holds it.
    crate::fleet::lifeline::beat(&state.shared, &issued.task);
    lifeline::respond(
        state.shared.clone(),
        issued.task.clone(),
        &answer,
        state.stop.clone(),
        peer.map(|Extension(PeerPid(pid))| state.lifelines.hold(pid)),
    )
}

pub(super) async fn list(State(state): State<AdminState>) -> Response {
    let snapshot = state.shared.snapshot();
    let mut holders = crate::fleet::presence::holders(&state.shared).await;
    let tasks = state
        .shared
        .tasks
        .all()
        .iter()
        .map(|t| {
            let mut info = tasks::info(&snapshot.config, &state.shared.leases, t);
            info.replicas = holders.remove(&t.id).unwrap_or_default();
            info
        })
        .collect();
    Json(TaskList { tasks }).into_response()
}

pub(super) async fn show(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match state.shared.tasks.get(&id) {
        Some(task) => {
            let mut info =
                tasks::info(&state.shared.snapshot().config, &state.shared.leases, &task);
            let mut holders = crate::fleet::presence::holders(&state.shared).await;
            info.replicas = holders.remove(&id).unwrap_or_default();
            Json(info).into_response()
        }
        None => task_failure(TaskError::UnknownTask(id)),
    }
}

#[derive(Deserialize)]
pub(super) struct RevokeQuery {
    why: Option<String>,
}

pub(super) async fn revoke(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<RevokeQuery>,
) -> Response {
    let why = match query.why.as_deref() {
        None | Some("api") => RevokeWhy::Api,
        Some("exit") => RevokeWhy::Exit,
        Some(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "why must be \"api\" or \"exit\"",
            )
        }
    };
    match tasks::revoke(&state.shared, &id, why) {
        Ok(revoked) => Json(revoked).into_response(),
        Err(e) => task_failure(e),
    }
}
