//! Step 4: decide one request inside a connection whose task and target are already known.
//!
//! In order: the task still exists and has not expired; the framing is unambiguous; every
//! authority the request names (`Host`, `:authority`, an absolute-form URI) is the
//! connection's target; the path normalises; and a rule matches host, port, method and path.

use std::sync::Arc;
use std::time::SystemTime;

use http::request::Parts;
use http::{header, Version};
use keyswap_config::{match_route, PathError, RouteMatch, Rule, Scheme};

use crate::decision::{Denial, Reason};
use crate::headers::{ambiguous_framing, head_too_large, METHOD_OVERRIDE_HEADERS};
use crate::lifecycle::registry::LiveTask;
use crate::snapshot::Snapshot;
use crate::target::Target;

/// What a connection already established: who is asking and where to.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub conn_id: u64,
    pub task: Arc<LiveTask>,
    pub scheme: Scheme,
    pub target: Target,
    /// The door the connection came in by (only the audit record says which).
    pub via: Via,
}

/// The two front doors: the explicit proxy listener and the transparent listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Explicit,
    Transparent,
}

impl Via {
    /// The audit record's `via`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Explicit => "explicit",
            Via::Transparent => "transparent",
        }
    }
}

/// An allowed request: the rule that matched and the normalised path to forward.
pub struct Routed<'c> {
    pub rule: &'c Rule,
    pub path: String,
}

/// A refusal, with the rule that matched if the refusal came after matching.
pub struct Refused {
    pub denial: Denial,
    pub rule: Option<usize>,
    /// Whether the connection must end after the response (malformed input).
    pub close: bool,
}

impl Refused {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refused {
            denial: Denial::new(reason, message),
            rule: None,
            // An expired task has ended: nothing more is served on this HTTP/1.1 connection
            // (h2 connections of an expired task were closed when it expired).
            close: matches!(reason, Reason::BadRequest | Reason::TaskExpired),
        }
    }
}

/// `path` is the request path normalised by the caller ([`keyswap_config::normalize_path`]),
/// which also audits it.
pub fn decide<'c>(
    snapshot: &'c Snapshot,
    ctx: &ConnContext,
    parts: &Parts,
    path: Result<&str, &PathError>,
    now: SystemTime,
) -> Result<Routed<'c>, Refused> {
    let task = &ctx.task;
    let rules = snapshot
        .rules_of(task)
        .filter(|_| !task.is_cancelled() || task.is_expired(now))
        .ok_or_else(|| {
            Refused::new(
                Reason::NoTask,
                "this connection's task has ended; ask the operator for a current task",
            )
        })?;
    if task.is_expired(now) {
        return Err(Refused::new(
            Reason::TaskExpired,
            format!(
                "task {} has expired; ask the operator to extend it",
                task.id
            ),
        ));
    }
    if head_too_large(&parts.method, &parts.uri, &parts.headers) {
        return Err(Refused::new(
            Reason::BadRequest,
            "the request head is larger than 64 KiB; send fewer or smaller headers",
        ));
    }
    if ambiguous_framing(&parts.headers) {
        return Err(Refused::new(
            Reason::BadRequest,
            "the request has conflicting Content-Length / Transfer-Encoding headers",
        ));
    }
    check_authority(ctx, parts)?;
    let path = path.map(str::to_string).map_err(|e| {
        Refused::new(
            Reason::BadRequest,
            format!("the request path was refused: {e}; send a plain, normalised path"),
        )
    })?;
    let method = parts.method.as_str();
    match match_route(
        rules,
        ctx.scheme,
        &ctx.target.host,
        ctx.target.port,
        method,
        &path,
    ) {
        RouteMatch::Rule(rule) => {
            check_method_overrides(rule, parts, &path, ctx, task)?;
            Ok(Routed { rule, path })
        }
        RouteMatch::HostNotAllowed => Err(Refused::new(
            Reason::HostNotAllowed,
            format!(
                "{} is not in task {}'s allowlist; ask the operator to add a rule",
                ctx.target, task.id
            ),
        )),
        RouteMatch::RouteNotAllowed => Err(Refused::new(
            Reason::RouteNotAllowed,
            format!(
                "{method} {path} on {} is not allowed for task {}; ask the operator to add a rule for this route",
                ctx.target.host, task.id
            ),
        )),
    }
}

/// A method named by `X-HTTP-Method-Override` (and its kin) is decided like the request's
/// own: the matched rule must allow it too, or an agent allowed only GET could DELETE
/// through a framework that honours the header.
fn check_method_overrides(
    rule: &Rule,
    parts: &Parts,
    path: &str,
    ctx: &ConnContext,
    task: &LiveTask,
) -> Result<(), Refused> {
    for name in METHOD_OVERRIDE_HEADERS {
        for value in parts.headers.get_all(name) {
            let method = value
                .to_str()
                .map(|v| v.trim().to_ascii_uppercase())
                .unwrap_or_default();
            if !rule.matches_route(&method, path) {
                let shown: String = method.chars().take(16).collect();
                return Err(Refused::new(
                    Reason::RouteNotAllowed,
                    format!(
                        "{name}: {shown} asks for a method that task {} may not use on {path} at {}; remove the header",
                        task.id, ctx.target.host
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every authority the request names must be the connection's target (an agent must not
/// reach another host through a tunnel opened for an allowed one).
fn check_authority(ctx: &ConnContext, parts: &Parts) -> Result<(), Refused> {
    let default_port = ctx.scheme.default_port();
    let mismatch = |named: &str| {
        Refused {
            denial: Denial::new(
                Reason::AuthorityMismatch,
                format!(
                    "the request names {named} but this connection is for {}; open a separate connection (CONNECT) for each host",
                    ctx.target
                ),
            ),
            rule: None,
            close: true,
        }
    };
    let mut named_any = false;
    if let Some(authority) = parts.uri.authority() {
        named_any = true;
        if let Some(scheme) = parts.uri.scheme_str() {
            if !scheme.eq_ignore_ascii_case(ctx.scheme.as_str()) {
                return Err(mismatch(&format!("scheme {scheme}")));
            }
        }
        match Target::from_authority(authority, default_port) {
            Ok(t) if t == ctx.target => {}
            _ => return Err(mismatch(authority.as_str())),
        }
    }
    for value in parts.headers.get_all(header::HOST) {
        named_any = true;
        match Target::from_host_header(value.as_bytes(), default_port) {
            Ok(t) if t == ctx.target => {}
            Ok(t) => return Err(mismatch(&t.to_string())),
            Err(_) => return Err(mismatch("an invalid Host")),
        }
    }
    if parts.headers.get_all(header::HOST).iter().count() > 1 {
        return Err(Refused::new(
            Reason::BadRequest,
            "the request has more than one Host header",
        ));
    }
    if !named_any && parts.version != Version::HTTP_10 {
        return Err(Refused::new(
            Reason::BadRequest,
            "the request names no host (Host header missing)",
        ));
    }
    Ok(())
}
