//! What every connection shares: the config snapshot, the leaf cache, the audit sink, the
//! live tasks, the approvals, the metrics. No globals: everything a connection needs is
//! reached through [`Shared`], built once by [`crate::server`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use keyswap_certs::LeafCache;

use crate::audit::decision::Decision;
use crate::audit::decision::Denial;
use crate::audit::record::{AuditRecord, Sent, Subject};
use crate::audit::sink::AuditSink;
use crate::state::agent_side::Refusal;
use crate::state::approvals::Approvals;
use crate::state::fair::UpstreamCap;
use crate::state::fleet::FleetLink;
use crate::state::lease_file::LeaseFile;
use crate::state::leases::Leases;
use crate::state::metrics::Metrics;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::{MemoryTasks, TaskStore};

/// Most (task, host) pairs remembered for [`AgentTlsWarnings`]; past it the memory starts
/// afresh (an agent trying many hosts must not grow keyswap's memory).
const MAX_WARNED_PAIRS: usize = 4096;

/// The (task, host) pairs already warned about an agent refusing keyswap's certificate.
#[derive(Default)]
pub struct AgentTlsWarnings {
    warned: Mutex<HashSet<(String, String)>>,
}

impl AgentTlsWarnings {
    /// `true` the first time this pair is seen.
    pub(crate) fn first(&self, task: &str, host: &str) -> bool {
        let Ok(mut warned) = self.warned.lock() else {
            return false;
        };
        let pair = (task.to_string(), host.to_string());
        if warned.contains(&pair) {
            return false;
        }
        if warned.len() >= MAX_WARNED_PAIRS {
            warned.clear();
        }
        warned.insert(pair)
    }
}

/// What every connection shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub leaves: Arc<LeafCache>,
    pub audit: Arc<dyn AuditSink>,
    pub tasks: Box<dyn TaskStore>,
    /// Requests waiting for a human, and what humans granted.
    pub approvals: Approvals,
    /// Credentials minted per (task, secret) ([`crate::state::leases`]).
    pub leases: Arc<Leases>,
    /// The lease state file: what is minted and not yet revoked, for a restart.
    pub lease_file: Arc<LeaseFile>,
    pub metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    /// Where agents reach the explicit listener (for the proxy URLs of issued tasks).
    pub listen: SocketAddr,
    /// Which (task, host) pairs were warned about an agent refusing keyswap's certificate.
    pub(crate) agent_tls_warnings: AgentTlsWarnings,
    /// `transparent.listen` as the transparent listener was bound at start (a reload cannot
    /// move it).
    pub transparent_listen: Option<SocketAddr>,
    /// keyswap's cap on upstream connections (left by its descriptor limit).
    pub upstream_cap: UpstreamCap,
    /// The shared store of a fleet of replicas (`store:`); `None`: this process alone.
    pub fleet: Option<FleetLink>,
}

impl Shared {
    /// The state of a proxy starting with `snapshot`, no task and no connection yet.
    pub fn new(
        snapshot: Snapshot,
        leaves: Arc<LeafCache>,
        audit: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        listen: SocketAddr,
    ) -> Shared {
        let transparent_listen = snapshot.config.transparent.as_ref().map(|t| t.listen);
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            leaves,
            audit,
            tasks: Box::new(MemoryTasks::default()),
            approvals: Approvals::default(),
            leases: Arc::default(),
            lease_file: Arc::default(),
            metrics,
            next_conn: AtomicU64::new(0),
            provider,
            listen,
            agent_tls_warnings: AgentTlsWarnings::default(),
            transparent_listen,
            upstream_cap: UpstreamCap::new(usize::MAX),
            fleet: None,
        }
    }

    /// The same state with keyswap's cap on upstream connections (by default: none).
    pub fn with_upstream_cap(mut self, cap: usize) -> Shared {
        self.upstream_cap = UpstreamCap::new(cap);
        self
    }

    /// The same state as one replica of a fleet sharing its tasks through a store.
    pub fn with_fleet(mut self, link: FleetLink) -> Shared {
        let health = link.health.clone();
        self.metrics.store.set(Box::new(move || health.state()));
        self.approvals = Approvals::of_replica(&link.replica);
        self.fleet = Some(link);
        self
    }

    /// The refusal of every request while the fleet's store has been unreachable for longer
    /// than `store.grace` (`None`: serve).
    pub fn store_refusal(&self) -> Option<Denial> {
        self.fleet.as_ref().and_then(FleetLink::refusal)
    }

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

    /// Writes the one decision of a request (or of a CONNECT or connection that carried
    /// none): its audit record, its INFO log line and its metrics, all from the same record.
    /// `why` is a refusal's explanation, for the log line.
    pub fn record(&self, subject: &Subject, decision: &Decision, sent: Sent, why: Option<&str>) {
        let record = AuditRecord::new(subject, decision, sent);
        if record.decision == "denied" {
            // The task's own refusals, for its agent to read at keyswap.internal.
            let task = subject.task.as_ref().and_then(|t| self.tasks.get(&t.id));
            if let Some(task) = task {
                let refusal = Refusal::of(subject, decision.reason.as_str(), why);
                task.agent.note_refusal(refusal);
            }
        }
        record.log(decision.reason, why);
        self.metrics
            .request(record.reason, record.policy_label(), record.ms / 1000.0);
        self.audit.record(record);
    }

    /// Swaps in a new snapshot unconditionally (a reload), returning the one it replaced.
    pub(crate) fn swap_snapshot(&self, next: Arc<Snapshot>) -> Arc<Snapshot> {
        self.snapshot.swap(next)
    }
}
