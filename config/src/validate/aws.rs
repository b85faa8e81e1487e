//! `secrets.NAME.aws:`: the two sources of the key pair (each read like any secret's value),
//! the placeholders (the secret's `placeholder:` is the access key id the agent holds;
//! keyswap makes one when it is absent), `region:`, and `assume_role:` / `endpoints:`
//! ([`super::sts`]): then the secret is also a lease source, an STS session per task. A field of a plain secret that means
//! nothing for a key pair that signs (`from_*`, `refresh`, `headers`) is refused.

use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;

use super::{sts, Checker, Site};
use crate::aws::{self, AwsKeys, RawAws, RawValueSource};
use crate::error::Sink;
use crate::lease_sources::LeaseSource;
use crate::model::{Secret, SecretId, SecretSource};
use crate::raw::RawSecret;
use crate::read::Located;
use crate::secrets::{self, Source};

/// An `aws:` secret, with the sites of its placeholder and of its key id's source (where
/// clashes are reported).
pub(super) fn check_aws_secret(
    id: SecretId,
    name: &Located<String>,
    raw: &Located<RawSecret>,
    aws: &Located<RawAws>,
    env: Option<String>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(Secret, (Site, Site))> {
    refuse_plain_fields(raw, sink);
    let secret = &name.value;
    let key_id = required(aws, &aws.value.access_key_id, "access_key_id", sink)
        .and_then(|s| read(secret, "access_key_id", s, sink, checker));
    let secret_key = required(aws, &aws.value.secret_access_key, "secret_access_key", sink)
        .and_then(|s| read(secret, "secret_access_key", s, sink, checker));
    let region = aws.value.region.as_ref().and_then(|r| {
        if aws::valid_region(&r.value) {
            Some(r.value.clone())
        } else {
            sink.at(
                r,
                format!("\"{}\" is not an AWS region name", r.value),
                "write a region such as us-east-1",
            );
            None
        }
    });
    let (placeholder, placeholder_site) = match &raw.value.placeholder {
        Some(p) => match secrets::placeholder_problem(&p.value) {
            Some(problem) => {
                sink.at(p, problem.message, problem.fix);
                return None;
            }
            None => (p.value.clone(), Site::from(p)),
        },
        None => (aws::generated_key_id(secret), Site::from(aws)),
    };
    let lease = match &aws.value.assume_role {
        Some(role) => {
            let keys = match (&key_id, &secret_key) {
                (Some(id), Some(key)) => Some(sts::SourceKeys {
                    access_key_id: id.0.clone(),
                    secret_access_key: key.0.clone(),
                }),
                _ => None,
            };
            let role = sts::check_assume_role(secret, aws, role, keys, sink, checker)?;
            Some(Arc::new(LeaseSource::Aws(role)))
        }
        None => {
            // `endpoints:` serves only assume_role, but a bad one is reported all the same.
            sts::check_sts_endpoint(aws, sink);
            None
        }
    };
    let (value, source, value_site) = key_id?;
    let (secret_access_key, secret_access_key_source, _) = secret_key?;
    let keys = AwsKeys {
        secret_access_key,
        secret_access_key_source,
        secret_access_key_placeholder: aws::generated_secret_key(secret),
        region,
        session_token_placeholder: lease.as_ref().map(|_| aws::generated_session_token(secret)),
    };
    let secret = Secret {
        id,
        name: secret.clone(),
        placeholder,
        value,
        source,
        env: Some(env.unwrap_or_else(|| aws::ACCESS_KEY_ID_ENV.to_string())),
        refresh: None,
        headers: None,
        aws: Some(Arc::new(keys)),
        lease,
    };
    Some((secret, (placeholder_site, value_site)))
}

/// `from_*`, `refresh` and `headers` describe a value swapped into a header, `github_app` and
/// `oauth2` one minted per task: an `aws:` key pair is never swapped, it signs.
fn refuse_plain_fields(raw: &Located<RawSecret>, sink: &mut Sink<'_>) {
    let r = &raw.value;
    let fix = "read the keys with aws.access_key_id and aws.secret_access_key";
    let sites: [(&str, Option<Site>); 7] = [
        ("from_env", r.from_env.as_ref().map(Site::from)),
        ("from_file", r.from_file.as_ref().map(Site::from)),
        ("from_command", r.from_command.as_ref().map(Site::from)),
        ("refresh", r.refresh.as_ref().map(Site::from)),
        ("headers", r.headers.as_ref().map(Site::from)),
        ("github_app", r.github_app.as_ref().map(Site::from)),
        ("oauth2", r.oauth2.as_ref().map(Site::from)),
    ];
    for (field, site) in sites {
        if let Some(site) = site {
            let message = format!(
                "{field} cannot be used with aws: keyswap signs with the keys, it never swaps them"
            );
            sink.error(site.pos, &site.path, message, fix);
        }
    }
}

fn required<'r>(
    aws: &Located<RawAws>,
    field: &'r Option<Located<RawValueSource>>,
    name: &str,
    sink: &mut Sink<'_>,
) -> Option<&'r Located<RawValueSource>> {
    if field.is_none() {
        sink.missing(
            aws,
            name,
            format!(
                "add where the real key is read from, e.g. `{name}: {{from_env: AWS_{}_REAL}}`",
                name.to_ascii_uppercase()
            ),
        );
    }
    field.as_ref()
}

/// Reads one value of the pair from its one source, with every check of a secret's value.
fn read(
    secret: &str,
    field: &str,
    raw: &Located<RawValueSource>,
    sink: &mut Sink<'_>,
    checker: &Checker<'_>,
) -> Option<(SecretString, SecretSource, Site)> {
    let r = &raw.value;
    let argv: Vec<String>;
    let (source, site) = match (&r.from_env, &r.from_file, &r.from_command) {
        (Some(env), None, None) => (Source::Env(&env.value), Site::from(env)),
        (None, Some(file), None) => (Source::File(Path::new(&file.value)), Site::from(file)),
        (None, None, Some(command)) if !command.value.is_empty() => {
            argv = command.value.iter().map(|a| a.value.clone()).collect();
            (Source::Command(&argv), Site::from(command))
        }
        _ => {
            sink.at(
                raw,
                format!("secret \"{secret}\" aws.{field} needs exactly one source"),
                "write exactly one of from_env, from_file or from_command",
            );
            return None;
        }
    };
    match secrets::read_value(&source, checker.env) {
        Ok(value) => Some((value, source.to_model(), site)),
        Err(e) => {
            sink.error(
                site.pos,
                &site.path,
                format!("secret \"{secret}\" aws.{field}: {}", e.message),
                e.fix,
            );
            None
        }
    }
}
