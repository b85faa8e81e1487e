//! OAuth2 access tokens from the refresh-token grant (RFC 6749 §6). One refresh is in flight
//! for the whole proxy per grant (the grant's lock in [`crate::state::leases::GrantState`]):
//! providers that rotate refresh tokens revoke the whole grant when an old one is used
//! twice. A rotated refresh token is written back to its file (atomically: a 0600 temporary
//! file in the same directory, synced, renamed over it) before the new access token is
//! handed out. `invalid_grant` makes the secret unavailable until the operator puts a new
//! refresh token in the file and reloads: no retry loop.
//!
//! Access tokens are not revoked upstream (RFC 7009 revocation of an access token revokes
//! the whole grant at several providers): a task's token is dropped at its end and expires on
//! its own. The client secret and the refresh token are exposed here only to write them in
//! the form sent to the token endpoint, and the rotated token to write it to its file.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Method};
use keyswap_config::OAuth2;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};

use super::github::valid_token;
use super::minter::{call, MintError, MintFuture, MintRequest, Minted, Minter, Revocation};
use crate::state::leases::{fingerprint, Lease};
use crate::state::snapshot::Snapshot;

/// An access token whose answer has no `expires_in` is taken to live this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

pub struct OAuth2Minter(pub OAuth2);

impl Minter for OAuth2Minter {
    fn mint<'a>(&'a self, request: MintRequest<'a>) -> MintFuture<'a, Minted> {
        Box::pin(async move {
            let o = &self.0;
            let grant = request.leases.grant(request.secret);
            let mut grant = grant.lock().await;
            let configured = fingerprint(&o.refresh_token);
            if grant.config_seen.as_deref() != Some(configured.as_str()) {
                // A new refresh token in the config (first use, or the operator replaced it).
                grant.config_seen = Some(configured);
                grant.refresh_token = None;
                grant.dead = false;
            }
            if grant.dead {
                return Err(unavailable(o));
            }
            let current = grant
                .refresh_token
                .clone()
                .unwrap_or_else(|| o.refresh_token.clone());
            let scope = request.scope.oauth2_scope.as_deref().or(o.scope.as_deref());
            let form = form(o, &current, scope);
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            let answer = call(
                request.snapshot,
                Method::POST,
                &o.token_url,
                headers,
                Some(form),
            )
            .await?;
            let parsed: Answer = serde_json::from_slice(&answer.body).unwrap_or_default();
            if parsed.error.as_deref() == Some("invalid_grant") {
                grant.dead = true;
                tracing::error!(secret = request.secret, token_url = %o.token_url, "the OAuth2 provider refused the refresh token (invalid_grant); the secret is unavailable until a new refresh token is in its file and keyswap reloads");
                return Err(unavailable(o));
            }
            if !answer.status.is_success() {
                return Err(MintError::Failed(format!(
                    "{} answered {} to the refresh{}",
                    o.token_url,
                    answer.status.as_u16(),
                    parsed.error.map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            }
            let Some(access) = parsed.access_token else {
                return Err(MintError::Failed(format!(
                    "{} answered no access_token",
                    o.token_url
                )));
            };
            if let Some(rotated) = parsed
                .refresh_token
                .filter(|r| r.as_str() != current.expose_secret())
            {
                let rotated = SecretString::from(rotated);
                if let Err(e) = write_back(&o.refresh_token_file, &rotated) {
                    // The provider has rotated it already: keep it in memory, or the grant is lost.
                    tracing::error!(secret = request.secret, file = %o.refresh_token_file.display(), error = %e, "the rotated refresh token could not be written back; it is kept in memory only");
                }
                grant.refresh_token = Some(rotated);
            }
            let lifetime = parsed
                .expires_in
                .map_or(DEFAULT_LIFETIME, Duration::from_secs);
            valid_token(access, SystemTime::now() + lifetime)
        })
    }

    fn revoke<'a>(&'a self, _: &'a Snapshot, _: &'a Lease) -> MintFuture<'a, Revocation> {
        Box::pin(async { Ok(Revocation::NotRevocable) })
    }
}

#[derive(Default, serde::Deserialize)]
struct Answer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
}

fn unavailable(o: &OAuth2) -> MintError {
    MintError::Unavailable(format!(
        "the OAuth2 provider refused the refresh token (invalid_grant); the operator must put a new one in {} and reload",
        o.refresh_token_file.display()
    ))
}

/// The refresh-token grant's form (client credentials in the body, RFC 6749 §2.3.1).
fn form(o: &OAuth2, refresh: &SecretString, scope: Option<&str>) -> Vec<u8> {
    let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
    let mut form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
        enc(refresh.expose_secret()),
        enc(o.client_id.expose_secret()),
        enc(o.client_secret.expose_secret()),
    );
    if let Some(scope) = scope {
        form.push_str("&scope=");
        form.push_str(&enc(scope));
    }
    form.into_bytes()
}

/// Replaces `path` with `token` and a newline, atomically, mode 0600.
fn write_back(path: &Path, token: &SecretString) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(token.expose_secret().as_bytes())?;
    file.write_all(b"\n")?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
