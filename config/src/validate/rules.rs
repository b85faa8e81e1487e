//! One task's or policy's `allow:` rules: raw → [`Rule`]. Owns the checks of every rule
//! field (host pattern, port, methods, path globs, granted secrets, tunnel, `swap_in`,
//! `headers`; `budget`, `rate` and `id` in [`super::limits`]), the header-name check that
//! secrets' `headers:` share, and the warnings about rules that CONNECT can never choose, that
//! swap into any header, whose wildcard spans a whole public suffix, or that send secrets in
//! cleartext. Never sees a secret value.

use std::path::Path;

use super::limits;
use super::tasks::Defined;
use super::{Checker, Site};
use crate::error::Sink;
use crate::host::HostPattern;
use crate::limits::derived_rule_key;
use crate::model::{Policy, Rule, Scheme, Secret, SecretId, SwapIn};
use crate::path::PathPatterns;
use crate::raw::{RawRule, RawScheme, RawSwapIn};
use crate::read::Located;

/// RFC 9110 §5.6.2 token characters (methods are tokens).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks an `allow:` list. Returns the rules without errors, indexed by their position in
/// the list, with the site of each.
pub(super) fn check_rules(
    list: Option<&Located<Vec<Located<RawRule>>>>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> (Vec<Rule>, Vec<Site>) {
    let mut rules = Vec::new();
    let mut sites = Vec::new();
    let raw_rules = list.map(|l| l.value.as_slice()).unwrap_or_default();
    limits::check_unique_ids(raw_rules, sink);
    for (index, raw_rule) in raw_rules.iter().enumerate() {
        if let Some(rule) = check_rule(index, raw_rule, defined, sink) {
            warn_rule(&rule, &raw_rule.value, defined, sink.file, checker);
            rules.push(rule);
            sites.push(Site::from(raw_rule));
        }
    }
    (rules, sites)
}

/// A rule's (or a `requestable:` bound's) `host`, required: `raw` is the entry it belongs to.
pub(super) fn check_host<T>(
    raw: &Located<T>,
    host: Option<&Located<String>>,
    sink: &mut Sink<'_>,
) -> Option<HostPattern> {
    match host {
        None => {
            sink.missing(raw, "host", "add e.g. `host: api.example.com`");
            None
        }
        Some(h) => HostPattern::parse(&h.value)
            .map_err(|e| sink.at(h, e.message, e.fix))
            .ok(),
    }
}

/// Checks one rule; `None` if any of its fields has an error (all are reported).
fn check_rule(
    index: usize,
    raw: &Located<RawRule>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
) -> Option<Rule> {
    let r = &raw.value;
    let errors_before = sink.errors.len();
    let host = check_host(raw, r.host.as_ref(), sink);
    let port = r.port.as_ref().and_then(|p| check_port(p, sink));
    let methods = r.methods.as_ref().map(|list| check_methods(list, sink));
    let paths = r.paths.as_ref().and_then(|list| check_paths(list, sink));
    let secrets = r
        .secrets
        .as_ref()
        .map(|list| check_granted(list, defined, sink))
        .unwrap_or_default();
    let tunnel = r.tunnel.as_ref().is_some_and(|t| t.value);
    if tunnel {
        check_tunnel_alone(r, sink);
        limits::check_not_tunnel(r, sink);
    }
    let id = r.id.as_ref().and_then(|id| limits::check_id(id, sink));
    let budget = r
        .budget
        .as_ref()
        .and_then(|b| limits::check_budget(b, sink));
    let rate = r
        .rate
        .as_ref()
        .and_then(|rate| limits::check_rate(rate, sink));
    let swap_in = match &r.swap_in {
        None if tunnel => SwapIn::default(),
        None => SwapIn::HEADERS_ONLY,
        Some(list) => check_swap_in(list, sink),
    };
    let headers = r
        .headers
        .as_ref()
        .and_then(|list| check_header_names(list, sink));
    if let (Some(list), Some(names)) = (&r.headers, &headers) {
        check_rule_headers(list, names, swap_in, tunnel, &secrets, defined, sink);
    }
    let scheme = match (&r.scheme, port) {
        (Some(s), _) if s.value == RawScheme::Http => Scheme::Http,
        (Some(_), _) => Scheme::Https,
        (None, Some(80)) => Scheme::Http,
        (None, _) => Scheme::Https,
    };
    let allow_cleartext = r.allow_cleartext.as_ref().is_some_and(|a| a.value);
    check_cleartext(r, scheme, tunnel, &secrets, raw, sink);
    let approve = super::approval::approve(r.approve.as_ref());
    if sink.errors.len() > errors_before {
        return None;
    }
    let host = host?;
    let key = id.unwrap_or_else(|| {
        derived_rule_key(scheme, &host, port, methods.as_deref(), paths.as_ref())
    });
    Some(Rule {
        index,
        host,
        port,
        methods,
        paths,
        secrets,
        tunnel,
        swap_in,
        headers,
        scheme,
        allow_cleartext,
        approve,
        key,
        budget,
        rate,
    })
}

/// What a valid rule allows that is probably more than meant: a wildcard over a whole public
/// suffix, and secrets sent in cleartext (`allow_cleartext: true`).
fn warn_rule(
    rule: &Rule,
    raw: &RawRule,
    defined: &Defined<'_>,
    file: &Path,
    checker: &mut Checker<'_>,
) {
    if let (HostPattern::Wildcard { suffix }, Some(site)) = (&rule.host, &raw.host) {
        if let Some(covered) = public_suffix_under(suffix) {
            checker.warn(
                file,
                site.pos,
                &site.path,
                format!(
                    "\"{}\" matches every site under the public suffix {covered}, where anyone can register a name; \
                     list the hosts needed, or narrow the pattern to a domain you trust",
                    site.value
                ),
            );
        }
    }
    if let (true, Some(flag)) = (!rule.secrets.is_empty(), &raw.allow_cleartext) {
        let names: Vec<&str> = rule
            .secrets
            .iter()
            .filter_map(|id| defined.secrets.get(id.0))
            .map(|s| s.name.as_str())
            .collect();
        checker.warn(
            file,
            flag.pos,
            &flag.path,
            format!(
                "{} {} sent over plain HTTP to {}: anyone on the network path can read {}",
                if names.len() == 1 {
                    "secret"
                } else {
                    "secrets"
                },
                names.join(", ") + if names.len() == 1 { " is" } else { " are" },
                rule.host,
                if names.len() == 1 { "it" } else { "them" },
            ),
        );
    }
}

/// The public suffix a `*.suffix` wildcard spans, if any: `suffix` itself (`com`, `co.uk`,
/// `github.io`), or every name directly under it (a wildcard entry of the list such as
/// `*.compute.amazonaws.com`, shown as that). Only suffixes the list names count: the
/// list's default rule would make every unknown top-level label (`test`) a suffix.
fn public_suffix_under(suffix: &str) -> Option<String> {
    let whole = |name: &str| {
        psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s == name.as_bytes())
    };
    if whole(suffix) {
        return Some(suffix.to_string());
    }
    let probe = format!("keyswap-probe.{suffix}");
    whole(&probe).then(|| format!("*.{suffix}"))
}

/// `headers:` of a rule or a secret: header names (RFC 9110 §5.1 tokens), lower-cased, each
/// once. `None` when the list has an error (every one is reported).
pub(super) fn check_header_names(
    list: &Located<Vec<Located<String>>>,
    sink: &mut Sink<'_>,
) -> Option<Vec<String>> {
    if list.value.is_empty() {
        sink.at(
            list,
            "headers is empty, so no header could carry a placeholder",
            "list the headers a placeholder may be swapped into, e.g. [authorization], or remove headers to allow any header",
        );
        return None;
    }
    let mut names: Vec<String> = Vec::new();
    let mut valid = true;
    for name in &list.value {
        if is_token(&name.value) {
            let lower = name.value.to_ascii_lowercase();
            if !names.contains(&lower) {
                names.push(lower);
            }
        } else {
            valid = false;
            sink.at(
                name,
                format!(
                    "\"{}\" is not a valid header name",
                    name.value.escape_debug()
                ),
                "write a header name of letters, digits and \"-\", e.g. authorization or x-api-key",
            );
        }
    }
    valid.then_some(names)
}

/// A rule's `headers:` only means something where it swaps into headers, and must leave
/// each secret it grants at least one header that the secret's own `headers:` allows.
fn check_rule_headers(
    list: &Located<Vec<Located<String>>>,
    names: &[String],
    swap_in: SwapIn,
    tunnel: bool,
    secrets: &[SecretId],
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
) {
    if tunnel {
        // Reported by check_tunnel_alone.
        return;
    }
    if !swap_in.headers {
        sink.at(
            list,
            "headers names where placeholders are swapped, but this rule's swap_in does not include headers",
            "add headers to swap_in, or remove headers",
        );
        return;
    }
    for id in secrets {
        let Some(secret) = defined.secrets.get(id.0) else {
            continue;
        };
        if let Some(own) = &secret.headers {
            if !own.iter().any(|h| names.contains(h)) {
                sink.at(
                    list,
                    format!(
                        "secret \"{}\" may be swapped only into {}, which this rule's headers do not list, so it could never be swapped here",
                        secret.name,
                        own.join(", ")
                    ),
                    "add one of the secret's headers to this rule's headers, or change the secret's headers",
                );
            }
        }
    }
}

/// A plain-HTTP rule sends whatever it swaps in cleartext: granting a secret there must be
/// said out loud (`allow_cleartext: true`). A tunnel is a CONNECT, which is never `http`.
fn check_cleartext(
    r: &RawRule,
    scheme: Scheme,
    tunnel: bool,
    secrets: &[SecretId],
    raw: &Located<RawRule>,
    sink: &mut Sink<'_>,
) {
    let cleartext_ok = r.allow_cleartext.as_ref().is_some_and(|a| a.value);
    if scheme == Scheme::Http && tunnel {
        let site = r
            .scheme
            .as_ref()
            .map(Site::from)
            .unwrap_or_else(|| raw.into());
        sink.error(
            site.pos,
            &site.path,
            "a tunnel: true rule is reached by CONNECT, which is never plain HTTP",
            "remove scheme: http (and port: 80), or remove tunnel: true",
        );
    }
    if scheme == Scheme::Http && !secrets.is_empty() && !cleartext_ok {
        let site = r
            .secrets
            .as_ref()
            .map(Site::from)
            .unwrap_or_else(|| raw.into());
        sink.error(
            site.pos,
            &site.path,
            "this rule matches plain HTTP, so the secrets it grants would be sent unencrypted",
            "use an https rule, or add allow_cleartext: true to this rule if the network path is trusted",
        );
    }
    if let Some(flag) = r.allow_cleartext.as_ref().filter(|a| a.value) {
        if scheme == Scheme::Https {
            sink.at(
                flag,
                "allow_cleartext applies only to plain-HTTP rules",
                "remove it, or add scheme: http",
            );
        }
    }
}

pub(super) fn check_port(port: &Located<u64>, sink: &mut Sink<'_>) -> Option<u16> {
    match u16::try_from(port.value) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            let message = format!("port {} is out of range", port.value);
            sink.at(port, message, "use a port from 1 to 65535");
            None
        }
    }
}

/// Methods as tokens, uppercased (matching is case-sensitive, so `get` in the file means GET).
pub(super) fn check_methods(
    list: &Located<Vec<Located<String>>>,
    sink: &mut Sink<'_>,
) -> Vec<String> {
    if list.value.is_empty() {
        sink.at(
            list,
            "methods is empty, so nothing would match",
            "list methods, e.g. [GET, POST], or remove methods to allow any",
        );
    }
    let mut methods = Vec::new();
    for m in &list.value {
        if is_token(&m.value) {
            methods.push(m.value.to_ascii_uppercase());
        } else {
            sink.at(
                m,
                format!("\"{}\" is not an HTTP method", m.value),
                "write a method name such as GET or POST",
            );
        }
    }
    methods
}

pub(super) fn check_paths(
    list: &Located<Vec<Located<String>>>,
    sink: &mut Sink<'_>,
) -> Option<PathPatterns> {
    if list.value.is_empty() {
        sink.at(
            list,
            "paths is empty, so nothing would match",
            "list path patterns, e.g. [\"/repos/**\"], or remove paths to allow any",
        );
        return None;
    }
    let sources: Vec<&str> = list.value.iter().map(|p| p.value.as_str()).collect();
    PathPatterns::new(&sources)
        .map_err(|errors| {
            for e in errors {
                sink.at(&list.value[e.index], e.message, e.fix);
            }
        })
        .ok()
}

/// The secrets a rule grants, each once, in the order written.
pub(super) fn check_granted(
    list: &Located<Vec<Located<String>>>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
) -> Vec<SecretId> {
    let mut granted = Vec::new();
    for name in &list.value {
        match defined.id(&name.value) {
            Some(id) if !granted.contains(&id) => granted.push(id),
            Some(_) => {}
            // Declared but broken: its own definition already has an error.
            None if defined.declared.contains(&name.value) => {}
            None => {
                let known: Vec<&str> = defined.declared.iter().map(String::as_str).collect();
                let fix = if known.is_empty() {
                    "define it under secrets: (no secrets are defined)".to_string()
                } else {
                    format!("use one of the defined secrets: {}", known.join(", "))
                };
                let message = format!("secret \"{}\" is not defined", name.value);
                sink.at(name, message, fix);
            }
        }
    }
    granted
}

/// A tunnel is not intercepted: nothing in it can be filtered or swapped, so a rule that
/// asks for that would silently promise what the proxy cannot do.
fn check_tunnel_alone(r: &RawRule, sink: &mut Sink<'_>) {
    let unfiltered = "methods and paths cannot be checked";
    let unswapped = "nothing can be swapped";
    let conflicts = [
        (r.methods.as_ref().map(Site::from), "methods", unfiltered),
        (r.paths.as_ref().map(Site::from), "paths", unfiltered),
        (r.secrets.as_ref().map(Site::from), "secrets", unswapped),
        (r.swap_in.as_ref().map(Site::from), "swap_in", unswapped),
        (r.headers.as_ref().map(Site::from), "headers", unswapped),
        (
            r.approve.as_ref().map(Site::from),
            "approve",
            "no request in it can be held for a human",
        ),
    ];
    for (site, field, consequence) in conflicts {
        if let Some(site) = site {
            sink.error(
                site.pos,
                &site.path,
                format!("tunnel: true cannot be combined with {field}: a tunnel is not intercepted, so {consequence}"),
                format!("remove {field}, or remove tunnel: true"),
            );
        }
    }
}

fn check_swap_in(list: &Located<Vec<Located<RawSwapIn>>>, sink: &mut Sink<'_>) -> SwapIn {
    if list.value.is_empty() {
        sink.at(
            list,
            "swap_in is empty, so nothing would be swapped",
            "list where to swap (headers, query, body), or remove swap_in for headers only",
        );
    }
    let mut swap_in = SwapIn::default();
    for place in &list.value {
        match place.value {
            RawSwapIn::Headers => swap_in.headers = true,
            RawSwapIn::Query => swap_in.query = true,
            RawSwapIn::Body => swap_in.body = true,
        }
    }
    swap_in
}

/// A rule that grants secrets and swaps them into headers without naming which (neither the
/// rule nor the secret has `headers:`) lets an agent put a placeholder in any header — also
/// one the upstream stores or reflects.
pub(super) fn warn_unscoped_headers(
    rules: &[Rule],
    sites: &[Site],
    secrets: &[Secret],
    file: &Path,
    checker: &mut Checker<'_>,
) {
    for (rule, site) in rules.iter().zip(sites) {
        if !rule.swap_in.headers || rule.headers.is_some() {
            continue;
        }
        let unscoped: Vec<&str> = rule
            .secrets
            .iter()
            .filter_map(|id| secrets.get(id.0))
            .filter(|s| s.headers.is_none())
            .map(|s| s.name.as_str())
            .collect();
        if !unscoped.is_empty() {
            let note = format!(
                "secret {} may be swapped into any request header, also one the upstream stores or reflects; \
                 name the headers it belongs in, e.g. headers: [authorization]",
                unscoped.join(", ")
            );
            checker.warn(file, site.pos, &site.path, note);
        }
    }
}

/// A rule after an earlier one for the same host and port with the other kind (tunnel vs
/// intercept) is never chosen at CONNECT time.
pub(super) fn warn_shadowed(
    rules: &[Rule],
    sites: &[Site],
    file: &Path,
    checker: &mut Checker<'_>,
) {
    for (j, later) in rules.iter().enumerate() {
        if let Some(earlier) = shadowing(&rules[..j], later) {
            let earlier_name = format!("allow[{}]", earlier.index);
            let note = shadowed_note(&earlier_name, earlier.tunnel);
            checker.warn(file, sites[j].pos, &sites[j].path, note);
        }
    }
}

/// Like [`warn_shadowed`] for a task's own rules after the rules of the policy it names
/// (which come first).
pub(super) fn warn_shadowed_by_policy(
    policy: &Policy,
    rules: &[Rule],
    sites: &[Site],
    file: &Path,
    checker: &mut Checker<'_>,
) {
    for (later, site) in rules.iter().zip(sites) {
        if let Some(earlier) = shadowing(&policy.rules, later) {
            let earlier_name = format!("policy {}'s allow[{}]", policy.name, earlier.index);
            let note = shadowed_note(&earlier_name, earlier.tunnel);
            checker.warn(file, site.pos, &site.path, note);
        }
    }
}

/// The first of `earlier` that takes `later`'s host and port with the other kind.
fn shadowing<'r>(earlier: &'r [Rule], later: &Rule) -> Option<&'r Rule> {
    earlier
        .iter()
        .find(|r| r.host == later.host && r.port == later.port && r.tunnel != later.tunnel)
}

fn shadowed_note(earlier: &str, earlier_tunnels: bool) -> String {
    if earlier_tunnels {
        format!("never used: {earlier} tunnels the same host and port without interception")
    } else {
        format!("never used: {earlier} intercepts the same host and port, so it is not tunnelled")
    }
}

#[cfg(test)]
mod tests {
    use super::public_suffix_under;

    #[test]
    fn wildcards_over_a_public_suffix_are_found() {
        for (suffix, covered) in [
            ("com", Some("com")),
            ("co.uk", Some("co.uk")),
            ("github.io", Some("github.io")),
            // `*.ck` is a wildcard entry: every name directly under ck is a suffix.
            ("ck", Some("*.ck")),
            ("example.com", None),
            ("api.example.co.uk", None),
            // Not in the list: the default rule does not count.
            ("test", None),
            ("upstream.test", None),
        ] {
            assert_eq!(
                public_suffix_under(suffix).as_deref(),
                covered,
                "*.{suffix}"
            );
        }
    }
}
