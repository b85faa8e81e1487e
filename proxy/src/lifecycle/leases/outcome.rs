//! The audit record and log line of one revocation attempt's outcome, for every path that
//! revokes (a task's end, a refresh's replaced credential, a restart, the shutdown).

use std::time::SystemTime;

use crate::audit::credential::CredentialRecord;
use crate::audit::record::{timestamp, LifecycleRecord};
use crate::audit::sink::AuditSink;
use crate::state::leases::Lease;

use super::minter::{MintError, Revocation};

/// Records attempt `attempt` at revoking `lease` (`why`: what ended it). `retry`: a failed
/// attempt will be tried again (later in this process, or at the next start).
pub fn record(
    audit: &dyn AuditSink,
    lease: &Lease,
    why: &'static str,
    attempt: u32,
    outcome: &Result<Revocation, MintError>,
    retry: bool,
) {
    let (ts, task, secret, fingerprint) = (
        timestamp(SystemTime::now()),
        lease.task.clone(),
        lease.secret.clone(),
        lease.fingerprint.clone(),
    );
    let record = match outcome {
        Ok(Revocation::Revoked { status }) => {
            let status = *status;
            tracing::info!(task = %task, secret = %secret, fingerprint = %fingerprint, why, status, "credential revoked");
            CredentialRecord::CredentialRevoked {
                ts,
                task,
                secret,
                fingerprint,
                why,
                status,
            }
        }
        Ok(Revocation::NotRevocable) => CredentialRecord::CredentialDropped {
            ts,
            task,
            secret,
            fingerprint,
            why,
            expires: timestamp(lease.expires),
            sts: lease.sts.clone(),
        },
        Err(error) => {
            tracing::warn!(task = %task, secret = %secret, fingerprint = %fingerprint, why, attempt, retry, error = %error, "credential revocation failed");
            CredentialRecord::CredentialRevokeFailed {
                ts,
                task,
                secret,
                fingerprint,
                why,
                attempt,
                error: error.to_string(),
                retry,
                expires: timestamp(lease.expires),
            }
        }
    };
    audit.lifecycle(LifecycleRecord::Credential(record));
}
