//! The guard in front of every route on the admin socket: who the peer is (`SO_PEERCRED`,
//! read once per connection) and whether it descends from a `keyswap exec` — then it is an
//! agent's process and is refused with 403 `sandboxed_peer` (see the admin module's docs).
//! Owns the walk of the peer's ancestry; never answers a route itself.

use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use super::failure::failure;
use super::lifeline::LifelineHolders;
use super::state::{Caller, PeerPid};
use crate::host::process_guard::{self, Lineage};

/// The peer of an admin socket connection (`SO_PEERCRED`) and its ancestors, read once
/// when the connection is accepted.
#[derive(Debug, Clone)]
pub(super) struct SocketPeer {
    uid: Option<u32>,
    pid: Option<i32>,
    ancestry: Ancestry,
}

#[derive(Debug, Clone)]
enum Ancestry {
    /// pid 0: the peer is in a pid namespace this proxy cannot see; nothing to walk.
    Unseen,
    Walked(Arc<Lineage>),
    /// The peer could not be placed (why, for the log): it is refused.
    Unknown(Arc<str>),
}

impl Connected<IncomingStream<'_, UnixListener>> for SocketPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let Ok(cred) = stream.io().peer_cred() else {
            return SocketPeer {
                uid: None,
                pid: None,
                ancestry: Ancestry::Unknown("SO_PEERCRED failed".into()),
            };
        };
        let ancestry = match cred.pid() {
            Some(0) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "admin socket peer is in a pid namespace keyswap cannot see: its ancestry \
                     is not checked"
                );
                Ancestry::Unseen
            }
            Some(pid) => walk(pid),
            None => Ancestry::Unknown("SO_PEERCRED gave no pid".into()),
        };
        SocketPeer {
            uid: Some(cred.uid()),
            pid: cred.pid(),
            ancestry,
        }
    }
}

/// The peer's ancestors, from `/proc` (a few small reads per ancestor).
fn walk(pid: i32) -> Ancestry {
    let Some(own) = process_guard::own_binary_name() else {
        return Ancestry::Unknown("keyswap cannot read its own /proc/self/exe".into());
    };
    match process_guard::lineage(Path::new("/proc"), pid, &own) {
        Ok(lineage) => Ancestry::Walked(Arc::new(lineage)),
        Err(e) => Ancestry::Unknown(e.to_string().into()),
    }
}

/// Why `peer` must be refused, if it must: it descends from a `keyswap exec`, or cannot be
/// told apart from a process that does.
fn refusal(peer: &SocketPeer, lifelines: &LifelineHolders) -> Option<String> {
    match &peer.ancestry {
        Ancestry::Unseen => None,
        Ancestry::Unknown(why) => Some(format!("its ancestry could not be read ({why})")),
        Ancestry::Walked(lineage) => {
            if let Some(exec) = lineage.exec_ancestor {
                return Some(format!("it descends from keyswap exec (pid {exec})"));
            }
            lifelines
                .nearest_in(&lineage.ancestors)
                .map(|holder| format!("it descends from the holder of a lifeline (pid {holder})"))
        }
    }
}

/// Refuses a peer that descends from a `keyswap exec`, on every route; tags the others with
/// who they are (for the audit of approvals) and their pid (for lifelines).
pub(super) async fn check_socket_peer(
    State(lifelines): State<Arc<LifelineHolders>>,
    ConnectInfo(peer): ConnectInfo<SocketPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(why) = refusal(&peer, &lifelines) {
        tracing::warn!(
            peer_pid = peer.pid.unwrap_or(0),
            peer_uid = peer.uid.map_or_else(|| "unknown".to_string(), |uid| uid.to_string()),
            method = %req.method(),
            path = req.uri().path(),
            why = %why,
            "admin API refused a peer that may be an agent (sandboxed_peer)"
        );
        let mut response = failure(
            StatusCode::FORBIDDEN,
            SANDBOXED_PEER,
            "this process runs under keyswap exec (or keyswap cannot tell that it does not): \
             the admin API does not take requests from an agent's command; the operator \
             issues, approves and revokes from outside it",
        );
        response.headers_mut().insert(
            "x-keyswap-reason",
            header::HeaderValue::from_static(SANDBOXED_PEER),
        );
        return response;
    }
    let name = match peer.uid {
        Some(uid) => format!("uid:{uid}"),
        None => "uid:unknown".to_string(),
    };
    req.extensions_mut().insert(Caller(name));
    if let Some(pid) = peer.pid.filter(|pid| *pid > 0) {
        req.extensions_mut().insert(PeerPid(pid));
    }
    next.run(req).await
}

/// The reason of a refusal of an agent's process on the admin socket.
pub const SANDBOXED_PEER: &str = "sandboxed_peer";
