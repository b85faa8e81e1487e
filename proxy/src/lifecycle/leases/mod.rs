//! Credential leases over time: a credential is minted for a (task, secret) on the task's
//! first request that carries the secret's placeholder ([`acquire`], single flight per
//! (task, secret)), minted again before it expires while the task lives (one refresher per
//! lease), and revoked upstream when the task ends ([`release`]: exit, revoke, expiry, a
//! reload that drops it), retried with backoff until the credential's own expiry. Each step is
//! audited (`credential_minted`, `credential_refreshed`, `credential_revoked`,
//! `credential_revoke_failed`, `credential_dropped`) with the fingerprint, never the value.
//!
//! Sources plug in as [`Minter`]s ([`minter_for`]): [`github`] (GitHub App installation
//! tokens), [`oauth2`] (refresh-token grant), [`sts`] (an AWS STS session per task).

pub mod github;
pub mod minter;
pub mod oauth2;
pub mod outcome;
pub mod state_file;
pub mod sts;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyswap_config::{LeaseScope, LeaseSource, SecretId};

use crate::audit::credential::CredentialRecord;
use crate::audit::record::{timestamp, LifecycleRecord};
use crate::audit::sink::AuditSink;
use crate::state::lease_file::LeaseFile;
use crate::state::leases::{Lease, LeaseSlot};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::{LiveTask, TaskSource};
pub use minter::{MintError, MintRequest, Minted, Minter, Revocation};

/// The first wait after a failed revocation; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// After a failed refresh, the refresher tries again this much later.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// The minter of a lease source.
pub fn minter_for(source: &LeaseSource) -> Box<dyn Minter> {
    match source {
        LeaseSource::GithubApp(app) => Box::new(github::GithubMinter(app.clone())),
        LeaseSource::OAuth2(o) => Box::new(oauth2::OAuth2Minter(o.clone())),
        LeaseSource::Aws(role) => Box::new(sts::StsMinter(role.clone())),
    }
}

/// What the task's policy narrows its leases to (a static task without a policy: nothing).
pub fn scope_of(snapshot: &Snapshot, task: &LiveTask) -> LeaseScope {
    let policy = match &task.source {
        TaskSource::Runtime { policy } => Some(policy.as_str()),
        TaskSource::Config => task.policy.as_deref(),
    };
    policy
        .and_then(|p| snapshot.config.policy(p))
        .map(|p| p.lease_scope.clone())
        .unwrap_or_default()
}

/// The task's lease of secret `id`, minted now if it has none or it is about to expire. One
/// mint per (task, secret) is in flight at a time; concurrent callers share it.
pub async fn acquire(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    task: &Arc<LiveTask>,
    id: SecretId,
) -> Result<Arc<Lease>, MintError> {
    let secret = snapshot.config.secret(id);
    let Some(source) = secret.lease.clone() else {
        return Err(MintError::Unavailable(format!(
            "secret {} is not a lease",
            secret.name
        )));
    };
    let ended = || MintError::Unavailable(format!("task {} has ended", task.id));
    if task.is_cancelled() {
        return Err(ended());
    }
    let slot = shared.leases.slot(&task.id, &secret.name);
    let mut current = slot.current.lock().await;
    if let Some(lease) = current.as_ref().filter(|l| l.is_fresh(SystemTime::now())) {
        return Ok(lease.clone());
    }
    let minted = minter_for(&source)
        .mint(MintRequest {
            snapshot,
            leases: &shared.leases,
            task: &task.id,
            secret: &secret.name,
            scope: scope_of(snapshot, task),
            task_expires: task.expires(),
        })
        .await?;
    let lease = Arc::new(
        Lease::new(
            &task.id,
            &secret.name,
            &secret.placeholder,
            minted.value,
            minted.expires,
            source.clone(),
        )
        .with_parts(minted.parts, minted.sts),
    );
    // On disk before anyone uses it: a keyswap killed from now on revokes it at its next start.
    shared.lease_file.hold(std::slice::from_ref(&lease));
    if task.is_cancelled() {
        // The task ended while this mint was in flight: it never gets the credential.
        revoke_in_background(shared, lease, "exit");
        return Err(ended());
    }
    let replaced = current.replace(lease.clone());
    drop(current);
    shared.leases.set_live(lease.clone(), replaced.clone());
    // Built now, once per mint, rather than by the first response that needs it.
    let _ = shared.leases.scrubber(snapshot);
    audit_minted(&*shared.audit, &lease, source.kind(), replaced.is_some());
    match replaced {
        Some(old) => revoke_in_background(shared, old, "replaced"),
        None => start_refresher(shared, task, slot),
    }
    Ok(lease)
}

fn audit_minted(audit: &dyn AuditSink, lease: &Lease, kind: &'static str, refreshed: bool) {
    let (ts, task, secret) = (
        timestamp(SystemTime::now()),
        lease.task.clone(),
        lease.secret.clone(),
    );
    let (expires, fingerprint) = (timestamp(lease.expires), lease.fingerprint.clone());
    let sts = lease.sts.clone();
    tracing::info!(task = %task, secret = %secret, fingerprint = %fingerprint, refreshed, "credential minted");
    audit.lifecycle(if refreshed {
        LifecycleRecord::Credential(CredentialRecord::CredentialRefreshed {
            ts,
            task,
            secret,
            kind,
            expires,
            fingerprint,
            sts,
        })
    } else {
        LifecycleRecord::Credential(CredentialRecord::CredentialMinted {
            ts,
            task,
            secret,
            kind,
            expires,
            fingerprint,
            sts,
        })
    });
}

/// Mints the slot's lease again before it expires, for as long as the task lives.
fn start_refresher(shared: &Arc<Shared>, task: &Arc<LiveTask>, slot: Arc<LeaseSlot>) {
    if slot
        .refreshing
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let (weak, task) = (Arc::downgrade(shared), task.clone());
    tokio::spawn(async move {
        loop {
            let Some(lease) = slot.current.lock().await.clone() else {
                return;
            };
            let wait = lease
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = task.cancelled() => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            let snapshot = shared.snapshot();
            let Some(id) = snapshot.config.secret_by_name(&lease.secret) else {
                return;
            };
            if let Err(e) = acquire(&shared, &snapshot, &task, id).await {
                tracing::warn!(task = %task.id, secret = %lease.secret, error = %e, "credential refresh failed");
                drop(shared);
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH_RETRY) => {}
                    _ = task.cancelled() => return,
                }
            }
        }
    });
}

/// Revokes every lease of `task` (it has ended; `why` is how), in the background. The values
/// stay scrubbed until they expire.
pub fn release(shared: &Shared, task: &LiveTask, why: &'static str) {
    for lease in shared.leases.take_task(&task.id) {
        spawn_revocation(shared, lease, why);
    }
}

fn revoke_in_background(shared: &Shared, lease: Arc<Lease>, why: &'static str) {
    shared.leases.retire(std::slice::from_ref(&lease));
    spawn_revocation(shared, lease, why);
}

fn spawn_revocation(shared: &Shared, lease: Arc<Lease>, why: &'static str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(task = %lease.task, secret = %lease.secret, "no runtime to revoke a credential; it lives until it expires");
        return;
    };
    let (snapshot, audit, file) = (
        shared.snapshot(),
        shared.audit.clone(),
        shared.lease_file.clone(),
    );
    runtime.spawn(async move {
        revoke_until_expiry(&snapshot, &*audit, &file, &lease, why).await;
    });
}

/// Tries to revoke `lease` until it succeeds or the credential expires on its own, auditing
/// every outcome. A confirmed revocation takes it out of the lease state file; one given up
/// stays there until it expires (a restart before then tries again).
pub async fn revoke_until_expiry(
    snapshot: &Snapshot,
    audit: &dyn AuditSink,
    file: &LeaseFile,
    lease: &Arc<Lease>,
    why: &'static str,
) {
    let minter = minter_for(&lease.source);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = minter.revoke(snapshot, lease).await;
        let retry = outcome.is_err() && SystemTime::now() + backoff < lease.expires;
        if outcome.is_ok() {
            file.release(lease);
        }
        outcome::record(audit, lease, why, attempt, &outcome, retry);
        if outcome.is_ok() {
            return;
        }
        if !retry {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
