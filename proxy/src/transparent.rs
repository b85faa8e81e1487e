//! The transparent listener: the second front door. iptables/nftables REDIRECT sends an
//! agent's outbound TCP here, with no CONNECT and no proxy credentials, so this door finds
//! what the explicit listener reads from a CONNECT some other way:
//!
//! - **identify**: the task from `transparent.task`, or from the source address by
//!   `transparent.sources` (no task → closed, `no_task`);
//! - **target**: the original destination port (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`,
//!   through socket2) says how to read the connection (`transparent.ports`; any other port →
//!   closed, `port_not_allowed`); on a TLS port the ClientHello is read without being consumed
//!   and its SNI names the target host (no SNI: the original destination IP, which only a rule
//!   naming that IP allows); on an HTTP port each request's `Host` header names it.
//!
//! Then the decision is the one a CONNECT gets (`host_not_allowed` before any certificate is
//! minted), and the connection is handed to the explicit path's own code: [`intercept`] or
//! [`tunnel`] for TLS, [`crate::forward::exchange`] for plain HTTP. Nothing after the door
//! knows which door was used, except the audit record's `via`.
//!
//! This door never dials the address the agent dialled: the upstream is the target *name*,
//! resolved by keyswap under `upstream.resolve` and the private-address rules like every
//! other. The agent's own DNS answer is only compared with keyswap's and a difference logged.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyswap_config::{first_rule_for_host, PortMode, Scheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::audit::AuditRecord;
use crate::body::ProxyBody;
use crate::client_hello::{peek_client_hello, PeekError, PeekLimits};
use crate::decision::{Denial, Reason};
use crate::forward::exchange;
use crate::intercept;
use crate::lifecycle::closing::serve_until;
use crate::lifecycle::registry::{LiveTask, TaskConnection};
use crate::listener::http1_server;
use crate::route::{ConnContext, Via};
use crate::server::Shared;
use crate::target::{normalize_host, Target};
use crate::tunnel;
use crate::upstream::{ConnectError, Dialer};

pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve(shared.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "transparent accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

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

/// One accepted connection, before anything is decided.
struct Door {
    shared: Arc<Shared>,
    conn_id: u64,
    started: (Instant, SystemTime),
    original: SocketAddr,
}

impl Door {
    /// Audits a refusal of the whole connection (it is then closed: the agent gets no
    /// answer, as with a refused TLS handshake).
    fn refuse(
        &self,
        task: Option<&LiveTask>,
        target: &Target,
        scheme: &'static str,
        reason: Reason,
        why: &str,
    ) {
        tracing::info!(
            conn = self.conn_id,
            task = task.map_or("-", |t| t.id.as_str()),
            host = %target.host,
            port = target.port,
            %reason,
            why,
            "transparent connection refused"
        );
        let mut record =
            AuditRecord::for_connect(self.conn_id, task, Some(target), reason, 0, self.started);
        record.via = Via::Transparent.as_str();
        record.scheme = scheme;
        self.shared.record_request(record);
    }

    /// The original destination as a target (for records made before a name is known).
    fn original_target(&self) -> Target {
        Target {
            host: self.original.ip().to_string(),
            port: self.original.port(),
        }
    }
}

/// identify → target → (TLS: decide → intercept or tunnel | HTTP: forward per request).
async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    let started = (Instant::now(), SystemTime::now());
    let original = match original_destination(&stream) {
        Ok(original) => original,
        Err(e) => {
            // Not redirected (or no connection tracking): nothing says where it was going.
            tracing::info!(conn = conn_id, %peer, error = %e, "transparent connection without an original destination closed");
            return;
        }
    };
    let door = Door {
        shared,
        conn_id,
        started,
        original,
    };
    let snapshot = door.shared.snapshot();
    let Some(transparent) = snapshot.config.transparent.as_ref() else {
        // A reload removed `transparent:`; the listener stays until a restart.
        let why = "the running config has no transparent section";
        door.refuse(None, &door.original_target(), "tcp", Reason::NoTask, why);
        return;
    };
    let mode = transparent.port_mode(original.port());
    let scheme = match mode {
        Some(PortMode::Tls) => "https",
        Some(PortMode::Http) => "http",
        None => "tcp",
    };
    // Identify.
    let task = transparent
        .task_for(peer.ip())
        .and_then(|id| door.shared.tasks.get(id));
    let task = match task {
        Some(task) if !task.is_cancelled() => task,
        _ => {
            let why = "no task for this source address";
            door.refuse(None, &door.original_target(), scheme, Reason::NoTask, why);
            return;
        }
    };
    // How to read it.
    let Some(mode) = mode else {
        let why = "transparent.ports does not list the original destination port";
        door.refuse(
            Some(&task),
            &door.original_target(),
            scheme,
            Reason::PortNotAllowed,
            why,
        );
        return;
    };
    if task.is_expired(SystemTime::now()) {
        let why = "the task has expired";
        door.refuse(
            Some(&task),
            &door.original_target(),
            scheme,
            Reason::TaskExpired,
            why,
        );
        return;
    }
    drop(snapshot);
    // Registered from here on: revocation closes the connection in every phase.
    let task_conn = task.connection(&door.shared.metrics);
    match mode {
        PortMode::Tls => tls(door, task, task_conn, stream).await,
        PortMode::Http => http(door, task, task_conn, stream).await,
    }
}

/// Reads the ClientHello, decides on (task, SNI host, port) as a CONNECT would, then
/// intercepts (replaying the hello into the TLS handshake) or tunnels (writing it upstream).
async fn tls(door: Door, task: Arc<LiveTask>, task_conn: TaskConnection, mut stream: TcpStream) {
    let conn = door.conn_id;
    let peeked = tokio::select! {
        peeked = peek_client_hello(&mut stream, PeekLimits::default()) => peeked,
        _ = task_conn.revoked() => {
            tracing::debug!(conn, task = %task.id, "transparent connection closed before TLS: task ended");
            return;
        }
    };
    let (hello, buffered) = match peeked {
        Ok(peeked) => peeked,
        Err(e) => {
            let why = match e {
                PeekError::NotTls => "the agent did not start TLS on a tls port",
                PeekError::TooLarge(_) => "the ClientHello is too large",
                PeekError::Timeout => "the ClientHello did not arrive in time",
                PeekError::Closed | PeekError::Io(_) => "the agent closed before its ClientHello",
            };
            drop(task_conn);
            let target = door.original_target();
            door.refuse(Some(&task), &target, "https", Reason::BadRequest, why);
            return;
        }
    };
    // Target: the SNI, or (no SNI) the address the agent dialled, which only a rule naming
    // that IP allows.
    let host = match hello.sni.as_deref().map(normalize_host) {
        Some(Ok(host)) => host,
        Some(Err(_)) => {
            drop(task_conn);
            let target = door.original_target();
            let why = "the SNI is not a valid host name";
            door.refuse(Some(&task), &target, "https", Reason::BadRequest, why);
            return;
        }
        None => door.original.ip().to_string(),
    };
    let target = Target {
        host,
        port: door.original.port(),
    };
    // Decide, exactly as for a CONNECT: before any certificate exists.
    let snapshot = door.shared.snapshot();
    let rules = snapshot.rules_of(&task).unwrap_or_default();
    let Some(rule) = first_rule_for_host(rules, Scheme::Https, &target.host, target.port) else {
        drop(task_conn);
        let why = if hello.sni.is_none() {
            "no SNI, and no rule names the address the agent dialled"
        } else {
            "the SNI host is not in the task's allowlist"
        };
        door.refuse(Some(&task), &target, "https", Reason::HostNotAllowed, why);
        return;
    };
    let ctx = ConnContext {
        conn_id: conn,
        task: task.clone(),
        scheme: Scheme::Https,
        target,
        via: Via::Transparent,
    };
    let dialer = snapshot.upstream.dialer.clone();
    if rule.tunnel {
        let rule = rule.index;
        drop(snapshot);
        let upstream = match dialer.dial(&ctx.target).await {
            Ok(upstream) => upstream,
            Err(e) => {
                drop(task_conn);
                let reason = match e {
                    ConnectError::PrivateAddress { .. } => Reason::PrivateAddress,
                    _ => Reason::UpstreamError,
                };
                door.refuse(Some(&task), &ctx.target, "https", reason, &e.to_string());
                return;
            }
        };
        if let Ok(dialled) = upstream.peer_addr() {
            compare(conn, &ctx.target, door.original, &[dialled]);
        }
        tunnel::relay(
            &door.shared,
            &ctx,
            rule,
            stream,
            upstream,
            buffered,
            task_conn,
            door.started,
        )
        .await;
    } else {
        drop(snapshot);
        // The comparison is only for the log: it must not delay the handshake.
        tokio::spawn(compare_resolution(
            dialer,
            conn,
            ctx.target.clone(),
            door.original,
        ));
        // intercept::run_stream registers the connection itself.
        drop(task_conn);
        intercept::run_stream(door.shared, ctx, Rewind::new(buffered, stream)).await;
    }
}

/// Serves plain HTTP: each request's `Host` names its target, and the request goes through
/// the same exchange as an absolute-form request to the explicit listener.
async fn http(door: Door, task: Arc<LiveTask>, task_conn: TaskConnection, stream: TcpStream) {
    let conn = door.conn_id;
    let original = door.original;
    let shared = door.shared;
    // The agent's resolution is compared once per connection, not per request.
    let compared = Arc::new(AtomicBool::new(false));
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let task = task.clone();
        let first = !compared.swap(true, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(plain_request(shared, conn, task, original, first, req).await) }
    });
    let connection = http1_server()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    match serve_until!(connection, task_conn.revoked()) {
        Some(Err(e)) => {
            tracing::debug!(conn, error = %e, "transparent HTTP connection ended with an error")
        }
        None => tracing::debug!(conn, "transparent HTTP connection closed: task ended"),
        Some(Ok(())) => {}
    }
}

async fn plain_request(
    shared: Arc<Shared>,
    conn_id: u64,
    task: Arc<LiveTask>,
    original: SocketAddr,
    first: bool,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some(refusal) = crate::listener::refuse_oversized_head(&req) {
        return refusal;
    }
    if req.method() == Method::CONNECT {
        return Denial::new(
            Reason::BadRequest,
            "this connection was redirected to keyswap's transparent listener; send plain HTTP requests, not CONNECT",
        )
        .response(true);
    }
    // The Host header's name is the target, on the port the agent dialled: a Host naming
    // another port (or an invalid one) is then refused by the authority check like any
    // mismatch. Without a usable Host the original destination stands in, and the request
    // is refused for naming no host (HTTP/1.0 without Host: only a rule naming that IP
    // allows it).
    let named = req
        .headers()
        .get(http::header::HOST)
        .and_then(|host| Target::from_host_header(host.as_bytes(), original.port()).ok());
    let host = match named {
        Some(named) => {
            if first {
                tokio::spawn(compare_resolution(
                    shared.snapshot().upstream.dialer.clone(),
                    conn_id,
                    Target {
                        host: named.host.clone(),
                        port: original.port(),
                    },
                    original,
                ));
            }
            named.host
        }
        None => original.ip().to_string(),
    };
    let target = Target {
        host,
        port: original.port(),
    };
    let ctx = Arc::new(ConnContext {
        conn_id,
        task,
        scheme: Scheme::Http,
        target,
        via: Via::Transparent,
    });
    match exchange(shared, ctx, req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Resolves `target` as the upstream leg will, and logs how it compares with the address
/// the agent dialled.
async fn compare_resolution(dialer: Arc<Dialer>, conn: u64, target: Target, original: SocketAddr) {
    match dialer.resolve(&target).await {
        Ok(resolved) => compare(conn, &target, original, &resolved),
        Err(e) => {
            tracing::debug!(conn, host = %target.host, error = %e, "no resolution to compare with the agent's")
        }
    }
}

fn compare(conn: u64, target: &Target, original: SocketAddr, resolved: &[SocketAddr]) {
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

/// The bytes already read off a stream (the peeked ClientHello), then the stream itself.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Logs what a reload cannot change: the transparent listener is bound once, at start.
pub(crate) fn warn_if_restart_needed(bound: Option<SocketAddr>, next: &keyswap_config::Config) {
    let wanted = next.transparent.as_ref().map(|t| t.listen);
    if wanted != bound {
        let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        tracing::warn!(
            running = %show(bound),
            config = %show(wanted),
            "transparent.listen changed: the listener keeps its address until keyswap restarts (the rest of transparent: applies now)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut rewind = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        rewind.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
