//! Loading the human-approval settings: `approval:` with its defaults, `on_unlisted:` of
//! policies and tasks (a task's own wins over its policy's), and `approve:` of rules.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use keyswap_config::model::{DEFAULT_APPROVAL_MAX_PENDING, DEFAULT_APPROVAL_TIMEOUT};
use keyswap_config::{load_str, Approve, Config, OnUnlisted};

fn load(yaml: &str) -> Config {
    let env = HashMap::from([(
        "KEYSWAP_FIXTURE_TOKEN".to_string(),
        "fixture-token-0123456789".to_string(),
    )]);
    load_str(yaml, Path::new("k.yaml"), &env).unwrap_or_else(|e| panic!("must load:\n{e}"))
}

#[test]
fn defaults_deny_unlisted_and_need_no_human() {
    let config = load(
        "version: 1\npolicies:\n  p:\n    allow:\n      - host: a.example\ntasks:\n  t:\n    token_env: KEYSWAP_FIXTURE_TOKEN\n    allow:\n      - host: a.example\n",
    );
    assert_eq!(config.approval.timeout, DEFAULT_APPROVAL_TIMEOUT);
    assert_eq!(config.approval.max_pending, DEFAULT_APPROVAL_MAX_PENDING);
    assert_eq!(config.approval.webhook, None);
    assert_eq!(config.policies["p"].on_unlisted, OnUnlisted::Deny);
    assert_eq!(config.tasks["t"].on_unlisted, OnUnlisted::Deny);
    assert_eq!(config.tasks["t"].rules[0].approve, None);
}

#[test]
fn approval_settings_and_task_override() {
    let config = load(
        r#"
version: 1
approval:
  timeout: 1s
  webhook: https://hooks.example.com:8443/ks?x=1
  max_pending: 3
policies:
  asks:
    on_unlisted: ask
    allow:
      - host: api.github.com
        methods: [DELETE]
        approve: each
      - host: api.github.com
        approve: once
tasks:
  inherits:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: asks
  overrides:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: asks
    on_unlisted: deny
  own:
    token_env: KEYSWAP_FIXTURE_TOKEN
    on_unlisted: ask
    allow:
      - host: a.example
        approve: once
"#,
    );
    assert_eq!(config.approval.timeout, Duration::from_secs(1));
    assert_eq!(
        config.approval.webhook.as_deref(),
        Some("https://hooks.example.com:8443/ks?x=1")
    );
    assert_eq!(config.approval.max_pending, 3);
    let policy = &config.policies["asks"];
    assert_eq!(policy.on_unlisted, OnUnlisted::Ask);
    assert_eq!(policy.rules[0].approve, Some(Approve::Each));
    assert_eq!(policy.rules[1].approve, Some(Approve::Once));
    assert_eq!(config.tasks["inherits"].on_unlisted, OnUnlisted::Ask);
    assert_eq!(config.tasks["overrides"].on_unlisted, OnUnlisted::Deny);
    assert_eq!(config.tasks["own"].on_unlisted, OnUnlisted::Ask);
    assert_eq!(config.tasks["own"].rules[0].approve, Some(Approve::Once));
}

#[test]
fn learn_mode_loads_and_warns_where_it_is_written() {
    let config = load(
        r#"
version: 1
policies:
  learning:
    on_unlisted: learn
tasks:
  inherits:
    token_env: KEYSWAP_FIXTURE_TOKEN
    policy: learning
  own:
    token_env: KEYSWAP_FIXTURE_TOKEN
    on_unlisted: learn
"#,
    );
    assert_eq!(config.policies["learning"].on_unlisted, OnUnlisted::Learn);
    assert_eq!(config.tasks["inherits"].on_unlisted, OnUnlisted::Learn);
    assert_eq!(config.tasks["own"].on_unlisted, OnUnlisted::Learn);
    let learning: Vec<&String> = config
        .warnings
        .iter()
        .filter(|w| w.contains("learn mode"))
        .collect();
    assert_eq!(learning.len(), 2, "{:?}", config.warnings);
    assert!(
        learning[0].contains("policy learning is in learn mode"),
        "{learning:?}"
    );
    assert!(learning[0].contains("reach every host"), "{learning:?}");
    assert!(
        learning[1].contains("task own is in learn mode"),
        "{learning:?}"
    );
    // A learning policy or task with no rules is the point of learn mode, not a mistake.
    assert!(
        !config
            .warnings
            .iter()
            .any(|w| w.contains("can reach nothing")),
        "{:?}",
        config.warnings
    );
}
