//! The admin API's error answers: a status and a JSON [`ApiError`] with a reason from a
//! closed set and a message an operator can act on. Never puts a token or a secret value in
//! a message.

use axum::extract::rejection::JsonRejection;
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
        TaskError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    failure(status, e.reason(), e.to_string())
}

/// The JSON body of a request, or the 400 that shows what a body looks like (`example`).
pub(super) fn json_body<T>(
    body: Result<Json<T>, JsonRejection>,
    example: &str,
) -> Result<T, Box<Response>> {
    body.map(|Json(value)| value).map_err(|rejection| {
        Box::new(failure(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the body must be JSON like {example}: {}",
                rejection.body_text()
            ),
        ))
    })
}
