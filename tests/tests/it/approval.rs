//! Human approval against the real proxy: requests that wait for a human (a rule with
//! `approve:`, a request or CONNECT no rule allows under `on_unlisted: ask`) are held with
//! nothing sent upstream, and end as the human (through the real admin API on the unix
//! socket), the timeout, the queue limit or a revocation decides — each with its reason in
//! `x-keyswap-reason` and an audit record naming who answered. The webhook is an in-process
//! HTTPS receiver signed by the test upstream CA.
//!
//! No assertion is timed: the tests wait on answers and listings (bounded only by a
//! generous safety limit so that a broken build fails instead of hanging).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{AnswerRequest, ApprovalInfo, IssueRequest};
use keyswap::state::tasks::RevokeWhy;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, Tunnel};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, Reply, TestEnv, API_HOST, OTHER_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_REAL};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const POLICY: &str = "asks";
const HOOK_HOST: &str = "hooks.upstream.test";
/// How long a test waits for something to happen before failing instead of hanging.
const SAFETY: Duration = Duration::from_secs(120);

/// Policy `asks`: DELETE on /echo/** with the github secret needs a human each time, POST
/// /echo/once needs one once per task, GET /public/** needs none, and anything else is
/// asked about (`on_unlisted: ask`). At most 2 requests of a task may wait.
fn config(timeout: &str, hook_port: u16) -> String {
    let headers = |secret: Secret| secret.field("headers", "[authorization]");
    ConfigBuilder::new()
        .admin_socket()
        .section(
            "approval",
            &format!(
                "timeout: {timeout}\nmax_pending: 2\nwebhook: https://{HOOK_HOST}/keyswap/approval"
            ),
        )
        .resolve(&format!("{OTHER_HOST}:443"), "127.0.0.1:{https_port}")
        .resolve(
            &format!("{HOOK_HOST}:443"),
            &format!("127.0.0.1:{hook_port}"),
        )
        .secret("github", headers(Secret::github()))
        .secret("openai", headers(Secret::openai()))
        .policy(
            POLICY,
            Entry::new()
                .field("on_unlisted", "ask")
                .rule(
                    Rule::api()
                        .methods(&["DELETE"])
                        .paths(&["/echo/**"])
                        .secrets(&["github"])
                        .field("approve", "each"),
                )
                .rule(
                    Rule::api()
                        .methods(&["POST"])
                        .paths(&["/echo/once"])
                        .field("approve", "once"),
                )
                .rule(Rule::api().methods(&["GET"]).paths(&["/public/**"])),
        )
        .policy(
            "other",
            Entry::new().rule(Rule::api().methods(&["GET"]).paths(&["/public/**"])),
        )
        .yaml()
}

/// The proxy with the admin socket, and the webhook receiver's bodies.
struct Setup {
    env: TestEnv,
    hooks: mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn start(timeout: &str) -> Setup {
    // Bound first so the config can name its port; served once the upstream CA exists.
    let hook_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hook");
    let hook_port = hook_listener.local_addr().expect("hook addr").port();
    let template = config(timeout, hook_port);
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&template, Alpn::Both, options).await;
    let (send, hooks) = mpsc::unbounded_channel();
    tokio::spawn(serve_hooks(hook_listener, hook_tls(&env), send));
    Setup { env, hooks }
}

fn hook_tls(env: &TestEnv) -> tokio_rustls::TlsAcceptor {
    let (chain, key) = env
        .upstream_ca
        .issue_server_cert(&[HOOK_HOST])
        .expect("hook certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("hook certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// The webhook receiver: every POST body goes to `bodies`; answers 204.
async fn serve_hooks(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    bodies: mpsc::UnboundedSender<Vec<u8>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let tls = tls.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let bodies = bodies.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let _ = bodies.send(body.to_vec());
                    let mut response = http::Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = http::StatusCode::NO_CONTENT;
                    Ok::<_, hyper::Error>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin(env: &TestEnv) -> AdminClient {
    let socket = env.proxy.admin_socket().expect("admin socket served");
    AdminClient::new(AdminTarget::Socket(socket.to_path_buf()))
}

/// Issues a task from `policy`; returns its id and token.
fn issue(env: &TestEnv, policy: &str, id: &str) -> (String, String) {
    let issued = env
        .proxy
        .issue(&IssueRequest {
            policy: policy.into(),
            id: Some(id.into()),
            ..IssueRequest::default()
        })
        .expect("task issued");
    env.remember_token(&issued.token);
    (issued.id.clone(), issued.token.clone())
}

/// One request of `task`; requests to `/echo/**` with DELETE (the rule that grants the
/// github secret) and to `/echo/x` carry its placeholder, others carry nothing.
async fn send(
    env: &TestEnv,
    task: &(String, String),
    method: &str,
    host: &str,
    path: &str,
) -> Reply {
    let opts = env.client(Some((&task.0, &task.1)), &format!("{host}:443"), Alpn::Both);
    let auth = bearer(GITHUB_PLACEHOLDER);
    let carries = method == "DELETE" || path == "/echo/x";
    let headers: Vec<(&str, &str)> = if carries {
        vec![("authorization", auth.as_str())]
    } else {
        Vec::new()
    };
    env.request(&opts, method, path, &headers).await
}

/// Waits until `task` has `count` requests waiting; returns them, oldest first.
async fn waiting(env: &TestEnv, task: &str, count: usize) -> Vec<ApprovalInfo> {
    let client = admin(env);
    let give_up = tokio::time::Instant::now() + SAFETY;
    loop {
        let list = client
            .approvals(Some(task))
            .await
            .expect("GET /v1/approvals");
        if list.len() >= count {
            for a in &list {
                env.keep(&[], &serde_json::to_string(a).expect("json"));
            }
            return list;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no request of {task} started waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn approve(env: &TestEnv, id: &str, scope: &str) {
    let answered = admin(env)
        .answer(
            id,
            &AnswerRequest {
                answer: "approve".into(),
                scope: Some(scope.into()),
                reason: None,
            },
        )
        .await
        .expect("approve");
    assert_eq!(answered.by, my_uid(), "the socket peer is who approved");
}

async fn deny(env: &TestEnv, id: &str, reason: Option<&str>) {
    admin(env)
        .answer(
            id,
            &AnswerRequest {
                answer: "deny".into(),
                scope: None,
                reason: reason.map(str::to_string),
            },
        )
        .await
        .expect("deny");
}

/// Denies every request of `task` that starts waiting, forever: run beside a request that
/// must *not* wait, so that a hold fails the test at once instead of hanging it.
async fn deny_anything(env: &TestEnv, task: &str) {
    let client = admin(env);
    loop {
        for a in client.approvals(Some(task)).await.unwrap_or_default() {
            let _ = client
                .answer(
                    &a.id,
                    &AnswerRequest {
                        answer: "deny".into(),
                        scope: None,
                        reason: Some("this request was expected to pass without asking".into()),
                    },
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a request that must pass without waiting for anyone.
async fn send_unasked(
    env: &TestEnv,
    task: &(String, String),
    method: &str,
    host: &str,
    path: &str,
) -> Reply {
    tokio::select! {
        reply = send(env, task, method, host, path) => reply,
        _ = deny_anything(env, &task.0) => unreachable!(),
    }
}

fn my_uid() -> String {
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    format!("uid:{uid}")
}

fn approval_records(env: &TestEnv) -> Vec<serde_json::Value> {
    env.audit()
        .into_iter()
        .filter(|r| r["event"] == "approval")
        .collect()
}

fn upstream_saw(env: &TestEnv, path: &str) -> bool {
    env.upstream.seen().iter().any(|r| r.path_and_query == path)
}

#[tokio::test]
async fn held_request_approved_once_reaches_upstream_with_the_secret() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "approve-once");
    let (reply, listed) =
        tokio::join!(send(&env, &task, "DELETE", API_HOST, "/echo/held"), async {
            let listed = waiting(&env, &task.0, 1).await;
            // Nothing went upstream while it waited.
            assert!(!upstream_saw(&env, "/echo/held"));
            approve(&env, &listed[0].id, "once").await;
            listed
        });
    assert_eq!(reply.status, 200, "{reply:?}");
    let a = &listed[0];
    assert_eq!(
        (
            a.method.as_str(),
            a.host.as_str(),
            a.path.as_deref(),
            a.why.as_str()
        ),
        ("DELETE", API_HOST, Some("/echo/held"), "each")
    );
    assert_eq!(a.rule, Some(0));
    assert_eq!(a.secrets, vec!["github".to_string()]);
    assert_eq!(
        env.upstream.authorization_for("/echo/held").as_deref(),
        Some(bearer(GITHUB_REAL).as_str()),
        "the approved request was swapped as its rule grants"
    );

    // approve: each asks again; scope once left nothing behind.
    let (reply, _) = tokio::join!(send(&env, &task, "DELETE", API_HOST, "/echo/held"), async {
        let listed = waiting(&env, &task.0, 1).await;
        deny(&env, &listed[0].id, None).await;
    });
    assert_eq!(reply.reason(), Some("approval_denied"), "{reply:?}");

    let records = approval_records(&env);
    let approved = records
        .iter()
        .find(|r| r["answer"] == "approved")
        .expect("approval audited");
    assert_eq!(approved["by"], my_uid());
    assert_eq!(approved["scope"], "once");
    assert_eq!(approved["task"], task.0.as_str());
    assert_eq!(approved["secrets"], serde_json::json!(["github"]));
    let request = env
        .audit_where(|r| {
            r["event"] == "request" && r["path"] == "/echo/held" && r["reason"] == "allowed"
        })
        .await;
    assert_eq!(request["rule"], 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn approve_once_rule_asks_only_the_first_time_per_task() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "once-a");
    let (reply, _) = tokio::join!(send(&env, &task, "POST", API_HOST, "/echo/once"), async {
        let listed = waiting(&env, &task.0, 1).await;
        assert_eq!(listed[0].why, "once");
        approve(&env, &listed[0].id, "once").await;
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    let again = send_unasked(&env, &task, "POST", API_HOST, "/echo/once").await;
    assert_eq!(
        again.status, 200,
        "approve: once asks once per task: {again:?}"
    );

    // Another task has not been approved yet.
    let other = issue(&env, POLICY, "once-b");
    let (reply, _) = tokio::join!(send(&env, &other, "POST", API_HOST, "/echo/once"), async {
        let listed = waiting(&env, &other.0, 1).await;
        deny(&env, &listed[0].id, Some("not this one")).await;
    });
    assert_eq!(reply.reason(), Some("approval_denied"), "{reply:?}");
    env.assert_no_leaks();
}

#[tokio::test]
async fn task_scope_opens_the_exact_route_for_that_task_only() {
    let Setup { env, .. } = start("10m").await;
    let first = issue(&env, POLICY, "scope-a");
    let second = issue(&env, POLICY, "scope-b");
    // No rule allows GET /echo/unlisted: under on_unlisted: ask it waits.
    let (reply, listed) = tokio::join!(
        send(&env, &first, "GET", API_HOST, "/echo/unlisted"),
        async {
            let listed = waiting(&env, &first.0, 1).await;
            approve(&env, &listed[0].id, "task").await;
            listed
        }
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(listed[0].why, "unlisted");
    assert_eq!(listed[0].rule, None);
    assert!(listed[0].secrets.is_empty());

    // The same route again for the same task: no question.
    let again = send_unasked(&env, &first, "GET", API_HOST, "/echo/unlisted").await;
    assert_eq!(again.status, 200, "{again:?}");

    // Not a wider route for the same task...
    let (reply, _) = tokio::join!(
        send(&env, &first, "GET", API_HOST, "/echo/unlisted/more"),
        async {
            let listed = waiting(&env, &first.0, 1).await;
            deny(&env, &listed[0].id, None).await;
        }
    );
    assert_eq!(reply.reason(), Some("approval_denied"), "{reply:?}");

    // ...and not the same route for another task: it waits, and a denial tells the agent
    // the human's reason (control characters flattened).
    let seen_before = env.upstream.seen_count();
    let (reply, _) = tokio::join!(
        send(&env, &second, "GET", API_HOST, "/echo/unlisted"),
        async {
            let listed = waiting(&env, &second.0, 1).await;
            deny(
                &env,
                &listed[0].id,
                Some("not on a Friday\r\nX-Injected: yes"),
            )
            .await;
        }
    );
    assert_eq!(reply.status, 403);
    assert_eq!(reply.reason(), Some("approval_denied"));
    assert!(
        reply.body.contains("not on a Friday  X-Injected: yes"),
        "{}",
        reply.body
    );
    assert!(reply.header("x-injected").is_none());
    assert_eq!(
        env.upstream.seen_count(),
        seen_before,
        "a denied request never went upstream"
    );
    let denied = approval_records(&env)
        .into_iter()
        .find(|r| r["task"] == second.0.as_str() && r["answer"] == "denied")
        .expect("denial audited");
    assert_eq!(denied["note"], "not on a Friday  X-Injected: yes");
    assert_eq!(denied["by"], my_uid());
    env.assert_no_leaks();
}

#[tokio::test]
async fn placeholder_on_an_approved_unlisted_request_is_still_refused() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "no-secret");
    let (reply, _) = tokio::join!(send(&env, &task, "GET", OTHER_HOST, "/echo/x"), async {
        // The CONNECT to other.upstream.test waits first (no rule lists the host).
        let connect = waiting(&env, &task.0, 1).await;
        assert_eq!(connect[0].method, "CONNECT");
        approve(&env, &connect[0].id, "once").await;
        let request = waiting(&env, &task.0, 1).await;
        assert_eq!(request[0].method, "GET");
        approve(&env, &request[0].id, "once").await;
    });
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.reason(), Some("placeholder_not_allowed"));
    assert!(!upstream_saw(&env, "/echo/x"));
    env.assert_no_leaks();
}

#[tokio::test]
async fn connect_to_an_unlisted_host_waits_and_rule_scope_opens_only_that_host() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "connect");
    let opts = env.client(
        Some((&task.0, &task.1)),
        &format!("{OTHER_HOST}:443"),
        Alpn::Both,
    );
    let (tunnel, listed) = tokio::join!(client::connect_tunnel(&opts), async {
        let listed = waiting(&env, &task.0, 1).await;
        approve(&env, &listed[0].id, "rule").await;
        listed
    });
    assert_eq!(listed[0].method, "CONNECT");
    assert_eq!(listed[0].path, None);
    assert_eq!(listed[0].host, OTHER_HOST);
    let mut conn = match tunnel.expect("tunnel io") {
        Tunnel::Open(conn) => conn,
        Tunnel::Refused { status, reason, .. } => panic!("CONNECT refused: {status} {reason:?}"),
    };
    // Rule scope on an unlisted host: the host (and only it) is open for this task.
    let h2 = conn.negotiated_h2();
    let req = client::request("GET", OTHER_HOST, "/echo/inside", h2)
        .body(client::empty())
        .expect("request");
    let response = tokio::select! {
        r = conn.send(req) => r.expect("response"),
        _ = deny_anything(&env, &task.0) => unreachable!(),
    };
    let reply = env.reply(response).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let again = send_unasked(&env, &task, "GET", OTHER_HOST, "/echo/new-tunnel").await;
    assert_eq!(again.status, 200, "{again:?}");

    // A denied CONNECT: the tunnel opens only to deliver the refusal inside TLS (what a
    // client shows its caller), and nothing is dialled upstream.
    let denied_task = issue(&env, POLICY, "connect-denied");
    let opts = env.client(
        Some((&denied_task.0, &denied_task.1)),
        &format!("{OTHER_HOST}:443"),
        Alpn::Both,
    );
    let (tunnel, _) = tokio::join!(client::connect_tunnel(&opts), async {
        let listed = waiting(&env, &denied_task.0, 1).await;
        deny(&env, &listed[0].id, Some("no")).await;
    });
    let mut conn = match tunnel.expect("tunnel io") {
        Tunnel::Open(conn) => conn,
        Tunnel::Refused { status, reason, .. } => {
            panic!("the refusal belongs inside the tunnel, got {status} {reason:?} on the CONNECT")
        }
    };
    let h2 = conn.negotiated_h2();
    let req = client::request("GET", OTHER_HOST, "/echo/denied", h2)
        .body(client::empty())
        .expect("request");
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.reason(), Some("approval_denied"), "{reply:?}");
    env.assert_no_leaks();
}

#[tokio::test]
async fn deny_policy_does_not_ask() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, "other", "denies");
    let reply = send_unasked(&env, &task, "GET", API_HOST, "/echo/unlisted").await;
    assert_eq!(reply.reason(), Some("route_not_allowed"), "{reply:?}");
    env.assert_no_leaks();
}

#[tokio::test]
async fn timeout_refuses_and_the_upstream_never_sees_the_request() {
    let Setup { env, .. } = start("1s").await;
    let task = issue(&env, POLICY, "slow-human");
    // Nobody answers: the request ends when approval.timeout has passed.
    let reply = send(&env, &task, "DELETE", API_HOST, "/echo/late").await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.reason(), Some("approval_timeout"));
    assert!(!upstream_saw(&env, "/echo/late"));
    assert!(admin(&env)
        .approvals(Some(&task.0))
        .await
        .expect("list")
        .is_empty());
    let record = approval_records(&env)
        .into_iter()
        .find(|r| r["answer"] == "timeout")
        .expect("timeout audited");
    assert_eq!(record["by"], serde_json::Value::Null);
    env.audit_where(|r| r["event"] == "request" && r["reason"] == "approval_timeout")
        .await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn queue_full_refuses_more_waiting_requests_of_a_task() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "busy");
    let (first, second, third) = tokio::join!(
        send(&env, &task, "DELETE", API_HOST, "/echo/q1"),
        send(&env, &task, "DELETE", API_HOST, "/echo/q2"),
        async {
            let listed = waiting(&env, &task.0, 2).await;
            // max_pending: 2 — a third is refused at once.
            let third = send(&env, &task, "DELETE", API_HOST, "/echo/q3").await;
            for a in listed {
                deny(&env, &a.id, None).await;
            }
            third
        }
    );
    assert_eq!(third.status, 429, "{third:?}");
    assert_eq!(third.reason(), Some("approval_queue_full"));
    assert_eq!(first.reason(), Some("approval_denied"));
    assert_eq!(second.reason(), Some("approval_denied"));
    assert!(!upstream_saw(&env, "/echo/q3"));
    env.assert_no_leaks();
}

#[tokio::test]
async fn revocation_ends_a_waiting_request() {
    let Setup { env, .. } = start("10m").await;
    let task = issue(&env, POLICY, "revoked");
    let opts = env.client(
        Some((&task.0, &task.1)),
        &format!("{API_HOST}:443"),
        Alpn::Both,
    );
    let mut conn = env.open(&opts).await;
    let h2 = conn.negotiated_h2();
    let req = client::request("DELETE", API_HOST, "/echo/revoked", h2)
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .expect("request");
    let (result, _) = tokio::join!(conn.send(req), async {
        waiting(&env, &task.0, 1).await;
        env.proxy.revoke(&task.0, RevokeWhy::Api).expect("revoke");
    });
    // The held request is refused `no_task`, unless the revocation closed the connection
    // (which ends the request with it) first; either way the upstream never saw it and the
    // approval is recorded as ended with the task.
    match result {
        Ok(response) => {
            let reply = env.reply(response).await;
            assert_eq!((reply.status, reply.reason()), (407, Some("no_task")));
        }
        Err(_closed) => {}
    }
    assert!(!upstream_saw(&env, "/echo/revoked"));
    let record = env
        .audit_where(|r| r["event"] == "approval" && r["answer"] == "task_ended")
        .await;
    assert_eq!(record["task"], task.0.as_str());
    env.assert_no_leaks();
}

#[tokio::test]
async fn webhook_gets_the_waiting_request_without_secret_or_token() {
    let Setup { env, mut hooks } = start("10m").await;
    let task = issue(&env, POLICY, "hooked");
    let (reply, body) = tokio::join!(
        send(&env, &task, "DELETE", API_HOST, "/echo/hooked"),
        async {
            let body = tokio::time::timeout(SAFETY, hooks.recv())
                .await
                .expect("the webhook was called")
                .expect("hook body");
            let listed = waiting(&env, &task.0, 1).await;
            deny(&env, &listed[0].id, None).await;
            body
        }
    );
    assert_eq!(reply.reason(), Some("approval_denied"));
    let text = String::from_utf8(body).expect("utf-8");
    env.keep(&[], &text);
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["task"], task.0.as_str());
    assert_eq!(json["method"], "DELETE");
    assert_eq!(json["host"], API_HOST);
    assert_eq!(json["path"], "/echo/hooked");
    assert_eq!(json["secrets"], serde_json::json!(["github"]));
    assert!(json["id"].as_str().is_some_and(|id| id.starts_with("ap-")));
    assert!(json["waiting_since"].is_string());
    for never in [GITHUB_REAL, OPENAI_REAL, task.1.as_str()] {
        assert!(
            !text.contains(never),
            "the webhook body carries a secret or token"
        );
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn answering_an_unknown_approval_is_an_error() {
    let Setup { env, .. } = start("10m").await;
    let err = admin(&env)
        .answer(
            "ap-999",
            &AnswerRequest {
                answer: "approve".into(),
                scope: Some("once".into()),
                reason: None,
            },
        )
        .await
        .expect_err("nothing waits");
    assert!(err.to_string().contains("unknown_approval"), "{err}");
}
