//! `tunnel: true` rules: the CONNECT is passed through byte for byte, without interception —
//! so nothing can be swapped and nothing is scrubbed. The upstream is dialled (under the same
//! address rules) before the agent is told 200, so a refusal is still an HTTP answer.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::audit::AuditRecord;
use crate::decision::Reason;
use crate::route::ConnContext;
use crate::server::Shared;

/// Splices the agent's upgraded connection with the dialled upstream until either closes,
/// then writes the audit record with the bytes each way.
pub async fn splice(
    shared: Arc<Shared>,
    ctx: ConnContext,
    rule: usize,
    agent: OnUpgrade,
    mut upstream: TcpStream,
    started: (Instant, SystemTime),
) {
    let task_conn = ctx.task.connection(&shared.metrics);
    let (mut sent, mut received) = (0, 0);
    match agent.await {
        Ok(agent) => {
            let mut agent = TokioIo::new(agent);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut agent, &mut upstream) => match copied {
                    Ok((to_upstream, to_agent)) => {
                        sent = to_upstream;
                        received = to_agent;
                    }
                    Err(e) => tracing::debug!(conn = ctx.conn_id, error = %e, "tunnel ended"),
                },
                _ = task_conn.revoked() => {
                    tracing::debug!(conn = ctx.conn_id, "tunnel closed: task ended");
                }
            }
        }
        Err(e) => tracing::debug!(conn = ctx.conn_id, error = %e, "tunnel upgrade failed"),
    }
    drop(task_conn);
    let mut record = AuditRecord::for_connect(
        ctx.conn_id,
        Some(&ctx.task),
        Some(&ctx.target),
        Reason::Allowed,
        StatusCode::OK.as_u16(),
        started,
    );
    record.rule = Some(rule);
    record.req_bytes = sent;
    record.resp_bytes = received;
    shared.record_request(record);
}
