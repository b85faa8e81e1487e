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
//! [`tunnel`] for TLS, [`crate::pipeline::exchange::exchange`] for plain HTTP. Nothing after the door
//! knows which door was used, except the audit record's `via`.
//!
//! This door never dials the address the agent dialled: the upstream is the target *name*,
//! resolved by keyswap under `upstream.resolve` and the private-address rules like every
//! other. The agent's own DNS answer is only compared with keyswap's and a difference logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyswap_config::{PortMode, Scheme};
use keyswap_scrub::body::ProxyBody;
use tokio::net::TcpStream;

use crate::audit::decision::{Decision, Denial, Reason};
use crate::audit::record::{Sent, Started, Subject, Via};
use crate::doors::decide::{decide_target, Handling, TargetRefusal};
use crate::doors::redirected::{compare, compare_resolution, original_destination};
use crate::pipeline::conn::{http1_server, refuse_oversized_head, serve_until, Rewind};
use crate::pipeline::context::ConnContext;
use crate::pipeline::exchange;
use crate::pipeline::{agent_api, intercept, tunnel};
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, TaskConnection};
use crate::wire::client_hello::{peek_client_hello, PeekError, PeekLimits};
use crate::wire::target::{normalize_host, Target};

/// One accepted connection, before anything is decided.
struct Door {
    shared: Arc<Shared>,
    conn_id: u64,
    started: Started,
    original: SocketAddr,
}

impl Door {
    /// Records a refusal of the whole connection (it is then closed: the agent gets no
    /// answer, as with a refused TLS handshake).
    fn refuse(
        &self,
        task: Option<&LiveTask>,
        target: &Target,
        scheme: &'static str,
        reason: Reason,
        why: &str,
    ) {
        self.refuse_with(task, target, scheme, &Decision::new(reason), why);
    }

    /// [`Door::refuse`] with a decision that says more than its reason (a parent proxy's
    /// status).
    fn refuse_with(
        &self,
        task: Option<&LiveTask>,
        target: &Target,
        scheme: &'static str,
        decision: &Decision,
        why: &str,
    ) {
        let subject = Subject::connection(
            self.conn_id,
            Via::Transparent,
            task.map(LiveTask::name),
            scheme,
            target.host.clone(),
            target.port,
            self.started,
        );
        self.shared
            .record(&subject, decision, Sent::status(0), Some(why));
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
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    let started = Started::now();
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
    let read = tokio::select! {
        read = sni_target(&door, &mut stream) => read,
        _ = task_conn.revoked() => {
            tracing::debug!(conn, task = %task.id, "transparent connection closed before TLS: task ended");
            return;
        }
    };
    let (target, buffered, has_sni) = match read {
        Ok(read) => read,
        Err(why) => {
            drop(task_conn);
            let target = door.original_target();
            door.refuse(Some(&task), &target, "https", Reason::BadRequest, why);
            return;
        }
    };
    // Decide, exactly as for a CONNECT: before any certificate exists.
    let handling = match decide_target(&door.shared, &task, conn, &target).await {
        Ok(handling) => handling,
        Err(TargetRefusal { denial, .. }) => {
            drop(task_conn);
            let why = match (denial.reason, has_sni) {
                (Reason::HostNotAllowed, false) => {
                    "no SNI, and no rule names the address the agent dialled"
                }
                _ => &denial.message,
            };
            door.refuse(Some(&task), &target, "https", denial.reason, why);
            return;
        }
    };
    let ctx = ConnContext {
        conn_id: conn,
        task,
        scheme: Scheme::Https,
        target,
        via: Via::Transparent,
    };
    match handling {
        Handling::Tunnel { rule } => tunnel_to(door, ctx, rule, stream, buffered, task_conn).await,
        // Only an agent that dials some address with SNI keyswap.internal gets here (the name
        // resolves nowhere): answered by keyswap as on the explicit door, never dialled.
        Handling::Internal => {
            drop(task_conn);
            agent_api::run_stream(door.shared, ctx, Rewind::new(buffered, stream)).await;
        }
        Handling::Intercept => {
            let dialer = door.shared.snapshot().upstream.dialer.clone();
            // The comparison is only for the log: it must not delay the handshake.
            let compared = compare_resolution(dialer, conn, ctx.target.clone(), door.original);
            tokio::spawn(compared);
            // intercept::run_stream registers the connection itself.
            drop(task_conn);
            intercept::run_stream(door.shared, ctx, Rewind::new(buffered, stream)).await;
        }
    }
}

/// The target a redirected TLS connection names: its SNI, or (no SNI) the address the agent
/// dialled, which only a rule naming that IP allows. With it, the bytes read (to replay) and
/// whether there was an SNI; or why the connection is refused.
async fn sni_target(
    door: &Door,
    stream: &mut TcpStream,
) -> Result<(Target, Bytes, bool), &'static str> {
    let (hello, buffered) = peek_client_hello(stream, PeekLimits::default())
        .await
        .map_err(|e| match e {
            PeekError::NotTls => "the agent did not start TLS on a tls port",
            PeekError::TooLarge(_) => "the ClientHello is too large",
            PeekError::Timeout => "the ClientHello did not arrive in time",
            PeekError::Closed | PeekError::Io(_) => "the agent closed before its ClientHello",
        })?;
    let host = match hello.sni.as_deref().map(normalize_host) {
        Some(Ok(host)) => host,
        Some(Err(_)) => return Err("the SNI is not a valid host name"),
        None => door.original.ip().to_string(),
    };
    let target = Target {
        host,
        port: door.original.port(),
    };
    Ok((target, buffered, hello.sni.is_some()))
}

/// A `tunnel: true` rule: dials the upstream and relays the connection to it.
async fn tunnel_to(
    door: Door,
    ctx: ConnContext,
    rule: usize,
    stream: TcpStream,
    buffered: Bytes,
    task_conn: TaskConnection,
) {
    let upstream = match tunnel::dial(&door.shared, &ctx).await {
        Ok(upstream) => upstream,
        Err(denial) => {
            drop(task_conn);
            // Refused by a parent proxy: its status goes in the record, as on the other door.
            let decision = Decision {
                parent_status: denial.parent_status,
                ..Decision::new(denial.reason)
            };
            let why = &denial.message;
            door.refuse_with(Some(&ctx.task), &ctx.target, "https", &decision, why);
            return;
        }
    };
    if let Ok(dialled) = upstream.peer_addr() {
        compare(ctx.conn_id, &ctx.target, door.original, &[dialled]);
    }
    let (shared, started) = (&door.shared, door.started);
    tunnel::relay(
        shared, &ctx, rule, stream, upstream, buffered, task_conn, started,
    )
    .await;
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
    if let Some(refusal) = refuse_oversized_head(&req) {
        return refusal;
    }
    if req.method() == Method::CONNECT {
        return Denial::new(
            Reason::BadRequest,
            "this connection was redirected to keyswap's transparent listener; send plain HTTP requests, not CONNECT",
        )
        .closing()
        .response();
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
    let ctx = ConnContext::plain(conn_id, task, target, Via::Transparent);
    exchange::plain(shared, ctx, req).await
}
