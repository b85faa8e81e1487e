//! Secret refresh: a `from_command` secret with `refresh:` is read again in the background;
//! the new value is swapped in and the old one is still scrubbed. A failing command keeps
//! the last good value for one more period, then the secret is stale and requests that
//! need it are refused with `secret_unavailable`. Logs and audit name the secret, never a
//! value.

use std::path::Path;
use std::time::Duration;

use keyswap_tests::client::Alpn;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, Reply, TestEnv, API_HOST};

const PLACEHOLDER: &str = "ks-rotating-placeholder-0000";

/// A secret printed by `sh script`, re-read every `refresh`; the task may use it on /echo.
fn config(script: &Path, refresh: &str) -> String {
    let script = script.display().to_string();
    let argv = ["sh", script.as_str()];
    ConfigBuilder::new()
        .secret(
            "rotating",
            Secret::command(&argv, PLACEHOLDER).field("refresh", refresh),
        )
        .task(
            "agent",
            Entry::with_token().rule(
                Rule::api()
                    .paths(&["/echo/**", "/reflect-header"])
                    .secrets(&["rotating"]),
            ),
        )
        .yaml()
}

/// Counts its runs in `count` next to itself. Run 1 prints `KSREAL-refresh-1-padding`,
/// later runs `KSREAL-refresh-2-padding` — a credential that changes once and then stays,
/// as `gh auth token` does most of the time.
const ROTATING: &str = r#"dir=$(dirname "$0")
n=$(cat "$dir/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$dir/count"
if [ "$n" -gt 2 ]; then n=2; fi
printf 'KSREAL-refresh-%s-padding\n' "$n"
"#;

/// Succeeds once (the load), then fails with a message on stderr that must go nowhere.
const FAILING: &str = r#"dir=$(dirname "$0")
n=$(cat "$dir/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$dir/count"
if [ "$n" -eq 1 ]; then printf 'KSREAL-failing-1-padding\n'; exit 0; fi
echo "vault sealed: KSREAL-from-stderr" >&2
exit 1
"#;

/// Writes `script` into `scripts` and starts the proxy with a secret read by it.
async fn start(scripts: &Path, script: &str, refresh: &str) -> TestEnv {
    let path = scripts.join("secret.sh");
    std::fs::write(&path, script).expect("write script");
    let config = config(&path, refresh);
    let env = TestEnv::start_with(&config, Alpn::Both).await;
    // Every value the scripts print, and what the failing one writes to stderr, is looked
    // for by the leak check, also base64-encoded.
    for value in SCRIPT_VALUES {
        env.remember_secret(value);
    }
    env
}

/// The values [`ROTATING`] and [`FAILING`] print (and the one on the failing one's stderr).
const SCRIPT_VALUES: [&str; 4] = [
    "KSREAL-refresh-1-padding",
    "KSREAL-refresh-2-padding",
    "KSREAL-failing-1-padding",
    "KSREAL-from-stderr",
];

async fn with_placeholder(env: &TestEnv, path: &str) -> Reply {
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    env.request(
        &opts,
        "GET",
        path,
        &[("authorization", &bearer(PLACEHOLDER))],
    )
    .await
}

/// Waits until the audit holds at least `count` `secret_refreshed` records with `ok`.
async fn refreshed(env: &TestEnv, ok: bool, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = env
            .audit()
            .iter()
            .filter(|r| r["event"] == "secret_refreshed" && r["ok"] == ok)
            .inspect(|r| assert_eq!(r["secret"], "rotating"))
            .count();
        if seen >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} secret_refreshed records with ok: {ok}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refreshed_value_is_swapped_and_the_old_one_still_scrubbed() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let env = start(scripts.path(), ROTATING, "1s").await;

    let reply = with_placeholder(&env, "/echo/first").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        env.upstream.authorization_for("/echo/first").as_deref()
            == Some("Bearer KSREAL-refresh-1-padding"),
        "the first value was not swapped in"
    );

    // One refresh that changes the value, then one that reads the same value again.
    refreshed(&env, true, 2).await;
    let reply = with_placeholder(&env, "/echo/second").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        env.upstream.authorization_for("/echo/second").as_deref()
            == Some("Bearer KSREAL-refresh-2-padding"),
        "the refreshed value was not swapped in"
    );
    assert!(
        reply.body.contains(PLACEHOLDER),
        "echo of the new value not scrubbed"
    );

    // An upstream that still echoes the value it knew before the refresh.
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env
        .request(
            &opts,
            "GET",
            "/reflect-header?name=x-old",
            &[("x-old", "KSREAL-refresh-1-padding")],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Compared without assert_eq!: a failure must not print a real value.
    assert!(
        reply.header("x-reflected") == Some(PLACEHOLDER),
        "the old value was not scrubbed from the header"
    );
    assert!(
        reply.body == format!("reflected={PLACEHOLDER}\n"),
        "the old value was not scrubbed from the body"
    );

    let log = String::from_utf8_lossy(&env.log()).into_owned();
    assert!(
        log.contains("secret refreshed"),
        "no log line of the refresh"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn failing_refresh_keeps_the_last_value_then_refuses_as_unavailable() {
    let scripts = tempfile::tempdir().expect("tempdir");
    // The last good value is swapped for one more period after the first failure: 5 s, a
    // window a request fits in however busy the machine (checked below, not assumed).
    let env = start(scripts.path(), FAILING, "5s").await;

    // The first failure (after one period): the old value keeps being swapped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed = env
            .audit()
            .into_iter()
            .find(|r| r["event"] == "secret_refreshed" && r["ok"] == false);
        if let Some(record) = failed {
            assert_eq!(record["secret"], "rotating");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed refresh audited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shared = env.proxy.shared().clone();
    let reply = with_placeholder(&env, "/echo/kept").await;
    assert!(
        !shared.snapshot().stale[0],
        "the machine was too slow: the secret went stale before the request was answered"
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        env.upstream.authorization_for("/echo/kept").as_deref()
            == Some("Bearer KSREAL-failing-1-padding"),
        "the last good value was not swapped after a failed refresh"
    );
    let log = String::from_utf8_lossy(&env.log()).into_owned();
    let warning = log
        .lines()
        .find(|l| l.contains("secret refresh failed"))
        .expect("the failure is logged");
    assert!(
        warning.contains("rotating"),
        "the log does not name the secret: {warning}"
    );
    assert!(
        !log.contains("vault sealed"),
        "the command's stderr reached the log"
    );

    // More than two periods without success: stale, and refused with a reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !shared.snapshot().stale[0] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the secret never went stale"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = with_placeholder(&env, "/echo/stale").await;
    assert_eq!(
        (reply.status, reply.reason()),
        (503, Some("secret_unavailable")),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("rotating"),
        "the refusal does not name the secret"
    );
    assert!(
        env.upstream.authorization_for("/echo/stale").is_none()
            && !env
                .upstream
                .seen()
                .iter()
                .any(|r| r.path_and_query == "/echo/stale"),
        "a refused request reached the upstream"
    );
    // A request that does not need the secret still goes through.
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&opts, "GET", "/echo/without", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let record = env.audit_where(|r| r["path"] == "/echo/stale").await;
    assert_eq!(record["reason"], "secret_unavailable");
    assert_eq!(record["status"], 503);
    env.assert_no_leaks();
}
