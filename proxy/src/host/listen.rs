//! Binding keyswap's own listeners on this machine, with errors that name which listener and
//! which address.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::error::ProxyError;

/// Binds `addr` for the listener named `what`; the error names both.
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Io {
            what: format!("{what}: listen on {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ProxyError::Io {
        what: format!("{what}: listener address"),
        source,
    })?;
    Ok((listener, local))
}
