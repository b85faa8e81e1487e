//! The admin API against the real proxy: issue a task and use it, list and show it (never
//! its token), revoke it, every error with its status and reason, the socket's mode and the
//! TCP listener's bearer token, reload through the API, the lifeline, and the audit records
//! of the lifecycle.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, Tunnel};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, Reply, TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};

/// The admin API's bearer token on TCP (read from `KS_TEST_ADMIN_TOKEN`).
const ADMIN_TOKEN: &str = "admin-token-5e1f0c9a7b3d2468";
const POLICY: &str = "github-ro";

/// The default config's upstreams, one secret with `env:`, policy `github-ro` (GET /echo
/// with the github secret, /public without), and the admin API on the socket and on TCP.
fn config() -> String {
    ConfigBuilder::new()
        .admin_socket_and_tcp("KS_TEST_ADMIN_TOKEN")
        .metrics()
        .secret("github", Secret::github().field("env", "GITHUB_TOKEN"))
        .policy(
            POLICY,
            Entry::new()
                .field("ttl", "10m")
                .field("max_ttl", "1h")
                .rule(
                    Rule::api()
                        .methods(&["GET"])
                        .paths(&["/echo", "/echo/**"])
                        .secrets(&["github"]),
                )
                .rule(Rule::api().methods(&["GET"]).paths(&["/public/**"])),
        )
        .task(
            "agent",
            Entry::with_token().rule(Rule::api().secrets(&["github"])),
        )
        .yaml()
}

async fn start() -> TestEnv {
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_env(
        &config(),
        Alpn::Both,
        options,
        &[("KS_TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    env.remember_token(ADMIN_TOKEN);
    env
}

fn socket_client(env: &TestEnv) -> AdminClient {
    let socket = env.proxy.admin_socket().expect("admin socket served");
    AdminClient::new(AdminTarget::Socket(socket.to_path_buf()))
}

fn issue_request(id: Option<&str>, ttl: Option<&str>) -> IssueRequest {
    IssueRequest {
        policy: POLICY.to_string(),
        ttl: ttl.map(str::to_string),
        id: id.map(str::to_string),
        ..IssueRequest::default()
    }
}

/// Where a raw request goes: the unix socket, or TCP with this `Authorization` (if any).
enum Via<'a> {
    Socket,
    Tcp(Option<&'a str>),
}

/// One raw HTTP/1.1 request to the admin API; the body is kept for the leak check. A JSON
/// body is sent as `application/json`.
async fn raw(
    env: &TestEnv,
    via: Via<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "keyswap-admin");
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let (mut sender, connection) = match via {
        Via::Socket => {
            let socket = env.proxy.admin_socket().expect("admin socket served");
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .expect("connect to the admin socket");
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            (sender, tokio::spawn(async move { drop(conn.await) }))
        }
        Via::Tcp(authorization) => {
            if let Some(value) = authorization {
                request = request.header(http::header::AUTHORIZATION, value);
            }
            let addr = env.proxy.admin_addr().expect("admin TCP listener served");
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to the admin listener");
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            (sender, tokio::spawn(async move { drop(conn.await) }))
        }
    };
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("admin response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    connection.abort();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    env.keep(&[], &text);
    (status, text)
}

/// `(status, reason)` of an admin API error, checking that the body is an `ApiError`.
fn error_of(status: u16, body: &str) -> (u16, String, String) {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let reason = value["reason"].as_str().expect("reason").to_string();
    let message = value["message"].as_str().expect("message").to_string();
    (status, reason, message)
}

async fn echo(env: &TestEnv, task: &str, token: &str, path: &str) -> Reply {
    let opts = env.client(Some((task, token)), &format!("{API_HOST}:443"), Alpn::Both);
    env.request(
        &opts,
        "GET",
        path,
        &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
    )
    .await
}

/// Polls `cond` every few milliseconds until it holds or `within` has passed.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn task_json(env: &TestEnv, id: &str) -> serde_json::Value {
    let (status, list) = raw(env, Via::Socket, "GET", "/v1/tasks", None).await;
    assert_eq!(status, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).expect("list is JSON");
    list["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Polls the listing until task `id` satisfies `cond` (counters move as requests finish).
async fn task_until(
    env: &TestEnv,
    id: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let task = task_json(env, id).await;
        if cond(&task) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never got there: {task}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn issued_task_works_is_listed_without_token_and_revoke_closes_it() {
    let env = start().await;
    let admin = socket_client(&env);
    let issued: IssuedTask = admin
        .issue(&issue_request(Some("job-1"), Some("5m")))
        .await
        .expect("issue");
    env.remember_token(&issued.token);
    assert_eq!(
        (issued.id.as_str(), issued.policy.as_str()),
        ("job-1", POLICY)
    );
    assert!(issued.token.len() >= 32, "token too short to be random");
    assert!(issued.proxy_url.starts_with("http://job-1:"));
    assert!(issued
        .proxy_url
        .ends_with(&format!("@{}", env.proxy.addr())));
    assert_eq!(
        issued.env.get("GITHUB_TOKEN").map(String::as_str),
        Some(GITHUB_PLACEHOLDER)
    );
    assert!(!issued.expires.is_empty());

    // The token works through the proxy: the placeholder is swapped for the real value.
    let opts = env.client(
        Some(("job-1", &issued.token)),
        &format!("{API_HOST}:443"),
        Alpn::Http2Only,
    );
    let mut conn = env.open(&opts).await;
    let req = client::request("GET", API_HOST, "/echo/issued", conn.negotiated_h2())
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .expect("request");
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        env.upstream.authorization_for("/echo/issued") == Some(format!("Bearer {GITHUB_REAL}")),
        "the upstream did not receive the real value"
    );
    // Outside the policy's routes: refused.
    let refused = echo(&env, "job-1", &issued.token, "/admin").await;
    assert_eq!(
        (refused.status, refused.reason()),
        (403, Some("route_not_allowed"))
    );

    // Listed with its policy and counters, while the first connection stays open; the raw
    // JSON of the list and of the task never carries the token.
    let listed = task_until(&env, "job-1", |t| {
        t["requests"] == 2 && t["open_connections"] == 1
    })
    .await;
    assert_eq!(listed["policy"], POLICY);
    assert_eq!(listed["source"], "runtime");
    assert_eq!(listed["issued_by"], "api");
    assert_eq!(listed["expired"], false);
    let (status, list_raw) = raw(&env, Via::Socket, "GET", "/v1/tasks", None).await;
    assert_eq!(status, 200);
    let (status, show_raw) = raw(&env, Via::Socket, "GET", "/v1/tasks/job-1", None).await;
    assert_eq!(status, 200, "{show_raw}");
    for (what, text) in [("list", &list_raw), ("show", &show_raw)] {
        assert!(
            !text.contains(&issued.token),
            "the {what} carries the token"
        );
        assert!(
            !text.contains(AGENT_TOKEN),
            "the {what} carries a static token"
        );
        assert!(
            !text.contains("token"),
            "the {what} has a token field: {text}"
        );
    }
    let shown: serde_json::Value = serde_json::from_str(&show_raw).expect("show is JSON");
    assert_eq!(shown["id"], "job-1");
    assert_eq!(shown["policy"], POLICY);
    let statics = task_json(&env, "agent").await;
    assert_eq!(
        (statics["source"].as_str(), statics["issued_by"].as_str()),
        (Some("config"), Some("config"))
    );

    // Revoke: the open connection is closed, and the token no longer opens one.
    let revoked = admin.revoke("job-1", "api").await.expect("revoke");
    assert_eq!(revoked.id, "job-1");
    assert_eq!(revoked.why, "api");
    assert_eq!(revoked.connections_closed, 1);
    assert_eq!(revoked.requests, 2);
    let req = client::request("GET", API_HOST, "/echo/after", conn.negotiated_h2())
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .expect("request");
    let after = tokio::time::timeout(Duration::from_secs(5), conn.send(req))
        .await
        .expect("the revoked connection neither answers nor closes");
    assert!(after.is_err(), "the revoked task's connection still serves");
    match client::connect_tunnel(&opts).await.expect("tunnel io") {
        Tunnel::Refused { status, reason, .. } => {
            assert_eq!((status, reason.as_deref()), (407, Some("bad_token")));
        }
        Tunnel::Open(_) => panic!("a revoked task's token opened a tunnel"),
    }
    assert_eq!(task_json(&env, "job-1").await, serde_json::Value::Null);
    let (status, body) = raw(&env, Via::Socket, "GET", "/v1/tasks/job-1", None).await;
    assert_eq!(error_of(status, &body).1, "unknown_task");

    // Audit: issued by the API with its policy; its requests carry event and policy.
    let issued_record = env
        .audit_where(|r| r["event"] == "task_issued" && r["task"] == "job-1")
        .await;
    assert_eq!(issued_record["by"], "api");
    assert_eq!(issued_record["policy"], POLICY);
    assert!(issued_record["expires"].is_string());
    let request_record = env.audit_where(|r| r["path"] == "/echo/issued").await;
    assert_eq!(request_record["event"], "request");
    assert_eq!(request_record["task"], "job-1");
    assert_eq!(request_record["policy"], POLICY);
    assert_eq!(request_record["reason"], "allowed");
    let revoked_record = env
        .audit_where(|r| r["event"] == "task_revoked" && r["task"] == "job-1")
        .await;
    assert_eq!(revoked_record["why"], "api");
    assert_eq!(revoked_record["policy"], POLICY);
    let static_issued = env
        .audit_where(|r| r["event"] == "task_issued" && r["task"] == "agent")
        .await;
    assert_eq!(static_issued["by"], "config");
    env.assert_no_leaks();
}

/// method, path, body, status, reason, words the message must contain.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
    &'static [&'static str],
);

#[tokio::test]
async fn every_error_has_its_status_and_reason() {
    let env = start().await;
    let admin = socket_client(&env);
    let first = admin
        .issue(&issue_request(Some("taken"), None))
        .await
        .expect("issue");
    env.remember_token(&first.token);

    let cases: &[Case] = &[
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"nope"}"#),
            400,
            "unknown_policy",
            &["nope"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","ttl":"soon"}"#),
            400,
            "bad_ttl",
            &["soon"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","ttl":"0s"}"#),
            400,
            "bad_ttl",
            &["zero"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","ttl":"2h"}"#),
            400,
            "ttl_above_max",
            &["max_ttl", "1h", "2h"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","id":"has space"}"#),
            400,
            "bad_id",
            &["has space"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","id":"../etc"}"#),
            400,
            "bad_id",
            &[],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","id":"taken"}"#),
            409,
            "duplicate_id",
            &["taken"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","id":"agent"}"#),
            409,
            "duplicate_id",
            &["agent"],
        ),
        (
            "POST",
            "/v1/tasks",
            Some("not json"),
            400,
            "bad_request",
            &[],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":"github-ro","surprise":1}"#),
            400,
            "bad_request",
            &[],
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"policy":7}"#),
            400,
            "bad_request",
            &[],
        ),
        (
            "DELETE",
            "/v1/tasks/ghost",
            None,
            404,
            "unknown_task",
            &["ghost"],
        ),
        (
            "GET",
            "/v1/tasks/ghost",
            None,
            404,
            "unknown_task",
            &["ghost"],
        ),
        (
            "DELETE",
            "/v1/tasks/agent",
            None,
            409,
            "static_task",
            &["agent"],
        ),
        (
            "DELETE",
            "/v1/tasks/taken?why=because",
            None,
            400,
            "bad_request",
            &[],
        ),
        ("GET", "/v2/anything", None, 404, "not_found", &[]),
    ];
    for (method, path, body, status, reason, words) in cases {
        let (got, text) = raw(&env, Via::Socket, method, path, *body).await;
        let (got, got_reason, message) = error_of(got, &text);
        let case = format!("{method} {path} {body:?}");
        assert_eq!(
            (got, got_reason.as_str()),
            (*status, *reason),
            "{case}: {message}"
        );
        for word in *words {
            assert!(
                message.contains(word),
                "{case}: message lacks {word:?}: {message}"
            );
        }
    }
    // A JSON body without a JSON content type.
    let untyped = raw_without_content_type(&env).await;
    assert_eq!(untyped, (400, "bad_request".to_string()));

    // None of the refused issues left a task behind; the first one is intact.
    let ids: Vec<String> = admin
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["agent", "taken"]);
    let shown = admin.show("taken").await.expect("show");
    assert_eq!(shown.policy.as_deref(), Some(POLICY));
    env.assert_no_leaks();
}

/// `POST /v1/tasks` with a JSON body but no `Content-Type`: `(status, reason)`.
async fn raw_without_content_type(env: &TestEnv) -> (u16, String) {
    let socket = env.proxy.admin_socket().expect("socket");
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(async move { drop(conn.await) });
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/tasks")
        .header(http::header::HOST, "keyswap-admin")
        .body(Full::new(Bytes::from_static(br#"{"policy":"github-ro"}"#)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    connection.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    env.keep(&[], &body);
    let (status, reason, _) = error_of(status, &body);
    (status, reason)
}

#[tokio::test]
async fn socket_is_0600_and_tcp_needs_the_bearer_token() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let env = start().await;
    let socket = env.proxy.admin_socket().expect("socket");
    let meta = std::fs::metadata(socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let wrong = format!("Bearer {}", "x".repeat(ADMIN_TOKEN.len()));
    let prefix_only = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let task_token = format!("Bearer {AGENT_TOKEN}");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for authorization in [
        None,
        Some(wrong.as_str()),
        Some(prefix_only.as_str()),
        Some(task_token.as_str()),
        Some(basic.as_str()),
        Some("Bearer "),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/tasks", None),
            (
                "POST",
                "/v1/tasks",
                Some(r#"{"policy":"github-ro","id":"sneaky"}"#),
            ),
            ("DELETE", "/v1/tasks/agent", None),
            ("POST", "/v1/reload", None),
        ] {
            let (status, text) = raw(&env, Via::Tcp(authorization), method, path, body).await;
            let (status, reason, _) = error_of(status, &text);
            assert_eq!(
                (status, reason.as_str()),
                (401, "unauthorized"),
                "{method} {path} with {:?}",
                authorization.map(|a| a.split(' ').next())
            );
        }
    }
    assert!(
        env.proxy.shared().tasks.get("sneaky").is_none(),
        "an unauthorized issue created a task"
    );

    // The right token: the raw API and the CLI's client both work over TCP.
    let right = format!("Bearer {ADMIN_TOKEN}");
    let (status, text) = raw(&env, Via::Tcp(Some(&right)), "GET", "/v1/tasks", None).await;
    assert_eq!(status, 200, "{text}");
    let tcp = AdminClient::new(AdminTarget::Tcp {
        addr: env.proxy.admin_addr().expect("tcp"),
        token: ADMIN_TOKEN.to_string().into(),
    });
    let issued = tcp
        .issue(&issue_request(Some("over-tcp"), None))
        .await
        .expect("issue over TCP");
    env.remember_token(&issued.token);
    let reply = echo(&env, "over-tcp", &issued.token, "/echo/tcp").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    tcp.revoke("over-tcp", "api")
        .await
        .expect("revoke over TCP");
    env.assert_no_leaks();
}

/// The reload test's config: the API reload reads the file with the process environment,
/// so this config needs no variable — its secret comes from a command, and it has no static
/// task (one would need a token, from a variable: policies issue further tasks).
fn reload_config() -> String {
    ConfigBuilder::new()
        .admin_socket()
        .secret(
            "github",
            Secret::command(&["printf", "%s", GITHUB_REAL], GITHUB_PLACEHOLDER),
        )
        .policy(
            POLICY,
            Entry::new().rule(
                Rule::api()
                    .methods(&["GET"])
                    .paths(&["/echo/**"])
                    .secrets(&["github"]),
            ),
        )
        .yaml()
}

/// A static task without a token, which a config with policies must refuse: any task
/// issued from a policy could name it.
const TOKENLESS_TASK: &str =
    "tasks:\n  agent:\n    allow:\n      - host: api.upstream.test\n        secrets: [github]\n";

#[tokio::test]
async fn reload_picks_up_the_edited_file_and_keeps_the_old_config_on_error() {
    let files = tempfile::tempdir().expect("tempdir");
    let path = files.path().join("keyswap.yaml");
    let options = ProxyOptions {
        admin: true,
        config_path: Some(path.clone()),
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&reload_config(), Alpn::Both, options).await;
    let admin = socket_client(&env);
    let write = |text: &str| std::fs::write(&path, text).expect("write config");
    write(&env.config_yaml);

    let late = IssueRequest {
        policy: "late".to_string(),
        ..IssueRequest::default()
    };
    let before = admin.issue(&late).await.expect_err("no policy late yet");
    assert!(before.to_string().contains("unknown_policy"), "{before}");
    let kept = admin
        .issue(&issue_request(Some("kept"), None))
        .await
        .expect("issue");
    env.remember_token(&kept.token);

    // A new policy appears; the runtime task of a policy that stays is not touched.
    let edited = env.config_yaml.replace(
        "policies:\n",
        "policies:\n  late:\n    ttl: 5m\n    allow:\n      - host: api.upstream.test\n        paths: [\"/echo/late\"]\n        secrets: [github]\n",
    );
    assert_ne!(edited, env.config_yaml);
    write(&edited);
    let summary = admin.reload().await.expect("reload");
    assert!(summary.tasks_revoked.is_empty(), "{summary:?}");
    assert!(summary.tasks_removed.is_empty(), "{summary:?}");
    let issued = admin.issue(&late).await.expect("policy late after reload");
    env.remember_token(&issued.token);
    assert!(issued.id.starts_with("late-"), "{issued:?}");
    let reply = echo(&env, &issued.id, &issued.token, "/echo/late").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(env.upstream.authorization_for("/echo/late") == Some(format!("Bearer {GITHUB_REAL}")));
    let reply = echo(&env, "kept", &kept.token, "/echo/kept").await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // A broken file: 422 invalid_config naming the problem, and the running config stays.
    for broken in [
        edited.replace("    ttl: 5m\n", "    ttl: whenever\n"),
        edited.replace("version: 1", "version: 1\nsurprise: true"),
        "policies: [unclosed".to_string(),
        format!("{edited}{TOKENLESS_TASK}"),
    ] {
        write(&broken);
        let (status, body) = raw(&env, Via::Socket, "POST", "/v1/reload", None).await;
        let (status, reason, message) = error_of(status, &body);
        assert_eq!(
            (status, reason.as_str()),
            (422, "invalid_config"),
            "{message}"
        );
        assert!(
            message.contains("keyswap.yaml"),
            "message names no file: {message}"
        );
        if broken.contains(TOKENLESS_TASK) {
            assert!(
                message.contains(
                    "task agent has no token_env, and with tasks issued at runtime from policies"
                ),
                "{message}"
            );
        }
    }
    let reply = echo(&env, &issued.id, &issued.token, "/echo/late").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // The tokenless task was refused with the rest of that file: naming it, with any
    // password, gets nobody in.
    let opts = env.client(
        Some(("agent", "any-password-at-all")),
        &format!("{API_HOST}:443"),
        Alpn::Both,
    );
    match client::connect_tunnel(&opts).await.expect("tunnel io") {
        Tunnel::Refused { status, reason, .. } => {
            assert_eq!((status, reason.as_deref()), (407, Some("bad_token")));
        }
        Tunnel::Open(_) => panic!("naming a refused tokenless task opened a tunnel"),
    }
    let again = admin.issue(&late).await.expect("policy late still there");
    env.remember_token(&again.token);

    // Removing the policy revokes its tasks.
    write(&env.config_yaml);
    let summary = admin.reload().await.expect("reload");
    let mut revoked = summary.tasks_revoked.clone();
    revoked.sort();
    let mut expected = vec![issued.id.clone(), again.id.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(env.proxy.shared().tasks.get("kept").is_some());
    env.assert_no_leaks();
}

#[tokio::test]
async fn dropping_the_lifeline_revokes_the_task() {
    let env = start().await;
    let admin = socket_client(&env);
    let (issued, lifeline) = admin
        .issue_with_lifeline(&issue_request(Some("exec-1"), None))
        .await
        .expect("issue with lifeline");
    env.remember_token(&issued.token);
    assert_eq!(issued.id, "exec-1");
    let reply = echo(&env, "exec-1", &issued.token, "/echo/alive").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Heartbeats keep it alive past several periods.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(env.proxy.shared().tasks.get("exec-1").is_some());

    drop(lifeline);
    let shared = env.proxy.shared().clone();
    // A bound against hanging, not a measurement: the bench times revocation.
    let gone = eventually(Duration::from_secs(30), || {
        shared.tasks.get("exec-1").is_none()
    })
    .await;
    assert!(gone, "the task outlived its lifeline");
    let record = env
        .audit_where(|r| r["event"] == "task_revoked" && r["task"] == "exec-1")
        .await;
    assert_eq!(record["why"], "exit");
    let opts = env.client(
        Some(("exec-1", &issued.token)),
        &format!("{API_HOST}:443"),
        Alpn::Both,
    );
    match client::connect_tunnel(&opts).await.expect("tunnel io") {
        Tunnel::Refused { status, reason, .. } => {
            assert_eq!((status, reason.as_deref()), (407, Some("bad_token")))
        }
        Tunnel::Open(_) => panic!("the revoked task's token still opens a tunnel"),
    }
    env.assert_no_leaks();
}
