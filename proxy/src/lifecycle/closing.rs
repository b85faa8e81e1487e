//! Serving a connection for as long as its task lives. When the task is revoked or expires,
//! an HTTP connection is asked to shut down (HTTP/2: GOAWAY; HTTP/1.1: close after the
//! response in flight) and is dropped after [`REVOKE_GRACE`] whatever it is doing, so a
//! body still streaming is cut rather than allowed to finish.

use std::time::Duration;

/// How long a revoked connection may take to finish its GOAWAY / close before it is dropped.
pub const REVOKE_GRACE: Duration = Duration::from_millis(100);

/// `serve_until!(connection, ended)`: drives a hyper server connection to its end, or — if
/// `ended` resolves first — begins its graceful shutdown and drops it after
/// [`REVOKE_GRACE`]. Evaluates to `Some(result)` when the connection ended by itself, `None`
/// when it was closed.
///
/// A macro rather than a generic function: hyper's connection types carry higher-ranked
/// bounds that a generic `async fn` over them cannot state for `tokio::spawn`.
macro_rules! serve_until {
    ($connection:expr, $ended:expr) => {{
        let connection = $connection;
        let ended = $ended;
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => Some(result),
            _ = ended => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(
                    $crate::lifecycle::closing::REVOKE_GRACE,
                    connection,
                )
                .await;
                None
            }
        }
    }};
}

pub(crate) use serve_until;
