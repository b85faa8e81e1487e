//! Budgets and rates on the real proxy: the request past a rule's `budget:` is refused with
//! 429 `budget_exhausted` and never reaches the upstream; past its `rate:` with 429
//! `rate_limited` and a `Retry-After`; counts survive a reload of the edited file (also when
//! the reload lowers the budget below what was used), are shown by `GET /v1/tasks` and in
//! `/metrics`, and go with a rule that disappears or a task that ends.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, RuleUsageInfo, TaskInfo};
use keyswap::state::tasks::RevokeWhy;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, ProxyConnection};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, Reply, TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};
use prometheus_parse::{Scrape, Value};

/// Reloads read the file with the process environment: the secret comes from a command and
/// the static task's token from `KS_TEST_TOKEN`, which the process has from the start
/// ([`keyswap_tests::harness::assert_reload_env`]). `budget` and `paths` are what the reload
/// tests edit.
fn config(budget: u64, paths: &[&str]) -> String {
    let get = || Rule::api().methods(&["GET"]).secrets(&["github"]);
    ConfigBuilder::new()
        .admin_socket()
        .metrics()
        .secret(
            "github",
            Secret::command(&["printf", "%s", GITHUB_REAL], GITHUB_PLACEHOLDER),
        )
        .policy(
            "metered",
            Entry::new()
                .rule(
                    get()
                        .paths(&["/echo/metered/**"])
                        .field("budget", &format!("{{requests: {budget}}}")),
                )
                .rule(
                    Rule::api()
                        .field("id", "named")
                        .methods(&["GET"])
                        .paths(paths)
                        .secrets(&["github"])
                        .field("budget", "{requests: 100}"),
                )
                .rule(get().paths(&["/echo/slow/**"]).field("rate", "1/h")),
        )
        .task(
            "agent",
            Entry::with_token()
                .rule(
                    get()
                        .paths(&["/echo/bulk/**"])
                        .field("budget", "{requests: 500}"),
                )
                .rule(Rule::api().secrets(&["github"])),
        )
        .yaml()
}

/// The key of the static task's budgeted rule (no `id:`: derived from what it matches).
const BULK_KEY: &str = "https://api.upstream.test:443 GET /echo/bulk/**";
const METERED_KEY: &str = "https://api.upstream.test:443 GET /echo/metered/**";

/// The proxy with the admin API (reading `path` on reload) and metrics.
async fn start(budget: u64, path: &std::path::Path) -> TestEnv {
    let options = ProxyOptions {
        admin: true,
        metrics: true,
        config_path: Some(path.to_path_buf()),
        ..ProxyOptions::default()
    };
    let template = config(budget, &["/echo/named/**"]);
    let env = TestEnv::start_with_options(&template, Alpn::Both, options).await;
    std::fs::write(path, &env.config_yaml).expect("write config");
    env
}

fn admin(env: &TestEnv) -> AdminClient {
    let socket = env.proxy.admin_socket().expect("admin socket served");
    AdminClient::new(AdminTarget::Socket(socket.to_path_buf()))
}

async fn connect(env: &TestEnv, task: &str, token: &str) -> ProxyConnection {
    let opts = env.client(Some((task, token)), &format!("{API_HOST}:443"), Alpn::Both);
    env.open(&opts).await
}

/// One GET with the placeholder on an open (keep-alive, h2 when offered) connection.
async fn get(env: &TestEnv, conn: &mut ProxyConnection, path: &str) -> Reply {
    let req = client::request("GET", API_HOST, path, conn.negotiated_h2())
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .expect("request");
    let resp = conn.send(req).await.expect("response");
    env.reply(resp).await
}

fn usage_of(tasks: &[TaskInfo], task: &str, key: &str) -> RuleUsageInfo {
    let info = tasks
        .iter()
        .find(|t| t.id == task)
        .unwrap_or_else(|| panic!("task {task} not listed: {tasks:?}"));
    info.budgets
        .iter()
        .find(|b| b.key == key)
        .unwrap_or_else(|| panic!("rule {key} not listed: {:?}", info.budgets))
        .clone()
}

fn upstream_saw(env: &TestEnv, path: &str) -> bool {
    env.upstream.seen().iter().any(|r| r.path_and_query == path)
}

/// `/metrics` parsed, kept for the leak check.
async fn scrape(env: &TestEnv) -> Scrape {
    let addr: SocketAddr = env.proxy.metrics_addr().expect("metrics served");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(async move { drop(conn.await) });
    let request = http::Request::builder()
        .uri("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    connection.abort();
    let text = String::from_utf8_lossy(&body).into_owned();
    env.keep(&[], &text);
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parseable")
}

fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
}

#[tokio::test]
async fn the_501st_request_is_refused_budget_exhausted_and_never_sent() {
    let files = tempfile::tempdir().expect("tempdir");
    let env = start(10, &files.path().join("keyswap.yaml")).await;
    let mut conn = connect(&env, "agent", AGENT_TOKEN).await;
    for i in 0..500 {
        let reply = get(&env, &mut conn, &format!("/echo/bulk/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    assert_eq!(
        env.upstream.authorization_for("/echo/bulk/499"),
        Some(format!("Bearer {GITHUB_REAL}"))
    );
    let refused = get(&env, &mut conn, "/echo/bulk/500").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.reason(), Some("budget_exhausted"));
    assert!(refused.body.contains("budget of 500"), "{}", refused.body);
    assert!(
        refused.header("retry-after").is_none(),
        "a budget does not come back"
    );
    assert!(!upstream_saw(&env, "/echo/bulk/500"));
    // The same connection still serves the task's other rule: only the budgeted rule is spent.
    let other = get(&env, &mut conn, "/echo/unbudgeted").await;
    assert_eq!(other.status, 200, "{other:?}");

    let record = env.audit_where(|r| r["path"] == "/echo/bulk/500").await;
    assert_eq!(record["reason"], "budget_exhausted");
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["status"], 429);
    assert_eq!(record["rule"], 0);

    let tasks = admin(&env).list().await.expect("list");
    let usage = usage_of(&tasks, "agent", BULK_KEY);
    assert_eq!(
        (usage.rule, usage.budget, usage.used, usage.remaining),
        (0, Some(500), 500, Some(0))
    );
    assert_eq!(usage.rate, None);
    let scrape = scrape(&env).await;
    let labels = [("policy", "static"), ("rule", BULK_KEY)];
    assert_eq!(
        gauge(&scrape, "keyswap_budget_used_requests", &labels),
        Some(500.0)
    );
    assert_eq!(
        gauge(&scrape, "keyswap_budget_exhausted_tasks", &labels),
        Some(1.0)
    );
    let refusals = [("reason", "budget_exhausted"), ("policy", "static")];
    assert_eq!(
        gauge(&scrape, "keyswap_requests_total", &refusals),
        Some(1.0)
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn a_rate_limited_request_gets_retry_after_and_is_not_sent() {
    let files = tempfile::tempdir().expect("tempdir");
    let env = start(10, &files.path().join("keyswap.yaml")).await;
    let issued = admin(&env)
        .issue(&IssueRequest {
            policy: "metered".into(),
            id: Some("rated".into()),
            ..IssueRequest::default()
        })
        .await
        .expect("issue");
    env.remember_token(&issued.token);
    let mut conn = connect(&env, "rated", &issued.token).await;
    let first = get(&env, &mut conn, "/echo/slow/1").await;
    assert_eq!(first.status, 200, "{first:?}");
    // 1/h holds one request: the next is an hour away, whatever the machine's speed.
    let second = get(&env, &mut conn, "/echo/slow/2").await;
    assert_eq!(second.status, 429, "{second:?}");
    assert_eq!(second.reason(), Some("rate_limited"));
    let retry: u64 = second
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    assert!(!upstream_saw(&env, "/echo/slow/2"));
    let record = env.audit_where(|r| r["path"] == "/echo/slow/2").await;
    assert_eq!(record["reason"], "rate_limited");
    assert_eq!(record["status"], 429);

    let tasks = admin(&env).list().await.expect("list");
    let slow = usage_of(
        &tasks,
        "rated",
        "https://api.upstream.test:443 GET /echo/slow/**",
    );
    assert_eq!(
        (slow.budget, slow.used, slow.remaining, slow.rate.as_deref()),
        (None, 1, None, Some("1/h"))
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn counts_survive_a_reload_and_a_lowered_budget_refuses_the_next_request() {
    // A reload reads the proxy's own environment: the static task's token must be in it (the
    // value the harness hands the first load), set before the process started.
    keyswap_tests::harness::assert_reload_env();
    let files = tempfile::tempdir().expect("tempdir");
    let path = files.path().join("keyswap.yaml");
    let env = start(10, &path).await;
    let admin = admin(&env);
    let issued = admin
        .issue(&IssueRequest {
            policy: "metered".into(),
            id: Some("long-runner".into()),
            ..IssueRequest::default()
        })
        .await
        .expect("issue");
    env.remember_token(&issued.token);
    let mut conn = connect(&env, "long-runner", &issued.token).await;
    for i in 0..4 {
        assert_eq!(
            get(&env, &mut conn, &format!("/echo/metered/{i}"))
                .await
                .status,
            200
        );
        assert_eq!(
            get(&env, &mut conn, &format!("/echo/named/{i}"))
                .await
                .status,
            200
        );
    }
    let mut bulk = connect(&env, "agent", AGENT_TOKEN).await;
    for i in 0..3 {
        assert_eq!(
            get(&env, &mut bulk, &format!("/echo/bulk/{i}"))
                .await
                .status,
            200
        );
    }

    // Reload with the budget raised and the `id:` rule's paths edited: every count stays
    // (the edited rule keeps its id, the static task keeps its rule).
    let edited = render(&env, &config(6, &["/echo/named/**", "/echo/renamed/**"]));
    std::fs::write(&path, &edited).expect("write config");
    let summary = admin.reload().await.expect("reload");
    assert!(
        summary.tasks_revoked.is_empty() && summary.tasks_removed.is_empty(),
        "{summary:?}"
    );
    let tasks = admin.list().await.expect("list");
    let metered = usage_of(&tasks, "long-runner", METERED_KEY);
    assert_eq!(
        (metered.budget, metered.used, metered.remaining),
        (Some(6), 4, Some(2))
    );
    let named = usage_of(&tasks, "long-runner", "named");
    assert_eq!((named.used, named.remaining), (4, Some(96)));
    assert_eq!(usage_of(&tasks, "agent", BULK_KEY).used, 3);
    assert_eq!(get(&env, &mut conn, "/echo/metered/4").await.status, 200);
    assert_eq!(get(&env, &mut conn, "/echo/renamed/1").await.status, 200);

    // Lowered below what was used: the next request is refused, on the open connection.
    let lowered = render(&env, &config(3, &["/echo/named/**", "/echo/renamed/**"]));
    std::fs::write(&path, &lowered).expect("write config");
    admin.reload().await.expect("reload");
    let refused = get(&env, &mut conn, "/echo/metered/5").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.reason(), Some("budget_exhausted"));
    assert!(!upstream_saw(&env, "/echo/metered/5"));
    let tasks = admin.list().await.expect("list");
    let metered = usage_of(&tasks, "long-runner", METERED_KEY);
    assert_eq!(
        (metered.budget, metered.used, metered.remaining),
        (Some(3), 5, Some(0))
    );

    // A rule whose match changes (no id) is a new rule: its count starts again.
    let moved = render(&env, &config(3, &["/echo/named/**", "/echo/renamed/**"])).replace(
        "\"/echo/metered/**\"",
        "\"/echo/metered/**\", \"/echo/metered2/**\"",
    );
    std::fs::write(&path, &moved).expect("write config");
    admin.reload().await.expect("reload");
    let tasks = admin.list().await.expect("list");
    let moved_key = "https://api.upstream.test:443 GET /echo/metered/**,/echo/metered2/**";
    assert_eq!(usage_of(&tasks, "long-runner", moved_key).used, 0);
    assert_eq!(usage_of(&tasks, "long-runner", "named").used, 5);
    assert_eq!(get(&env, &mut conn, "/echo/metered/6").await.status, 200);
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoking_a_task_drops_its_counts() {
    let files = tempfile::tempdir().expect("tempdir");
    let env = start(10, &files.path().join("keyswap.yaml")).await;
    let issued = admin(&env)
        .issue(&IssueRequest {
            policy: "metered".into(),
            id: Some("short".into()),
            ..IssueRequest::default()
        })
        .await
        .expect("issue");
    env.remember_token(&issued.token);
    let mut conn = connect(&env, "short", &issued.token).await;
    assert_eq!(get(&env, &mut conn, "/echo/metered/1").await.status, 200);
    let live = env.proxy.shared().tasks.get("short").expect("live task");
    assert_eq!(live.usage.used(METERED_KEY), 1);
    let scrape_before = scrape(&env).await;
    let labels = [("policy", "metered"), ("rule", METERED_KEY)];
    assert_eq!(
        gauge(&scrape_before, "keyswap_budget_used_requests", &labels),
        Some(1.0)
    );
    env.proxy.revoke("short", RevokeWhy::Api).expect("revoke");
    assert_eq!(live.usage.used(METERED_KEY), 0);
    let scrape_after = scrape(&env).await;
    assert_eq!(
        gauge(&scrape_after, "keyswap_budget_used_requests", &labels),
        None
    );
    env.assert_no_leaks();
}

/// The config text with the test environment's slots filled, as the running one was.
fn render(env: &TestEnv, template: &str) -> String {
    keyswap_tests::harness::render(
        template,
        &keyswap_tests::harness::ConfigVars {
            dir: env.dir.path(),
            https_port: env.upstream.port(),
            plain_port: env.plain.port(),
            tunnel_port: env.tunnel.port(),
        },
    )
}
