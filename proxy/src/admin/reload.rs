//! `POST /v1/reload`: reads the config file again (and reopens the audit file, for log
//! rotation), then hands the new config to the lifecycle's reload. A config that does not
//! load or validate leaves the running one in place.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::failure::failure;
use super::state::AdminState;

pub(super) async fn reload(State(state): State<AdminState>) -> Response {
    let Some(path) = state.config_path.clone() else {
        return failure(
            StatusCode::CONFLICT,
            "no_config_file",
            "this keyswap was not started from a config file, so there is nothing to reload",
        );
    };
    // Log rotation: logrotate renames the audit file, then asks for a reload.
    let shared = state.shared.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        shared.audit.reopen_blocking();
        keyswap_config::load(&path)
    })
    .await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(errors)) => {
            tracing::error!(errors = %errors, "config not reloaded; keeping the running one");
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                format!("the config was not reloaded; the running one stays:\n{errors}"),
            );
        }
        Err(_) => {
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the config load did not finish",
            )
        }
    };
    match crate::lifecycle::reload::reload(&state.shared, config) {
        // The reload logs its own one-line summary of what changed.
        Ok(summary) => Json(summary).into_response(),
        Err(e) => failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            format!("the config was not reloaded; the running one stays: {e}"),
        ),
    }
}
