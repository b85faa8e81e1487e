//! `aws:` secrets: an AWS key pair that keyswap signs requests with (SigV4) instead of
//! swapping a placeholder for it, since AWS clients never send the secret key: they sign with
//! it. The raw shape of `secrets.NAME.aws` and the validated [`AwsKeys`].
//!
//! An `aws:` secret is a [`crate::Secret`] like any other: its `placeholder` is the access key
//! id the agent holds (found in a request like any placeholder, so sending it to a host no
//! rule grants it to is refused), its `value` the real access key id. [`AwsKeys`] adds the real
//! secret access key and what the agent's environment gets besides. Nothing here formats a
//! value: [`AwsKeys`] has a hand-written `Debug`.

use std::fmt;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

use crate::model::SecretSource;
use crate::raw::L;

/// `secrets.NAME.aws:`: an AWS key pair keyswap re-signs requests with (SigV4).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAws {
    /// Where the real access key id is read from: {from_env: VAR}, {from_file: PATH} or
    /// {from_command: [program, args...]} (required).
    pub access_key_id: Option<L<RawValueSource>>,
    /// Where the real secret access key is read from, in the same form (required).
    pub secret_access_key: Option<L<RawValueSource>>,
    /// The AWS_REGION (and AWS_DEFAULT_REGION) keyswap exec and task issue give the agent.
    pub region: Option<L<String>>,
    /// Mint a session per task with STS AssumeRole and sign with it; the keys above then sign
    /// nothing but AssumeRole.
    pub assume_role: Option<L<RawAssumeRole>>,
    /// The endpoints keyswap calls itself (overridable for tests, GovCloud, China).
    pub endpoints: Option<L<RawEndpoints>>,
}

/// `secrets.NAME.aws.assume_role:`: one STS session per task.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAssumeRole {
    /// The role assumed: arn:aws:iam::ACCOUNT:role/NAME (required).
    pub role_arn: Option<L<String>>,
    /// A JSON IAM policy narrowing every session (a policy's aws.session_policy_file wins).
    pub session_policy_file: Option<L<String>>,
    /// The session's lifetime (default 1h, 15m to 12h), capped by the task's remaining TTL.
    pub duration: Option<L<String>>,
    /// The environment variable holding the ExternalId the role's trust policy asks for.
    pub external_id_env: Option<L<String>>,
}

/// `secrets.NAME.aws.endpoints:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoints {
    /// The STS endpoint AssumeRole is sent to (default https://sts.amazonaws.com); its region
    /// (sts.REGION.amazonaws.com) signs the call, else us-east-1.
    pub sts: Option<L<String>>,
}

/// A policy's `aws:`: what its tasks' STS sessions are narrowed to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicyAws {
    /// A JSON IAM policy passed as the session policy of this policy's tasks (instead of the
    /// secret's assume_role.session_policy_file).
    pub session_policy_file: Option<L<String>>,
}

/// Where one value of an `aws:` secret is read from: exactly one of the three.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawValueSource {
    /// Read the value from this environment variable.
    pub from_env: Option<L<String>>,
    /// Read the value from this file.
    pub from_file: Option<L<String>>,
    /// Read the value from this program's output: [program, args...].
    pub from_command: Option<L<Vec<L<String>>>>,
}

/// The variables an `aws:` secret's placeholders are given to the agent in.
pub const ACCESS_KEY_ID_ENV: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";
pub const REGION_ENVS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
/// The variable an `assume_role` secret's session token placeholder is given in.
pub const SESSION_TOKEN_ENV: &str = "AWS_SESSION_TOKEN";
/// The STS endpoint when `endpoints.sts` is absent.
pub const DEFAULT_STS: &str = "https://sts.amazonaws.com";

/// What an `aws:` secret holds besides the access key id (the secret's `value`).
#[derive(Clone)]
pub struct AwsKeys {
    /// The real secret access key: it signs, and is never sent.
    pub secret_access_key: SecretString,
    /// Where it was read from (hidden from `keyswap exec`'s command like any secret source).
    pub secret_access_key_source: SecretSource,
    /// What the agent holds as its secret access key. Signatures made with it are replaced,
    /// never checked: it is no credential.
    pub secret_access_key_placeholder: String,
    /// `region:`, given to the agent as `AWS_REGION`.
    pub region: Option<String>,
    /// With `assume_role`: what the agent holds as its session token (`AWS_SESSION_TOKEN`).
    /// It is dropped from requests, never checked: the minted session's token is signed in.
    pub session_token_placeholder: Option<String>,
}

impl fmt::Debug for AwsKeys {
    // Written by hand so that the secret key can never be formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeys")
            .field("secret_access_key_source", &self.secret_access_key_source)
            .field(
                "secret_access_key_placeholder",
                &self.secret_access_key_placeholder,
            )
            .field("region", &self.region)
            .field("session_token_placeholder", &self.session_token_placeholder)
            .finish_non_exhaustive()
    }
}

/// The access key id placeholder keyswap makes for secret `name` when it has no
/// `placeholder:`: the shape of an AWS key id (`AKIA` and 16 of A-Z, 2-7), stable for a name.
pub fn generated_key_id(name: &str) -> String {
    format!(
        "AKIA{}",
        base32_digest(&format!("keyswap-aws-key-id:{name}"), 16)
    )
}

/// The secret access key placeholder of secret `name`: 40 characters, stable for a name,
/// marked as keyswap's so no one takes it for a key.
pub fn generated_secret_key(name: &str) -> String {
    format!(
        "keyswapPlaceholder{}",
        base32_digest(&format!("keyswap-aws-secret-key:{name}"), 22)
    )
}

/// The session token placeholder of secret `name` (with `assume_role`): stable for a name,
/// marked as keyswap's.
pub fn generated_session_token(name: &str) -> String {
    format!(
        "keyswapPlaceholderSession{}",
        base32_digest(&format!("keyswap-aws-session-token:{name}"), 40)
    )
}

/// Whether `arn` has the shape of an IAM role's ARN: `arn:PARTITION:iam::ACCOUNT:role/NAME`,
/// the partition `aws` or `aws-…` (`aws-us-gov`, `aws-cn`), the account 12 digits.
pub fn valid_role_arn(arn: &str) -> bool {
    let mut fields = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return false;
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    let name = resource.strip_prefix("role/").unwrap_or("");
    partition_ok
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// The region an STS endpoint URL names (`https://sts.eu-west-1.amazonaws.com`), else
/// `us-east-1`, the global endpoint's signing region.
pub fn sts_region(url: &str) -> String {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host.split('.')
        .find(|label| valid_region(label))
        .unwrap_or("us-east-1")
        .to_string()
}

/// `len` characters of A-Z, 2-7 derived from `text` (FNV-1a, re-seeded per character): a
/// name's placeholders differ from another name's, and are the same on every load.
fn base32_digest(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::with_capacity(len);
    for round in 0..len {
        for b in text.bytes().chain([round as u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        out.push(ALPHABET[(hash >> 59) as usize] as char);
    }
    out
}

/// Whether `region` looks like an AWS region name (`us-east-1`, `us-gov-west-1`,
/// `cn-north-1`): lower-case letters, digits and `-`, ending with a digit.
pub fn valid_region(region: &str) -> bool {
    (4..=32).contains(&region.len())
        && region.contains('-')
        && region.ends_with(|c: char| c.is_ascii_digit())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_placeholders_are_stable_and_distinct() {
        let a = generated_key_id("aws-dev");
        assert_eq!(a, generated_key_id("aws-dev"));
        assert_ne!(a, generated_key_id("aws-prod"));
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("AKIA"));
        assert_eq!(generated_secret_key("aws-dev").len(), 40);
    }

    #[test]
    fn regions() {
        assert!(valid_region("us-east-1"));
        assert!(valid_region("us-gov-west-1"));
        assert!(!valid_region("US-EAST-1"));
        assert!(!valid_region("useast"));
    }

    #[test]
    fn role_arns_and_sts_regions() {
        assert!(valid_role_arn("arn:aws:iam::123456789012:role/agent"));
        assert!(valid_role_arn(
            "arn:aws-us-gov:iam::123456789012:role/path/agent"
        ));
        assert!(!valid_role_arn("arn:aws:iam::12345:role/agent"));
        assert!(!valid_role_arn("arn:aws:iam::123456789012:user/agent"));
        assert!(!valid_role_arn("arn:aws:s3:::bucket"));
        assert!(!valid_role_arn("arn:aws:iam::123456789012:role/"));
        assert_eq!(sts_region("https://sts.amazonaws.com"), "us-east-1");
        assert_eq!(
            sts_region("https://sts.eu-west-1.amazonaws.com/"),
            "eu-west-1"
        );
        let token = generated_session_token("aws-dev");
        assert_eq!(token, generated_session_token("aws-dev"));
        assert_ne!(token, generated_session_token("aws-prod"));
    }
}
