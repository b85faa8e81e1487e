//! The learned policy as YAML, ready to paste into a config: a `policies:` block with one
//! policy, or (with `--merge`) the rules to add to an existing one. Every string is written
//! as a double-quoted scalar (JSON string syntax is YAML), so no host, path or method can
//! change the document's structure. Each rule carries a comment: how many recorded
//! requests it covers and one of them.

use std::fmt::Write;

use crate::learn::rules::LearnedRule;

/// Indentation of a rule's first line under `policies.NAME.allow:`.
const RULE_INDENT: &str = "      ";

/// Whether `name` can name a policy (what config validation accepts, kept short).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `policies:` block holding policy `name` with `rules`; `about` says where they came
/// from (for the header comment).
pub fn render(name: &str, rules: &[LearnedRule], about: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Learned by `keyswap learn` from {about}.");
    out.push_str("# Review before use: each rule allows what the observed run did, no more.\n");
    let _ = writeln!(out, "policies:\n  {name}:");
    if rules.is_empty() {
        out.push_str("    allow: []\n");
        return out;
    }
    out.push_str("    allow:\n");
    for rule in rules {
        write_rule(&mut out, rule);
    }
    out
}

/// The rules to add under `policies.NAME.allow` of `config` so that it covers `uncovered`
/// of `total` recorded requests.
pub fn render_merge(
    name: &str,
    config: &str,
    rules: &[LearnedRule],
    uncovered: usize,
    total: usize,
) -> String {
    let mut out = String::new();
    if rules.is_empty() {
        let _ = writeln!(
            out,
            "# policy {name} in {config} already allows all {total} recorded requests: nothing to add"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "# {uncovered} of {total} recorded requests are not allowed by policy {name} in {config}."
    );
    let _ = writeln!(out, "# Add these lines under policies.{name}.allow:");
    for rule in rules {
        write_rule(&mut out, rule);
    }
    out
}

fn write_rule(out: &mut String, rule: &LearnedRule) {
    let what = match rule.tunnel {
        true => "connection",
        false => "request",
    };
    let plural = if rule.count == 1 { "" } else { "s" };
    let _ = writeln!(
        out,
        "{RULE_INDENT}# {} {what}{plural}, e.g. {}",
        rule.count, rule.example
    );
    let field = |out: &mut String, key: &str, value: &str| {
        let _ = writeln!(out, "{RULE_INDENT}  {key}: {value}");
    };
    let _ = writeln!(out, "{RULE_INDENT}- host: {}", quoted(&rule.host));
    let http = rule.scheme == "http";
    if rule.port != if http { 80 } else { 443 } {
        field(out, "port", &rule.port.to_string());
    }
    if http {
        field(out, "scheme", "http");
    }
    if rule.tunnel {
        field(out, "tunnel", "true");
        return;
    }
    field(out, "methods", &list(&rule.methods));
    field(out, "paths", &list(&rule.paths));
    if rule.secrets.is_empty() {
        return;
    }
    field(out, "secrets", &list(&rule.secrets));
    if rule.query || rule.body || !rule.in_headers {
        field(out, "swap_in", &swap_in(rule));
    }
    if let Some(headers) = &rule.headers {
        field(out, "headers", &list(headers));
    }
    if http {
        let _ = writeln!(
            out,
            "{RULE_INDENT}  # the run sent this secret's placeholder over plain HTTP"
        );
        field(out, "allow_cleartext", "true");
    }
}

/// The places a rule swaps in, as a flow list (`[headers]` alone is the default).
fn swap_in(rule: &LearnedRule) -> String {
    let places = [
        (rule.in_headers, "headers"),
        (rule.query, "query"),
        (rule.body, "body"),
    ];
    let words: Vec<&str> = places
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, word)| *word)
        .collect();
    format!("[{}]", words.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, secrets: &[&str]) -> LearnedRule {
        LearnedRule {
            scheme: "https".into(),
            host: host.into(),
            port: 443,
            tunnel: false,
            methods: vec!["GET".into()],
            paths: vec!["/a/*".into()],
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            headers: Some(vec!["authorization".into()]),
            in_headers: true,
            query: false,
            body: false,
            count: 2,
            example: "GET /a/1".into(),
        }
    }

    #[test]
    fn a_policy_block_with_a_comment_per_rule() {
        let text = render(
            "learned",
            &[rule("api.example.com", &["github"])],
            "3 records",
        );
        assert_eq!(
            text,
            "# Learned by `keyswap learn` from 3 records.\n\
             # Review before use: each rule allows what the observed run did, no more.\n\
             policies:\n  learned:\n    allow:\n\
             \x20     # 2 requests, e.g. GET /a/1\n\
             \x20     - host: \"api.example.com\"\n\
             \x20       methods: [\"GET\"]\n\
             \x20       paths: [\"/a/*\"]\n\
             \x20       secrets: [\"github\"]\n\
             \x20       headers: [\"authorization\"]\n"
        );
    }

    #[test]
    fn swap_in_names_each_place_a_placeholder_was_seen() {
        let mut both = rule("api.example.com", &["github"]);
        both.body = true;
        assert!(render("l", &[both.clone()], "1 record").contains("swap_in: [headers, body]\n"));
        both.in_headers = false;
        both.headers = None;
        both.query = true;
        assert!(render("l", &[both], "1 record").contains("swap_in: [query, body]\n"));
    }

    #[test]
    fn quoting_keeps_hostile_strings_inside_their_scalar() {
        let mut hostile = rule("x\"\n  evil: 1", &[]);
        hostile.paths = vec!["/a\"b: [c]".into()];
        let text = render("learned", &[hostile], "1 record");
        assert!(text.contains("host: \"x\\\"\\n  evil: 1\""), "{text}");
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("evil")),
            "{text}"
        );
    }
}
