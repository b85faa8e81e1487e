//! `tunnel: true` rules: the CONNECT is passed through without interception — so nothing can
//! be swapped and nothing is scrubbed. The upstream is dialled (under the same address rules)
//! before the agent is told 200, so a refusal of the dial is still an HTTP answer. A tunnel
//! holds one of its task's upstream-connection slots for its whole life
//! ([`crate::pipeline::fair`]); none free in time is a `task_busy` refusal of the CONNECT.
//!
//! Before any byte reaches the upstream, the agent's TLS ClientHello is read
//! ([`crate::wire::client_hello`]) and its SNI must name the CONNECT host: otherwise a tunnel
//! granted for host A could carry a TLS session for host B served at the same address
//! (domain fronting). A ClientHello without SNI is refused too (`sni_mismatch`), unless the
//! CONNECT named an IP address, where clients send none (RFC 6066 §3 allows only DNS names).
//! Bytes that are not a ClientHello are refused with `bad_request`. A refusal closes the
//! agent's connection (the 200 has been sent) and is audited; the upstream sees nothing.
//! Otherwise the hello is written to the upstream and both sides are spliced byte for byte.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::audit::decision::{Decision, Denial, Reason};
use crate::audit::record::{Sent, Started};
use crate::pipeline::context::ConnContext;
use crate::pipeline::fair::{self, UpstreamSlot};
use crate::state::shared::Shared;
use crate::state::tasks::TaskConnection;
use crate::upstream::{ConnectError, Transport};
use crate::wire::client_hello::{peek_client_hello, PeekError, PeekLimits, PeekedHello};
use crate::wire::target::{normalize_host, Target};

/// A tunnel's upstream connection, with the upstream-connection slot it holds for its life
/// ([`fair`]).
pub struct Dialled {
    pub stream: Transport,
    _slot: UpstreamSlot,
}

impl Dialled {
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

/// Takes one of the task's upstream-connection slots ([`fair::upstream_slot`]), then dials
/// the upstream of a tunnel (under the same address rules as every upstream, through the
/// parent proxy when one is configured); a failure is a refusal the door delivers.
pub async fn dial(shared: &Shared, ctx: &ConnContext) -> Result<Dialled, Denial> {
    let snapshot = shared.snapshot();
    let slot = fair::upstream_slot(shared, &snapshot, &ctx.task).await?;
    let stream = snapshot
        .upstream
        .dialer
        .dial(&ctx.target)
        .await
        .map_err(|e| {
            let reason = match e {
                ConnectError::PrivateAddress { .. } => Reason::PrivateAddress,
                _ => Reason::UpstreamError,
            };
            Denial {
                parent_status: e.parent_status(),
                ..Denial::new(reason, e.to_string())
            }
        })?;
    Ok(Dialled {
        stream,
        _slot: slot,
    })
}

/// Checks the agent's ClientHello, then splices its upgraded connection with the dialled
/// upstream until either closes, then writes the audit record with the bytes each way.
pub async fn splice(
    shared: Arc<Shared>,
    ctx: ConnContext,
    rule: usize,
    agent: OnUpgrade,
    upstream: Dialled,
    started: Started,
) {
    let conn = ctx.conn_id;
    let task_conn = ctx.task.connection(&shared.metrics);
    let revoked = task_conn.revoked();
    tokio::pin!(revoked);
    let mut agent = match agent.await {
        Ok(agent) => TokioIo::new(agent),
        Err(e) => {
            tracing::debug!(conn, error = %e, "tunnel upgrade failed");
            return;
        }
    };
    let hello = tokio::select! {
        peeked = peek_client_hello(&mut agent, PeekLimits::default()) => peeked,
        _ = &mut revoked => {
            tracing::debug!(conn, "tunnel closed before TLS: task ended");
            return;
        }
    };
    let hello = match check_hello(&ctx.target, hello) {
        Ok(hello) => hello,
        Err((reason, why)) => {
            drop(task_conn);
            let decision = Decision {
                rule: Some(rule),
                tunnel: true,
                ..Decision::new(reason)
            };
            let subject = ctx.connection_subject(started);
            shared.record(&subject, &decision, Sent::status(0), Some(why));
            return;
        }
    };
    relay(
        &shared, &ctx, rule, agent, upstream, hello, task_conn, started,
    )
    .await;
}

/// Writes the agent's ClientHello (already read and checked against the target) to the
/// upstream, then splices both sides byte for byte until either closes or the task ends,
/// then audits the tunnel with the bytes each way. Both doors end here.
#[allow(clippy::too_many_arguments)]
pub async fn relay<IO>(
    shared: &Shared,
    ctx: &ConnContext,
    rule: usize,
    mut agent: IO,
    mut upstream: Dialled,
    hello: bytes::Bytes,
    task_conn: TaskConnection,
    started: Started,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = ctx.conn_id;
    let revoked = task_conn.revoked();
    tokio::pin!(revoked);
    let (mut sent, mut received) = (hello.len() as u64, 0);
    if let Err(e) = upstream.stream.write_all(&hello).await {
        tracing::debug!(conn, error = %e, "tunnel ended");
    } else {
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut agent, &mut upstream.stream) => match copied {
                Ok((to_upstream, to_agent)) => {
                    sent += to_upstream;
                    received = to_agent;
                }
                Err(e) => tracing::debug!(conn, error = %e, "tunnel ended"),
            },
            _ = &mut revoked => {
                tracing::debug!(conn, "tunnel closed: task ended");
            }
        }
    }
    drop(task_conn);
    let decision = Decision {
        rule: Some(rule),
        tunnel: true,
        ..Decision::new(Reason::Allowed)
    };
    let sent = Sent {
        status: http::StatusCode::OK.as_u16(),
        req_bytes: sent,
        resp_bytes: received,
    };
    shared.record(&ctx.connection_subject(started), &decision, sent, None);
}

/// The buffered ClientHello if its SNI names `target`; else the refusal's reason and a
/// short cause for the log.
fn check_hello(
    target: &Target,
    peeked: Result<(PeekedHello, bytes::Bytes), PeekError>,
) -> Result<bytes::Bytes, (Reason, &'static str)> {
    let (hello, buffered) = match peeked {
        Ok(peeked) => peeked,
        Err(PeekError::NotTls) => return Err((Reason::BadRequest, "the agent did not start TLS")),
        Err(PeekError::TooLarge(_)) => {
            return Err((Reason::BadRequest, "the ClientHello is too large"))
        }
        Err(PeekError::Timeout) => {
            return Err((Reason::BadRequest, "the ClientHello did not arrive in time"))
        }
        Err(PeekError::Closed | PeekError::Io(_)) => {
            return Err((
                Reason::BadRequest,
                "the agent closed before its ClientHello",
            ))
        }
    };
    match hello.sni.as_deref() {
        Some(sni) if normalize_host(sni).ok().as_deref() == Some(target.host.as_str()) => {
            Ok(buffered)
        }
        Some(_) => Err((Reason::SniMismatch, "the SNI names another host")),
        None if target.ip().is_some() => Ok(buffered),
        None => Err((Reason::SniMismatch, "the ClientHello has no SNI")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> Target {
        Target {
            host: host.into(),
            port: 443,
        }
    }

    fn hello(sni: Option<&str>) -> Result<(PeekedHello, bytes::Bytes), PeekError> {
        Ok((
            PeekedHello {
                sni: sni.map(str::to_string),
                alpn: Vec::new(),
            },
            bytes::Bytes::from_static(b"hello"),
        ))
    }

    #[test]
    fn sni_must_name_the_connect_host() {
        let reason = |t: &str, peeked| check_hello(&target(t), peeked).err().map(|e| e.0);
        assert_eq!(reason("a.test", hello(Some("a.test"))), None);
        assert_eq!(reason("a.test", hello(Some("A.Test."))), None);
        assert_eq!(
            reason("a.test", hello(Some("b.test"))),
            Some(Reason::SniMismatch)
        );
        assert_eq!(reason("a.test", hello(None)), Some(Reason::SniMismatch));
        assert_eq!(reason("127.0.0.1", hello(None)), None);
        assert_eq!(reason("::1", hello(None)), None);
        assert_eq!(
            reason("127.0.0.1", hello(Some("b.test"))),
            Some(Reason::SniMismatch)
        );
        assert_eq!(
            reason("a.test", Err(PeekError::NotTls)),
            Some(Reason::BadRequest)
        );
        assert_eq!(
            reason("a.test", Err(PeekError::Timeout)),
            Some(Reason::BadRequest)
        );
    }
}
