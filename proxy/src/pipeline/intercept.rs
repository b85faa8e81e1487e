//! Step 3: intercept TLS inside an allowed CONNECT. The ClientHello is read first: an SNI
//! that is not the CONNECT host ends the connection before any certificate is shown. Then the
//! cached per-host `ServerConfig` (minted once per host) terminates TLS, and each request on
//! the connection goes to [`crate::pipeline::exchange::exchange`] over HTTP/2 or HTTP/1.1 as ALPN chose.
//!
//! An agent that refuses keyswap's certificate (it does not trust keyswap's CA: the most
//! common set-up error) is audited as `agent_tls_failed` and logged at WARN once per task and
//! host.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use crate::audit::decision::Decision;
use crate::audit::decision::Reason;
use crate::audit::record::{Sent, Started};
use crate::pipeline::conn::serve_until;
use crate::pipeline::conn::{http1_server, http2_server};
use crate::pipeline::context::ConnContext;
use crate::pipeline::exchange::exchange;
use crate::state::shared::Shared;
use crate::state::tasks::TaskConnection;
use crate::wire::target::normalize_host;

/// How long the agent may take to complete the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The explicit door's entry: the CONNECT's upgraded stream, the target already decided.
pub async fn run(shared: Arc<Shared>, ctx: ConnContext, on_upgrade: OnUpgrade) {
    let task_conn = ctx.task.connection(&shared.metrics);
    let tls = until_revoked(&ctx, &task_conn, accept_tls(&shared, &ctx, on_upgrade)).await;
    if let Some(tls) = tls {
        serve(shared, ctx, task_conn, tls).await;
    }
}

/// The transparent door's entry: `io` is the agent's own TCP stream, its ClientHello not
/// consumed (or replayed), the target already decided. From here on it is [`run`].
pub async fn run_stream<IO>(shared: Arc<Shared>, ctx: ConnContext, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let task_conn = ctx.task.connection(&shared.metrics);
    let tls = until_revoked(&ctx, &task_conn, handshake(&shared, &ctx, io)).await;
    if let Some(tls) = tls {
        serve(shared, ctx, task_conn, tls).await;
    }
}

/// `handshake`'s result, or `None` if the task ends first. The connection is registered
/// with its task before the handshake, so a revocation closes it in every phase — also while
/// it waits for the agent's ClientHello or handshake (up to [`HANDSHAKE_TIMEOUT`]).
async fn until_revoked<T>(
    ctx: &ConnContext,
    task_conn: &TaskConnection,
    handshake: impl std::future::Future<Output = Option<T>>,
) -> Option<T> {
    tokio::select! {
        tls = handshake => tls,
        _ = task_conn.revoked() => {
            tracing::debug!(conn = ctx.conn_id, task = %ctx.task.id, "connection closed before TLS: task ended");
            None
        }
    }
}

/// Serves the requests of an intercepted connection until it ends or its task does.
async fn serve<IO>(
    shared: Arc<Shared>,
    ctx: ConnContext,
    task_conn: TaskConnection,
    tls: tokio_rustls::server::TlsStream<IO>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ctx.conn_id;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let h2_streams = shared.snapshot().config.limits.per_connection.h2_streams;
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req| exchange(shared.clone(), ctx.clone(), req));
    let io = TokioIo::new(tls);
    let served = if h2 {
        serve_until!(
            http2_server(h2_streams).serve_connection(io, service),
            task_conn.revoked()
        )
    } else {
        let connection = http1_server().serve_connection(io, service).with_upgrades();
        serve_until!(connection, task_conn.revoked())
    };
    if served.is_none() {
        tracing::debug!(conn, task = %task_conn.task().id, "intercepted connection closed: task ended");
    }
    if let Some(Err(e)) = served {
        tracing::debug!(conn, error = %e, "intercepted connection ended with an error");
    }
}

/// The CONNECT upgrade, then [`handshake`]; `None` when the connection is to end.
pub(crate) async fn accept_tls(
    shared: &Shared,
    ctx: &ConnContext,
    on_upgrade: OnUpgrade,
) -> Option<tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(conn = ctx.conn_id, error = %e, "CONNECT upgrade failed");
            return None;
        }
    };
    handshake(shared, ctx, TokioIo::new(upgraded)).await
}

/// The ClientHello (SNI checked against the target) and the TLS handshake with a leaf for
/// the target host, on any stream; `None` when the connection is to end.
pub(crate) async fn handshake<IO>(
    shared: &Shared,
    ctx: &ConnContext,
    io: IO,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let started = Started::now();
    let conn = ctx.conn_id;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(conn, error = %e, "agent TLS ClientHello refused");
            return None;
        }
        Err(_) => {
            tracing::debug!(conn, "agent TLS ClientHello timed out");
            return None;
        }
    };
    if let Some(sni) = start.client_hello().server_name() {
        if normalize_host(sni).ok().as_deref() != Some(ctx.target.host.as_str()) {
            let subject = ctx.connection_subject(started);
            let decision = Decision::new(Reason::SniMismatch);
            let why = "the TLS handshake's SNI names another host than the connection's";
            shared.record(&subject, &decision, Sent::status(0), Some(why));
            return None;
        }
    }
    let server_config = match shared.leaves.server_config(&ctx.target.host).await {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(conn, host = %ctx.target.host, error = %e, "could not mint a certificate");
            return None;
        }
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(server_config)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            match certificate_refused(&e) {
                Some(alert) => agent_tls_failed(shared, ctx, alert, started),
                None => tracing::debug!(conn, error = %e, "agent TLS handshake failed"),
            }
            return None;
        }
        Err(_) => {
            tracing::debug!(conn, "agent TLS handshake timed out");
            return None;
        }
    };
    Some(tls)
}

/// The alert an agent sent because it would not accept keyswap's certificate, if that is
/// why the handshake failed. `unknown_ca` (OpenSSL: curl, Python, Node; rustls),
/// `bad_certificate` (Go) and `certificate_unknown` (Java) all mean the same here.
fn certificate_refused(e: &std::io::Error) -> Option<AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown),
        ) => Some(*alert),
        _ => None,
    }
}

/// Audits every certificate refusal; warns once per task and host.
fn agent_tls_failed(shared: &Shared, ctx: &ConnContext, alert: AlertDescription, started: Started) {
    let (conn, task, host) = (ctx.conn_id, &ctx.task.id, &ctx.target.host);
    if shared.agent_tls_warnings.first(task, host) {
        tracing::warn!(
            conn,
            %task,
            %host,
            alert = ?alert,
            reason = %Reason::AgentTlsFailed,
            "the agent refused keyswap's certificate: it does not trust keyswap's CA; \
             give it the CA certificate (keyswap ca export; SSL_CERT_FILE, REQUESTS_CA_BUNDLE, \
             NODE_EXTRA_CA_CERTS) or start it with keyswap exec (further failures for this \
             task and host are logged at DEBUG)"
        );
    } else {
        tracing::debug!(conn, %task, %host, alert = ?alert, "the agent refused keyswap's certificate again");
    }
    let subject = ctx.connection_subject(started);
    let why = "the agent refused keyswap's certificate";
    shared.record(
        &subject,
        &Decision::new(Reason::AgentTlsFailed),
        Sent::status(0),
        Some(why),
    );
}
