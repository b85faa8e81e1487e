//! Step 4: decide one request inside a connection whose task and target are already known.
//!
//! In order: the task still exists and has not expired; the framing is unambiguous; every
//! authority the request names (`Host`, `:authority`, an absolute-form URI) is the
//! connection's target; the path normalises; and a rule matches host, port, method and path.

use std::time::SystemTime;

use http::request::Parts;
use http::{header, Version};
use keyswap_config::{match_route, PathError, RouteMatch, Rule};

use crate::audit::decision::{Denial, Reason};
use crate::pipeline::context::ConnContext;
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;
use crate::wire::headers::{ambiguous_framing, head_too_large, METHOD_OVERRIDE_HEADERS};
use crate::wire::target::Target;

/// What let a request through: a configured rule, or a human's approval of an unlisted
/// request (under a rule made for it: its host only, no secret).
pub enum Matched<'c> {
    Rule(&'c Rule),
    Approved(Box<Rule>),
    /// Learn mode let an unlisted request through, unswapped ([`crate::pipeline::learn`]).
    Learned(Box<Rule>),
    /// A grant the task's agent asked for and a human approved (keyswap.internal), made a
    /// rule for the task's lifetime.
    Granted(Box<Rule>),
}

impl Matched<'_> {
    pub fn rule(&self) -> &Rule {
        match self {
            Matched::Rule(rule) => rule,
            Matched::Approved(rule) | Matched::Learned(rule) | Matched::Granted(rule) => rule,
        }
    }

    /// The configured rule's index, for the audit record (an approval names none).
    pub fn index(&self) -> Option<usize> {
        match self {
            Matched::Rule(rule) => Some(rule.index),
            Matched::Approved(_) | Matched::Learned(_) | Matched::Granted(_) => None,
        }
    }

    /// Learn mode let it through: nothing is swapped in.
    pub fn is_learned(&self) -> bool {
        matches!(self, Matched::Learned(_))
    }
}

/// An allowed request: what let it through and the normalised path to forward.
pub struct Routed<'c> {
    pub matched: Matched<'c>,
    pub path: String,
}

/// A refusal of `decide`. Malformed input ends the connection; so does an expired task,
/// which has ended: nothing more is served on this HTTP/1.1 connection (h2 connections of
/// an expired task were closed when it expired).
fn refused(reason: Reason, message: impl Into<String>) -> Denial {
    let denial = Denial::new(reason, message);
    match reason {
        Reason::BadRequest | Reason::TaskExpired => denial.closing(),
        _ => denial,
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
) -> Result<Routed<'c>, Denial> {
    let task = &ctx.task;
    let rules = snapshot
        .rules_of(task)
        .filter(|_| !task.is_cancelled() || task.is_expired(now))
        .ok_or_else(|| {
            refused(
                Reason::NoTask,
                "this connection's task has ended; ask the operator for a current task",
            )
        })?;
    if task.is_expired(now) {
        return Err(refused(
            Reason::TaskExpired,
            format!(
                "task {} has expired; ask the operator to extend it",
                task.id
            ),
        ));
    }
    if head_too_large(&parts.method, &parts.uri, &parts.headers) {
        return Err(refused(
            Reason::BadRequest,
            "the request head is larger than 64 KiB; send fewer or smaller headers",
        ));
    }
    if ambiguous_framing(&parts.headers) {
        return Err(refused(
            Reason::BadRequest,
            "the request has conflicting Content-Length / Transfer-Encoding headers",
        ));
    }
    check_authority(ctx, parts)?;
    let path = path.map(str::to_string).map_err(|e| {
        refused(
            Reason::BadRequest,
            format!("the request path was refused: {e}; send a plain, normalised path"),
        )
    })?;
    match_rules(snapshot, rules, ctx, parts, path)
}

/// The first configured rule that matches, else the first rule a human's grant made
/// ([`Matched::Granted`]), else the refusal that names what is missing.
fn match_rules<'c>(
    snapshot: &Snapshot,
    rules: &'c [Rule],
    ctx: &ConnContext,
    parts: &Parts,
    path: String,
) -> Result<Routed<'c>, Denial> {
    let task = &ctx.task;
    let method = parts.method.as_str();
    let (host, port) = (&ctx.target.host, ctx.target.port);
    let by_config = match match_route(rules, ctx.scheme, host, port, method, &path) {
        RouteMatch::Rule(rule) => {
            check_method_overrides(rule, parts, &path, ctx, task)?;
            return Ok(Routed {
                matched: Matched::Rule(rule),
                path,
            });
        }
        other => other,
    };
    // No configured rule: the grants a human approved for this task come next.
    let granted = snapshot.granted_rules_of(task);
    let by_grant = match match_route(&granted, ctx.scheme, host, port, method, &path) {
        RouteMatch::Rule(rule) => {
            check_method_overrides(rule, parts, &path, ctx, task)?;
            return Ok(Routed {
                matched: Matched::Granted(Box::new(rule.clone())),
                path,
            });
        }
        other => other,
    };
    let route_not_allowed = matches!(by_config, RouteMatch::RouteNotAllowed)
        || matches!(by_grant, RouteMatch::RouteNotAllowed);
    match route_not_allowed {
        true => Err(refused(
            Reason::RouteNotAllowed,
            format!(
                "{method} {path} on {} is not allowed for task {}; ask the operator to add a rule for this route",
                ctx.target.host, task.id
            ),
        )),
        false => Err(refused(
            Reason::HostNotAllowed,
            format!(
                "{} is not in task {}'s allowlist; ask the operator to add a rule",
                ctx.target, task.id
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
) -> Result<(), Denial> {
    for name in METHOD_OVERRIDE_HEADERS {
        for value in parts.headers.get_all(name) {
            let method = value
                .to_str()
                .map(|v| v.trim().to_ascii_uppercase())
                .unwrap_or_default();
            if !rule.matches_route(&method, path) {
                let shown: String = method.chars().take(16).collect();
                return Err(refused(
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
fn check_authority(ctx: &ConnContext, parts: &Parts) -> Result<(), Denial> {
    let default_port = ctx.scheme.default_port();
    let mismatch = |named: &str| {
        Denial::new(
            Reason::AuthorityMismatch,
            format!(
                "the request names {named} but this connection is for {}; open a separate connection (CONNECT) for each host",
                ctx.target
            ),
        )
        .closing()
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
        return Err(refused(
            Reason::BadRequest,
            "the request has more than one Host header",
        ));
    }
    if !named_any && parts.version != Version::HTTP_10 {
        return Err(refused(
            Reason::BadRequest,
            "the request names no host (Host header missing)",
        ));
    }
    Ok(())
}
