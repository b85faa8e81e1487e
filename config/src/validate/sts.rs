//! `secrets.NAME.aws.assume_role:` and `endpoints:`, and a policy's `aws:`: the role's ARN,
//! the session policy files (read at load: they exist, are JSON, an object with a
//! `Statement`, and fit STS's size limit), the session's duration, the ExternalId's variable
//! and the STS endpoint (https). Messages name fields, files and variables, never a value.

use std::time::Duration;

use secrecy::SecretString;

use super::{check_duration, Checker};
use crate::aws::{self, RawAssumeRole, RawAws, RawPolicyAws};
use crate::error::Sink;
use crate::lease_sources::AwsRole;
use crate::raw::RawPolicy;
use crate::read::Located;

/// STS's bounds on DurationSeconds for AssumeRole (15 minutes; a role's longest maximum).
pub const MIN_SESSION: Duration = Duration::from_secs(15 * 60);
pub const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);
/// The session's duration when `assume_role.duration` is absent.
pub const DEFAULT_SESSION: Duration = Duration::from_secs(3600);
/// STS refuses a session policy longer than this (its packed size limit is stricter still).
const MAX_POLICY_CHARS: usize = 2048;

/// The source keys of an `assume_role` secret, as read by `aws.rs`.
pub(super) struct SourceKeys {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
}

/// `assume_role:` (with the secret's `endpoints:`), validated.
pub(super) fn check_assume_role(
    secret: &str,
    aws: &Located<RawAws>,
    role: &Located<RawAssumeRole>,
    keys: Option<SourceKeys>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<AwsRole> {
    let r = &role.value;
    let role_arn = match &r.role_arn {
        Some(arn) if aws::valid_role_arn(arn.value.trim()) => Some(arn.value.trim().to_string()),
        Some(arn) => {
            sink.at(
                arn,
                format!("\"{}\" is not an IAM role ARN", arn.value),
                "write arn:aws:iam::ACCOUNT:role/NAME, ACCOUNT being 12 digits",
            );
            None
        }
        None => {
            sink.missing(
                role,
                "role_arn",
                "add the role to assume, e.g. `role_arn: arn:aws:iam::123456789012:role/agent`",
            );
            None
        }
    };
    let session_policy = match &r.session_policy_file {
        Some(file) => read_session_policy(file, sink).map(Some),
        None => Some(None),
    };
    let duration = match &r.duration {
        Some(d) => check_session_duration(d, sink),
        None => Some(DEFAULT_SESSION),
    };
    let external_id = match &r.external_id_env {
        Some(var) => match checker.env.var(&var.value) {
            Some(value) if !value.trim().is_empty() => Some(Some(SecretString::from(value))),
            _ => {
                sink.at(
                    var,
                    format!("environment variable {} is not set", var.value),
                    format!(
                        "export {} (the ExternalId the role's trust policy names) before starting keyswap",
                        var.value
                    ),
                );
                None
            }
        },
        None => Some(None),
    };
    let sts = check_sts_endpoint(aws, sink);
    let keys = keys?;
    Some(AwsRole {
        role_arn: role_arn?,
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
        sts_region: aws::sts_region(sts.as_deref()?),
        sts: sts?,
        session_policy: session_policy?,
        duration: duration?,
        external_id: external_id?,
        secret_access_key_placeholder: aws::generated_secret_key(secret),
        session_token_placeholder: aws::generated_session_token(secret),
        env_vars: r.external_id_env.iter().map(|v| v.value.clone()).collect(),
    })
}

/// `endpoints.sts`: an https URL (keyswap's own AssumeRole call carries a signature of the
/// source keys), without a trailing `/`; the default when absent.
pub(super) fn check_sts_endpoint(aws: &Located<RawAws>, sink: &mut Sink<'_>) -> Option<String> {
    let Some(url) = aws
        .value
        .endpoints
        .as_ref()
        .and_then(|e| e.value.sts.as_ref())
    else {
        return Some(aws::DEFAULT_STS.to_string());
    };
    let text = url.value.trim().trim_end_matches('/');
    let host = text.strip_prefix("https://").unwrap_or("");
    if host.is_empty() || host.starts_with('/') || text.contains(char::is_whitespace) {
        sink.at(
            url,
            format!("\"{}\" is not an https:// URL", url.value),
            "write the STS endpoint with https://, e.g. https://sts.us-east-1.amazonaws.com \
             (for a test server, serve TLS and add its CA to upstream.extra_roots)",
        );
        return None;
    }
    Some(text.to_string())
}

fn check_session_duration(value: &Located<String>, sink: &mut Sink<'_>) -> Option<Duration> {
    let duration = check_duration(value, sink)?;
    if !(MIN_SESSION..=MAX_SESSION).contains(&duration) {
        sink.at(
            value,
            format!("\"{}\" is outside what STS issues", value.value),
            "write a duration from 15m to 12h (and within the role's maximum session duration)",
        );
        return None;
    }
    Some(duration)
}

/// A session policy file: read, parsed as JSON, an object with `Statement`; returned
/// minified (what AssumeRole's `Policy` parameter carries).
pub(super) fn read_session_policy(file: &Located<String>, sink: &mut Sink<'_>) -> Option<String> {
    let text = match std::fs::read_to_string(&file.value) {
        Ok(text) => text,
        Err(e) => {
            sink.at(
                file,
                format!("session policy file {} cannot be read: {e}", file.value),
                "check the path (relative to the working directory) and its permissions",
            );
            return None;
        }
    };
    let parsed: serde_json::Value = match serde_json::from_str(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            sink.at(
                file,
                format!(
                    "session policy file {} is not JSON (line {}, column {})",
                    file.value,
                    e.line(),
                    e.column()
                ),
                "write an IAM policy document: {\"Version\": \"2012-10-17\", \"Statement\": [...]}",
            );
            return None;
        }
    };
    if parsed.get("Statement").is_none() {
        sink.at(
            file,
            format!(
                "session policy file {} is not an IAM policy: it has no Statement",
                file.value
            ),
            "write an object with \"Version\": \"2012-10-17\" and a \"Statement\" list",
        );
        return None;
    }
    let minified = parsed.to_string();
    if minified.len() > MAX_POLICY_CHARS {
        sink.at(
            file,
            format!(
                "session policy file {} is {} characters without spaces; STS accepts at most {MAX_POLICY_CHARS}",
                file.value,
                minified.len()
            ),
            "shorten the policy (wildcards in actions and resources, fewer statements)",
        );
        return None;
    }
    Some(minified)
}

/// A policy's `aws.session_policy_file`, read.
pub(super) fn check_policy_aws(raw: &RawPolicy, sink: &mut Sink<'_>) -> Option<String> {
    let aws: &Located<RawPolicyAws> = raw.aws.as_ref()?;
    read_session_policy(aws.value.session_policy_file.as_ref()?, sink)
}
