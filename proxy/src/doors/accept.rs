//! The one accept loop both doors run: each accepted connection is served on its own task
//! until the proxy stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::doors::{explicit, transparent};
use crate::state::shared::Shared;

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
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    match door {
                        Door::Explicit => tokio::spawn(explicit::serve(shared, stream)),
                        Door::Transparent => tokio::spawn(transparent::serve(shared, stream, peer)),
                    };
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(door = ?door, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}
