//! The guard in front of every route on the admin TCP listener: the request must carry
//! `Authorization: Bearer <admin token>`, compared in constant time. Never logs or echoes
//! what was presented.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::failure::failure;
use super::state::Caller;

/// Every request on the TCP listener needs the admin bearer token (compared in constant
/// time); the unix socket is guarded by its file mode instead.
pub(super) async fn require_bearer(
    token: Arc<SecretString>,
    caller: Caller,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = token
        .expose_secret()
        .as_bytes()
        .ct_eq(presented.trim().as_bytes())
        .into();
    if ok {
        req.extensions_mut().insert(caller);
        next.run(req).await
    } else {
        let mut response = failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <the admin token from admin.token_env>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"keyswap-admin\""),
        );
        response
    }
}
