//! The request on its way upstream: the swap step ([`swap_in`]: hop-by-hop headers go, then
//! every placeholder the request carries is checked against what its rule grants, the task's
//! own token is refused anywhere, and granted placeholders are replaced in headers and query)
//! and the rewrite ([`rewrite`]: the URI rebuilt from the decided target and path, the body
//! wrapped so the token and placeholders in it are found or swapped as it streams, and its
//! trailers held to the header rules).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Request, Uri, Version};
use hyper::body::Incoming;
use keyswap_config::{Rule, Secret, SecretId};
use keyswap_scrub::body::{boxed, Counted, ProxyBody};
use keyswap_scrub::decode;
use keyswap_scrub::replace::Replacer;

use crate::audit::decision::{Denial, Reason};
use crate::pipeline::context::ConnContext;
use crate::pipeline::fair::Held;
use crate::pipeline::learn;
use crate::pipeline::route::Routed;
use crate::pipeline::settle::{watch, BodyWatch};
use crate::pipeline::swap::{check_uri, swap_headers, swap_query, Misplaced, NotGranted};
use crate::pipeline::swap_body::{
    BodyRefusal, BodyRefused, BodySeen, ScanBody, SnapshotPlaceholders,
};
use crate::pipeline::token_body::{token_denial, TokenGuard};
use crate::pipeline::trailers::{trailer_check, TrailerSecrets};
use crate::state::snapshot::Snapshot;
use crate::wire::headers::strip_hop_by_hop;

/// What the swap step found and did.
pub struct Swapped {
    /// Secrets whose real values the request will carry.
    used: BTreeSet<SecretId>,
    /// The query with granted placeholders replaced.
    query: Option<String>,
    /// The body's placeholders are swapped as it streams.
    swap_body: bool,
    /// The task's own placeholder matcher (its leases'), for the body and the trailers.
    leased: Option<Arc<Replacer>>,
}

impl Swapped {
    /// The body and the trailers are swapped with `leased` (the task's matcher, from
    /// [`crate::pipeline::lease`]) rather than the snapshot's.
    pub fn with_leases(mut self, leased: Option<Arc<Replacer>>) -> Swapped {
        self.leased = leased;
        self
    }

    /// What the body is scanned and swapped with.
    fn body_placeholders(&self, snapshot: &Arc<Snapshot>) -> SnapshotPlaceholders {
        match &self.leased {
            Some(task) => SnapshotPlaceholders::Task(task.clone()),
            None => SnapshotPlaceholders::Snapshot(snapshot.clone()),
        }
    }
}

/// The request ready to send, and what the response side must know about it.
pub struct Outgoing {
    pub request: Request<ProxyBody>,
    pub meta: Sending,
    /// How the request body ended, for [`crate::pipeline::settle::settle`].
    pub body_watch: BodyWatch,
}

/// What the response side must know about the request that was sent.
pub struct Sending {
    /// A WebSocket upgrade was asked for.
    pub upgrade: bool,
    pub head_request: bool,
    /// Range requests were removed: a 206 is refused (see [`could_hold_secret`]).
    pub partial_refused: bool,
    /// Set when the request body or its trailers turned out to be refused.
    pub body_refused: BodyRefusal,
    /// The secrets swapped into the request's trailers, once they arrived.
    pub trailer_secrets: TrailerSecrets,
    /// Names of the secrets the request carries, audited once it is sent.
    pub secrets: Vec<String>,
    /// The request body, when the response is relayed while it still streams: the response's
    /// end waits for its verdict ([`crate::pipeline::settle::EndsAfterRequestBody`]).
    pub streaming_body: Option<BodyWatch>,
    /// Learn mode: the secrets whose placeholders the body carried, for the record.
    pub body_seen: Option<BodySeen>,
}

/// The swap step: placeholders in the URI, headers and query are checked against the rule's
/// grants; granted ones in headers and query are replaced through `placeholders` (the
/// snapshot's, or the task's with its leases: [`crate::pipeline::lease`]). A secret whose
/// refresh has failed is not sent.
pub fn swap_in(
    snapshot: &Snapshot,
    placeholders: &Replacer,
    ctx: &ConnContext,
    parts: &mut Parts,
    routed: &Routed<'_>,
) -> Result<Swapped, Denial> {
    let rule = routed.matched.rule();
    let misplaced = |m: Misplaced| misplaced_denial(snapshot, ctx, rule, &routed.path, m);
    let not_granted = |n: NotGranted| misplaced(n.into());
    let query = parts.uri.query();
    check_uri(
        &snapshot.placeholders,
        parts.uri.path(),
        &routed.path,
        query,
        rule,
    )
    .map_err(not_granted)?;
    let header_swap = swap_headers(
        placeholders,
        &mut parts.headers,
        rule,
        &snapshot.config,
        rule.swap_in.headers,
    )
    .map_err(misplaced)?;
    let mut used: BTreeSet<SecretId> = header_swap.used;
    let mut query = parts.uri.query().map(str::to_string);
    if let (true, Some(q)) = (rule.swap_in.query, query.as_deref()) {
        if let Some(swapped) =
            swap_query(placeholders, q, Some(rule), &mut used).map_err(not_granted)?
        {
            query = Some(swapped);
        }
    }
    let swap_body = rule.swap_in.body && !snapshot.placeholders.is_empty();
    if swap_body {
        // Which granted secrets the body carries is only known once it has streamed; every
        // secret the rule grants is named so the audit never under-reports.
        used.extend(rule.secrets.iter().copied());
    }
    if let Some(stale) = used.iter().find(|id| snapshot.stale[id.0]) {
        return Err(Denial::new(
            Reason::SecretUnavailable,
            format!(
                "secret {} could not be refreshed, so keyswap does not send it; ask the operator to check its source",
                snapshot.config.secret(*stale).name
            ),
        ));
    }
    Ok(Swapped {
        used,
        query,
        swap_body,
        leased: None,
    })
}

/// What a learned request goes upstream with: nothing swapped, the query as sent.
pub fn unswapped(parts: &Parts) -> Swapped {
    Swapped {
        used: BTreeSet::new(),
        query: parts.uri.query().map(str::to_string),
        swap_body: false,
        leased: None,
    }
}

/// The refusal of a placeholder the rule does not grant where it was found.
pub(crate) fn misplaced_denial(
    snapshot: &Snapshot,
    ctx: &ConnContext,
    rule: &Rule,
    path: &str,
    misplaced: Misplaced,
) -> Denial {
    let message = match misplaced {
        Misplaced::NotGranted(ids) => {
            let names: Vec<&str> = ids
                .iter()
                .map(|id| snapshot.config.secret(*id).name.as_str())
                .collect();
            format!(
                "the request carries the placeholder of secret {} which task {} may not send to {} {}; \
                 remove it or ask the operator to grant it on this route",
                names.join(", "),
                ctx.task.id,
                ctx.target.host,
                path
            )
        }
        Misplaced::OutOfScope { secret, header } => format!(
            "the placeholder of secret {} may not be sent in header {header} to {}; \
             send it only in the headers the operator named for it ({})",
            snapshot.config.secret(secret).name,
            ctx.target.host,
            scope_of(rule, snapshot.config.secret(secret)),
        ),
        Misplaced::TaskToken { part } => return token_denial(ctx, part),
    };
    Denial::new(Reason::PlaceholderNotAllowed, message)
}

/// The refusal of a request whose body or trailers were refused as they streamed.
pub(crate) fn body_denial(
    snapshot: &Snapshot,
    ctx: &ConnContext,
    rule: &Rule,
    path: &str,
    refused: BodyRefused,
) -> Denial {
    match refused {
        BodyRefused::Misplaced(misplaced) => misplaced_denial(snapshot, ctx, rule, path, misplaced),
        BodyRefused::TrailersTooLarge => Denial::new(
            Reason::BadRequest,
            "the request trailers are larger than 64 KiB; send fewer or smaller trailers",
        )
        .closing(),
        BodyRefused::UnreadTooLong => Denial::new(
            Reason::BadRequest,
            UNREAD_TOO_LONG,
        )
        .closing(),
        BodyRefused::SecretUnavailable(id) => Denial::new(
            Reason::SecretUnavailable,
            format!(
                "secret {} could not be refreshed, so keyswap does not send it; ask the operator to check its source",
                snapshot.config.secret(id).name
            ),
        ),
    }
}

/// Why a body the upstream stopped reading is refused when its rest is too long to check.
pub const UNREAD_TOO_LONG: &str =
    "the upstream answered before reading the request body, and the rest of the body \
     is longer than keyswap reads to check it; send a smaller body";

/// The request as it goes upstream: hop-by-hop headers and what could hide a secret from
/// the scrubber removed, the URI rebuilt from the connection's target and the decided path,
/// the body counted and scanned for placeholders.
#[allow(clippy::too_many_arguments)]
pub fn rewrite(
    snapshot: &Arc<Snapshot>,
    ctx: &ConnContext,
    mut parts: Parts,
    body: Incoming,
    routed: &Routed<'_>,
    swapped: Swapped,
    upgrade: bool,
    req_bytes: &Arc<AtomicU64>,
    held: Option<Arc<Held>>,
) -> Result<Outgoing, Denial> {
    let rule = routed.matched.rule();
    let partial_refused = could_hold_secret(snapshot, ctx);
    clean_headers(
        &mut parts,
        upgrade,
        partial_refused,
        !swapped.used.is_empty(),
    );
    parts.uri = upstream_uri(ctx, &routed.path, swapped.query.as_deref())?;
    parts.version = Version::HTTP_11;
    let head_request = parts.method == http::Method::HEAD;
    let counted = Counted::new(body, req_bytes.clone());
    // The upstream connection stays busy until the request body has gone, even after the
    // response: the task's slots are held until then too (pipeline::fair).
    let counted = match held {
        Some(held) => counted.on_end(move || drop(held)),
        None => counted,
    };
    // Every body is scanned, whether or not the rule swaps in it: an ungranted placeholder or
    // the task's token refuses the request even after part of the body has gone upstream.
    // Trailers are held to the header rules whatever the body's.
    let body_refused = BodyRefusal::default();
    let trailer_secrets = TrailerSecrets::default();
    if swapped.swap_body {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let guarded = TokenGuard::new(counted, ctx.task.clone(), body_refused.clone());
    // A learned request's rule grants nothing and nothing is swapped: a placeholder in its
    // body goes upstream as the placeholder (every secret counts as granted, none swapped);
    // the task's token is still refused.
    let (granted, body_seen) = learn::body_grants(snapshot, routed);
    let placeholders = swapped.body_placeholders(snapshot);
    let scanned = ScanBody::new(
        guarded,
        placeholders,
        granted,
        swapped.swap_body,
        body_refused.clone(),
        trailer_check(
            snapshot.clone(),
            ctx.task.clone(),
            rule,
            trailer_secrets.clone(),
            swapped.leased.clone(),
        ),
    )
    .noting(body_seen.clone());
    let (body, body_watch) = watch(boxed(scanned));
    let secrets = swapped
        .used
        .iter()
        .map(|id| snapshot.config.secret(*id).name.clone())
        .collect();
    Ok(Outgoing {
        request: Request::from_parts(parts, boxed(body)),
        meta: Sending {
            upgrade,
            head_request,
            partial_refused,
            body_refused,
            trailer_secrets,
            secrets,
            streaming_body: None,
            body_seen,
        },
        body_watch,
    })
}

/// The URI the upstream gets: the connection's scheme and target, the decided path, the
/// (swapped) query.
fn upstream_uri(ctx: &ConnContext, path: &str, query: Option<&str>) -> Result<Uri, Denial> {
    let mut path_and_query = path.to_string();
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Uri::builder()
        .scheme(ctx.scheme.as_str())
        .authority(ctx.target.to_string())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| {
            Denial::new(Reason::BadRequest, "the request URI could not be rebuilt").closing()
        })
}

/// Removes hop-by-hop headers and what could let a secret past the scrubber.
fn clean_headers(parts: &mut Parts, upgrade: bool, partial_refused: bool, sends_secret: bool) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if partial_refused {
        // Two partial responses could each return half of a stored value, which no scrubber
        // can recognise: where a secret can be sent, whole representations only.
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
    }
    parts.headers.remove(header::HOST);
    if upgrade {
        // Compressed WebSocket frames could hide a secret from the scrubber in websocket.rs.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if sends_secret {
        // Keep the response scrubbable (see keyswap_scrub::response::body_policy).
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    } else if let Some(accepted) = decode::decodable_accept_encoding(&parts.headers) {
        parts.headers.insert(header::ACCEPT_ENCODING, accepted);
    }
}

/// Whether any of the task's rules for this host and port grants a secret: then a value may
/// be stored there and read back, so partial responses are not allowed. An `aws:` secret
/// does not count: its keys sign, and no request carries them to be stored.
fn could_hold_secret(snapshot: &Snapshot, ctx: &ConnContext) -> bool {
    snapshot.rules_of(&ctx.task).is_some_and(|rules| {
        rules.iter().any(|rule| {
            rule.secrets
                .iter()
                .any(|id| snapshot.config.secret(*id).aws.is_none())
                && rule.matches_host(ctx.scheme, &ctx.target.host, ctx.target.port)
        })
    })
}

/// The headers a secret may be swapped into on a rule, for a refusal message.
fn scope_of(rule: &Rule, secret: &Secret) -> String {
    let mut names: Vec<&str> = match (&rule.headers, &secret.headers) {
        (Some(r), Some(s)) => r
            .iter()
            .filter(|n| s.contains(n))
            .map(String::as_str)
            .collect(),
        (Some(only), None) | (None, Some(only)) => only.iter().map(String::as_str).collect(),
        (None, None) => Vec::new(),
    };
    names.dedup();
    names.join(", ")
}
