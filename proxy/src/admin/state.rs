//! What every admin request handler is given: the proxy's shared state, the trust files an
//! issued task points at, the config path to reload from, the stop signal and the lifeline
//! holders; and what the guards in front of the routes learn about a request (who called,
//! from which pid). Holds no route and never touches a socket.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::lifeline::LifelineHolders;
use crate::host::child_env::TrustFiles;
use crate::state::shared::Shared;

#[derive(Clone)]
pub(super) struct AdminState {
    pub(super) shared: Arc<Shared>,
    /// The CA bundle and trust store an issued task's environment points at.
    pub(super) trust: TrustFiles,
    pub(super) config_path: Option<PathBuf>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) lifelines: Arc<LifelineHolders>,
}

/// Who called the admin API, as the audit names them.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The pid of the socket peer that sent a request (absent on TCP and for pid 0).
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerPid(pub(super) i32);
