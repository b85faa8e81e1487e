//! Host patterns: what a rule's `host:` may say, and which request hosts it matches.
//!
//! Owns the syntax of host names, IP literals and `*.suffix` wildcards. A pattern must never
//! match more than the operator wrote: no IPv4 shorthand (`2130706433`, `0x7f.1`), no
//! wildcard that reaches an IP literal, no partial labels. Request hosts are compared
//! case-insensitively with one trailing dot ignored; anything unusual simply does not match.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A rule's host: an exact name or IP literal, or `*.suffix` (one or more labels before
/// `suffix`; never `suffix` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Lowercased DNS name without trailing dot, dotted-quad IPv4, or canonical IPv6
    /// (without brackets).
    Exact(String),
    /// `*.suffix`; `suffix` is a lowercased DNS name.
    Wildcard { suffix: String },
}

/// Why a host pattern was refused, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPatternError {
    pub message: String,
    pub fix: String,
}

impl fmt::Display for HostPatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message, self.fix)
    }
}

impl std::error::Error for HostPatternError {}

fn problem(message: impl Into<String>, fix: impl Into<String>) -> HostPatternError {
    HostPatternError {
        message: message.into(),
        fix: fix.into(),
    }
}

impl HostPattern {
    /// Parses a rule's `host:` value.
    pub fn parse(raw: &str) -> Result<HostPattern, HostPatternError> {
        if !raw.contains('*') {
            return parse_exact(raw).map(HostPattern::Exact);
        }
        if raw == "*" || raw == "*." {
            return Err(problem(
                format!("\"{raw}\" would allow every host"),
                "list the hosts the task needs, or use a pattern like \"*.example.com\"",
            ));
        }
        match raw.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') => {
                let suffix = parse_name(suffix).map_err(|e| {
                    problem(
                        format!("\"{raw}\" is not a valid pattern: {}", e.message),
                        e.fix,
                    )
                })?;
                Ok(HostPattern::Wildcard { suffix })
            }
            _ if raw.starts_with('*') && !raw[1..].contains('*') => Err(problem(
                format!("\"{raw}\" is not a valid pattern"),
                format!("use \"*.{}\"", raw[1..].trim_start_matches('.')),
            )),
            _ => {
                let after: Vec<&str> = raw.rsplit('.').take_while(|l| !l.contains('*')).collect();
                let rest: Vec<&str> = after.into_iter().rev().collect();
                let fix = if rest.is_empty() {
                    "write the full host name, e.g. \"api.example.com\"".to_string()
                } else {
                    format!(
                        "use \"*.{}\" (which matches one or more labels), or list the hosts",
                        rest.join(".")
                    )
                };
                Err(problem(
                    format!(
                        "\"{raw}\" is not a valid pattern: \"*\" may only be the whole first label"
                    ),
                    fix,
                ))
            }
        }
    }

    /// Whether a request host (from CONNECT, Host or `:authority`, without port) matches.
    /// Case-insensitive; one trailing dot is ignored; IPv6 may be bracketed.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(pattern) if pattern.contains(':') => {
                let bare = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                match (bare.parse::<Ipv6Addr>(), pattern.parse::<Ipv6Addr>()) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                }
            }
            HostPattern::Exact(pattern) => host.eq_ignore_ascii_case(pattern),
            HostPattern::Wildcard { suffix } => {
                if host.len() <= suffix.len() + 1 || host.parse::<Ipv4Addr>().is_ok() {
                    return false;
                }
                // A byte offset inside a multi-byte character: no ASCII suffix can match there.
                let Some((prefix, tail)) = host.split_at_checked(host.len() - suffix.len()) else {
                    return false;
                };
                let Some(labels) = prefix.strip_suffix('.') else {
                    return false;
                };
                tail.eq_ignore_ascii_case(suffix) && labels.split('.').all(is_request_label)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard { suffix } => write!(f, "*.{suffix}"),
        }
    }
}

/// A label a wildcard may stand for. Underscores occur in real names (e.g. `_dmarc`), so
/// they are accepted here although config names may not contain them.
fn is_request_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses an exact host: a DNS name, a dotted-quad IPv4 address or an IPv6 address
/// (bracketed or not). Returns its canonical form.
pub(crate) fn parse_exact(raw: &str) -> Result<String, HostPatternError> {
    let bare = raw
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Ok(v6.to_string());
    }
    if raw.contains("://") || raw.contains('/') {
        return Err(problem(
            format!("\"{raw}\" is not a host name"),
            "write only the host, e.g. \"api.example.com\" (no scheme or path)",
        ));
    }
    if let Some((host, port)) = raw.rsplit_once(':') {
        if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
            return Err(problem(
                format!("\"{raw}\" includes a port"),
                format!("write host: {host} and port: {port}"),
            ));
        }
        return Err(problem(
            format!("\"{raw}\" is not a valid host name or IP address"),
            "write a DNS name, a dotted-quad IPv4 address or an IPv6 address",
        ));
    }
    parse_name(raw)
}

/// Parses a DNS name or dotted-quad IPv4 address: lowercased, trailing dot removed.
fn parse_name(raw: &str) -> Result<String, HostPatternError> {
    let name = raw.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if name.is_empty() {
        return Err(problem(
            "the host is empty",
            "write a host name, e.g. \"api.example.com\"",
        ));
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Ok(name);
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().all(|l| is_numeric_label(l)) && labels.len() <= 4 {
        // inet_aton and URL parsers read these as IPv4 addresses (2130706433 is 127.0.0.1):
        // a rule must name an address the way every component reads it.
        return Err(problem(
            format!("\"{raw}\" is an IPv4 address in a non-standard notation"),
            "write it as a dotted quad in decimal without leading zeros, e.g. \"127.0.0.1\"",
        ));
    }
    if labels.last().is_some_and(|l| is_numeric_label(l)) {
        return Err(problem(
            format!("\"{raw}\" ends in a numeric label, which URL parsers read as an IPv4 address"),
            "write a DNS name whose last label has a letter, or a dotted-quad IPv4 address",
        ));
    }
    if name.len() > 253 {
        return Err(problem(
            format!("\"{raw}\" is longer than 253 characters"),
            "write a valid DNS name",
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(problem(
                format!("\"{raw}\" has an empty label"),
                "remove the extra dot (labels are separated by single dots)",
            ));
        }
        if label.len() > 63 {
            return Err(problem(
                format!("\"{raw}\" has a label longer than 63 characters"),
                "write a valid DNS name",
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(problem(
                format!("\"{raw}\" contains the character {bad:?}, which is not allowed in a host name"),
                "use only letters, digits, \"-\" and dots (write internationalised names in their xn-- form)",
            ));
        }
    }
    Ok(name)
}

/// A label that IPv4 parsers read as a number: decimal (or octal with a leading 0) or `0x` hex.
fn is_numeric_label(label: &str) -> bool {
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> HostPattern {
        HostPattern::Exact(s.into())
    }

    #[test]
    fn parses_valid_patterns() {
        let cases = [
            ("api.github.com", exact("api.github.com")),
            ("API.GitHub.com.", exact("api.github.com")),
            ("localhost", exact("localhost")),
            ("127.0.0.1", exact("127.0.0.1")),
            ("::1", exact("::1")),
            ("[::1]", exact("::1")),
            ("[0:0::1]", exact("::1")),
            (
                "*.example.com",
                HostPattern::Wildcard {
                    suffix: "example.com".into(),
                },
            ),
            (
                "*.Example.COM.",
                HostPattern::Wildcard {
                    suffix: "example.com".into(),
                },
            ),
            ("xn--bcher-kva.example", exact("xn--bcher-kva.example")),
        ];
        for (raw, want) in cases {
            assert_eq!(HostPattern::parse(raw).as_ref(), Ok(&want), "{raw}");
        }
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap().to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn refuses_invalid_patterns_with_a_fix() {
        let cases = [
            ("*foo", "is not a valid pattern", "use \"*.foo\""),
            ("*", "would allow every host", "list the hosts"),
            (
                "api.*.com",
                "may only be the whole first label",
                "use \"*.com\"",
            ),
            (
                "foo*.bar.com",
                "may only be the whole first label",
                "use \"*.bar.com\"",
            ),
            (
                "api.*",
                "may only be the whole first label",
                "write the full host name",
            ),
            (
                "*.*.com",
                "may only be the whole first label",
                "use \"*.com\"",
            ),
            ("2130706433", "non-standard notation", "dotted quad"),
            ("0x7f.1", "non-standard notation", "dotted quad"),
            ("0x7f000001", "non-standard notation", "dotted quad"),
            ("127.1", "non-standard notation", "dotted quad"),
            ("127.000.0.1", "non-standard notation", "dotted quad"),
            ("example.123", "numeric label", "dotted-quad"),
            ("*.0.1", "non-standard notation", "dotted quad"),
            ("*.example.123", "numeric label", "dotted-quad"),
            ("api.github.com:443", "includes a port", "port: 443"),
            ("https://api.github.com", "not a host name", "no scheme"),
            ("a..b", "empty label", "extra dot"),
            ("a_b.com", "'_'", "letters, digits"),
            ("", "empty", "write a host name"),
            ("bücher.example", "'ü'", "xn--"),
        ];
        for (raw, message, fix) in cases {
            let err = HostPattern::parse(raw).expect_err(raw);
            assert!(err.message.contains(message), "{raw}: {}", err.message);
            assert!(err.fix.contains(fix), "{raw}: {}", err.fix);
        }
    }

    #[test]
    fn exact_matching() {
        let p = HostPattern::parse("api.github.com").unwrap();
        for host in ["api.github.com", "API.GITHUB.COM", "api.github.com."] {
            assert!(p.matches(host), "{host}");
        }
        for host in [
            "api.github.com..",
            "xapi.github.com",
            "api.github.com.evil",
            "github.com",
            "",
        ] {
            assert!(!p.matches(host), "{host}");
        }
        let ip = HostPattern::parse("127.0.0.1").unwrap();
        assert!(ip.matches("127.0.0.1"));
        for host in ["2130706433", "127.1", "0x7f.0.0.1", "127.000.000.001"] {
            assert!(!ip.matches(host), "{host}");
        }
        let v6 = HostPattern::parse("::1").unwrap();
        assert!(v6.matches("[::1]") && v6.matches("0:0:0:0:0:0:0:1") && !v6.matches("[::2]"));
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_only() {
        let p = HostPattern::parse("*.example.com").unwrap();
        for host in [
            "a.example.com",
            "a.b.example.com",
            "A.EXAMPLE.COM.",
            "_x.example.com",
        ] {
            assert!(p.matches(host), "{host}");
        }
        for host in [
            "example.com",
            ".example.com",
            "a..example.com",
            "aexample.com",
            "a.example.com.evil",
            "a.example.co",
            "a b.example.com",
            "a/b.example.com",
        ] {
            assert!(!p.matches(host), "{host}");
        }
    }
}
