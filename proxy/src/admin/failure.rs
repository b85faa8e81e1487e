//! The admin API's error answers: a status and a JSON [`ApiError`] with a reason from a
//! closed set and a message an operator can act on. Never puts a token or a secret value in
//! a message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::ApiError;
use crate::lifecycle::tasks::TaskError;

pub(super) fn failure(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = ApiError {
        reason: reason.to_string(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

pub(super) fn task_failure(e: TaskError) -> Response {
    let status = match e {
        TaskError::UnknownTask(_) => StatusCode::NOT_FOUND,
        TaskError::DuplicateId(_) | TaskError::StaticTask(_) => StatusCode::CONFLICT,
        TaskError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    failure(status, e.reason(), e.to_string())
}
