//! What a redirected connection tells about where the agent meant to go: the original
//! destination REDIRECT rewrote ([`original_destination`]), and how the address the agent
//! dialled compares with keyswap's own resolution of the name (logged only: keyswap always
//! dials its own).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::upstream::Dialer;
use crate::wire::target::Target;

/// The address the agent dialled before REDIRECT rewrote it.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let v4_first = stream.local_addr()?.ip().to_canonical().is_ipv4();
    let (first, second) = if v4_first {
        (socket.original_dst_v4(), socket.original_dst_v6())
    } else {
        (socket.original_dst_v6(), socket.original_dst_v4())
    };
    let addr = first.or_else(|e| second.map_err(|_| e))?;
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))?;
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

/// Resolves `target` as the upstream leg will, and logs how it compares with the address
/// the agent dialled.
pub(crate) async fn compare_resolution(
    dialer: Arc<Dialer>,
    conn: u64,
    target: Target,
    original: SocketAddr,
) {
    match dialer.resolve(&target).await {
        Ok(resolved) => compare(conn, &target, original, &resolved),
        Err(e) => {
            tracing::debug!(conn, host = %target.host, error = %e, "no resolution to compare with the agent's")
        }
    }
}

pub(crate) fn compare(conn: u64, target: &Target, original: SocketAddr, resolved: &[SocketAddr]) {
    let agent: IpAddr = original.ip().to_canonical();
    if resolved.iter().any(|a| a.ip().to_canonical() == agent) {
        tracing::debug!(conn, host = %target.host, %original, "the agent dialled keyswap's own resolution");
    } else {
        let keyswap: Vec<String> = resolved.iter().map(ToString::to_string).collect();
        tracing::info!(
            conn,
            host = %target.host,
            agent_dialled = %original,
            keyswap_dials = %keyswap.join(","),
            "the agent's address for this host differs from keyswap's resolution; keyswap dials its own"
        );
    }
}
