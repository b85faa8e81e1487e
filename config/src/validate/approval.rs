//! `approval:` (how requests that wait for a human are held), `on_unlisted:` of policies and
//! tasks, and `approve:` of rules. The webhook URL is checked to be `https://` with no
//! credentials in it: the proxy posts to it and logs where it posts.

use std::time::Duration;

use super::check_duration;
use crate::error::Sink;
use crate::host::HostPattern;
use crate::model::{
    Approval, Approve, OnUnlisted, DEFAULT_APPROVAL_MAX_PENDING, DEFAULT_APPROVAL_TIMEOUT,
};
use crate::raw::{RawApproval, RawApprove, RawOnUnlisted};
use crate::read::Located;

/// The longest a request may be held: an agent's HTTP client gives up long before.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A bound on how many requests of one task may wait (each holds a connection open).
const MAX_PENDING_LIMIT: u64 = 10_000;

pub(super) fn check_approval(raw: Option<&Located<RawApproval>>, sink: &mut Sink<'_>) -> Approval {
    let Some(raw) = raw else {
        return Approval::default();
    };
    let r = &raw.value;
    let timeout = r
        .timeout
        .as_ref()
        .and_then(|t| check_timeout(t, sink))
        .unwrap_or(DEFAULT_APPROVAL_TIMEOUT);
    let webhook = r.webhook.as_ref().and_then(|w| check_webhook(w, sink));
    let max_pending = match &r.max_pending {
        None => DEFAULT_APPROVAL_MAX_PENDING,
        Some(n) if (1..=MAX_PENDING_LIMIT).contains(&n.value) => n.value as usize,
        Some(n) => {
            sink.at(
                n,
                format!("max_pending {} is out of range", n.value),
                format!("use a number from 1 to {MAX_PENDING_LIMIT} (default {DEFAULT_APPROVAL_MAX_PENDING})"),
            );
            DEFAULT_APPROVAL_MAX_PENDING
        }
    };
    Approval {
        timeout,
        webhook,
        max_pending,
    }
}

fn check_timeout(value: &Located<String>, sink: &mut Sink<'_>) -> Option<Duration> {
    let timeout = check_duration(value, sink)?;
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        sink.at(
            value,
            format!(
                "timeout \"{}\" must be longer than zero and at most 24h",
                value.value
            ),
            "write e.g. 120s or 10m",
        );
        return None;
    }
    Some(timeout)
}

/// `https://host[:port][/path]`: no userinfo (it would be a credential in a URL keyswap
/// logs), and a valid host name or address.
fn check_webhook(value: &Located<String>, sink: &mut Sink<'_>) -> Option<String> {
    let url = value.value.trim();
    let fail = |sink: &mut Sink<'_>, what: &str| {
        sink.at(
            value,
            format!("webhook \"{}\" {what}", url.escape_debug()),
            "write an https:// URL such as https://hooks.example.com/keyswap",
        );
        None
    };
    let Some(rest) = url.strip_prefix("https://") else {
        return fail(sink, "is not an https:// URL");
    };
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return fail(sink, "contains spaces or control characters");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        // Not echoed: the part before @ is a credential.
        sink.at(
            value,
            "the webhook URL carries credentials (user@), and keyswap logs the webhook's address",
            "remove the user part; authenticate the receiver by its URL path or network instead",
        );
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return fail(sink, "has no valid host"),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return fail(sink, "has an invalid port");
    }
    if host.is_empty() || host.contains('*') || HostPattern::parse(host).is_err() {
        return fail(sink, "has no valid host");
    }
    Some(url.to_string())
}

pub(super) fn on_unlisted(raw: Option<&Located<RawOnUnlisted>>) -> Option<OnUnlisted> {
    raw.map(|r| match r.value {
        RawOnUnlisted::Deny => OnUnlisted::Deny,
        RawOnUnlisted::Ask => OnUnlisted::Ask,
        RawOnUnlisted::Learn => OnUnlisted::Learn,
    })
}

/// The warning for an `on_unlisted: learn` written at `raw` (of policy or task `owner`):
/// while it is in force the agent reaches every host, without secrets.
pub(super) fn warn_learning(
    raw: Option<&Located<RawOnUnlisted>>,
    owner: &str,
    file: &std::path::Path,
    checker: &mut super::Checker<'_>,
) {
    if let Some(raw) = raw.filter(|r| r.value == RawOnUnlisted::Learn) {
        checker.warn(
            file,
            raw.pos,
            &raw.path,
            format!(
                "{owner} is in learn mode: its tasks reach every host (without secrets) while it is in force; \
                 run `keyswap learn` on the audit and replace it with the rules it prints"
            ),
        );
    }
}

pub(super) fn approve(raw: Option<&Located<RawApprove>>) -> Option<Approve> {
    raw.map(|r| match r.value {
        RawApprove::Each => Approve::Each,
        RawApprove::Once => Approve::Once,
    })
}
