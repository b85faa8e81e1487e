//! The one accept loop both doors run: each accepted connection is served on its own task
//! until the proxy stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::doors::{explicit, transparent};
use crate::state::shared::Shared;

/// How long the loop waits after a failed accept: short enough that a freed descriptor is
/// used at once, long enough not to spin on a full descriptor table.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Which door a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `HTTPS_PROXY` / `HTTP_PROXY`: CONNECT and absolute-form requests.
    Explicit,
    /// Connections redirected by iptables/nftables, read by their original destination.
    Transparent,
}

/// Accepts connections on `listener` for `door` until `stop` changes.
pub async fn accept_loop(
    door: Door,
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    // Failed accepts since the last one that succeeded.
    let mut failures: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if failures > 0 {
                        tracing::warn!(door = ?door, failures, "accepting again");
                        failures = 0;
                    }
                    let shared = shared.clone();
                    match door {
                        Door::Explicit => tokio::spawn(explicit::serve(shared, stream)),
                        Door::Transparent => tokio::spawn(transparent::serve(shared, stream, peer)),
                    };
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) and similar: the connection
                    // stays in the listen backlog, so back off briefly instead of spinning,
                    // count it, and log the first of a run rather than every one.
                    shared.metrics.fair.accept_failed();
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(door = ?door, error = %e, "accept failed; backing off");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}
