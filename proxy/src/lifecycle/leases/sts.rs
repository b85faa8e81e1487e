//! AWS STS sessions, one per task: `AssumeRole` signed with the secret's source keys (the
//! only request they ever sign), named `keyswap-<task id>` so that CloudTrail ties every call
//! of the session to the task, narrowed by the task's policy's session policy (else the
//! secret's), and living no longer than the task (DurationSeconds is the configured duration
//! capped by the task's remaining TTL, but at least STS's 15 minutes).
//!
//! A session is three values: the access key id is the lease's value, the secret access key
//! and the session token its parts ([`SECRET_ACCESS_KEY`], [`SESSION_TOKEN`]); all three are
//! scrubbed. STS sessions cannot be revoked ([`Revocation::NotRevocable`]): at the task's end
//! the session is dropped and expires on its own.
//!
//! The answer is read by a small parser of the four elements keyswap needs (STS's XML has no
//! attributes, CDATA or nesting in them); errors name STS's error code, never its message
//! (which can quote a key id) nor a value.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::{header, HeaderMap, HeaderValue, Method};
use keyswap_config::AwsRole;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};

use super::minter::{call, MintError, MintFuture, MintRequest, Minted, Minter, Revocation};
use crate::audit::credential::StsSession;
use crate::state::leases::{Lease, LeasePart};
use crate::state::snapshot::Snapshot;

/// The part of a session lease holding its secret access key.
pub const SECRET_ACCESS_KEY: &str = "secret_access_key";
/// The part of a session lease holding its session token.
pub const SESSION_TOKEN: &str = "session_token";

/// STS's shortest session.
const MIN_SESSION: Duration = Duration::from_secs(900);
/// What the form leaves as it is: RFC 3986's unreserved characters, as the AWS SDKs encode
/// (a server that re-encodes the parsed form before checking the signature gets the same
/// bytes).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// RoleSessionName's longest.
const MAX_SESSION_NAME: usize = 64;

pub struct StsMinter(pub AwsRole);

impl Minter for StsMinter {
    fn mint<'a>(&'a self, request: MintRequest<'a>) -> MintFuture<'a, Minted> {
        Box::pin(async move {
            let role = &self.0;
            let now = SystemTime::now();
            let session = session_name(request.task);
            let seconds = session_seconds(role.duration, request.task_expires, now);
            let policy = request
                .scope
                .aws_session_policy
                .as_deref()
                .or(role.session_policy.as_deref());
            let body = form(role, &session, seconds, policy);
            let url = format!("{}/", role.sts);
            let headers = signed_headers(role, &url, &body)?;
            let answer = call(request.snapshot, Method::POST, &url, headers, Some(body)).await?;
            let text = String::from_utf8_lossy(&answer.body);
            if !answer.status.is_success() {
                let code = element(&text, "Code").filter(|c| is_code(c));
                let message = format!(
                    "STS answered {} to AssumeRole of {}{}",
                    answer.status.as_u16(),
                    role.role_arn,
                    code.map(|c| format!(" ({c})")).unwrap_or_default()
                );
                return Err(if answer.status.is_client_error() {
                    MintError::Unavailable(message)
                } else {
                    MintError::Failed(message)
                });
            }
            let minted = parse_credentials(&text, role)?;
            Ok(Minted {
                sts: Some(StsSession {
                    role: role.role_arn.clone(),
                    session,
                    key_id_last4: last4(&minted.value),
                }),
                ..minted
            })
        })
    }

    fn revoke<'a>(&'a self, _: &'a Snapshot, _: &'a Lease) -> MintFuture<'a, Revocation> {
        // STS has no call that ends a session: it expires on its own (at most the task's TTL).
        Box::pin(async { Ok(Revocation::NotRevocable) })
    }
}

/// The credentials a session lease signs with (key id, secret key, session token); `None`
/// for a lease that is no STS session.
pub fn credentials(lease: &Lease) -> Option<Credentials> {
    let key = lease.part(SECRET_ACCESS_KEY)?;
    let token = lease.part(SESSION_TOKEN)?;
    Some(Credentials::new(
        lease.value.expose_secret(),
        key.expose_secret(),
        Some(token.expose_secret().to_string()),
        Some(lease.expires),
        "keyswap-sts",
    ))
}

/// `keyswap-<task id>`, in STS's charset (`[\w+=,.@-]`, anything else becomes `-`), at most
/// 64 characters.
pub fn session_name(task: &str) -> String {
    format!("keyswap-{task}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(MAX_SESSION_NAME)
        .collect()
}

/// DurationSeconds: the configured duration, capped by what is left of the task, at least
/// STS's minimum.
pub fn session_seconds(
    configured: Duration,
    task_expires: Option<SystemTime>,
    now: SystemTime,
) -> u64 {
    let left = task_expires.map(|end| end.duration_since(now).unwrap_or(Duration::ZERO));
    let duration = left.map_or(configured, |left| left.min(configured));
    duration.max(MIN_SESSION).as_secs()
}

/// AssumeRole's form body.
fn form(role: &AwsRole, session: &str, seconds: u64, policy: Option<&str>) -> Vec<u8> {
    let enc = |v: &str| utf8_percent_encode(v, UNRESERVED).to_string();
    let mut form = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}&DurationSeconds={seconds}",
        enc(&role.role_arn),
        enc(session),
    );
    if let Some(policy) = policy {
        form.push_str("&Policy=");
        form.push_str(&enc(policy));
    }
    if let Some(external_id) = &role.external_id {
        form.push_str("&ExternalId=");
        form.push_str(&enc(external_id.expose_secret()));
    }
    form.into_bytes()
}

/// The headers of the AssumeRole call, signed (SigV4, service `sts`) with the source keys.
fn signed_headers(role: &AwsRole, url: &str, body: &[u8]) -> Result<HeaderMap, MintError> {
    let unsignable =
        || MintError::Unavailable(format!("{url} is not an STS endpoint keyswap can sign for"));
    let uri: http::Uri = url.parse().map_err(|_| unsignable())?;
    let authority = uri.authority().ok_or_else(unsignable)?;
    let host = match authority.port_u16() {
        Some(443) | None => authority.host().to_string(),
        Some(_) => authority.to_string(),
    };
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::HOST, host)
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(())
        .map_err(|_| unsignable())?;
    let credentials = Credentials::new(
        role.access_key_id.expose_secret(),
        role.secret_access_key.expose_secret(),
        None,
        None,
        "keyswap-source",
    );
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&role.sts_region)
        .name("sts")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| unsignable())?
        .into();
    let pairs: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let signable = SignableRequest::new(
        "POST",
        url,
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|_| unsignable())?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|_| unsignable())?
        .into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let mut headers = request.into_parts().0.headers;
    if let Some(value) = headers.get_mut(header::AUTHORIZATION) {
        value.set_sensitive(true);
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("text/xml"));
    Ok(headers)
}

/// The session in an AssumeRole answer: the key id as the value, the secret key and the
/// session token as parts (each scrubbed to the agent's placeholder of it).
fn parse_credentials(xml: &str, role: &AwsRole) -> Result<Minted, MintError> {
    let missing =
        |what: &str| MintError::Failed(format!("STS's AssumeRole answer has no valid {what}"));
    let value = |name: &str| {
        element(xml, name)
            .filter(|v| valid_value(v))
            .map(SecretString::from)
            .ok_or_else(|| missing(name))
    };
    let key_id = value("AccessKeyId")?;
    let secret_key = value("SecretAccessKey")?;
    let token = value("SessionToken")?;
    let expires = element(xml, "Expiration")
        .and_then(|e| humantime::parse_rfc3339_weak(&e).ok())
        .filter(|e| *e > SystemTime::now())
        .ok_or_else(|| missing("Expiration"))?;
    Ok(Minted {
        value: key_id,
        expires,
        parts: vec![
            LeasePart {
                name: SECRET_ACCESS_KEY,
                value: secret_key,
                placeholder: role.secret_access_key_placeholder.clone(),
            },
            LeasePart {
                name: SESSION_TOKEN,
                value: token,
                placeholder: role.session_token_placeholder.clone(),
            },
        ],
        sts: None,
    })
}

/// The text of the first `<name>…</name>`, with XML's five entities decoded.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(
        xml[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// A credential value keyswap can put in a header and scrub: visible ASCII, not short.
fn valid_value(value: &str) -> bool {
    value.len() >= 16 && value.len() <= 64 * 1024 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// An STS error code (`AccessDenied`, `InvalidClientTokenId`): a short word, safe to log.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

/// The last 4 characters of a key id: what CloudTrail and the audit show of it.
fn last4(key_id: &SecretString) -> String {
    let id = key_id.expose_secret();
    id[id.len().saturating_sub(4)..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("fix-42"), "keyswap-fix-42");
        assert_eq!(session_name("a b/c:d"), "keyswap-a-b-c-d");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn duration_is_capped_by_the_task_and_at_least_15_minutes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(session_seconds(hour, None, now), 3600);
        assert_eq!(session_seconds(hour, Some(now + hour * 3), now), 3600);
        assert_eq!(
            session_seconds(hour, Some(now + Duration::from_secs(1800)), now),
            1800
        );
        assert_eq!(
            session_seconds(hour, Some(now + Duration::from_secs(60)), now),
            900
        );
        assert_eq!(session_seconds(hour, Some(now - hour), now), 900);
    }

    #[test]
    fn reads_the_four_elements() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
            <AccessKeyId>ASIATESTTESTTEST1234</AccessKeyId>\
            <SecretAccessKey>not-a-secret-test-value-0000</SecretAccessKey>\
            <SessionToken>FwoGZXIvYXdzE&amp;test/token+value=</SessionToken>\
            <Expiration>2999-01-01T00:00:00.123Z</Expiration>\
            </Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(
            element(xml, "SessionToken").as_deref(),
            Some("FwoGZXIvYXdzE&test/token+value=")
        );
        assert_eq!(element(xml, "Nope"), None);
        assert!(humantime::parse_rfc3339_weak("2999-01-01T00:00:00.123Z").is_ok());
        assert_eq!(last4(&SecretString::from("ASIATESTTESTTEST1234")), "1234");
        assert!(is_code("AccessDenied"));
        assert!(!is_code("Access denied to <x>"));
    }
}
