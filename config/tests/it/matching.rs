//! Request matching: host, port, method and path; first match wins; tunnels; expiry.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use keyswap_config::{load_str, normalize_path, Config, RouteMatch, Scheme, Task};

fn config(yaml: &str) -> Config {
    let env = HashMap::from([("SECRET".to_string(), "matching-real-value-0123".to_string())]);
    load_str(yaml, Path::new("k.yaml"), &env).unwrap_or_else(|e| panic!("{e}"))
}

const TASK: &str = r#"
version: 1
secrets:
  github:
    from_env: SECRET
    placeholder: ghp_keyswap_matching_0000
tasks:
  t:
    expires: 2030-01-01T00:00:00Z
    allow:
      - host: api.github.com
        methods: [get, POST]
        paths: ["/repos/acme/**", "/user"]
        secrets: [github]
      - host: api.github.com
        methods: [GET]
      - host: "*.githubusercontent.com"
      - host: files.pythonhosted.org
        tunnel: true
      - host: files.pythonhosted.org
      - host: localhost
        port: 8443
      - host: 127.0.0.1
"#;

/// scheme, host, port, method, path → rule index or refusal.
type Case = (
    Scheme,
    &'static str,
    u16,
    &'static str,
    &'static str,
    Result<usize, &'static str>,
);

/// Which rule (by index) a request gets, or the refusal.
fn route(
    task: &Task,
    scheme: Scheme,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> Result<usize, &'static str> {
    match task.match_route(scheme, host, port, method, path) {
        RouteMatch::Rule(rule) => Ok(rule.index),
        RouteMatch::HostNotAllowed => Err("host_not_allowed"),
        RouteMatch::RouteNotAllowed => Err("route_not_allowed"),
    }
}

#[test]
fn routes_table() {
    let config = config(TASK);
    let task = config.task("t").unwrap();
    use Scheme::{Http, Https};
    let cases: &[Case] = &[
        // First match wins: the secret-granting rule before the broader read-only one.
        (
            Https,
            "api.github.com",
            443,
            "GET",
            "/repos/acme/widget",
            Ok(0),
        ),
        (Https, "api.github.com", 443, "POST", "/user", Ok(0)),
        (Https, "api.github.com", 443, "GET", "/orgs/acme", Ok(1)),
        (
            Https,
            "api.github.com",
            443,
            "DELETE",
            "/repos/acme/widget",
            Err("route_not_allowed"),
        ),
        (
            Https,
            "api.github.com",
            443,
            "POST",
            "/orgs/acme",
            Err("route_not_allowed"),
        ),
        // Methods are case-sensitive; config methods are uppercased.
        (
            Https,
            "api.github.com",
            443,
            "get",
            "/user",
            Err("route_not_allowed"),
        ),
        // "*" is one segment, "**" the rest; "/repos/acme/**" does not match "/repos/acme".
        (
            Https,
            "api.github.com",
            443,
            "POST",
            "/repos/acme",
            Err("route_not_allowed"),
        ),
        (
            Https,
            "api.github.com",
            443,
            "POST",
            "/repos/acme/w/issues/1",
            Ok(0),
        ),
        (
            Https,
            "api.github.com",
            443,
            "POST",
            "/repos/acmex/w",
            Err("route_not_allowed"),
        ),
        (
            Https,
            "api.github.com",
            443,
            "POST",
            "/Repos/acme/w",
            Err("route_not_allowed"),
        ),
        // Hosts: case-insensitive, one trailing dot ignored.
        (Https, "API.GitHub.com.", 443, "GET", "/user", Ok(0)),
        (
            Https,
            "api.github.com..",
            443,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        (
            Https,
            "github.com",
            443,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        (
            Https,
            "api.github.com.evil.com",
            443,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        // Ports: a rule without port means the scheme's default.
        (
            Https,
            "api.github.com",
            8443,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        // Schemes: a rule is https unless it says scheme: http (or port: 80), so a grant for
        // HTTPS never matches a plain-HTTP request.
        (
            Http,
            "api.github.com",
            80,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        (
            Http,
            "api.github.com",
            443,
            "GET",
            "/user",
            Err("host_not_allowed"),
        ),
        (Https, "localhost", 8443, "GET", "/", Ok(5)),
        (Http, "localhost", 8443, "GET", "/", Err("host_not_allowed")),
        (Https, "localhost", 443, "GET", "/", Err("host_not_allowed")),
        // Wildcards: one or more labels, never the bare suffix.
        (Https, "raw.githubusercontent.com", 443, "GET", "/x", Ok(2)),
        (Https, "a.b.githubusercontent.com", 443, "GET", "/x", Ok(2)),
        (
            Https,
            "githubusercontent.com",
            443,
            "GET",
            "/x",
            Err("host_not_allowed"),
        ),
        // IP literals only in the notation written.
        (Https, "127.0.0.1", 443, "GET", "/", Ok(6)),
        (
            Https,
            "2130706433",
            443,
            "GET",
            "/",
            Err("host_not_allowed"),
        ),
        (Https, "127.1", 443, "GET", "/", Err("host_not_allowed")),
        // Tunnel rules are never returned for an intercepted request.
        (
            Https,
            "files.pythonhosted.org",
            443,
            "GET",
            "/packages/x",
            Ok(4),
        ),
    ];
    for (scheme, host, port, method, path, want) in cases {
        let got = route(task, *scheme, host, *port, method, path);
        assert_eq!(
            got,
            *want,
            "{} {method} {host}:{port}{path}",
            scheme.as_str()
        );
    }
}

#[test]
fn connect_time_check_picks_the_first_rule_for_the_host() {
    let config = config(TASK);
    let task = config.task("t").unwrap();
    let tunnel = task
        .first_rule_for_host(Scheme::Https, "files.pythonhosted.org", 443)
        .unwrap();
    assert!(tunnel.tunnel && tunnel.index == 3);
    let intercept = task
        .first_rule_for_host(Scheme::Https, "api.github.com", 443)
        .unwrap();
    assert!(!intercept.tunnel && intercept.index == 0);
    assert!(task
        .first_rule_for_host(Scheme::Https, "example.com", 443)
        .is_none());
    assert!(task
        .first_rule_for_host(Scheme::Https, "api.github.com", 444)
        .is_none());
}

#[test]
fn only_tunnel_rules_for_a_host_mean_route_not_allowed() {
    let config = config(
        "version: 1\ntasks:\n  t:\n    allow:\n      - host: pypi.org\n        tunnel: true\n",
    );
    let task = config.task("t").unwrap();
    assert!(matches!(
        task.match_route(Scheme::Https, "pypi.org", 443, "GET", "/"),
        RouteMatch::RouteNotAllowed
    ));
    assert!(matches!(
        task.match_route(Scheme::Https, "other.org", 443, "GET", "/"),
        RouteMatch::HostNotAllowed
    ));
}

#[test]
fn normalised_paths_are_what_rules_see() {
    let config = config(TASK);
    let task = config.task("t").unwrap();
    // "/repos/acme/../../admin" is "/admin" after normalisation: rule 0 must not match it.
    let path = normalize_path("/repos/acme/../../admin").unwrap();
    assert_eq!(
        route(task, Scheme::Https, "api.github.com", 443, "POST", &path),
        Err("route_not_allowed")
    );
    let path = normalize_path("/repos//acme/%77idget").unwrap();
    assert_eq!(
        route(task, Scheme::Https, "api.github.com", 443, "POST", &path),
        Ok(0)
    );
}

#[test]
fn expiry() {
    let config = config(TASK);
    let task = config.task("t").unwrap();
    let expires = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
    assert_eq!(task.expires, Some(expires));
    assert!(!task.is_expired(expires - Duration::from_secs(1)));
    assert!(task.is_expired(expires));
    assert!(task.is_expired(expires + Duration::from_secs(1)));
    let forever = config_without_expiry();
    assert!(!forever
        .task("t")
        .unwrap()
        .is_expired(SystemTime::now() + Duration::from_secs(1 << 40)));
}

fn config_without_expiry() -> Config {
    config("version: 1\ntasks:\n  t:\n    allow:\n      - host: pypi.org\n")
}

#[test]
fn scheme_helpers() {
    assert_eq!(Scheme::Http.default_port(), 80);
    assert_eq!(Scheme::Https.default_port(), 443);
    assert_eq!(Scheme::Http.as_str(), "http");
    assert_eq!(Scheme::Https.as_str(), "https");
}
