//! `requestable:` on a policy or a task: the bounds of what its agents may *ask* for at
//! runtime (`POST https://keyswap.internal/v1/self/requests`). A bound is a rule template —
//! host pattern, port, methods, path patterns, secrets — and an asked grant is inside a bound
//! only when everything it would allow is allowed by the bound: its host is matched by the
//! bound's pattern (or is the same pattern), its methods and secrets are subsets, and each of
//! its path patterns is the bound's own, an exact path the bound matches, or lies under a
//! bound pattern ending in `/**`. Anything not provably inside is outside.
//!
//! A grant a human approved becomes a [`Rule`] ([`granted_rule`]) for the task's lifetime:
//! HTTPS only, swapped in headers only, never a tunnel. Names and patterns only, never a value.

use crate::host::HostPattern;
use crate::limits::derived_rule_key;
use crate::model::{Rule, Scheme, SecretId, SwapIn};
use crate::path::PathPatterns;

/// One entry of `requestable:`.
#[derive(Debug, Clone)]
pub struct Requestable {
    /// Position in the `requestable:` list (what a refusal names).
    pub index: usize,
    pub host: HostPattern,
    /// `None` = 443.
    pub port: Option<u16>,
    /// Uppercase; `None` = any.
    pub methods: Option<Vec<String>>,
    /// `None` = any path.
    pub paths: Option<PathPatterns>,
    pub secrets: Vec<SecretId>,
}

/// What an agent asks for, its secrets already resolved by name.
#[derive(Debug, Clone)]
pub struct GrantAsk<'a> {
    pub host: &'a str,
    pub port: u16,
    /// Uppercase; `None` = any.
    pub methods: Option<&'a [String]>,
    /// `None` = any path.
    pub paths: Option<&'a [String]>,
    pub secrets: &'a [SecretId],
}

/// Characters that make a path pattern more than one exact path.
const GLOB_CHARS: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

impl Requestable {
    /// `Ok` if `ask` lies inside this bound, else which part of it does not (names the
    /// bound's own value, never a secret value).
    pub fn covers(
        &self,
        ask: &GrantAsk<'_>,
        secret_name: &dyn Fn(SecretId) -> String,
    ) -> Result<(), String> {
        let bound = format!("requestable[{}]", self.index);
        let same_pattern = self.host.to_string().eq_ignore_ascii_case(ask.host);
        if !(same_pattern || (!ask.host.contains('*') && self.host.matches(ask.host))) {
            return Err(format!("{bound} allows host {} only", self.host));
        }
        let port = self.port.unwrap_or(443);
        if ask.port != port {
            return Err(format!("{bound} allows port {port} only"));
        }
        if let Some(allowed) = &self.methods {
            let inside = ask
                .methods
                .is_some_and(|asked| asked.iter().all(|m| allowed.contains(m)));
            if !inside {
                return Err(format!(
                    "{bound} allows methods {} only",
                    allowed.join(", ")
                ));
            }
        }
        if let Some(allowed) = &self.paths {
            let inside = ask
                .paths
                .is_some_and(|asked| asked.iter().all(|p| path_within(allowed, p)));
            if !inside {
                return Err(format!("{bound} allows paths {allowed} only"));
            }
        }
        if let Some(id) = ask.secrets.iter().find(|id| !self.secrets.contains(id)) {
            let names: Vec<String> = self.secrets.iter().map(|id| secret_name(*id)).collect();
            let allowed = match names.is_empty() {
                true => "no secret".to_string(),
                false => format!("secrets {} only", names.join(", ")),
            };
            return Err(format!(
                "{bound} does not allow secret {}; it allows {allowed}",
                secret_name(*id)
            ));
        }
        Ok(())
    }
}

/// The first bound that covers `ask`, or why none does: the objection of the first bound
/// whose host matches (the one the agent most likely meant), else that no bound names the host.
pub fn within(
    bounds: &[Requestable],
    ask: &GrantAsk<'_>,
    secret_name: &dyn Fn(SecretId) -> String,
) -> Result<usize, String> {
    if bounds.is_empty() {
        return Err("this task's policy has no requestable: bounds, so nothing can be requested; ask the operator".into());
    }
    let mut first_objection = None;
    for bound in bounds {
        match bound.covers(ask, secret_name) {
            Ok(()) => return Ok(bound.index),
            Err(why) => {
                let host_ok = bound.host.matches(ask.host)
                    || bound.host.to_string().eq_ignore_ascii_case(ask.host);
                if host_ok && first_objection.is_none() {
                    first_objection = Some(why);
                }
            }
        }
    }
    Err(first_objection.unwrap_or_else(|| {
        let hosts: Vec<String> = bounds.iter().map(|b| b.host.to_string()).collect();
        format!(
            "no requestable bound names host {}; requestable hosts are {}",
            ask.host,
            hosts.join(", ")
        )
    }))
}

/// Whether every path `asked` can match is matched by `bound` (conservative: `false` when
/// that cannot be shown).
fn path_within(bound: &PathPatterns, asked: &str) -> bool {
    if bound.sources().iter().any(|s| s == asked) {
        return true;
    }
    if !asked.contains(GLOB_CHARS) {
        return bound.matches(asked);
    }
    bound.sources().iter().any(|source| {
        source
            .strip_suffix("/**")
            .is_some_and(|prefix| asked.starts_with(&format!("{prefix}/")))
    })
}

/// The rule an approved grant adds to its task. `host` is a valid pattern, `paths` valid
/// patterns (the caller checked both when the grant was asked for).
pub fn granted_rule(
    host: HostPattern,
    port: u16,
    methods: Option<Vec<String>>,
    paths: Option<PathPatterns>,
    secrets: Vec<SecretId>,
    index: usize,
) -> Rule {
    let key = derived_rule_key(
        Scheme::Https,
        &host,
        Some(port),
        methods.as_deref(),
        paths.as_ref(),
    );
    Rule {
        index,
        host,
        port: Some(port),
        methods,
        paths,
        secrets,
        tunnel: false,
        swap_in: SwapIn::HEADERS_ONLY,
        headers: None,
        scheme: Scheme::Https,
        allow_cleartext: false,
        approve: None,
        key,
        budget: None,
        rate: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(
        host: &str,
        methods: Option<&[&str]>,
        paths: Option<&[&str]>,
        secrets: &[usize],
    ) -> Requestable {
        Requestable {
            index: 0,
            host: HostPattern::parse(host).expect("host"),
            port: None,
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            paths: paths.map(|p| PathPatterns::new(p).expect("paths")),
            secrets: secrets.iter().map(|i| SecretId(*i)).collect(),
        }
    }

    fn name(id: SecretId) -> String {
        format!("s{}", id.0)
    }

    fn ask<'a>(
        host: &'a str,
        methods: Option<&'a [String]>,
        paths: Option<&'a [String]>,
        secrets: &'a [SecretId],
    ) -> GrantAsk<'a> {
        GrantAsk {
            host,
            port: 443,
            methods,
            paths,
            secrets,
        }
    }

    #[test]
    fn inside_and_outside_name_the_bound() {
        let b = bound("*.example.com", Some(&["GET"]), Some(&["/repos/**"]), &[1]);
        let get = vec!["GET".to_string()];
        let post = vec!["POST".to_string()];
        let under = vec!["/repos/acme/*".to_string()];
        let exact = vec!["/repos/acme".to_string()];
        let other = vec!["/admin".to_string()];
        let s1 = [SecretId(1)];
        let s2 = [SecretId(2)];
        assert!(b
            .covers(
                &ask("api.example.com", Some(&get), Some(&under), &s1),
                &name
            )
            .is_ok());
        assert!(b
            .covers(
                &ask("api.example.com", Some(&get), Some(&exact), &[]),
                &name
            )
            .is_ok());
        assert!(b
            .covers(&ask("*.example.com", Some(&get), Some(&exact), &[]), &name)
            .is_ok());
        let why = b
            .covers(
                &ask("api.example.org", Some(&get), Some(&exact), &[]),
                &name,
            )
            .unwrap_err();
        assert!(why.contains("*.example.com"), "{why}");
        let why = b
            .covers(
                &ask("api.example.com", Some(&post), Some(&exact), &[]),
                &name,
            )
            .unwrap_err();
        assert!(why.contains("methods GET"), "{why}");
        let why = b
            .covers(&ask("api.example.com", None, Some(&exact), &[]), &name)
            .unwrap_err();
        assert!(why.contains("methods GET"), "{why}");
        let why = b
            .covers(
                &ask("api.example.com", Some(&get), Some(&other), &[]),
                &name,
            )
            .unwrap_err();
        assert!(why.contains("/repos/**"), "{why}");
        let why = b
            .covers(&ask("api.example.com", Some(&get), None, &[]), &name)
            .unwrap_err();
        assert!(why.contains("paths"), "{why}");
        let why = b
            .covers(
                &ask("api.example.com", Some(&get), Some(&exact), &s2),
                &name,
            )
            .unwrap_err();
        assert!(why.contains("s2") && why.contains("s1"), "{why}");
        assert!(within(&[], &ask("a.example.com", None, None, &[]), &name)
            .unwrap_err()
            .contains("no requestable"));
    }

    #[test]
    fn a_wildcard_path_is_inside_only_under_a_double_star_bound() {
        let b = PathPatterns::new(&["/a/*", "/b/**"]).expect("paths");
        assert!(path_within(&b, "/a/x"));
        assert!(!path_within(&b, "/a/**"));
        assert!(!path_within(&b, "/a/*/x"));
        assert!(path_within(&b, "/b/x/**"));
        assert!(!path_within(&b, "/b*/x"));
        assert!(path_within(&b, "/a/*"));
    }
}
