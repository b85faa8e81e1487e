//! GitHub App installation tokens: an RS256 JWT signed with the App's key (ring, already
//! rustls's crypto provider here) asks `POST /app/installations/{id}/access_tokens` for a
//! token narrowed to the policy's `repositories` and `permissions`; `DELETE
//! /installation/token`, authenticated with the token itself, revokes it.
//!
//! The App's key is exposed here only to sign the JWT; a minted token only to send it in
//! the revocation's `Authorization`. Neither is ever formatted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use keyswap_config::GithubApp;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::PrivateKeyDer;
use secrecy::{ExposeSecret, SecretString};

use super::minter::{call, MintError, MintFuture, MintRequest, Minted, Minter, Revocation};
use crate::state::leases::Lease;
use crate::state::snapshot::Snapshot;

/// How far back `iat` is set (GitHub allows for clock drift this way).
const IAT_SKEW: u64 = 60;
/// The JWT's lifetime after `iat` (GitHub refuses more than 10 minutes).
const JWT_LIFETIME: u64 = 9 * 60;

pub struct GithubMinter(pub GithubApp);

impl Minter for GithubMinter {
    fn mint<'a>(&'a self, request: MintRequest<'a>) -> MintFuture<'a, Minted> {
        Box::pin(async move {
            let app = &self.0;
            let jwt = app_jwt(app)?;
            let url = format!(
                "{}/app/installations/{}/access_tokens",
                app.api, app.installation_id
            );
            let mut body = serde_json::Map::new();
            if let Some(github) = &request.scope.github {
                if let Some(repositories) = &github.repositories {
                    body.insert("repositories".into(), serde_json::json!(repositories));
                }
                if let Some(permissions) = &github.permissions {
                    body.insert("permissions".into(), serde_json::json!(permissions));
                }
            }
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let answer = call(
                request.snapshot,
                Method::POST,
                &url,
                headers(&jwt, true)?,
                Some(body),
            )
            .await?;
            if answer.status != StatusCode::CREATED && answer.status != StatusCode::OK {
                let text = format!(
                    "GitHub answered {} to the access-token request of app {} (installation {})",
                    answer.status.as_u16(),
                    app.app_id,
                    app.installation_id
                );
                return Err(match answer.status.as_u16() {
                    401 | 403 | 404 | 422 => MintError::Unavailable(text),
                    _ => MintError::Failed(text),
                });
            }
            parse_token(&answer.body)
        })
    }

    fn revoke<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        lease: &'a Lease,
    ) -> MintFuture<'a, Revocation> {
        Box::pin(async move {
            let url = format!("{}/installation/token", self.0.api);
            let headers = headers(&lease.value, false)?;
            let answer = call(snapshot, Method::DELETE, &url, headers, None).await?;
            match answer.status.as_u16() {
                // 401: the token no longer works (revoked or expired already).
                status @ (200..=299 | 401) => Ok(Revocation::Revoked { status }),
                status => Err(MintError::Failed(format!(
                    "GitHub answered {status} to the revocation"
                ))),
            }
        })
    }
}

/// `Authorization: Bearer <credential>` and GitHub's API headers.
fn headers(credential: &SecretString, json_body: bool) -> Result<HeaderMap, MintError> {
    let mut headers = HeaderMap::new();
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", credential.expose_secret()))
        .map_err(|_| MintError::Unavailable("the credential cannot be sent in a header".into()))?;
    auth.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, auth);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/vnd.github+json"),
    );
    headers.insert(header::USER_AGENT, HeaderValue::from_static("keyswap"));
    headers.insert(
        "x-github-api-version",
        HeaderValue::from_static("2022-11-28"),
    );
    if json_body {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(headers)
}

/// The App's JWT: RS256 over `{"iat", "exp", "iss": app_id}`.
fn app_jwt(app: &GithubApp) -> Result<SecretString, MintError> {
    let key = key_pair(&app.private_key)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let iat = now.saturating_sub(IAT_SKEW);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"iat": iat, "exp": iat + JWT_LIFETIME, "iss": app.app_id});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| MintError::Failed("the App's JWT could not be signed".into()))?;
    Ok(SecretString::from(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

fn key_pair(pem: &SecretString) -> Result<RsaKeyPair, MintError> {
    let bad = || {
        MintError::Unavailable(
            "the App's private_key is not an RSA key in PEM (PKCS#1 or PKCS#8)".into(),
        )
    };
    let mut reader = pem.expose_secret().as_bytes();
    let der = rustls_pemfile::private_key(&mut reader)
        .ok()
        .flatten()
        .ok_or_else(bad)?;
    match der {
        PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
        _ => return Err(bad()),
    }
    .map_err(|_| bad())
}

/// `{"token": ..., "expires_at": RFC 3339}` of the access-token answer.
fn parse_token(body: &[u8]) -> Result<Minted, MintError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: String,
        expires_at: String,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        MintError::Failed("GitHub's access-token answer has no token and expires_at".into())
    })?;
    let expires = humantime::parse_rfc3339_weak(answer.expires_at.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&answer.expires_at))
        .map_err(|_| MintError::Failed("GitHub's expires_at is not an RFC 3339 time".into()))?;
    valid_token(answer.token, expires)
}

/// A minted value must be safe in a header and long enough to scrub.
pub(super) fn valid_token(token: String, expires: SystemTime) -> Result<Minted, MintError> {
    let ok = token.len() >= keyswap_config::secrets::MIN_VALUE_LEN
        && token.len() <= 64 * 1024
        && token.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !ok {
        return Err(MintError::Failed(
            "the minted token is empty, too short, or not visible ASCII".into(),
        ));
    }
    Ok(Minted::token(SecretString::from(token), expires))
}
