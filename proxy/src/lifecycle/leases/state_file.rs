//! The lease state file over a process's life ([`crate::state::lease_file`] holds the data):
//! at start ([`restore`]) every credential a previous keyswap left there unrevoked and
//! unexpired is revoked (`why: restart`, retried with backoff until its expiry like any
//! revocation); at shutdown ([`revoke_at_shutdown`]) every credential still held is revoked
//! once, within a bound, and what could not be stays in the file for the next start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyswap_config::{GithubApp, LeaseSource};
use secrecy::SecretString;
use tokio::task::JoinSet;

use super::minter::MintError;
use super::{minter_for, outcome, spawn_revocation};
use crate::audit::credential::CredentialRecord;
use crate::audit::record::{timestamp, LifecycleRecord};
use crate::state::lease_file::{LeaseFileError, Recorded};
use crate::state::leases::Lease;
use crate::state::shared::Shared;

/// What a restored credential is scrubbed to when its secret is no longer in the config.
const GONE_PLACEHOLDER: &str = "keyswap_revoked_credential";

/// Opens the config's lease state file, revokes in the background what a previous keyswap
/// left there (the values are scrubbed until they expire), and rewrites it. A `state_dir`
/// another keyswap holds, or that cannot be written, leaves this one without a state file
/// (logged): it runs, but a restart would not revoke its credentials.
pub fn restore(shared: &Shared) {
    let snapshot = shared.snapshot();
    let path = snapshot.config.lease_state_file();
    let recorded = match shared.lease_file.open(path) {
        Ok(recorded) => recorded,
        Err(e @ LeaseFileError::Unreadable(_)) => {
            tracing::error!(error = %e, "lease state file; the credentials it named (if any) are not revoked by this start");
            Vec::new()
        }
        // Said loudly only where it matters: a config without a lease secret mints nothing
        // (replicas of a fleet often share a directory).
        Err(e) if !snapshot.config.secrets.iter().any(|s| s.lease.is_some()) => {
            tracing::info!(error = %e, "no lease state file (no secret is a lease)");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "no lease state file: a restart will not revoke the credentials this keyswap mints; give each keyswap its own state_dir");
            return;
        }
    };
    let now = SystemTime::now();
    let mut revoke = Vec::new();
    for mut r in recorded.into_iter().filter(|r| r.expires > now) {
        match r.github.take() {
            Some((api, token)) => revoke.push(restored(shared, &r, api, token)),
            None => dropped(shared, &r),
        }
    }
    // Rewritten even when empty: the records read are now this process's to keep.
    shared.lease_file.hold(&revoke);
    if revoke.is_empty() {
        return;
    }
    tracing::info!(
        credentials = revoke.len(),
        "revoking the credentials a previous keyswap left unrevoked"
    );
    shared.leases.retire(&revoke);
    for lease in revoke {
        spawn_revocation(shared, lease, "restart");
    }
}

/// A recorded GitHub installation token as a lease to revoke: revoking needs only the API
/// and the token, so the App's other settings are left empty.
fn restored(shared: &Shared, r: &Recorded, api: String, token: SecretString) -> Arc<Lease> {
    let config = &shared.snapshot().config;
    let placeholder = config
        .secret_by_name(&r.secret)
        .map(|id| config.secret(id).placeholder.clone())
        .unwrap_or_else(|| GONE_PLACEHOLDER.to_string());
    let source = LeaseSource::GithubApp(GithubApp {
        app_id: 0,
        installation_id: 0,
        private_key: SecretString::from(String::new()),
        private_key_file: None,
        api,
        env_vars: Vec::new(),
    });
    Arc::new(Lease::new(
        &r.task,
        &r.secret,
        &placeholder,
        token,
        r.expires,
        Arc::new(source),
    ))
}

/// A record with no credential to revoke with (an OAuth2 access token): it expires on its own.
fn dropped(shared: &Shared, r: &Recorded) {
    tracing::info!(task = %r.task, secret = %r.secret, kind = %r.kind, fingerprint = %r.fingerprint, "a credential a previous keyswap minted is not revocable; it expires on its own");
    shared.audit.lifecycle(LifecycleRecord::Credential(
        CredentialRecord::CredentialDropped {
            ts: timestamp(SystemTime::now()),
            task: r.task.clone(),
            secret: r.secret.clone(),
            fingerprint: r.fingerprint.clone(),
            why: "restart",
            expires: timestamp(r.expires),
            sts: None,
        },
    ));
}

/// Revokes every credential still held (live, or whose revocation is still being retried),
/// all at once, waiting at most `limit` in total. Each outcome is audited (`why:
/// shutdown`); a credential not revoked in time stays in the state file, for the next start.
pub async fn revoke_at_shutdown(shared: &Shared, limit: Duration) {
    let held = shared.lease_file.held();
    if held.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + limit;
    let snapshot = shared.snapshot();
    let mut attempts = JoinSet::new();
    for lease in held {
        let snapshot = snapshot.clone();
        attempts.spawn(async move {
            let minter = minter_for(&lease.source);
            let outcome =
                match tokio::time::timeout_at(deadline, minter.revoke(&snapshot, &lease)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(MintError::Failed(format!(
                        "no answer within {}s of shutdown",
                        limit.as_secs()
                    ))),
                };
            (lease, outcome)
        });
    }
    let mut left = 0;
    while let Some(joined) = attempts.join_next().await {
        let Ok((lease, result)) = joined else {
            continue;
        };
        match result {
            Ok(_) => shared.lease_file.release(&lease),
            Err(_) => left += 1,
        }
        outcome::record(
            &*shared.audit,
            &lease,
            "shutdown",
            1,
            &result,
            result.is_err(),
        );
    }
    if left > 0 {
        tracing::warn!(
            credentials = left,
            "credentials not revoked at shutdown stay in the lease state file; the next start revokes them"
        );
    }
}
