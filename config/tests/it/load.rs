//! Loading valid configs into the model: every field of the contract, defaults, tasks_dir,
//! warnings, and that no secret value leaks through `Debug` or errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keyswap_config::{
    load, load_str, load_with, AuditLog, ConfigErrors, HostPattern, SecretId, SwapIn,
};
use secrecy::ExposeSecret;

const SECRET_VALUE: &str = "fixture-real-value-0123456789";
const TOKEN_VALUE: &str = "fixture-token-0123456789";

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN_VALUE.to_string()),
    ])
}

use crate::in_crate_dir;

#[test]
fn full_fixture_loads_every_field() {
    in_crate_dir();
    let config = load_with(Path::new("tests/fixtures/valid/full.yaml"), &env())
        .unwrap_or_else(|e| panic!("full.yaml must load:\n{e}"));

    assert_eq!(
        config.listen,
        "127.0.0.1:18080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.ca_dir, PathBuf::from("./target/keyswap-fixture-ca"));
    assert_eq!(
        config.audit_log,
        AuditLog::File("./target/keyswap-fixture-audit.jsonl".into())
    );
    assert_eq!(
        config.upstream.extra_roots,
        Some("tests/fixtures/valid/extra-roots.pem".into())
    );
    assert!(config.upstream.allow_private);
    assert_eq!(config.upstream.resolve.len(), 2);
    assert_eq!(
        config.upstream.resolve[&("api.example.test".to_string(), 443)],
        "127.0.0.1:9443".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.upstream.resolve[&("::1".to_string(), 8443)],
        "[::1]:9443".parse::<SocketAddr>().unwrap()
    );
    let proxy = config.upstream.proxy.as_ref().expect("upstream.proxy");
    assert_eq!(proxy.kind, keyswap_config::ParentKind::Https);
    assert_eq!(
        (proxy.host.as_str(), proxy.port),
        ("proxy.corp.example", 3129)
    );
    assert!(proxy.auth.is_none());
    assert!(proxy.bypasses("git.corp.example") && proxy.bypasses("10.9.8.7"));
    assert!(proxy.bypasses("build.internal") && !proxy.bypasses("api.example.test"));

    let names: Vec<&str> = config.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["github", "openai", "npm"]);
    for (i, secret) in config.secrets.iter().enumerate() {
        assert_eq!(secret.id, SecretId(i));
    }
    assert_eq!(
        config.secret(SecretId(0)).placeholder,
        "ghp_keyswap_fixture_000000"
    );
    assert_eq!(
        config.secret(SecretId(0)).value.expose_secret(),
        SECRET_VALUE
    );
    assert_eq!(
        config.secret(SecretId(1)).value.expose_secret(),
        "fixture-file-value-0123456789"
    );
    assert_eq!(
        config.secret(SecretId(2)).value.expose_secret(),
        "fixture-command-value-42"
    );
    assert_eq!(config.secret_by_name("npm"), Some(SecretId(2)));
    assert_eq!(config.secret_by_name("absent"), None);

    let ids: Vec<&str> = config.tasks.keys().map(String::as_str).collect();
    assert_eq!(ids, ["docs-bot", "fix-issue-42", "release"]);

    let task = config.task("fix-issue-42").expect("inline task");
    assert_eq!(task.id, "fix-issue-42");
    assert_eq!(
        task.token.as_ref().map(|t| t.expose_secret()),
        Some(TOKEN_VALUE)
    );
    assert_eq!(
        task.expires,
        Some(humantime::parse_rfc3339("2030-12-01T00:00:00Z").unwrap())
    );
    assert_eq!(task.rules.len(), 6);

    let github = &task.rules[0];
    assert_eq!(github.index, 0);
    assert_eq!(github.host, HostPattern::Exact("api.github.com".into()));
    assert_eq!(github.port, Some(443));
    assert_eq!(
        github.methods.as_deref(),
        Some(&["GET".to_string(), "POST".to_string()][..])
    );
    assert_eq!(
        github.paths.as_ref().unwrap().sources(),
        ["/repos/acme/widget/**", "/user"]
    );
    assert_eq!(github.secrets, [SecretId(0)]);
    assert!(!github.tunnel);
    assert_eq!(
        github.swap_in,
        SwapIn {
            headers: true,
            query: false,
            body: false
        }
    );

    let openai = &task.rules[1];
    assert_eq!(
        openai.host,
        HostPattern::Wildcard {
            suffix: "openai.example".into()
        }
    );
    assert_eq!(openai.port, None);
    assert!(openai.methods.is_none() && openai.paths.is_none());
    assert_eq!(
        openai.swap_in,
        SwapIn {
            headers: true,
            query: true,
            body: true
        }
    );
    assert!(openai.grants(SecretId(1)) && !openai.grants(SecretId(0)));
    assert_eq!(
        openai.headers.as_deref(),
        Some(&["authorization".to_string(), "x-api-key".to_string()][..])
    );
    assert_eq!(github.headers, None);
    let github_secret = config.secret(SecretId(0));
    assert_eq!(
        github_secret.headers.as_deref(),
        Some(&["authorization".to_string()][..])
    );
    assert!(github.swaps_into_header(github_secret, "authorization"));
    assert!(!github.swaps_into_header(github_secret, "x-api-key"));
    let openai_secret = config.secret(SecretId(1));
    assert!(openai.swaps_into_header(openai_secret, "x-api-key"));
    assert!(!openai.swaps_into_header(openai_secret, "x-forwarded-for"));

    assert!(task.rules[2].secrets.is_empty());
    assert!(task.rules[3].tunnel);
    assert_eq!(task.rules[3].swap_in, SwapIn::default());
    assert_eq!(task.rules[4].host, HostPattern::Exact("127.0.0.1".into()));
    assert_eq!(task.rules[4].port, Some(8443));
    assert_eq!(task.rules[5].host, HostPattern::Exact("::1".into()));
    assert!(!task.rules[5].tunnel);

    let release = config
        .task("release")
        .expect("task from tasks_dir/release.yml");
    assert_eq!(release.id, "release");
    assert!(release.token.is_some() && release.expires.is_none());
    assert_eq!(release.rules[0].secrets, [SecretId(2)]);
    assert_eq!(
        release.rules[0].methods.as_deref(),
        Some(&["PUT".to_string()][..])
    );
    let docs = config
        .task("docs-bot")
        .expect("task from tasks_dir/docs-bot.yaml");
    assert!(docs.token.is_some());

    // Every field is used, so allow_private: true is too, and that is the one warning.
    assert_eq!(config.warnings.len(), 1, "{:#?}", config.warnings);
    assert!(
        config.warnings[0].contains("upstream.allow_private: any allowed host that resolves"),
        "{:#?}",
        config.warnings
    );

    let debug = format!("{config:?}");
    for value in [
        SECRET_VALUE,
        TOKEN_VALUE,
        "fixture-file-value-0123456789",
        "fixture-command-value-42",
    ] {
        assert!(!debug.contains(value), "Debug shows a secret value");
    }
    assert!(format!("{:?}", config.secret(SecretId(0))).contains("ghp_keyswap_fixture_000000"));
}

#[test]
fn defaults_and_stdout_audit_log() {
    let config = load_str("version: 1\n", Path::new("k.yaml"), &env()).expect("minimal config");
    assert_eq!(
        config.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.ca_dir, PathBuf::from("./.keyswap/ca"));
    assert_eq!(
        config.audit_log,
        AuditLog::File("./.keyswap/audit.jsonl".into())
    );
    assert!(config.upstream.extra_roots.is_none() && config.upstream.resolve.is_empty());
    assert!(!config.upstream.allow_private);
    assert!(config.secrets.is_empty() && config.tasks.is_empty());

    let config = load_str(
        "version: 1\naudit_log: \"-\"\n",
        Path::new("k.yaml"),
        &env(),
    )
    .unwrap();
    assert_eq!(config.audit_log, AuditLog::Stdout);
}

#[test]
fn warnings_name_problems_but_never_values() {
    let yaml = r#"
version: 1
listen: 0.0.0.0:8080
secrets:
  github:
    from_env: KEYSWAP_FIXTURE_SECRET
    placeholder: ghp_keyswap_fixture_000000
tasks:
  a:
    token_env: KEYSWAP_FIXTURE_TOKEN
    allow:
      - host: api.github.com
        tunnel: true
      - host: api.github.com
  b:
    token_env: KEYSWAP_FIXTURE_TOKEN
    expires: 2020-01-01T00:00:00Z
    allow:
      - host: api.github.com
  c:
    token_env: KEYSWAP_FIXTURE_TOKEN
"#;
    let config = load_str(yaml, Path::new("k.yaml"), &env()).expect("warnings are not errors");
    let all = config.warnings.join("\n");
    for expected in [
        "k.yaml:3:9 listen: 0.0.0.0:8080 is not a loopback address",
        "k.yaml: secret \"github\" is not granted by any rule",
        "k.yaml:17:14 tasks.b.expires: task b has already expired",
        "k.yaml:14:9 tasks.a.allow[1]: never used: allow[0] tunnels the same host and port",
        "tasks.c: task c has no allow rules",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(!all.contains(SECRET_VALUE));
}

#[test]
fn swapping_into_unnamed_headers_is_warned_until_headers_are_named() {
    let yaml = r#"
version: 1
secrets:
  github:
    from_env: KEYSWAP_FIXTURE_SECRET
    placeholder: ghp_keyswap_fixture_000000
  scoped:
    from_env: KEYSWAP_FIXTURE_TOKEN
    placeholder: ks_scoped_fixture_0000001
    headers: [x-api-key]
tasks:
  a:
    allow:
      - host: api.github.com
        secrets: [github, scoped]
      - host: api.github.com
        secrets: [github]
        headers: [authorization]
      - host: api.github.com
        secrets: [github]
        swap_in: [body]
      - host: api.github.com
        secrets: [scoped]
"#;
    let config = load_str(yaml, Path::new("k.yaml"), &env()).expect("warnings are not errors");
    let unscoped: Vec<&String> = config
        .warnings
        .iter()
        .filter(|w| w.contains("may be swapped into any request header"))
        .collect();
    assert_eq!(unscoped.len(), 1, "{:#?}", config.warnings);
    assert!(
        unscoped[0].starts_with("k.yaml:14:9 tasks.a.allow[0]: secret github may be swapped"),
        "{unscoped:?}"
    );
}

#[test]
fn unreadable_config_file_is_reported_without_position() {
    let err = load(Path::new("/nonexistent/keyswap.yaml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let text = err.to_string();
    let os_error = std::fs::read("/nonexistent/keyswap.yaml")
        .unwrap_err()
        .to_string();
    // No made-up position, and the OS's reason once.
    assert_eq!(
        text,
        format!(
            "cannot read /nonexistent/keyswap.yaml: {os_error}; check the path and its permissions (the file must be UTF-8)"
        )
    );
    assert_eq!(text.matches(&os_error).count(), 1, "{text}");
}

#[test]
fn unreadable_task_file_is_reported_without_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Not UTF-8: the file cannot be read as text.
    std::fs::write(dir.path().join("t1.yaml"), b"\xff\xfe\n").expect("t1");
    std::fs::write(
        dir.path().join("t2.yaml"),
        "token_env: KEYSWAP_FIXTURE_TOKEN
",
    )
    .expect("t2");
    let text = format!("version: 1\ntasks_dir: {}\n", dir.path().display());
    let err = load_str(&text, Path::new("k.yaml"), &env()).unwrap_err();
    let shown = err.to_string();
    let file = dir.path().join("t1.yaml");
    assert!(
        !shown.contains(":0:0"),
        "an unreadable file has no position: {shown}"
    );
    assert!(
        shown.contains(&format!("cannot read {}: ", file.display())),
        "{shown}"
    );
}

#[test]
fn config_errors_display_one_per_line_and_are_errors() {
    let err: ConfigErrors =
        load_str("version: 3\nlisten: nowhere\n", Path::new("k.yaml"), &env()).unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("k.yaml:1:10 version: unsupported config version 3; use version: 1"));
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(boxed.to_string().contains("k.yaml:2:9 listen"));
}

#[test]
fn empty_file_asks_for_version() {
    let err = load_str("", Path::new("k.yaml"), &env()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "k.yaml:1:1 version: version is required; add `version: 1` at the top of the file"
    );
}

#[test]
fn anchors_can_share_rules_between_tasks() {
    let yaml = r#"
version: 1
tasks:
  a:
    token_env: KEYSWAP_FIXTURE_TOKEN
    allow: &common
      - host: pypi.org
      - host: files.pythonhosted.org
        tunnel: true
  b:
    token_env: KEYSWAP_FIXTURE_TOKEN
    allow: *common
"#;
    let config = load_str(yaml, Path::new("k.yaml"), &env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.task("b").unwrap().rules.len(), 2);
}

/// The response scrubber ignores ASCII case, so a placeholder that holds a real value in
/// another case would hand the agent that value: refused like an exact one, without printing
/// either.
#[test]
fn placeholder_holding_a_value_in_another_case_is_refused() {
    let yaml = format!(
        r#"
version: 1
secrets:
  github:
    from_env: KEYSWAP_FIXTURE_SECRET
    placeholder: "ph-{}"
"#,
        SECRET_VALUE.to_ascii_uppercase()
    );
    let err = load_str(&yaml, Path::new("k.yaml"), &env()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("placeholder contains the real value"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains(SECRET_VALUE), "{text}");
}

#[test]
fn audit_key_file_is_read_and_never_formatted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("audit.key");
    let key = "audit-key-0123456789abcdefghijklmnopqrstuv";
    std::fs::write(&key_path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let yaml = format!("version: 1\naudit:\n  key_file: {}\n", key_path.display());
    let file = dir.path().join("keyswap.yaml");
    let config = load_str(&yaml, &file, &env()).unwrap_or_else(|e| panic!("{e}"));
    let loaded = config.audit.key.as_ref().expect("a key");
    assert_eq!(loaded.path, key_path);
    // One trailing newline is not part of the key.
    assert_eq!(loaded.value.expose_secret(), key.as_bytes());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(!format!("{config:?}").contains(key));

    // A key other users can read is loaded, with a warning that names the mode only.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = load_str(&yaml, &file, &env()).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.audit.key.is_some());
    let warnings = config.warnings.join("\n");
    assert!(warnings.contains("audit.key_file"), "{warnings}");
    assert!(warnings.contains("mode 0644"), "{warnings}");
    assert!(!warnings.contains(key));

    // Without audit:, the chain is unkeyed.
    let config = load_str("version: 1\n", &file, &env()).unwrap();
    assert!(config.audit.key.is_none());
}
