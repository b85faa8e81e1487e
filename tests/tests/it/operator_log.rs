//! What an operator reads in keyswap's log: a reload is one line naming what changed (tasks,
//! policies, secrets) and never a value.

use keyswap_tests::harness::{test_env_values, TestEnv};
use keyswap_tests::secrets::OPENAI_REAL;

#[tokio::test]
async fn reload_logs_one_summary_line_and_never_a_value() {
    let env = TestEnv::start().await;
    // Task `expired` leaves, task `agent` gets another rule, task `fresh` arrives, and the
    // openai secret gets a new value.
    let yaml = env
        .config_yaml
        .replace(
            "  expired:\n",
            "  fresh:\n    token_env: KS_TEST_TOKEN\n    allow:\n      - host: fresh.upstream.test\n  gone:\n",
        )
        .replace(
            "      - host: localhost\n",
            "      - host: added.upstream.test\n      - host: localhost\n",
        );
    let mut values = test_env_values();
    let new_value = format!("{OPENAI_REAL}-rotated");
    values.insert("KS_TEST_OPENAI".into(), new_value.clone());
    let config = keyswap_config::load_str(&yaml, &env.dir.path().join("keyswap.yaml"), &values)
        .unwrap_or_else(|e| panic!("{e}"));
    env.proxy.reload(config).expect("reload");
    let log = String::from_utf8_lossy(&env.log()).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config reloaded"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per reload");
    let line = lines[0];
    for expected in [
        "tasks_added=[fresh, gone]",
        "tasks_removed=[expired]",
        "tasks_changed=[agent]",
        "secrets_reread=2",
        "secrets_changed=[openai]",
    ] {
        assert!(line.contains(expected), "{expected} missing from: {line}");
    }
    assert!(!line.contains(&new_value), "a value was logged");
    env.assert_no_leaks();
}
