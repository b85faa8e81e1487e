//! The running proxy: shared state (config snapshot, leaf cache, audit sink) and the handle
//! that starts, reloads and stops it. No globals: everything a connection needs is reached
//! through [`Shared`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use keyswap_certs::{CertificateAuthority, LeafCache};
use keyswap_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::AuditSink;
use crate::error::ProxyError;
use crate::listener::accept_loop;
use crate::snapshot::Snapshot;

/// What every connection shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub leaves: LeafCache,
    pub audit: AuditSink,
    next_conn: AtomicU64,
    provider: Arc<rustls::crypto::CryptoProvider>,
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

    /// Builds a snapshot from `config` and swaps it in; on error the old one stays.
    pub fn reload(&self, config: Config) -> Result<(), ProxyError> {
        let next = Snapshot::build(config, self.provider.clone())?;
        self.snapshot.store(Arc::new(next));
        Ok(())
    }
}

/// Settings that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Listen here instead of the config's `listen` (tests use `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
}

/// A running proxy. Dropping the handle stops accepting new connections.
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Opens the audit log, builds the first snapshot, binds the listener and starts serving.
    pub async fn start(
        config: Config,
        ca: CertificateAuthority,
        options: ProxyOptions,
    ) -> Result<ProxyHandle, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let audit = AuditSink::open(&config.audit_log)?;
        let listen = options.listen.unwrap_or(config.listen);
        let snapshot = Snapshot::build(config, provider.clone())?;
        let leaves = LeafCache::new(Arc::new(ca), provider.clone())?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Io {
                what: format!("listen on {listen}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Io {
            what: "listener address".into(),
            source,
        })?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            leaves,
            audit,
            next_conn: AtomicU64::new(0),
            provider,
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(accept_loop(shared.clone(), listener, stop));
        tracing::info!(%addr, "keyswap listening");
        Ok(ProxyHandle {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Swaps in a new config; a config that cannot be used leaves the running one in place.
    pub fn reload(&self, config: Config) -> Result<(), ProxyError> {
        self.shared.reload(config)
    }

    /// How many leaf certificates were minted so far.
    pub fn leaves_minted(&self) -> u64 {
        self.shared.leaves.minted()
    }

    /// Blocks until every audit record queued so far is on disk.
    pub fn flush_audit(&self) {
        self.shared.audit.flush_blocking();
    }

    /// Stops accepting connections and waits for the listener to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.shared.audit.flush_blocking();
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
