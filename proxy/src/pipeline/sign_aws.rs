//! The signing step of AWS requests: an agent that holds an `aws:` secret's placeholder key
//! pair signs its requests (SigV4) with it; keyswap checks what the signature claims, drops it
//! ([`prepare`], before the swap step, so the placeholder key id goes no further), and signs
//! the request as it goes upstream with the real keys ([`sign`], after the rewrite, so the
//! signature covers exactly what is sent), with the AWS SDK's own signer (`aws-sigv4`). With
//! `assume_role`, the real keys are the task's own STS session
//! ([`crate::lifecycle::leases::sts`]), with its `x-amz-security-token`; the agent's
//! placeholder session token is dropped with its signature.
//!
//! The payload hash the agent declared in `x-amz-content-sha256` is signed as declared, so a
//! body streams untouched; a request without one (most services but S3) has its body hashed
//! first, up to [`MAX_HASHED_BODY`]. Refused with [`Reason::SignatureUnsupported`]: chunk
//! signatures (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: each chunk's signature would have to be
//! redone), SigV4A, and presigned URLs carrying the placeholder (a URL signed by the agent,
//! never seen by keyswap as a header). A credential scope that does not name the host's
//! region and service is refused as `bad_request`: the scope is what the real keys would vouch
//! for. A placeholder key id sent where no rule grants it is the swap step's refusal
//! (`placeholder_not_allowed`), as for any placeholder.
//!
//! This module reads real keys (to sign) and writes them nowhere: the upstream gets the
//! signature and the real key id, which the scrubber turns back into the placeholder.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign as sigv4_sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderValue};
use http_body_util::BodyExt;
use keyswap_config::{Rule, SecretId};
use keyswap_scrub::body::full;
use secrecy::ExposeSecret;

use crate::audit::decision::{Denial, Reason};
use crate::lifecycle::leases::{self, sts};
use crate::pipeline::context::ConnContext;
use crate::pipeline::outbound::{body_denial, Outgoing};
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;
use crate::wire::sigv4::{self, Algorithm, Payload, PayloadRefused};

/// The largest body hashed before signing (a request without `x-amz-content-sha256`: API
/// calls, not uploads).
pub const MAX_HASHED_BODY: usize = 8 * 1024 * 1024;

const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// A request to sign again, as [`prepare`] found it.
pub struct AwsSigning {
    secret: SecretId,
    region: String,
    service: String,
    /// The headers the agent signed (lower-case), but those the signer writes itself.
    signed_headers: Vec<String>,
    payload: Payload,
}

/// Finds a SigV4 signature made with the placeholder key id of an `aws:` secret the rule
/// grants, checks it can be re-signed, and removes it (with the agent's date and session
/// token). `None`: nothing for this step (no such signature, or a placeholder the rule does not
/// grant, which the swap step refuses).
pub fn prepare(
    snapshot: &Snapshot,
    ctx: &ConnContext,
    parts: &mut Parts,
    rule: &Rule,
) -> Result<Option<AwsSigning>, Denial> {
    let granted = |key_id: &str| {
        rule.secrets.iter().copied().find(|id| {
            let secret = snapshot.config.secret(*id);
            secret.aws.is_some() && secret.placeholder == key_id
        })
    };
    if !rule
        .secrets
        .iter()
        .any(|id| snapshot.config.secret(*id).aws.is_some())
    {
        return Ok(None);
    }
    let presigned = parts.uri.query().and_then(sigv4::presigned_key_id);
    if presigned.is_some_and(|key_id| granted(&key_id).is_some()) {
        return Err(unsupported(
            ctx,
            "a presigned URL carries the placeholder key id; keyswap re-signs only requests \
             signed in the Authorization header: make the call itself through keyswap",
        ));
    }
    let Some(auth) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(sigv4::parse_authorization)
    else {
        return Ok(None);
    };
    let Some(secret) = granted(&auth.key_id) else {
        return Ok(None);
    };
    if auth.algorithm == Algorithm::EcdsaP256 {
        return Err(unsupported(
            ctx,
            "the request is signed with SigV4A (AWS4-ECDSA-P256-SHA256), which keyswap does not \
             re-sign; use a regional endpoint with SigV4 (AWS4-HMAC-SHA256)",
        ));
    }
    check_scope(ctx, &auth)?;
    let payload = check_payload(ctx, &parts.headers)?;
    for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
        parts.headers.remove(name);
    }
    let signer_writes = [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "host",
    ];
    let signed_headers = auth
        .signed_headers
        .into_iter()
        .filter(|h| !signer_writes.contains(&h.as_str()) && h != CONTENT_SHA256)
        .collect();
    Ok(Some(AwsSigning {
        secret,
        region: auth.region,
        service: auth.service,
        signed_headers,
        payload,
    }))
}

/// Signs the request as it goes upstream with the real keys of the secret (with
/// `assume_role`: the task's STS session, minted now on its first request), and names the
/// secret in the audit.
pub async fn sign(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    rule: &Rule,
    path: &str,
    signing: &AwsSigning,
    outgoing: &mut Outgoing,
) -> Result<(), Denial> {
    let secret = snapshot.config.secret(signing.secret);
    let Some(keys) = &secret.aws else {
        return Ok(());
    };
    let host = host_header(ctx);
    let request = &mut outgoing.request;
    request.headers_mut().insert(header::HOST, host);
    let payload_hash = payload_hash(snapshot, ctx, rule, path, &signing.payload, outgoing).await?;
    let request = &mut outgoing.request;
    let headers = signed_pairs(request.headers(), &signing.signed_headers)?;
    let sent_hash = !matches!(signing.payload, Payload::Absent);
    let identity = match &secret.lease {
        // The source keys sign nothing but AssumeRole: the task's own session signs.
        Some(_) => session(shared, snapshot, ctx, signing.secret).await?,
        None => Credentials::new(
            secret.value.expose_secret(),
            keys.secret_access_key.expose_secret(),
            None,
            None,
            "keyswap",
        ),
    }
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&signing.region)
        .name(&signing.service)
        .time(SystemTime::now())
        .settings(settings(&signing.service, sent_hash))
        .build()
        .map_err(|_| signing_failed())?
        .into();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Precomputed(payload_hash),
    )
    .map_err(|_| signing_failed())?;
    let (instructions, _signature) = sigv4_sign(signable, &params)
        .map_err(|_| signing_failed())?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    if let Some(value) = request.headers_mut().get_mut(header::AUTHORIZATION) {
        value.set_sensitive(true);
    }
    if !outgoing.meta.secrets.contains(&secret.name) {
        outgoing.meta.secrets.push(secret.name.clone());
    }
    Ok(())
}

/// The task's STS session for `id` (minted on first use, single flight), as credentials.
async fn session(
    shared: &Arc<Shared>,
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    id: SecretId,
) -> Result<Credentials, Denial> {
    let name = &snapshot.config.secret(id).name;
    let unavailable = |why: String| {
        tracing::warn!(task = %ctx.task.id, secret = %name, error = %why, "no STS session could be minted");
        Denial::new(
            Reason::SecretUnavailable,
            format!(
                "keyswap could not mint an STS session of secret {name} for task {}: {why}; \
                 ask the operator to check the role and its trust policy",
                ctx.task.id
            ),
        )
    };
    let lease = leases::acquire(shared, snapshot, &ctx.task, id)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    sts::credentials(&lease).ok_or_else(|| unavailable("the session is incomplete".into()))
}

/// The credential scope must name the host's region and service: it is what the real keys
/// will vouch for.
fn check_scope(ctx: &ConnContext, auth: &sigv4::Authorization) -> Result<(), Denial> {
    if sigv4::host_agrees(&ctx.target.host, &auth.region, &auth.service) {
        return Ok(());
    }
    Err(Denial::new(
        Reason::BadRequest,
        format!(
            "the signature's credential scope names region {} and service {}, which {} is \
             not an endpoint of; sign for the host's own region and service",
            shown(&auth.region),
            shown(&auth.service),
            ctx.target.host
        ),
    ))
}

/// The payload hash the agent declared, if keyswap signs it as declared.
fn check_payload(ctx: &ConnContext, headers: &http::HeaderMap) -> Result<Payload, Denial> {
    let declared = headers
        .get(CONTENT_SHA256)
        .map(|v| v.to_str().unwrap_or("?"));
    sigv4::payload(declared).map_err(|refused| match refused {
        PayloadRefused::ChunkSigned => unsupported(
            ctx,
            "the body is aws-chunked with signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), \
             which keyswap does not re-sign; send UNSIGNED-PAYLOAD, \
             STREAMING-UNSIGNED-PAYLOAD-TRAILER or the body's SHA-256",
        ),
        PayloadRefused::Unknown => Denial::new(
            Reason::BadRequest,
            "x-amz-content-sha256 is neither a SHA-256 in hex, UNSIGNED-PAYLOAD nor \
             STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        ),
    })
}

/// The payload hash to sign: the one the agent declared, or the body's own (the body read
/// whole, bounded, and put back).
async fn payload_hash(
    snapshot: &Snapshot,
    ctx: &ConnContext,
    rule: &Rule,
    path: &str,
    payload: &Payload,
    outgoing: &mut Outgoing,
) -> Result<String, Denial> {
    if let Payload::Declared(hash) = payload {
        return Ok(hash.clone());
    }
    let body = std::mem::replace(outgoing.request.body_mut(), full(Bytes::new()));
    let bytes = match collect_bounded(body).await {
        Ok(bytes) => bytes,
        Err(too_large) => {
            if let Some(refused) = outgoing.meta.body_refused.get() {
                return Err(body_denial(snapshot, ctx, rule, path, refused.clone()));
            }
            return Err(too_large);
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    *outgoing.request.body_mut() = full(bytes);
    Ok(hex(digest.as_ref()))
}

/// The (name, value) pairs the signature covers: the headers the agent signed, as they are
/// sent, and `Host`.
fn signed_pairs(sent: &http::HeaderMap, names: &[String]) -> Result<Vec<(String, String)>, Denial> {
    let mut headers = Vec::new();
    for name in names.iter().map(String::as_str).chain(["host"]) {
        for value in sent.get_all(name) {
            let value = value.to_str().map_err(|_| {
                Denial::new(
                    Reason::BadRequest,
                    format!("signed header {name} is not visible ASCII; keyswap cannot sign it"),
                )
            })?;
            headers.push((name.to_string(), value.to_string()));
        }
    }
    Ok(headers)
}

/// S3 signs the path as sent; every other service signs it normalised and encoded again.
fn settings(service: &str, sent_hash: bool) -> SigningSettings {
    let mut settings = SigningSettings::default();
    if service == "s3" {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    if sent_hash {
        // The agent's x-amz-content-sha256 goes upstream and is signed.
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    settings
}

/// The `Host` the upstream gets (hyper writes the same): the port only when not the
/// scheme's default.
fn host_header(ctx: &ConnContext) -> HeaderValue {
    let target = &ctx.target;
    let text = if target.port == ctx.scheme.default_port() {
        target.host.clone()
    } else {
        target.to_string()
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn collect_bounded(mut body: keyswap_scrub::body::ProxyBody) -> Result<Bytes, Denial> {
    let too_large = || {
        Denial::new(
            Reason::BadRequest,
            format!(
                "the request has no x-amz-content-sha256, so keyswap hashes its body to sign it, \
                 and the body is larger than {} MiB (or could not be read); send \
                 x-amz-content-sha256 with the body's SHA-256 or UNSIGNED-PAYLOAD where the \
                 service accepts it",
                MAX_HASHED_BODY / (1024 * 1024)
            ),
        )
    };
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| too_large())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_HASHED_BODY {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unsupported(ctx: &ConnContext, why: &str) -> Denial {
    Denial::new(
        Reason::SignatureUnsupported,
        format!("{why} (host {})", ctx.target.host),
    )
}

fn signing_failed() -> Denial {
    Denial::new(
        Reason::BadRequest,
        "keyswap could not sign this AWS request (its URI or headers are not signable)",
    )
}

/// A scope field as the agent wrote it, bounded and printable (it is quoted back).
fn shown(field: &str) -> String {
    let shown: String = field
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!("\"{shown}\"")
}
