//! The fleet (`store:`): several keyswap replicas share their runtime tasks and revocations
//! through a Redis (or Valkey) server the operator runs.
//!
//! Each replica keeps every fleet task in its own [`crate::state::tasks::TaskStore`] as a
//! cache, so the request path never waits on the store for a task it knows. The cache is
//! kept in line by pub/sub (an issue or an end on any replica reaches the others at once)
//! and by a reconciliation every [`RECONCILE_EVERY`] that catches what a replica missed.
//! A task issued elsewhere that an agent presents before its message arrived is looked up
//! once in the store ([`find`]).
//!
//! What is written to the store: per task its id, policy, issuer, times, the replica that
//! issued it and the SHA-256 digest of its token ([`record`]). Never a token, a secret value
//! or a lease credential; nothing here formats a token or its digest.
//!
//! Failing closed: while the store cannot be reached a replica issues no task
//! (`store_unavailable`) and serves the tasks it knows for `store.grace`, then refuses every
//! request until the store is back; when it is, the replica first sends the ends it made
//! meanwhile, then reconciles (a task revoked elsewhere meanwhile ends here), and only then
//! serves again ([`sync`]).

pub mod approvals;
pub mod budget;
pub mod connect;
pub mod issue;
pub mod life;
pub mod lifeline;
pub mod presence;
pub mod record;
pub mod sync;

use std::time::Duration;

pub use issue::{find, issue};
pub use sync::start;

/// How often a replica compares its tasks with the store's (a missed message is caught
/// within this).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// How often an idle replica checks that the store still answers.
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// Longest wait for one answer of the store before it counts as lost.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the store could not be used. Names the store's address, never its password.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the store closed the connection")]
    Closed,
    #[error("reading the store's ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
}

/// Runs `op` against the store with [`STORE_TIMEOUT`].
pub(crate) async fn timed<T>(
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(STORE_TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(FleetError::Timeout(STORE_TIMEOUT)),
    }
}
