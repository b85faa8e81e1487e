//! Loading the task-lifecycle sections into the model: `admin:`, `metrics:`, `policies:`,
//! a task's `policy:`, and secrets' `env:`/`refresh:`, with their defaults and warnings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyswap_config::model::{DEFAULT_ADMIN_SOCKET, DEFAULT_POLICY_MAX_TTL, DEFAULT_POLICY_TTL};
use keyswap_config::{load_str, Config, HostPattern, Metrics, SecretId, SecretSource};
use secrecy::ExposeSecret;

const SECRET_VALUE: &str = "fixture-real-value-0123456789";
const TOKEN_VALUE: &str = "fixture-token-0123456789";
const ADMIN_TOKEN: &str = "fixture-admin-token-0123456789";

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN_VALUE.to_string()),
        (
            "KEYSWAP_FIXTURE_ADMIN_TOKEN".to_string(),
            ADMIN_TOKEN.to_string(),
        ),
    ])
}

use crate::in_crate_dir;

fn load(yaml: &str) -> Config {
    in_crate_dir();
    load_str(yaml, Path::new("k.yaml"), &env()).unwrap_or_else(|e| panic!("must load:\n{e}"))
}

fn errors(yaml: &str) -> String {
    in_crate_dir();
    match load_str(yaml, Path::new("k.yaml"), &env()) {
        Ok(_) => panic!("must not load:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const FULL: &str = r#"
version: 1
admin:
  socket: ./target/keyswap-fixture-admin.sock
  listen: 127.0.0.1:9090
  token_env: KEYSWAP_FIXTURE_ADMIN_TOKEN
metrics:
  listen: 127.0.0.1:9464
secrets:
  github:
    from_env: KEYSWAP_FIXTURE_SECRET
    placeholder: ghp_keyswap_fixture_000000
    env: GITHUB_TOKEN
    headers: [authorization]
  npm:
    from_command: [printf, "%s\n", fixture-command-value-42]
    placeholder: npm_keyswap_placeholder_0001
    env: NPM_TOKEN
    refresh: 15m
    headers: [authorization]
  openai:
    from_file: tests/fixtures/valid/openai-secret.txt
    placeholder: sk-keyswap-openai-placeholder
    refresh: 1h30m
    headers: [authorization, x-api-key]
policies:
  github-rw:
    ttl: 2h
    max_ttl: 8h
    allow:
      - host: api.github.com
        methods: [GET, POST]
        paths: ["/repos/acme/**"]
        secrets: [github]
      - host: files.pythonhosted.org
        tunnel: true
  long:
    ttl: 36h
    allow:
      - host: "*.openai.example"
        secrets: [openai]
  capped:
    max_ttl: 30m
    allow:
      - host: pypi.org
  plain:
    allow:
      - host: pypi.org
tasks:
  fix-issue-42:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: github-rw
    allow:
      - host: registry.npmjs.org
        secrets: [npm]
      - host: pypi.org
  policy-only:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: long
"#;

#[test]
fn every_lifecycle_field_loads() {
    let config = load(FULL);

    assert_eq!(
        config.admin.socket,
        PathBuf::from("./target/keyswap-fixture-admin.sock")
    );
    assert_eq!(
        config.admin.listen,
        Some("127.0.0.1:9090".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        config.admin.token.as_ref().map(|t| t.expose_secret()),
        Some(ADMIN_TOKEN)
    );
    assert_eq!(
        config.metrics,
        Some(Metrics {
            listen: "127.0.0.1:9464".parse().unwrap()
        })
    );

    let github = config.secret(SecretId(0));
    assert_eq!(
        github.source,
        SecretSource::Env("KEYSWAP_FIXTURE_SECRET".into())
    );
    assert_eq!(github.env.as_deref(), Some("GITHUB_TOKEN"));
    assert_eq!(github.refresh, None);
    let npm = config.secret(SecretId(1));
    assert_eq!(
        npm.source,
        SecretSource::Command(vec![
            "printf".into(),
            "%s\n".into(),
            "fixture-command-value-42".into()
        ])
    );
    assert_eq!(npm.env.as_deref(), Some("NPM_TOKEN"));
    assert_eq!(npm.refresh, Some(Duration::from_secs(15 * 60)));
    let openai = config.secret(SecretId(2));
    assert_eq!(
        openai.source,
        SecretSource::File("tests/fixtures/valid/openai-secret.txt".into())
    );
    assert_eq!(openai.env, None);
    assert_eq!(openai.refresh, Some(Duration::from_secs(90 * 60)));

    let names: Vec<&str> = config.policies.keys().map(String::as_str).collect();
    assert_eq!(names, ["capped", "github-rw", "long", "plain"]);
    let rw = config.policy("github-rw").expect("policy");
    assert_eq!(rw.name, "github-rw");
    assert_eq!(rw.ttl, Duration::from_secs(2 * 3600));
    assert_eq!(rw.max_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(rw.rules.len(), 2);
    assert_eq!(rw.rules[0].index, 0);
    assert_eq!(
        rw.rules[0].host,
        HostPattern::Exact("api.github.com".into())
    );
    assert_eq!(
        rw.rules[0].methods.as_deref(),
        Some(&["GET".to_string(), "POST".to_string()][..])
    );
    assert_eq!(
        rw.rules[0].paths.as_ref().unwrap().sources(),
        ["/repos/acme/**"]
    );
    assert_eq!(rw.rules[0].secrets, [SecretId(0)]);
    assert!(rw.rules[1].tunnel && rw.rules[1].index == 1);
    assert_eq!(rw.granted_secrets(), [SecretId(0)]);

    // A missing max_ttl is never below the ttl; a missing ttl never above the max_ttl.
    let long = config.policy("long").unwrap();
    assert_eq!(long.ttl, Duration::from_secs(36 * 3600));
    assert_eq!(long.max_ttl, Duration::from_secs(36 * 3600));
    let capped = config.policy("capped").unwrap();
    assert_eq!(capped.max_ttl, Duration::from_secs(30 * 60));
    assert_eq!(capped.ttl, Duration::from_secs(30 * 60));
    let plain = config.policy("plain").unwrap();
    assert_eq!(
        (plain.ttl, plain.max_ttl),
        (DEFAULT_POLICY_TTL, DEFAULT_POLICY_MAX_TTL)
    );

    // The policy's rules, then the task's own, renumbered in that order.
    let task = config.task("fix-issue-42").unwrap();
    assert_eq!(task.policy.as_deref(), Some("github-rw"));
    let hosts: Vec<String> = task.rules.iter().map(|r| format!("{:?}", r.host)).collect();
    assert_eq!(task.rules.len(), 4, "{hosts:?}");
    let indices: Vec<usize> = task.rules.iter().map(|r| r.index).collect();
    assert_eq!(indices, [0, 1, 2, 3]);
    assert_eq!(
        task.rules[0].host,
        HostPattern::Exact("api.github.com".into())
    );
    assert!(task.rules[1].tunnel);
    assert_eq!(
        task.rules[2].host,
        HostPattern::Exact("registry.npmjs.org".into())
    );
    assert_eq!(task.rules[2].secrets, [SecretId(1)]);
    assert_eq!(task.rules[3].host, HostPattern::Exact("pypi.org".into()));
    let only = config.task("policy-only").unwrap();
    assert_eq!(only.policy.as_deref(), Some("long"));
    assert_eq!(only.rules.len(), 1);
    assert_eq!(only.rules[0].secrets, [SecretId(2)]);

    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
    let debug = format!("{config:?}");
    for value in [
        SECRET_VALUE,
        TOKEN_VALUE,
        ADMIN_TOKEN,
        "fixture-command-value-42",
    ] {
        assert!(!debug.contains(value), "Debug shows a secret value");
    }
}

#[test]
fn lifecycle_defaults() {
    let config = load("version: 1\n");
    assert_eq!(config.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
    assert!(config.admin.listen.is_none() && config.admin.token.is_none());
    assert!(config.metrics.is_none() && config.policies.is_empty());

    let config = load("version: 1\nadmin:\n  socket: /run/keyswap/admin.sock\n");
    assert_eq!(
        config.admin.socket,
        PathBuf::from("/run/keyswap/admin.sock")
    );
    assert!(config.admin.listen.is_none() && config.admin.token.is_none());
}

#[test]
fn task_files_may_name_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("from-file.yaml"),
        "token_env: KEYSWAP_FIXTURE_TOKEN\npolicy: p\nallow:\n  - host: example.com\n",
    )
    .unwrap();
    let yaml = format!(
        "version: 1\npolicies:\n  p:\n    allow:\n      - host: pypi.org\ntasks_dir: {}\n",
        dir.path().display()
    );
    let config = load(&yaml);
    let task = config.task("from-file").unwrap();
    assert_eq!(task.policy.as_deref(), Some("p"));
    let hosts: Vec<&HostPattern> = task.rules.iter().map(|r| &r.host).collect();
    assert_eq!(
        hosts,
        [
            &HostPattern::Exact("pypi.org".into()),
            &HostPattern::Exact("example.com".into())
        ]
    );
    assert_eq!(task.rules[1].index, 1);
}

#[test]
fn lifecycle_warnings() {
    let yaml = r#"
version: 1
admin:
  token_env: KEYSWAP_FIXTURE_ADMIN_TOKEN
metrics:
  listen: 0.0.0.0:9464
secrets:
  github:
    from_env: KEYSWAP_FIXTURE_SECRET
    placeholder: ghp_keyswap_fixture_000000
policies:
  rw:
    allow:
      - host: api.github.com
        secrets: [github]
      - host: api.github.com
        tunnel: true
  empty: {}
tasks:
  t:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: rw
    allow:
      - host: api.github.com
        tunnel: true
"#;
    let config = load(yaml);
    assert!(
        config.admin.token.is_none(),
        "a token without listen is not read"
    );
    let all = config.warnings.join("\n");
    for expected in [
        "k.yaml:4:14 admin.token_env: unused: the token guards only the TCP listener",
        "k.yaml:6:11 metrics.listen: 0.0.0.0:9464 is not a loopback address: other machines can read the metrics",
        "k.yaml:16:9 policies.rw.allow[1]: never used: allow[0] intercepts the same host and port",
        "k.yaml:18:10 policies.empty: policy empty has no allow rules",
        "k.yaml:24:9 tasks.t.allow[0]: never used: policy rw's allow[0] intercepts the same host and port",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    // A task with a policy and no allow: of its own reaches what the policy allows, and a
    // secret granted only by a policy is granted.
    assert!(
        !all.contains("no allow rules, so it can reach nothing"),
        "{all}"
    );
    assert!(!all.contains("is not granted by any rule"), "{all}");
    assert!(!all.contains(ADMIN_TOKEN) && !all.contains(SECRET_VALUE));
}

#[test]
fn task_with_policy_and_no_rules_is_not_warned_about() {
    let config = load(
        "version: 1\npolicies:\n  p:\n    allow:\n      - host: pypi.org\ntasks:\n  t:\n    token_env: KEYSWAP_FIXTURE_TOKEN\n    policy: p\n",
    );
    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
}

#[test]
fn admin_token_must_not_open_a_task() {
    let text = errors(
        r#"
version: 1
admin:
  listen: 127.0.0.1:9090
  token_env: KEYSWAP_FIXTURE_ADMIN_TOKEN
tasks:
  t:
    token_env: KEYSWAP_FIXTURE_ADMIN_TOKEN
    allow:
      - host: pypi.org
"#,
    );
    assert!(
        text.contains("k.yaml:5:14 admin.token_env: the admin token is the same as task t's token; use a separate admin token"),
        "{text}"
    );
    assert!(!text.contains(ADMIN_TOKEN));
}

#[test]
fn listeners_need_their_own_addresses() {
    let text = errors(
        r#"
version: 1
listen: 127.0.0.1:8080
admin:
  listen: 0.0.0.0:8080
  token_env: KEYSWAP_FIXTURE_ADMIN_TOKEN
metrics:
  listen: 127.0.0.1:8080
"#,
    );
    for expected in [
        "k.yaml:5:11 admin.listen: 0.0.0.0:8080 is also where the proxy listens (listen); give the admin API its own port",
        "k.yaml:8:11 metrics.listen: 127.0.0.1:8080 is also where the proxy listens (listen)",
        "k.yaml:8:11 metrics.listen: 127.0.0.1:8080 is also where the admin API listens (admin.listen)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn metrics_needs_a_listen_address() {
    let text = errors("version: 1\nmetrics: {}\n");
    assert!(
        text.contains(
            "k.yaml:2:10 metrics.listen: listen is required; add e.g. `listen: 127.0.0.1:9464`"
        ),
        "{text}"
    );
    let text = errors("version: 1\nmetrics:\n  listen: localhost:9464\n");
    assert!(
        text.contains("k.yaml:3:11 metrics.listen: \"localhost:9464\" is not an IP address and port; write ip:port, e.g. 127.0.0.1:9464"),
        "{text}"
    );
}

#[test]
fn admin_socket_must_not_be_empty() {
    let text = errors("version: 1\nadmin:\n  socket: \"\"\n");
    assert!(
        text.contains("k.yaml:3:11 admin.socket: the path is empty; write a path, or remove the field for ./.keyswap/admin.sock"),
        "{text}"
    );
}

#[test]
fn shipped_example_loads_without_warnings() {
    let env = HashMap::from([
        (
            "GITHUB_TOKEN_REAL".to_string(),
            "KSREAL-example-github-value".to_string(),
        ),
        (
            "KEYSWAP_TOKEN_FIX42".to_string(),
            "example-task-token".to_string(),
        ),
    ]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keyswap.yaml");
    let config = keyswap_config::load_with(&path, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty(), "{:#?}", config.warnings);
    assert_eq!(config.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
    assert!(config.admin.listen.is_none());
    let github = config.secret_by_name("github").map(|id| config.secret(id));
    assert_eq!(github.and_then(|s| s.env.as_deref()), Some("GITHUB_TOKEN"));
    let policy = config.policy("github-rw").expect("policy github-rw");
    assert_eq!(policy.granted_secrets(), [SecretId(0)]);
    assert!(config.task("fix-issue-42").is_some());
}
