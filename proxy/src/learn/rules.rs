//! Grouping observed requests into rules: one rule per host and port (and scheme) for each
//! set of secrets its requests used, with the methods seen and the paths generalised; a
//! secret is granted on exactly the rules whose requests carried it, scoped to the headers
//! it was seen in; `tunnel: true` only where the run's connections were spliced.

use std::collections::{BTreeMap, BTreeSet};

use crate::learn::observed::Observed;
use crate::learn::paths::generalise;

/// How many distinct next segments a path prefix may have before it becomes `prefix/**`.
pub const DEFAULT_MAX_CHILDREN: usize = 10;

/// One rule of the learned policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRule {
    /// `https` or `http`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub tunnel: bool,
    /// Sorted; empty for a tunnel.
    pub methods: Vec<String>,
    /// Patterns, sorted; empty for a tunnel.
    pub paths: Vec<String>,
    /// Secret names, sorted.
    pub secrets: Vec<String>,
    /// The only headers the secrets' placeholders were seen in (`None`: not known for every
    /// request, or seen in none).
    pub headers: Option<Vec<String>>,
    /// A placeholder was seen in a header (or where is not known): the rule swaps in
    /// headers, the default.
    pub in_headers: bool,
    /// A placeholder was seen in the URI: the rule swaps in the query too.
    pub query: bool,
    /// A placeholder was seen in a request body: the rule swaps in the body too.
    pub body: bool,
    /// How many recorded requests (or tunnelled connections) the rule covers.
    pub count: usize,
    /// One of them (`METHOD /path`, the first in sort order).
    pub example: String,
}

/// What a rule is learned for: requests with the same key become one rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    host: String,
    port: u16,
    scheme: String,
    /// Tunnels first, then rules granting secrets (so a request carrying a secret meets its
    /// rule before a rule without it on the same host), then the rest.
    order: u8,
    secrets: Vec<String>,
}

#[derive(Default)]
struct Group {
    methods: BTreeSet<String>,
    paths: Vec<String>,
    headers: BTreeSet<String>,
    scope_unknown: bool,
    query: bool,
    body: bool,
    count: usize,
    example: Option<String>,
}

/// The rules covering `records`, in a deterministic order (by host, port, scheme; tunnels,
/// then rules with secrets, then without).
pub fn learn_rules(records: &[Observed], max_children: usize) -> Vec<LearnedRule> {
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for record in records {
        let secrets = if record.is_tunnel() {
            Vec::new()
        } else {
            record.secret_names()
        };
        let order = match (record.is_tunnel(), secrets.is_empty()) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        let key = Key {
            host: record.host.clone(),
            port: record.port,
            scheme: record.scheme.clone(),
            order,
            secrets,
        };
        add(groups.entry(key).or_default(), record);
    }
    groups
        .into_iter()
        .map(|(key, group)| rule(key, group, max_children))
        .collect()
}

fn add(group: &mut Group, record: &Observed) {
    group.count += 1;
    let example = match (&record.path, record.is_tunnel()) {
        (Some(path), false) => {
            group.methods.insert(record.method.clone());
            group.paths.push(path.clone());
            format!("{} {path}", record.method)
        }
        _ => format!("CONNECT {}:{}", record.host, record.port),
    };
    if group.example.as_ref().is_none_or(|e| example < *e) {
        group.example = Some(example);
    }
    for secret in record.secret_names() {
        match record.carried.iter().find(|c| c.secret == secret) {
            Some(carried) => {
                group.headers.extend(carried.headers.iter().cloned());
                group.query |= carried.uri;
                group.body |= carried.body;
            }
            // Sent by a rule that already granted it: where it was carried is not recorded.
            None => group.scope_unknown = true,
        }
    }
}

fn rule(key: Key, group: Group, max_children: usize) -> LearnedRule {
    let tunnel = key.order == 0;
    let in_headers = group.scope_unknown || !group.headers.is_empty();
    let headers = (!key.secrets.is_empty() && !group.scope_unknown && !group.headers.is_empty())
        .then(|| group.headers.into_iter().collect());
    LearnedRule {
        scheme: key.scheme,
        host: key.host,
        port: key.port,
        tunnel,
        methods: group.methods.into_iter().collect(),
        paths: generalise(&group.paths, max_children),
        secrets: key.secrets,
        headers,
        in_headers,
        query: group.query,
        body: group.body,
        count: group.count,
        example: group.example.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::decision::Carried;

    fn request(
        method: &str,
        path: &str,
        secrets: &[&str],
        carried: &[(&str, &[&str])],
    ) -> Observed {
        Observed {
            event: Some("request".into()),
            ts: None,
            task: Some("agent".into()),
            policy: None,
            method: method.into(),
            scheme: "https".into(),
            host: "api.example.com".into(),
            port: 443,
            path: Some(path.into()),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            carried: carried
                .iter()
                .map(|(secret, headers)| Carried {
                    secret: secret.to_string(),
                    headers: headers.iter().map(|h| h.to_string()).collect(),
                    uri: false,
                    body: false,
                })
                .collect(),
            tunnel: false,
            decision: "learned".into(),
        }
    }

    #[test]
    fn secrets_go_only_on_the_rule_of_the_requests_that_carried_them() {
        let records = [
            request("GET", "/public/1", &[], &[]),
            request(
                "POST",
                "/repos/a/issues",
                &[],
                &[("github", &["authorization"])],
            ),
            request(
                "GET",
                "/repos/a/issues/7",
                &[],
                &[("github", &["authorization"])],
            ),
        ];
        let rules = learn_rules(&records, DEFAULT_MAX_CHILDREN);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].secrets, vec!["github"]);
        assert_eq!(rules[0].methods, vec!["GET", "POST"]);
        assert_eq!(rules[0].paths, vec!["/repos/a/issues", "/repos/a/issues/*"]);
        assert_eq!(rules[0].headers, Some(vec!["authorization".to_string()]));
        assert!(rules[1].secrets.is_empty());
        assert_eq!(rules[1].paths, vec!["/public/*"]);
    }

    #[test]
    fn a_secret_sent_under_an_existing_rule_leaves_its_headers_open() {
        let records = [
            request("GET", "/a", &["github"], &[]),
            request("GET", "/b", &[], &[("github", &["authorization"])]),
        ];
        let rules = learn_rules(&records, DEFAULT_MAX_CHILDREN);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].headers, None);
        assert_eq!(rules[0].count, 2);
        assert_eq!(rules[0].example, "GET /a");
    }

    #[test]
    fn a_placeholder_seen_only_in_bodies_swaps_in_the_body_alone() {
        let mut in_body = request("POST", "/login", &[], &[]);
        in_body.carried.push(Carried {
            secret: "npm".into(),
            headers: Vec::new(),
            uri: false,
            body: true,
        });
        let rules = learn_rules(&[in_body], DEFAULT_MAX_CHILDREN);
        assert_eq!(rules[0].secrets, vec!["npm"]);
        assert!(rules[0].body && !rules[0].in_headers && !rules[0].query);
        assert_eq!(rules[0].headers, None);
    }

    #[test]
    fn only_spliced_connections_become_tunnels() {
        let mut tunnel = request("CONNECT", "/", &[], &[]);
        tunnel.path = None;
        tunnel.tunnel = true;
        tunnel.host = "files.example.org".into();
        let rules = learn_rules(
            &[tunnel, request("GET", "/x", &[], &[])],
            DEFAULT_MAX_CHILDREN,
        );
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .any(|r| r.tunnel && r.host == "files.example.org" && r.paths.is_empty()));
        assert!(rules
            .iter()
            .any(|r| !r.tunnel && r.host == "api.example.com"));
    }
}
