//! The agent's side, through the real proxy with curl: `https://keyswap.internal` answered by
//! keyswap itself inside the task's own proxy connection — `/v1/self` shows the task's rules,
//! placeholders and `requestable:` bounds and nothing of another task; without proxy
//! credentials the CONNECT gets 407; the name is never resolved or dialled (the audit shows
//! each call served internally). A refusal is then explained, a grant inside the bounds is
//! asked for, approved through the admin API (the approval listed with the agent's own words)
//! and the same curl succeeds with the secret swapped; a denied grant shows the human's reason;
//! a grant outside the bounds is refused at once naming the bound.
//!
//! curl must be on PATH (under CI=true its absence fails the tests). No assertion is timed:
//! polls wait on answers, bounded by a generous safety limit.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{AnswerRequest, ApprovalInfo};
use keyswap::ProxyOptions;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::tools::available;
use keyswap_tests::upstream::Alpn;
use serde_json::{json, Value};

const SAFETY: Duration = Duration::from_secs(120);
const SELF_URL: &str = "https://keyswap.internal/v1/self";
/// The line every refusal body ends with.
const SEE_GRANTS: &str = "See this task's grants and ask for more: MCP tool keyswap_grants, or GET https://keyswap.internal/v1/self";

/// Task `agent`: GET /echo/listed/** with github; may ask for GET (or POST) under /echo/** with
/// github. Task `other`: GET /public/**, nothing requestable.
fn config() -> String {
    ConfigBuilder::new()
        .admin_socket()
        .secret("github", Secret::github().field("env", "GITHUB_TOKEN"))
        .secret("openai", Secret::openai())
        .task(
            "agent",
            Entry::with_token()
                .field(
                    "requestable",
                    &format!("[{{host: {API_HOST}, methods: [GET, POST], paths: [\"/echo/**\"], secrets: [github]}}]"),
                )
                .rule(
                    Rule::api()
                        .methods(&["GET"])
                        .paths(&["/echo/listed/**"])
                        .secrets(&["github"]),
                ),
        )
        .task(
            "other",
            Entry::with_token().rule(Rule::api().methods(&["GET"]).paths(&["/public/**"])),
        )
        .yaml()
}

async fn start() -> Option<TestEnv> {
    if !available("curl", "--version") {
        return None;
    }
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    Some(TestEnv::start_with_options(&config(), Alpn::Both, options).await)
}

fn ca_file(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("keyswap-ca.pem");
    std::fs::write(&path, &env.proxy_ca_pem).expect("write CA");
    path
}

/// What one curl call got: the CONNECT's status, the response's status and body.
struct Got {
    connect: u16,
    status: u16,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One curl call through keyswap as `task` (`None`: no proxy credentials).
async fn curl(env: &TestEnv, task: Option<&str>, method: &str, url: &str, extra: &[&str]) -> Got {
    let proxy = match task {
        Some(task) => format!("http://{task}:{AGENT_TOKEN}@{}", env.proxy.addr()),
        None => format!("http://{}", env.proxy.addr()),
    };
    let mut cmd = tokio::process::Command::new("curl");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "-X", method, "-w", "\n%{http_connect} %{http_code}"])
        .arg("--proxy")
        .arg(&proxy)
        .arg("--cacert")
        .arg(ca_file(env))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SAFETY, cmd.output())
        .await
        .expect("curl finished")
        .expect("curl started");
    assert_no_real_secret("curl stdout", &out.stdout);
    assert_no_real_secret("curl stderr", &out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    env.keep(&[], &stdout);
    env.keep(&[], &String::from_utf8_lossy(&out.stderr));
    let (body, codes) = stdout.rsplit_once('\n').expect("curl printed its codes");
    let mut codes = codes
        .split(' ')
        .map(|c| c.trim().parse::<u16>().unwrap_or(0));
    Got {
        connect: codes.next().unwrap_or(0),
        status: codes.next().unwrap_or(0),
        body: body.to_string(),
    }
}

async fn post(env: &TestEnv, task: &str, url: &str, body: &Value) -> Got {
    let body = body.to_string();
    let extra = [
        "-H",
        "content-type: application/json",
        "--data-binary",
        body.as_str(),
    ];
    curl(env, Some(task), "POST", url, &extra).await
}

fn admin(env: &TestEnv) -> AdminClient {
    let socket = env.proxy.admin_socket().expect("admin socket served");
    AdminClient::new(AdminTarget::Socket(socket.to_path_buf()))
}

/// The approval of kind `grant` waiting for task `agent`.
async fn waiting_grant(env: &TestEnv) -> ApprovalInfo {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let list = admin(env)
            .approvals(Some("agent"))
            .await
            .expect("approvals");
        if let Some(found) = list.into_iter().find(|a| a.why == "grant") {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no grant approval listed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `GET /v1/self/requests/ID` until it is no longer pending.
async fn settled(env: &TestEnv, id: &str) -> Value {
    let url = format!("https://keyswap.internal/v1/self/requests/{id}");
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let got = curl(env, Some("agent"), "GET", &url, &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let view = got.json();
        if view["status"] != "pending" {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request stayed pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn self_view_matches_the_task_and_shows_nothing_of_another() {
    let Some(env) = start().await else { return };
    let got = curl(&env, Some("agent"), "GET", SELF_URL, &[]).await;
    assert_eq!((got.connect, got.status), (200, 200), "{}", got.body);
    let view = got.json();
    assert_eq!(view["task"], "agent");
    assert_eq!(view["rules"][0]["host"], API_HOST);
    assert_eq!(view["rules"][0]["methods"], json!(["GET"]));
    assert_eq!(view["rules"][0]["paths"], json!(["/echo/listed/**"]));
    let secret = &view["rules"][0]["secrets"][0];
    assert_eq!(secret["name"], "github");
    assert_eq!(secret["placeholder"], GITHUB_PLACEHOLDER);
    assert_eq!(secret["env"], "GITHUB_TOKEN");
    assert_eq!(view["requestable"][0]["paths"], json!(["/echo/**"]));
    assert_eq!(view["grants"], json!([]));

    // A refusal of agent's, then the other task looks.
    let refused = curl(
        &env,
        Some("agent"),
        "GET",
        &format!("https://{API_HOST}/echo/secret-plans"),
        &[],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let other = curl(&env, Some("other"), "GET", SELF_URL, &[]).await;
    assert_eq!(other.status, 200, "{}", other.body);
    let other_view = other.json();
    assert_eq!(other_view["task"], "other");
    assert_eq!(other_view["requestable"], json!([]));
    let refusals = curl(
        &env,
        Some("other"),
        "GET",
        "https://keyswap.internal/v1/self/refusals",
        &[],
    )
    .await;
    assert_eq!(refusals.json()["refusals"], json!([]), "{}", refusals.body);
    for body in [&other.body, &refusals.body] {
        for of_agent in [
            "\"agent\"",
            GITHUB_PLACEHOLDER,
            "/echo/listed",
            "secret-plans",
        ] {
            assert!(
                !body.contains(of_agent),
                "task other sees {of_agent}: {body}"
            );
        }
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn keyswap_internal_needs_proxy_credentials() {
    let Some(env) = start().await else { return };
    let got = curl(&env, None, "GET", SELF_URL, &[]).await;
    assert_eq!(got.connect, 407, "{}", got.body);
    let wrong = curl(&env, Some("nobody"), "GET", SELF_URL, &[]).await;
    assert_eq!(wrong.connect, 407, "{}", wrong.body);
    env.assert_no_leaks();
}

#[tokio::test]
async fn keyswap_internal_is_answered_in_process_never_dialled() {
    let Some(env) = start().await else { return };
    let got = curl(&env, Some("agent"), "GET", SELF_URL, &[]).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let record = env
        .audit_where(|r| r["host"] == "keyswap.internal" && r["path"] == "/v1/self")
        .await;
    assert_eq!(record["internal"], true, "{record}");
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["task"], "agent", "{record}");
    // Not resolved, not dialled: no upstream record, no upstream failure, nothing seen upstream.
    assert!(env.audit().iter().all(|r| r["reason"] != "upstream_error"));
    assert!(env.upstream.seen().is_empty(), "the upstream was reached");
    // Another port of the reserved name is refused, not dialled.
    let port = curl(
        &env,
        Some("agent"),
        "GET",
        "https://keyswap.internal:8443/v1/self",
        &[],
    )
    .await;
    assert_eq!(port.status, 403, "{}", port.body);
    env.assert_no_leaks();
}

#[tokio::test]
async fn refusal_explained_then_grant_approved_and_the_same_curl_succeeds() {
    let Some(env) = start().await else { return };
    let url = format!("https://{API_HOST}/echo/granted/1");
    let auth = format!("authorization: Bearer {GITHUB_PLACEHOLDER}");
    let refused = curl(&env, Some("agent"), "GET", &url, &["-H", &auth]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.trim_end().ends_with(SEE_GRANTS),
        "{}",
        refused.body
    );

    let got = curl(
        &env,
        Some("agent"),
        "GET",
        "https://keyswap.internal/v1/self/refusals?limit=1",
        &[],
    )
    .await;
    let refusals = got.json()["refusals"].clone();
    assert_eq!(refusals.as_array().map(Vec::len), Some(1), "{}", got.body);
    let last = &refusals[0];
    assert_eq!(last["reason"], "route_not_allowed", "{last}");
    assert_eq!(last["path"], "/echo/granted/1", "{last}");
    assert_eq!(
        last["request"]["paths"],
        json!(["/echo/granted/1"]),
        "{last}"
    );

    let ask = json!({"host": API_HOST, "methods": ["GET"], "paths": ["/echo/granted/**"],
        "secrets": ["github"], "why": "read the\u{7} granted\r\nitems"});
    let asked = post(
        &env,
        "agent",
        "https://keyswap.internal/v1/self/requests",
        &ask,
    )
    .await;
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().expect("id").to_string();
    assert_eq!(asked.json()["status"], "pending");

    let approval = waiting_grant(&env).await;
    assert_eq!(
        approval.agent_why.as_deref(),
        Some("read the  granted  items")
    );
    assert_eq!(approval.secrets, vec!["github".to_string()]);
    let approve = AnswerRequest {
        answer: "approve".into(),
        scope: Some("once".into()),
        reason: None,
    };
    admin(&env)
        .answer(&approval.id, &approve)
        .await
        .expect("approved");
    assert_eq!(settled(&env, &id).await["status"], "approved");

    let now = curl(&env, Some("agent"), "GET", &url, &["-H", &auth]).await;
    assert_eq!(now.status, 200, "{}", now.body);
    let seen = env.upstream.seen();
    let sent = seen
        .iter()
        .rev()
        .find(|r| r.path_and_query == "/echo/granted/1")
        .and_then(|r| r.headers.iter().find(|(n, _)| n == "authorization"))
        .map(|(_, v)| v.clone());
    assert!(
        sent == Some(format!("Bearer {GITHUB_REAL}")),
        "the granted secret was not swapped in"
    );
    let view = curl(&env, Some("agent"), "GET", SELF_URL, &[]).await.json();
    assert_eq!(
        view["grants"][0]["paths"],
        json!(["/echo/granted/**"]),
        "{view}"
    );
    let answered = env
        .audit_where(|r| r["event"] == "approval" && r["kind"] == "grant")
        .await;
    assert_eq!(answered["answer"], "approved", "{answered}");
    assert!(
        answered["by"]
            .as_str()
            .is_some_and(|b| b.starts_with("uid:")),
        "{answered}"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn denied_grant_shows_the_reason_and_outside_the_bounds_is_refused_at_once() {
    let Some(env) = start().await else { return };
    let ask =
        json!({"host": API_HOST, "methods": ["POST"], "paths": ["/echo/denied"], "why": "post it"});
    let asked = post(
        &env,
        "agent",
        "https://keyswap.internal/v1/self/requests",
        &ask,
    )
    .await;
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().expect("id").to_string();
    let approval = waiting_grant(&env).await;
    let deny = AnswerRequest {
        answer: "deny".into(),
        scope: None,
        reason: Some("not this week".into()),
    };
    admin(&env)
        .answer(&approval.id, &deny)
        .await
        .expect("denied");
    let view = settled(&env, &id).await;
    assert_eq!(view["status"], "denied", "{view}");
    assert_eq!(view["reason"], "not this week", "{view}");

    let outside = [
        (
            json!({"host": "evil.test", "paths": ["/x"]}),
            "no requestable bound names host evil.test",
        ),
        (
            json!({"host": API_HOST, "methods": ["DELETE"], "paths": ["/echo/x"]}),
            "requestable[0] allows methods GET, POST only",
        ),
        (
            json!({"host": API_HOST, "methods": ["GET"], "paths": ["/admin/**"]}),
            "requestable[0] allows paths /echo/** only",
        ),
        (
            json!({"host": API_HOST, "methods": ["GET"], "paths": ["/echo/x"], "secrets": ["openai"]}),
            "requestable[0] does not allow secret openai",
        ),
    ];
    for (ask, bound) in outside {
        let got = post(
            &env,
            "agent",
            "https://keyswap.internal/v1/self/requests",
            &ask,
        )
        .await;
        assert_eq!(got.status, 403, "{}", got.body);
        assert_eq!(got.json()["status"], "refused", "{}", got.body);
        assert!(
            got.json()["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with(bound)),
            "{}",
            got.body
        );
    }
    // A path that would write to the approving human's terminal is refused before the bounds.
    let escape = json!({"host": API_HOST, "methods": ["GET"], "paths": ["/echo/\u{1b}[2J"]});
    let got = post(
        &env,
        "agent",
        "https://keyswap.internal/v1/self/requests",
        &escape,
    )
    .await;
    assert_eq!(got.status, 400, "{}", got.body);
    // Nothing was held for a human.
    assert!(admin(&env)
        .approvals(Some("agent"))
        .await
        .expect("approvals")
        .is_empty());
    let none = post(
        &env,
        "other",
        "https://keyswap.internal/v1/self/requests",
        &json!({"host": API_HOST}),
    )
    .await;
    assert_eq!(none.status, 403, "{}", none.body);
    assert!(none.body.contains("no requestable"), "{}", none.body);
    env.assert_no_leaks();
}

#[tokio::test]
async fn an_unanswered_grant_request_times_out_and_grants_nothing() {
    if !available("curl", "--version") {
        return;
    }
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    let yaml = config() + "approval:\n  timeout: 1s\n";
    let env = TestEnv::start_with_options(&yaml, Alpn::Both, options).await;
    let ask = json!({"host": API_HOST, "methods": ["GET"], "paths": ["/echo/late"], "why": "nobody answers"});
    let asked = post(
        &env,
        "agent",
        "https://keyswap.internal/v1/self/requests",
        &ask,
    )
    .await;
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().expect("id").to_string();
    let view = settled(&env, &id).await;
    assert_eq!(view["status"], "timed_out", "{view}");
    let url = format!("https://{API_HOST}/echo/late");
    let after = curl(&env, Some("agent"), "GET", &url, &[]).await;
    assert_eq!(after.status, 403, "{}", after.body);
    env.assert_no_leaks();
}
