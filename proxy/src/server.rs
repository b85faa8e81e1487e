//! The running proxy: [`ProxyHandle`] builds the shared state ([`Shared`]), starts the doors,
//! the admin API, the metrics listener and the secret refresh, and reloads and stops them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use keyswap_certs::{CertificateAuthority, LeafCache};
use keyswap_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::audit::sink::{AuditSink, FileSink};
use crate::doors::accept::{accept_loop, Door};
use crate::error::ProxyError;
use crate::host::child_env::{write_trust_files, TrustFiles};
use crate::host::fds;
use crate::host::listen::bind;
use crate::lifecycle::tasks::{self, TaskError};
use crate::state::fleet::FleetLink;
use crate::state::metrics::{MetricSources, Metrics};
use crate::state::metrics_fair::FairSample;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;

/// The shared state of a proxy starting with `config`: the audit log opened, the first
/// snapshot built, the static tasks started, the metrics reading the leaf cache, the audit
/// sink and the budgets.
fn build_shared(
    config: Config,
    ca: CertificateAuthority,
    listen: SocketAddr,
) -> Result<(Arc<Shared>, Option<FleetEvents>), ProxyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let audit = Arc::new(FileSink::open_chained(
        &config.audit_log,
        crate::audit::chain::LineHasher::from_config(config.audit.key.as_ref()),
    )?);
    let snapshot = Snapshot::build(config, provider.clone())?;
    let leaves = Arc::new(LeafCache::new(Arc::new(ca), provider.clone())?);
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
    let upstream_cap = fds::upstream_cap(fds::raise_nofile());
    let store = snapshot.config.store.clone();
    let mut shared = Shared::new(snapshot, leaves, audit, metrics, provider, listen)
        .with_upstream_cap(upstream_cap);
    let mut fleet_events = None;
    if let Some(store) = store {
        let (link, events) = FleetLink::new(store.grace, replica_name(), &store.redis.prefix);
        tracing::info!(replica = %link.replica, store = %store.redis.display(), "sharing tasks with a fleet");
        shared = shared.with_fleet(link);
        fleet_events = Some(FleetEvents {
            store: store.redis,
            events,
        });
    }
    let shared = Arc::new(shared);
    tasks::sync(&shared, &shared.snapshot().config);
    shared.metrics.set_budget_source({
        let shared = Arc::downgrade(&shared);
        Box::new(move || match shared.upgrade() {
            Some(s) => crate::lifecycle::budget::samples(&s.snapshot().config, &s.tasks.all()),
            None => Vec::new(),
        })
    });
    shared.metrics.fair.set_source({
        let shared = Arc::downgrade(&shared);
        Box::new(move || {
            shared
                .upgrade()
                .map(|s| fair_sample(&s))
                .unwrap_or_default()
        })
    });
    Ok((shared, fleet_events))
}

/// What the fleet worker starts from: the store and the events this replica sends it.
struct FleetEvents {
    store: keyswap_config::RedisStore,
    events: tokio::sync::mpsc::UnboundedReceiver<crate::state::fleet::FleetEvent>,
}

/// This replica's name in the fleet's store: host name and process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyswap".into());
    format!("{host}-{}", std::process::id())
}

/// The scrape-time values of the fair-use gauges.
fn fair_sample(shared: &Shared) -> FairSample {
    let tasks = shared.tasks.all();
    FairSample {
        tasks: tasks
            .iter()
            .map(|t| (t.id.clone(), t.slots.in_flight_now()))
            .collect(),
        upstream_in_use: shared.upstream_cap.in_use() as u64,
        upstream_cap: shared.upstream_cap.cap() as u64,
    }
}

/// How long a shutdown waits, in all, for the upstreams to revoke the leased credentials.
pub const SHUTDOWN_REVOCATION: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// The CA bundle and trust store an issued task's environment points at.
    trust: TrustFiles,
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
        let listen = options.listen.unwrap_or(config.listen);
        let trust = write_trust_files(&config.ca_dir, ca.cert_pem())?;
        let admin_config = config.admin.clone();
        let metrics_config = config.metrics.clone().filter(|_| options.metrics);
        let (listener, addr) = bind(listen, "proxy").await?;
        let (shared, fleet_events) = build_shared(config, ca, addr)?;
        let (shutdown, stop) = watch::channel(false);
        let mut handle = ProxyHandle {
            addr,
            shared: shared.clone(),
            trust,
            shutdown,
            tasks: Vec::new(),
            admin_socket: None,
            config_path: options.config_path.clone(),
            metrics_addr: None,
            admin_addr: None,
            transparent_addr: None,
        };
        crate::lifecycle::leases::state_file::restore(&shared);
        handle.serve(Door::Explicit, listener, &stop);
        crate::lifecycle::refresh::start(&shared, stop.clone());
        if let Some(metrics_config) = metrics_config {
            let (listener, local) = bind(metrics_config.listen, "metrics").await?;
            handle.metrics_addr = Some(local);
            let mut stop = stop.clone();
            let stopped = async move {
                let _ = stop.changed().await;
            };
            let serve = crate::telemetry::serve(listener, shared.metrics.clone(), stopped);
            handle.tasks.push(tokio::spawn(serve));
            tracing::info!(addr = %local, "metrics listening");
        }
        if let Some(listen) = shared.transparent_listen {
            let (listener, local) = bind(listen, "transparent").await?;
            handle.transparent_addr = Some(local);
            handle.serve(Door::Transparent, listener, &stop);
            tracing::info!(addr = %local, "transparent listener listening");
        }
        if options.admin {
            let (trust, path) = (handle.trust.clone(), options.config_path);
            let served =
                crate::admin::start(shared.clone(), trust, &admin_config, path, stop.clone())
                    .await?;
            handle.admin_socket = Some(admin_config.socket.clone());
            handle.admin_addr = served.tcp_addr;
            handle.tasks.extend(served.handles);
        }
        tracing::info!(%addr, "keyswap listening");
        // After the listeners: until the store answers, the replica is in its grace (it
        // serves static tasks and issues none).
        if let Some(fleet) = fleet_events {
            let worker = crate::fleet::start(&shared, &fleet.store, fleet.events, stop.clone())
                .map_err(|e| ProxyError::Fleet(e.to_string()))?;
            handle.tasks.extend(worker);
            let life = crate::fleet::life::start(&shared, &fleet.store, stop)
                .map_err(|e| ProxyError::Fleet(e.to_string()))?;
            handle.tasks.extend(life);
        }
        Ok(handle)
    }

    /// Runs `door`'s accept loop on `listener` until the proxy stops.
    fn serve(&mut self, door: Door, listener: TcpListener, stop: &watch::Receiver<bool>) {
        let accepting = accept_loop(door, self.shared.clone(), listener, stop.clone());
        self.tasks.push(tokio::spawn(accepting));
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
        crate::lifecycle::reload::reload(&self.shared, config)
    }

    /// Issues a runtime task in-process (what `POST /v1/tasks` does).
    pub fn issue(&self, request: &api::IssueRequest) -> Result<api::IssuedTask, TaskError> {
        let issued = tasks::issue(&self.shared, request)?;
        Ok(crate::admin::issued_task(
            &self.shared,
            &self.trust,
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
            Door::Explicit,
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
        why: crate::state::tasks::RevokeWhy,
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

    /// Stops accepting connections, ends every task's connections, waits for the listeners
    /// to close, and revokes every credential leased to a task (at most
    /// [`SHUTDOWN_REVOCATION`] in all; what is left is revoked at the next start).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        tasks::end_all(&self.shared);
        crate::lifecycle::leases::state_file::revoke_at_shutdown(&self.shared, SHUTDOWN_REVOCATION)
            .await;
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
