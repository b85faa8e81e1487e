//! The audit records of credential leases (written by [`crate::lifecycle::leases`]): one
//! line each, in the audit file with the other lifecycle records (`event` names the kind).
//! They name the task, the secret and the credential's fingerprint (the last 4 hex digits of
//! its SHA-256), never a value; an STS session adds its role, session name and the last 4
//! characters of its access key id ([`StsSession`]), what CloudTrail shows of it.

use serde::Serialize;

/// What the audit names of an STS session besides its fingerprint: enough to find its calls
/// in CloudTrail (the session name is `keyswap-<task>`), never a secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StsSession {
    /// The role assumed.
    pub role: String,
    /// The RoleSessionName.
    pub session: String,
    /// The last 4 characters of the session's access key id.
    pub key_id_last4: String,
}

/// A lease's step.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CredentialRecord {
    /// A credential minted for a task from a lease source (`kind`: `github_app`, `oauth2`,
    /// ...). `fingerprint`: the last 4 hex digits of the value's SHA-256, never the value.
    CredentialMinted {
        ts: String,
        task: String,
        secret: String,
        kind: &'static str,
        expires: String,
        fingerprint: String,
        /// An STS session's role, session name and key id's last 4 characters.
        #[serde(flatten)]
        sts: Option<StsSession>,
    },
    /// A task's credential minted again before its expiry (the one it replaces is revoked).
    CredentialRefreshed {
        ts: String,
        task: String,
        secret: String,
        kind: &'static str,
        expires: String,
        fingerprint: String,
        /// An STS session's role, session name and key id's last 4 characters.
        #[serde(flatten)]
        sts: Option<StsSession>,
    },
    /// The upstream revoked a credential (`status`: its answer). `why`: the task's end
    /// (`exit`, `api`, `expired`, `reload`) or `replaced` by a refresh.
    CredentialRevoked {
        ts: String,
        task: String,
        secret: String,
        fingerprint: String,
        why: &'static str,
        status: u16,
    },
    /// A revocation failed; `retry`: it is tried again (with backoff, until the credential's
    /// own expiry), else this was the last try and the credential lives until `expires`.
    CredentialRevokeFailed {
        ts: String,
        task: String,
        secret: String,
        fingerprint: String,
        why: &'static str,
        attempt: u32,
        error: String,
        retry: bool,
        expires: String,
    },
    /// A credential its source cannot revoke was dropped (it expires on its own at `expires`).
    CredentialDropped {
        ts: String,
        task: String,
        secret: String,
        fingerprint: String,
        why: &'static str,
        expires: String,
        /// An STS session's role, session name and key id's last 4 characters.
        #[serde(flatten)]
        sts: Option<StsSession>,
    },
}
