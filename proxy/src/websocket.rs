//! Protocol upgrades (WebSocket): once the handshake request has been decided and swapped
//! like any other request and the upstream answered 101, the two upgraded connections are
//! spliced.
//!
//! Frames cannot be rewritten without re-framing, so the upstream → agent direction is
//! *guarded* instead of scrubbed: if a real secret value appears in it, the connection is
//! cut before those bytes reach the agent. Compression extensions are stripped from the
//! handshake (see [`crate::forward`]) so values cannot hide in deflated frames.

use std::sync::Arc;

use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::lifecycle::registry::TaskConnection;
use crate::replace::Replacer;

/// Joins the agent's and the upstream's upgraded connections in a background task, until
/// either side closes or the task is revoked.
pub fn splice(
    task_conn: TaskConnection,
    conn: u64,
    scrubber: Arc<Replacer>,
    agent: OnUpgrade,
    upstream: OnUpgrade,
) {
    tokio::spawn(async move {
        let revoked = task_conn.revoked();
        let (agent, upstream) = match tokio::join!(agent, upstream) {
            (Ok(agent), Ok(upstream)) => (agent, upstream),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(conn, error = %e, "protocol upgrade failed");
                return;
            }
        };
        let (mut agent_read, mut agent_write) = tokio::io::split(TokioIo::new(agent));
        let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
        let to_upstream = async {
            let _ = tokio::io::copy(&mut agent_read, &mut upstream_write).await;
            let _ = upstream_write.shutdown().await;
        };
        let to_agent = guarded_copy(conn, &scrubber, &mut upstream_read, &mut agent_write);
        // Either direction ending (or a guard trip, or revocation) ends the splice.
        tokio::select! {
            _ = to_upstream => {}
            _ = to_agent => {}
            _ = revoked => tracing::debug!(conn, "upgraded connection closed: task ended"),
        }
    });
}

async fn guarded_copy<R, W>(conn: u64, scrubber: &Replacer, from: &mut R, to: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry = BytesMut::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match scrubber.guard(&mut carry, &buf[..n]) {
            Some(safe) => {
                if to.write_all(&safe).await.is_err() || to.flush().await.is_err() {
                    return;
                }
            }
            None => {
                tracing::warn!(
                    conn,
                    "upgraded connection cut: the upstream sent a real secret value"
                );
                return;
            }
        }
    }
    let _ = to.write_all(&carry).await;
    let _ = to.shutdown().await;
}
