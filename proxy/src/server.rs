//! The running proxy: shared state (config snapshot, leaf cache, audit sink) and the handle
//! that starts, reloads and stops it. No globals: everything a connection needs is reached
//! through [`Shared`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use keyswap_certs::{CertificateAuthority, LeafCache};
use keyswap_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditRecord, AuditSink};
use crate::child_env::{write_trust_files, TrustFiles};
use crate::error::ProxyError;
use crate::lifecycle::api;
use crate::lifecycle::approvals::Approvals;
use crate::lifecycle::registry::TaskRegistry;
use crate::lifecycle::tasks::{self, TaskError};
use crate::listener::accept_loop;
use crate::metrics::{MetricSources, Metrics};
use crate::snapshot::Snapshot;

/// What every connection shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub leaves: Arc<LeafCache>,
    pub audit: Arc<AuditSink>,
    pub tasks: TaskRegistry,
    /// Requests waiting for a human, and what humans granted.
    pub approvals: Approvals,
    pub metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    /// Where agents reach the explicit listener (for the proxy URLs of issued tasks).
    pub listen: SocketAddr,
    /// The CA bundle and trust store an agent's environment points at.
    pub trust: TrustFiles,
    /// Which (task, host) pairs were warned about an agent refusing keyswap's certificate.
    pub(crate) agent_tls_warnings: crate::intercept::AgentTlsWarnings,
    /// `transparent.listen` as the transparent listener was bound at start (a reload cannot
    /// move it).
    pub transparent_listen: Option<SocketAddr>,
}

impl Shared {
    /// The current config snapshot. Hold it for one request, not for a connection's life,
    /// so a reload (for example one that revokes a rule) applies to open connections too.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Swaps in `next` only if `current` is still the snapshot in force (a refresh must not
    /// undo a reload that happened while it read).
    pub(crate) fn replace_snapshot(&self, current: &Arc<Snapshot>, next: Snapshot) -> bool {
        let previous = self.snapshot.compare_and_swap(current, Arc::new(next));
        Arc::ptr_eq(&previous, current)
    }

    /// Audits one request (or CONNECT) and counts it in the metrics.
    pub fn record_request(&self, record: AuditRecord) {
        let policy = match (&record.policy, &record.task) {
            (Some(policy), _) => policy.as_str(),
            (None, Some(_)) => "static",
            (None, None) => "none",
        };
        self.metrics
            .request(record.reason, policy, record.ms / 1000.0);
        self.audit.record(record);
    }
}

/// Builds a snapshot from `config` and swaps it in, then brings the tasks in line with it
/// (static tasks added or ended, runtime tasks whose policy is gone revoked). On error the
/// old snapshot stays and no task changes.
pub fn reload(shared: &Arc<Shared>, config: Config) -> Result<api::Reloaded, ProxyError> {
    let key_id = config
        .audit
        .key
        .as_ref()
        .map(|k| crate::audit_chain::key_id(secrecy::ExposeSecret::expose_secret(&k.value)));
    if key_id.as_deref() != shared.audit.key_id() {
        tracing::warn!(
            "audit.key_file changed: the audit chain keeps its key until keyswap restarts"
        );
    }
    let next = Snapshot::build(config, shared.provider.clone())?;
    crate::transparent::warn_if_restart_needed(shared.transparent_listen, &next.config);
    let next = Arc::new(next);
    let previous = shared.snapshot.swap(next.clone());
    let summary = tasks::sync(shared, &next.config);
    crate::config_diff::ConfigDiff::between(&previous.config, &next.config, &summary).log();
    Ok(summary)
}

/// Settings that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Listen here instead of the config's `listen` (tests use `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
    /// Serve the admin API on the config's `admin.socket` (and `admin.listen`).
    pub admin: bool,
    /// Serve `metrics.listen` if the config has it.
    pub metrics: bool,
    /// The config file `POST /v1/reload` reads again (`None`: reload through the API is refused).
    pub config_path: Option<PathBuf>,
}

/// A running proxy. Dropping the handle stops accepting new connections.
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_socket: Option<PathBuf>,
    /// The config file the proxy was started from (what a sandboxed exec keeps read-only).
    config_path: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    transparent_addr: Option<SocketAddr>,
}

impl ProxyHandle {
    /// Opens the audit log, builds the first snapshot, binds the listener and starts serving.
    pub async fn start(
        config: Config,
        ca: CertificateAuthority,
        options: ProxyOptions,
    ) -> Result<ProxyHandle, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let audit = Arc::new(AuditSink::open_chained(
            &config.audit_log,
            crate::audit_chain::LineHasher::from_config(config.audit.key.as_ref()),
        )?);
        let listen = options.listen.unwrap_or(config.listen);
        let trust = write_trust_files(&config.ca_dir, ca.cert_pem())?;
        let snapshot = Snapshot::build(config, provider.clone())?;
        let leaves = Arc::new(LeafCache::new(Arc::new(ca), provider.clone())?);
        let bind = |addr: SocketAddr, what: &'static str| async move {
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
            Ok::<_, ProxyError>((listener, local))
        };
        let (listener, addr) = bind(listen, "proxy").await?;
        let metrics = Arc::new(Metrics::new(MetricSources {
            leaves_minted: {
                let leaves = leaves.clone();
                Box::new(move || leaves.minted())
            },
            audit_records_dropped: {
                let audit = audit.clone();
                Box::new(move || audit.dropped())
            },
        }));
        let admin_config = snapshot.config.admin.clone();
        let metrics_config = snapshot.config.metrics.clone();
        let transparent_listen = snapshot.config.transparent.as_ref().map(|t| t.listen);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            leaves,
            audit,
            tasks: TaskRegistry::default(),
            approvals: Approvals::default(),
            metrics,
            next_conn: AtomicU64::new(0),
            provider,
            listen: addr,
            trust,
            agent_tls_warnings: Default::default(),
            transparent_listen,
        });
        tasks::sync(&shared, &shared.snapshot().config);
        shared.metrics.set_budget_source({
            let shared = Arc::downgrade(&shared);
            Box::new(move || match shared.upgrade() {
                Some(s) => crate::budget::samples(&s.snapshot().config, &s.tasks.all()),
                None => Vec::new(),
            })
        });
        let (shutdown, stop) = watch::channel(false);
        let mut handles = vec![tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            stop.clone(),
        ))];
        crate::lifecycle::refresh::start(&shared, stop.clone());
        let mut metrics_addr = None;
        if let Some(metrics_config) = metrics_config.filter(|_| options.metrics) {
            let (listener, local) = bind(metrics_config.listen, "metrics").await?;
            metrics_addr = Some(local);
            let mut stop = stop.clone();
            handles.push(tokio::spawn(crate::metrics::serve(
                listener,
                shared.metrics.clone(),
                async move {
                    let _ = stop.changed().await;
                },
            )));
            tracing::info!(addr = %local, "metrics listening");
        }
        let mut transparent_addr = None;
        if let Some(listen) = transparent_listen {
            let (listener, local) = bind(listen, "transparent").await?;
            transparent_addr = Some(local);
            handles.push(tokio::spawn(crate::transparent::accept_loop(
                shared.clone(),
                listener,
                stop.clone(),
            )));
            tracing::info!(addr = %local, "transparent listener listening");
        }
        let mut admin_socket = None;
        let mut admin_addr = None;
        if options.admin {
            let served = crate::lifecycle::admin::start(
                shared.clone(),
                &admin_config,
                options.config_path.clone(),
                stop.clone(),
            )
            .await?;
            admin_socket = Some(admin_config.socket.clone());
            admin_addr = served.tcp_addr;
            handles.extend(served.handles);
        }
        tracing::info!(%addr, "keyswap listening");
        Ok(ProxyHandle {
            addr,
            shared,
            shutdown,
            tasks: handles,
            admin_socket,
            config_path: options.config_path,
            metrics_addr,
            admin_addr,
            transparent_addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's unix socket, when it is served.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_deref()
    }

    /// The admin API's TCP address, when `admin.listen` is served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The transparent listener's address, when `transparent:` is configured.
    pub fn transparent_addr(&self) -> Option<SocketAddr> {
        self.transparent_addr
    }

    /// The metrics listener's address, when it is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What connections share (tests and the bench inspect tasks through it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swaps in a new config; a config that cannot be used leaves the running one in place.
    pub fn reload(&self, config: Config) -> Result<api::Reloaded, ProxyError> {
        reload(&self.shared, config)
    }

    /// Issues a runtime task in-process (what `POST /v1/tasks` does).
    pub fn issue(&self, request: &api::IssueRequest) -> Result<api::IssuedTask, TaskError> {
        let issued = tasks::issue(&self.shared, request)?;
        Ok(crate::lifecycle::admin::issued_task(
            &self.shared,
            &issued,
            request,
            self.config_path.as_deref(),
        ))
    }

    /// Serves the explicit door on one more listener, until the proxy stops: a sandboxed
    /// `keyswap exec` hands over the listener it bound inside the agent's network namespace.
    pub fn serve_explicit(&mut self, listener: std::net::TcpListener) -> Result<(), ProxyError> {
        let io = |source| ProxyError::Io {
            what: "serving a handed-over listener".into(),
            source,
        };
        listener.set_nonblocking(true).map_err(io)?;
        let listener = TcpListener::from_std(listener).map_err(io)?;
        self.tasks.push(tokio::spawn(accept_loop(
            self.shared.clone(),
            listener,
            self.shutdown.subscribe(),
        )));
        Ok(())
    }

    /// Revokes a runtime task (what `DELETE /v1/tasks/{id}` does).
    pub fn revoke(
        &self,
        id: &str,
        why: crate::lifecycle::registry::RevokeWhy,
    ) -> Result<api::Revoked, TaskError> {
        tasks::revoke(&self.shared, id, why)
    }

    /// How many leaf certificates were minted so far.
    pub fn leaves_minted(&self) -> u64 {
        self.shared.leaves.minted()
    }

    /// Reopens the audit log if its path now names another file (log rotation: SIGHUP and
    /// `POST /v1/reload` do this); blocks until done.
    pub fn reopen_audit(&self) {
        self.shared.audit.reopen_blocking();
    }

    /// Blocks until every audit record queued so far is on disk.
    pub fn flush_audit(&self) {
        self.shared.audit.flush_blocking();
    }

    /// Stops accepting connections, ends every task's connections, and waits for the
    /// listeners to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        tasks::end_all(&self.shared);
        self.shared.audit.sync_blocking();
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(socket) = &self.admin_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}
