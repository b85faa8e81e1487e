//! Credential leases: the values minted per (task, secret) from a lease source (a GitHub App
//! installation token, an OAuth2 access token, an STS session), what the pipeline swaps them
//! in with, and what scrubs them. Data and its invariants only: minting, refreshing and
//! revoking is [`crate::lifecycle::leases`]'s.
//!
//! **Swapping.** A lease's value is swapped only for the task that owns it. Each task with a
//! lease gets its own placeholder matcher ([`Leases::placeholders_for`]): the snapshot's
//! pairs (pattern `i` = placeholder of `SecretId(i)`) with the task's minted values in place
//! of the lease secrets' markers. It is built once per mint or refresh of that task (and once
//! more after a reload), never per request, and dropped with the task.
//!
//! **Scrubbing.** Every minted value, of every task, is scrubbed from every response in every
//! form the scrubber knows, from the moment it exists until after it expires (a revoked or
//! replaced value stays in [`Leases::retired`] until its own expiry: an upstream may still
//! echo it, e.g. from an issue body written while it was live). The choice: *one* replacer
//! over the snapshot's pairs plus the forms of every live and retired lease value, rebuilt
//! when a lease is minted or refreshed (or the snapshot changes), rather than a second replacer
//! chained after the snapshot's. A chained replacer would scan every response body twice
//! (two automata, two held-back tails) on the hot path; the combined one scans once, at the
//! cost of rebuilding the snapshot's part on each mint — a few milliseconds for hundreds of
//! leases, off the request path of every task but the one minting. With no lease at all the
//! snapshot's own scrubber is used as it is: a proxy without lease secrets pays nothing.
//!
//! A credential of several values (an STS session: key id, secret key, session token) keeps
//! the first as its value and the others as [`LeasePart`]s: every one is scrubbed.
//!
//! Real values are exposed here only to build those two matchers. A lease's `Debug` shows its
//! fingerprint (the last 4 hex digits of its value's SHA-256), never the value.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use keyswap_config::LeaseSource;
use keyswap_scrub::encodings;
use keyswap_scrub::replace::Replacer;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::credential::StsSession;
use crate::error::ProxyError;
use crate::state::snapshot::Snapshot;

/// One minted credential of one task.
pub struct Lease {
    pub task: String,
    pub secret: String,
    pub placeholder: String,
    pub value: SecretString,
    pub minted_at: SystemTime,
    pub expires: SystemTime,
    /// The last 4 hex digits of the value's SHA-256: what the audit and `task show` name.
    pub fingerprint: String,
    /// What it was minted from (revocation needs it after a reload dropped the secret).
    pub source: Arc<LeaseSource>,
    /// The credential's other values (an STS session's secret key and session token),
    /// scrubbed like the value, each to its own placeholder.
    pub parts: Vec<LeasePart>,
    /// An STS session's audit fields (role, session name, key id's last 4 characters).
    pub sts: Option<StsSession>,
}

/// One more value of a minted credential: `name` says which (`secret_access_key`,
/// `session_token`), `placeholder` is what the scrubber turns it back into.
pub struct LeasePart {
    pub name: &'static str,
    pub value: SecretString,
    pub placeholder: String,
}

impl Lease {
    pub fn new(
        task: &str,
        secret: &str,
        placeholder: &str,
        value: SecretString,
        expires: SystemTime,
        source: Arc<LeaseSource>,
    ) -> Lease {
        Lease {
            task: task.to_string(),
            secret: secret.to_string(),
            placeholder: placeholder.to_string(),
            fingerprint: fingerprint(&value),
            value,
            minted_at: SystemTime::now(),
            expires,
            source,
            parts: Vec::new(),
            sts: None,
        }
    }

    /// The same lease with the credential's other values and an STS session's audit fields.
    pub fn with_parts(mut self, parts: Vec<LeasePart>, sts: Option<StsSession>) -> Lease {
        self.parts = parts;
        self.sts = sts;
        self
    }

    /// The value of part `name`, if the credential has one.
    pub fn part(&self, name: &str) -> Option<&SecretString> {
        self.parts.iter().find(|p| p.name == name).map(|p| &p.value)
    }

    /// Still usable at `now` without a refresh: before its expiry less a margin (a quarter
    /// of its lifetime, at most 5 minutes), so no request goes out with a token about to
    /// expire.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.refresh_at()
    }

    /// When it should be minted again.
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .expires
            .duration_since(self.minted_at)
            .unwrap_or(Duration::ZERO);
        let margin = (lifetime / 4).min(Duration::from_secs(300));
        self.expires.checked_sub(margin).unwrap_or(self.expires)
    }
}

impl fmt::Debug for Lease {
    // Written by hand: the value is never formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("task", &self.task)
            .field("secret", &self.secret)
            .field("expires", &self.expires)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The last 4 hex digits of the SHA-256 of `value`.
pub fn fingerprint(value: &SecretString) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.expose_secret().as_bytes());
    let bytes = digest.as_ref();
    format!("{:02x}{:02x}", bytes[30], bytes[31])
}

/// One (task, secret): the lease in force, behind an async lock so that one mint is in
/// flight at a time (the others wait for it and share its result).
#[derive(Default)]
pub struct LeaseSlot {
    pub current: tokio::sync::Mutex<Option<Arc<Lease>>>,
    /// The refresher of this slot was started.
    pub refreshing: std::sync::atomic::AtomicBool,
}

/// One OAuth2 grant (by secret name): the refresh token in force since the last rotation,
/// behind an async lock: one refresh in flight for the whole proxy.
#[derive(Default)]
pub struct GrantState {
    /// The rotated refresh token (`None`: the one the config read is still current).
    pub refresh_token: Option<SecretString>,
    /// The provider answered `invalid_grant`: the secret is unavailable until the config
    /// holds another refresh token.
    pub dead: bool,
    /// The fingerprint of the config's refresh token when this grant last looked at it (a
    /// different one means the operator replaced it).
    pub config_seen: Option<String>,
}

#[derive(Default)]
struct TaskLeases {
    slots: HashMap<String, Arc<LeaseSlot>>,
    live: HashMap<String, Arc<Lease>>,
    placeholders: Option<Built>,
}

/// A matcher built from one snapshot at one generation of the leases.
struct Built {
    snapshot: Arc<Snapshot>,
    generation: u64,
    replacer: Arc<Replacer>,
}

impl Built {
    fn current(&self, snapshot: &Arc<Snapshot>, generation: u64) -> Option<Arc<Replacer>> {
        (Arc::ptr_eq(&self.snapshot, snapshot) && self.generation == generation)
            .then(|| self.replacer.clone())
    }
}

/// Every lease of every task, the values still scrubbed after they ended, and the OAuth2
/// grants.
#[derive(Default)]
pub struct Leases {
    tasks: Mutex<HashMap<String, TaskLeases>>,
    /// Revoked or replaced values, scrubbed until they expire.
    retired: Mutex<Vec<Arc<Lease>>>,
    /// Bumped whenever the set of live or retired values changes.
    generation: AtomicU64,
    scrubber: Mutex<Option<Built>>,
    grants: Mutex<HashMap<String, Arc<tokio::sync::Mutex<GrantState>>>>,
}

impl Leases {
    /// The slot of (task, secret), made on first use.
    pub fn slot(&self, task: &str, secret: &str) -> Arc<LeaseSlot> {
        let mut tasks = lock(&self.tasks);
        tasks
            .entry(task.to_string())
            .or_default()
            .slots
            .entry(secret.to_string())
            .or_default()
            .clone()
    }

    /// Puts `lease` in force for its task (the one it replaces is retired: still scrubbed).
    pub fn set_live(&self, lease: Arc<Lease>, replaced: Option<Arc<Lease>>) {
        {
            let mut tasks = lock(&self.tasks);
            let entry = tasks.entry(lease.task.clone()).or_default();
            entry.live.insert(lease.secret.clone(), lease);
            entry.placeholders = None;
        }
        if let Some(old) = replaced {
            lock(&self.retired).push(old);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a task's leases: they are returned (to be revoked) and stay scrubbed until they
    /// expire.
    pub fn take_task(&self, task: &str) -> Vec<Arc<Lease>> {
        let Some(entry) = lock(&self.tasks).remove(task) else {
            return Vec::new();
        };
        let leases: Vec<Arc<Lease>> = entry.live.into_values().collect();
        self.retire(&leases);
        leases
    }

    /// Keeps `leases` scrubbed until they expire, though no task uses them.
    pub fn retire(&self, leases: &[Arc<Lease>]) {
        if leases.is_empty() {
            return;
        }
        lock(&self.retired).extend(leases.iter().cloned());
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The live leases of `task`, by secret name.
    pub fn of_task(&self, task: &str) -> Vec<Arc<Lease>> {
        let tasks = lock(&self.tasks);
        let mut leases: Vec<Arc<Lease>> = tasks
            .get(task)
            .map(|t| t.live.values().cloned().collect())
            .unwrap_or_default();
        leases.sort_by(|a, b| a.secret.cmp(&b.secret));
        leases
    }

    /// Every live lease of every task.
    pub fn live(&self) -> Vec<Arc<Lease>> {
        lock(&self.tasks)
            .values()
            .flat_map(|t| t.live.values().cloned())
            .collect()
    }

    /// The grant of OAuth2 secret `secret`.
    pub fn grant(&self, secret: &str) -> Arc<tokio::sync::Mutex<GrantState>> {
        lock(&self.grants)
            .entry(secret.to_string())
            .or_default()
            .clone()
    }

    /// The placeholder matcher of `task`: the snapshot's, with the task's minted values in
    /// place of the lease secrets' markers (see the module doc).
    pub fn placeholders_for(
        &self,
        snapshot: &Arc<Snapshot>,
        task: &str,
    ) -> Result<Arc<Replacer>, ProxyError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut tasks = lock(&self.tasks);
        let entry = tasks.entry(task.to_string()).or_default();
        if let Some(replacer) = entry
            .placeholders
            .as_ref()
            .and_then(|b| b.current(snapshot, generation))
        {
            return Ok(replacer);
        }
        let pairs = snapshot
            .config
            .secrets
            .iter()
            .map(|s| {
                let value = match (&s.aws, &s.lease, entry.live.get(&s.name)) {
                    // An `aws:` key id is signed with, never swapped in (as in the
                    // snapshot's matcher): its placeholder stands for itself.
                    (Some(_), _, _) => s.placeholder.as_bytes(),
                    (None, Some(_), Some(lease)) => lease.value.expose_secret().as_bytes(),
                    _ => s.value.expose_secret().as_bytes(),
                };
                (
                    s.placeholder.as_bytes().to_vec(),
                    Bytes::copy_from_slice(value),
                )
            })
            .collect();
        let replacer = Arc::new(Replacer::new(pairs).map_err(ProxyError::Matcher)?);
        entry.placeholders = Some(Built {
            snapshot: snapshot.clone(),
            generation,
            replacer: replacer.clone(),
        });
        Ok(replacer)
    }

    /// The scrubber every response goes through: the snapshot's when no lease value exists,
    /// else the snapshot's pairs and every form of every live and retired lease value (see
    /// the module doc). Rebuilt only when a lease was minted or retired, or the snapshot
    /// changed; expired retired values are dropped then.
    pub fn scrubber(&self, snapshot: &Arc<Snapshot>) -> Arc<Replacer> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut built = lock(&self.scrubber);
        if let Some(replacer) = built.as_ref().and_then(|b| b.current(snapshot, generation)) {
            return replacer;
        }
        let now = SystemTime::now();
        let mut values = self.live();
        {
            let mut retired = lock(&self.retired);
            retired.retain(|lease| lease.expires > now);
            values.extend(retired.iter().cloned());
        }
        if values.is_empty() {
            *built = None;
            return snapshot.scrubber.clone();
        }
        let mut pairs = snapshot.scrub_pairs();
        for lease in &values {
            pairs.extend(encodings::forms(
                lease.value.expose_secret(),
                &lease.placeholder,
            ));
            for part in &lease.parts {
                pairs.extend(encodings::forms(
                    part.value.expose_secret(),
                    &part.placeholder,
                ));
            }
        }
        let replacer = match Replacer::with_case_variants(pairs) {
            Ok(replacer) => Arc::new(replacer),
            Err(err) => {
                // Cannot happen with valid values; fail safe with no lease scrubbed rather
                // than no response served, and say so.
                tracing::error!(error = %err, "the lease scrubber could not be built");
                return snapshot.scrubber.clone();
            }
        };
        *built = Some(Built {
            snapshot: snapshot.clone(),
            generation,
            replacer: replacer.clone(),
        });
        replacer
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
