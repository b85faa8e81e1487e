//! The seam every lease source plugs into ([`Minter`]: mint one credential for a task, revoke
//! one), and the one HTTP call minters make, through the snapshot's upstream client (so
//! `upstream.resolve`, `extra_roots`, the private-address rule and the parent proxy apply to
//! keyswap's own calls as to the agent's).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use keyswap_config::LeaseScope;
use keyswap_scrub::body::{empty, full};
use secrecy::SecretString;

use crate::audit::credential::StsSession;
use crate::error::ErrorChain;
use crate::state::leases::{Lease, LeasePart, Leases};
use crate::state::snapshot::Snapshot;

/// The most of a token endpoint's answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// A minter's future (object-safe: minters are chosen per secret at runtime).
pub type MintFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, MintError>> + Send + 'a>>;

/// What a mint is for.
pub struct MintRequest<'a> {
    pub snapshot: &'a Arc<Snapshot>,
    pub leases: &'a Leases,
    pub task: &'a str,
    pub secret: &'a str,
    /// The task's policy's narrowing (`github:`, `oauth2:`, `aws:`).
    pub scope: LeaseScope,
    /// When the task ends (`None`: never): an STS session lives no longer.
    pub task_expires: Option<SystemTime>,
}

/// A credential just minted.
pub struct Minted {
    pub value: SecretString,
    pub expires: SystemTime,
    /// The credential's other values (an STS session's secret key and session token), each
    /// scrubbed to its own placeholder; empty for a one-value token.
    pub parts: Vec<LeasePart>,
    /// An STS session's audit fields.
    pub sts: Option<StsSession>,
}

impl Minted {
    /// A one-value credential (a token).
    pub fn token(value: SecretString, expires: SystemTime) -> Minted {
        Minted {
            value,
            expires,
            parts: Vec::new(),
            sts: None,
        }
    }
}

/// How a revocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The upstream answered this success status.
    Revoked { status: u16 },
    /// The source has no revocation: the credential lives until it expires.
    NotRevocable,
}

/// Why a mint or a revocation failed. Never holds a credential or an answer's body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MintError {
    /// The source itself is unusable until the operator acts (`invalid_grant`, a bad key):
    /// no retry.
    #[error("{0}")]
    Unavailable(String),
    /// This attempt failed (the upstream is down, answered an error): a later one may work.
    #[error("{0}")]
    Failed(String),
}

/// A lease source: mints a credential for one task, revokes one.
pub trait Minter: Send + Sync {
    fn mint<'a>(&'a self, request: MintRequest<'a>) -> MintFuture<'a, Minted>;
    fn revoke<'a>(&'a self, snapshot: &'a Snapshot, lease: &'a Lease)
        -> MintFuture<'a, Revocation>;
}

/// An upstream's answer to one of keyswap's own calls.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request of keyswap's own (a mint, a revocation) and reads the answer (at most
/// 256 KiB). Errors say what failed, never what was sent or answered.
pub async fn call(
    snapshot: &Snapshot,
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
) -> Result<Answer, MintError> {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .body(match body {
            Some(body) => full(body),
            None => empty(),
        })
        .map_err(|_| MintError::Unavailable(format!("{url} is not a URL keyswap can call")))?;
    *request.headers_mut() = headers;
    let response = snapshot
        .upstream
        .request(request, false)
        .await
        .map_err(|e| {
            MintError::Failed(format!("{url} could not be reached: {}", ErrorChain(&e)))
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|_| MintError::Failed(format!("the answer of {url} could not be read")))?
        .to_bytes();
    Ok(Answer { status, body })
}
