//! Ending a task ends its connections. Revocation, expiry and reloads close every kind of
//! connection a task can hold — intercepted HTTP/1.1 and h2, `tunnel: true` pass-through,
//! WebSocket, plain-HTTP proxy connections — within a second, cutting what is in flight,
//! while another task's connection of the same kind carries on. The ended task's
//! credentials open nothing afterwards.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use keyswap::api::{IssueRequest, IssuedTask, Reloaded};
use keyswap::state::tasks::RevokeWhy;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, DrivenConn as Conn, RawProxyStream, Tunnel};
use keyswap_tests::harness::{
    render, test_env_values, ConfigVars, TestEnv, AGENT_TOKEN, API_HOST, PLAIN_HOST, TUNNEL_HOST,
};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for an ended task's connection to close before it fails: a bound
/// against hanging, not a measurement (how fast revocation closes is the bench's to measure;
/// a timing assertion here would fail on a busy machine and prove nothing on an idle one).
const CLOSE_BOUND: Duration = Duration::from_secs(30);

/// A download far larger than anything that can arrive in the moments before the cut.
const BIG: u64 = 1 << 30;

/// The config head: upstreams and secrets as in the default config.
const BASE: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
    "tunnel.upstream.test:443": "127.0.0.1:{tunnel_port}"
    "plain.upstream.test:80": "127.0.0.1:{plain_port}"
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
"#;

/// The rules of the default config's `agent` task, for policies and static tasks alike.
const RULES: &str = r#"    allow:
      - host: api.upstream.test
        methods: [GET, POST, HEAD]
        paths: ["/echo", "/echo/**", "/bytes/*", "/ws", "/status/*"]
        secrets: [github]
      - host: tunnel.upstream.test
        tunnel: true
      - host: plain.upstream.test
        scheme: http
        secrets: [github]
        allow_cleartext: true
"#;

const POLICY: &str = "agent-rw";
const OTHER_POLICY: &str = "ci-rw";

/// A config template with these policies (max_ttl 1h) and these static tasks (token
/// [`AGENT_TOKEN`]), all with [`RULES`].
fn template(policies: &[&str], tasks: &[&str]) -> String {
    let mut yaml = BASE.to_string();
    if !policies.is_empty() {
        yaml.push_str("policies:\n");
        for name in policies {
            yaml.push_str(&format!("  {name}:\n    max_ttl: 1h\n{RULES}"));
        }
    }
    if !tasks.is_empty() {
        yaml.push_str("tasks:\n");
        for name in tasks {
            yaml.push_str(&format!("  {name}:\n    token_env: KS_TEST_TOKEN\n{RULES}"));
        }
    }
    yaml
}

async fn start() -> TestEnv {
    TestEnv::start_with_options(
        &template(&[POLICY, OTHER_POLICY], &["agent", "ci"]),
        Alpn::Both,
        ProxyOptions::default(),
    )
    .await
}

/// Reloads the proxy with [`template`]`(policies, tasks)`.
fn reload(env: &TestEnv, policies: &[&str], tasks: &[&str]) -> Reloaded {
    let yaml = render(
        &template(policies, tasks),
        &ConfigVars {
            dir: env.dir.path(),
            https_port: env.upstream.port(),
            plain_port: env.plain.port(),
            tunnel_port: env.tunnel.port(),
        },
    );
    let config = keyswap_config::load_str(
        &yaml,
        &env.dir.path().join("keyswap.yaml"),
        &test_env_values(),
    )
    .unwrap_or_else(|e| panic!("reload config invalid:\n{e}"));
    env.proxy.reload(config).expect("reload")
}

fn issue(env: &TestEnv, policy: &str, ttl: &str) -> IssuedTask {
    let issued = env
        .proxy
        .issue(&IssueRequest {
            policy: policy.into(),
            ttl: Some(ttl.into()),
            ..IssueRequest::default()
        })
        .expect("task issued");
    env.remember_token(&issued.token);
    issued
}

/// A task's credentials: (id, token).
type Auth<'a> = (&'a str, &'a str);

fn auth(task: &IssuedTask) -> Auth<'_> {
    (&task.id, &task.token)
}

fn proxy_authorization((task, token): Auth<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{task}:{token}"));
    format!("Basic {encoded}")
}

/// What the tests ask of a [`Conn`].
trait ConnExt {
    async fn get(&mut self, env: &TestEnv, authority: &str, path: &str) -> u16;
    async fn closes_within_bound_of(&mut self, what: &str, since: Instant);
}

impl ConnExt for Conn {
    /// `GET path` inside a tunnel to `authority`; the status, the reply kept for the leak
    /// check.
    async fn get(&mut self, env: &TestEnv, authority: &str, path: &str) -> u16 {
        let req = client::request("GET", authority, path, self.h2())
            .body(client::empty())
            .expect("request");
        let resp = self.send(req).await.expect("response");
        env.reply(resp).await.status
    }

    /// Waits for the connection to end, at most until `since` + [`CLOSE_BOUND`].
    async fn closes_within_bound_of(&mut self, what: &str, since: Instant) {
        let _ = ends_by(what, since + CLOSE_BOUND, &mut self.driver).await;
    }
}

/// Awaits `fut`, failing the test if it has not finished by `deadline`.
async fn ends_by<F: Future>(what: &str, deadline: Instant, fut: F) -> F::Output {
    match timeout_at(deadline, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} was never closed ({CLOSE_BOUND:?} after its task ended)"),
    }
}

/// CONNECT with `auth`, which must be answered 200; the raw socket after it.
async fn connect(env: &TestEnv, auth: Auth<'_>, authority: &str) -> TcpStream {
    let mut raw = RawProxyStream::connect(env.proxy.addr())
        .await
        .expect("connect to the proxy");
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        proxy_authorization(auth)
    );
    raw.send_raw(head.as_bytes()).await.expect("send CONNECT");
    let response = raw.read_response_head().await.expect("CONNECT answer");
    assert_eq!(response.status, 200, "CONNECT refused: {response:?}");
    raw.into_inner()
}

/// An intercepted connection to [`API_HOST`] for `auth`.
async fn intercepted(env: &TestEnv, auth: Auth<'_>, alpn: Alpn) -> Conn {
    let tcp = connect(env, auth, &format!("{API_HOST}:443")).await;
    let conn = Conn::over_tls(tcp, API_HOST, &env.proxy_ca, alpn).await;
    assert_eq!(
        conn.h2(),
        alpn == Alpn::Http2Only,
        "unexpected ALPN outcome"
    );
    conn
}

/// A `tunnel: true` connection to [`TUNNEL_HOST`]: TLS with the upstream itself.
async fn tunnelled(env: &TestEnv, auth: Auth<'_>) -> Conn {
    let tcp = connect(env, auth, &format!("{TUNNEL_HOST}:443")).await;
    Conn::over_tls(
        tcp,
        TUNNEL_HOST,
        env.upstream_ca.cert_der(),
        Alpn::Http1Only,
    )
    .await
}

/// A plain-HTTP proxy connection (`HTTP_PROXY`), not yet used.
async fn plain(env: &TestEnv) -> Conn {
    let tcp = TcpStream::connect(env.proxy.addr())
        .await
        .expect("connect to the proxy");
    tcp.set_nodelay(true).expect("nodelay");
    Conn::handshake(tcp, false).await
}

/// `GET http://plain.upstream.test/echo` on a plain-HTTP proxy connection as `auth`.
async fn plain_get(env: &TestEnv, conn: &mut Conn, auth: Auth<'_>) -> u16 {
    let req = Request::get(format!("http://{PLAIN_HOST}/echo"))
        .header("host", PLAIN_HOST)
        .header("proxy-authorization", proxy_authorization(auth))
        .body(client::empty())
        .expect("request");
    let resp = conn.send(req).await.expect("plain response");
    env.reply(resp).await.status
}

/// Revokes `task` through the API; the instant of the revocation.
fn revoke(env: &TestEnv, task: &IssuedTask) -> Instant {
    let at = Instant::now();
    let revoked = env.proxy.revoke(&task.id, RevokeWhy::Api).expect("revoke");
    assert!(
        revoked.connections_closed >= 1,
        "the revoked task had no connection registered: {revoked:?}"
    );
    at
}

/// After `task` ended for `why`: it is gone from the registry, its `task_revoked` record says
/// why and counts its connections, and its credentials get 407 `bad_token`.
async fn assert_ended(env: &TestEnv, task: Auth<'_>, why: &str) {
    assert!(
        env.proxy.shared().tasks.get(task.0).is_none(),
        "ended task still registered"
    );
    let record = env
        .audit_where(|r| r["event"] == "task_revoked" && r["task"] == task.0)
        .await;
    assert_eq!(record["why"], why, "{record}");
    assert!(
        record["connections_closed"].as_u64().unwrap_or(0) >= 1,
        "{record}"
    );
    assert_refused(env, task).await;
}

/// A new CONNECT with `auth` is refused 407 `bad_token`.
async fn assert_refused(env: &TestEnv, auth: Auth<'_>) {
    let opts = env.client(Some(auth), &format!("{API_HOST}:443"), Alpn::Http1Only);
    match client::connect_tunnel(&opts).await.expect("CONNECT io") {
        Tunnel::Refused { status, reason, .. } => {
            assert_eq!(status, 407);
            assert_eq!(reason.as_deref(), Some("bad_token"));
        }
        Tunnel::Open(_) => panic!("CONNECT as {} was let through", auth.0),
    }
}

/// Reads a response body to its end: `Ok(len)` if it completed, `Err(len)` if it was cut.
async fn drain(body: &mut Incoming, mut received: u64) -> Result<u64, u64> {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return Err(received),
        }
    }
    Ok(received)
}

/// Starts a [`BIG`] download on `conn` and reads only its first frame, leaving it in flight.
async fn start_download(conn: &mut Conn) -> (Incoming, u64) {
    let req = client::request("GET", API_HOST, &format!("/bytes/{BIG}"), conn.h2())
        .body(client::empty())
        .expect("request");
    let resp = conn.send(req).await.expect("download response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .expect("first frame intact");
    let received = first.data_ref().map_or(0, |d| d.len() as u64);
    (body, received)
}

/// Revokes a task whose [`BIG`] download is in flight on `conn`: the body is cut with an
/// error, short of its length, and the connection ends, all within [`CLOSE_BOUND`].
async fn assert_revoke_cuts_download(env: &TestEnv, task: &IssuedTask, mut conn: Conn) {
    let (mut body, received) = start_download(&mut conn).await;
    let revoked_at = revoke(env, task);
    let outcome = ends_by(
        "the download",
        revoked_at + CLOSE_BOUND,
        drain(&mut body, received),
    )
    .await;
    match outcome {
        Err(received) => assert!(received < BIG, "all {received} bytes arrived"),
        Ok(received) => panic!("the download completed ({received} bytes) despite revocation"),
    }
    conn.closes_within_bound_of("the connection", revoked_at)
        .await;
}

#[tokio::test]
async fn revoke_closes_an_idle_http1_keep_alive_connection() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let mut conn_a = intercepted(&env, auth(&a), Alpn::Http1Only).await;
    let mut conn_b = intercepted(&env, auth(&b), Alpn::Http1Only).await;
    assert_eq!(conn_a.get(&env, API_HOST, "/echo").await, 200);
    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    let live = env.proxy.shared().tasks.get(&a.id).expect("task a live");
    assert_eq!(live.open_connections(), 1);

    let revoked_at = revoke(&env, &a);
    conn_a
        .closes_within_bound_of("idle HTTP/1.1 connection", revoked_at)
        .await;
    assert!(live.is_cancelled());
    assert_eq!(live.open_connections(), 0, "connection not deregistered");

    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoke_cuts_an_http2_stream_in_flight() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let conn_a = intercepted(&env, auth(&a), Alpn::Http2Only).await;
    let mut conn_b = intercepted(&env, auth(&b), Alpn::Http2Only).await;
    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);

    assert_revoke_cuts_download(&env, &a, conn_a).await;

    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoke_cuts_an_http1_download_in_progress() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let conn_a = intercepted(&env, auth(&a), Alpn::Http1Only).await;
    let mut conn_b = intercepted(&env, auth(&b), Alpn::Http1Only).await;
    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);

    assert_revoke_cuts_download(&env, &a, conn_a).await;

    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoke_closes_a_tunnel() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let mut conn_a = tunnelled(&env, auth(&a)).await;
    let mut conn_b = tunnelled(&env, auth(&b)).await;
    assert_eq!(conn_a.get(&env, TUNNEL_HOST, "/echo/a").await, 200);
    assert_eq!(conn_b.get(&env, TUNNEL_HOST, "/echo/b").await, 200);

    let revoked_at = revoke(&env, &a);
    conn_a.closes_within_bound_of("tunnel", revoked_at).await;

    assert_eq!(conn_b.get(&env, TUNNEL_HOST, "/echo/b").await, 200);
    assert_eq!(
        env.tunnel.seen_count(),
        3,
        "not every tunnelled request reached the tunnel upstream"
    );
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

/// Sends `text` and waits for the upstream's echo.
async fn ws_echo(ws: &mut tokio_tungstenite::WebSocketStream<client::ProxyTlsStream>, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("ws send");
    loop {
        match ws.next().await.expect("ws open").expect("ws frame") {
            Message::Text(t) if t.as_str() == text => return,
            Message::Text(_) | Message::Binary(_) => panic!("unexpected WebSocket message"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn revoke_closes_a_websocket() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let open = |task: &IssuedTask| {
        let opts = env.client(
            Some(auth(task)),
            &format!("{API_HOST}:443"),
            Alpn::Http1Only,
        );
        async move {
            client::websocket_through_proxy(&opts, "/ws", Vec::new())
                .await
                .expect("websocket through the proxy")
        }
    };
    let mut ws_a = open(&a).await;
    let mut ws_b = open(&b).await;
    ws_echo(&mut ws_a, "from a").await;
    ws_echo(&mut ws_b, "from b").await;

    let revoked_at = revoke(&env, &a);
    let closed = async {
        loop {
            match ws_a.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => {}
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    panic!("a message arrived on a revoked WebSocket")
                }
                Some(Ok(_)) => {}
            }
        }
    };
    ends_by("WebSocket", revoked_at + CLOSE_BOUND, closed).await;

    ws_echo(&mut ws_b, "still from b").await;
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoke_closes_a_plain_http_proxy_connection() {
    let env = start().await;
    let (a, b) = (issue(&env, POLICY, "30m"), issue(&env, POLICY, "30m"));
    let mut conn_a = plain(&env).await;
    let mut conn_b = plain(&env).await;
    assert_eq!(plain_get(&env, &mut conn_a, auth(&a)).await, 200);
    assert_eq!(plain_get(&env, &mut conn_b, auth(&b)).await, 200);

    let revoked_at = revoke(&env, &a);
    conn_a
        .closes_within_bound_of("plain-HTTP proxy connection", revoked_at)
        .await;

    assert_eq!(plain_get(&env, &mut conn_b, auth(&b)).await, 200);
    assert_ended(&env, auth(&a), "api").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn expiry_closes_the_tasks_connections_and_removes_it() {
    let env = start().await;
    let ttl = Duration::from_secs(1);
    let issued_at = Instant::now();
    let a = issue(&env, POLICY, "1s");
    let b = issue(&env, POLICY, "30m");
    let mut conn_a = intercepted(&env, auth(&a), Alpn::Http2Only).await;
    let mut conn_b = intercepted(&env, auth(&b), Alpn::Http2Only).await;
    assert_eq!(conn_a.get(&env, API_HOST, "/echo").await, 200);
    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);

    // Ends by itself: within CLOSE_BOUND of the expiry.
    conn_a
        .closes_within_bound_of("connection of the expired task", issued_at + ttl)
        .await;

    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, auth(&a), "expired").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn reload_that_keeps_the_policy_keeps_runtime_tasks_and_their_connections() {
    let env = start().await;
    let a = issue(&env, POLICY, "30m");
    let mut conn = intercepted(&env, auth(&a), Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo").await, 200);

    // The other policy and a static task go; agent-rw stays.
    let summary = reload(&env, &[POLICY], &["agent"]);
    assert!(summary.tasks_revoked.is_empty(), "{summary:?}");
    assert_eq!(summary.tasks_removed, vec!["ci".to_string()]);

    assert_eq!(conn.get(&env, API_HOST, "/echo").await, 200);
    assert!(!conn.driver.is_finished(), "the connection was closed");
    let opts = env.client(Some(auth(&a)), &format!("{API_HOST}:443"), Alpn::Http1Only);
    let reply = env.request(&opts, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let live = env.proxy.shared().tasks.get(&a.id).expect("task survived");
    assert!(!live.is_cancelled());
    assert!(
        !env.audit()
            .iter()
            .any(|r| r["event"] == "task_revoked" && r["task"] == a.id.as_str()),
        "the task was revoked by the reload"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn reload_that_removes_the_policy_revokes_its_tasks_and_closes_their_connections() {
    let env = start().await;
    let a = issue(&env, POLICY, "30m");
    let b = issue(&env, OTHER_POLICY, "30m");
    let mut conn_a = intercepted(&env, auth(&a), Alpn::Http2Only).await;
    let mut conn_b = intercepted(&env, auth(&b), Alpn::Http2Only).await;
    assert_eq!(conn_a.get(&env, API_HOST, "/echo").await, 200);
    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);

    let reloaded_at = Instant::now();
    let summary = reload(&env, &[OTHER_POLICY], &["agent", "ci"]);
    assert_eq!(summary.tasks_revoked, vec![a.id.clone()]);
    conn_a
        .closes_within_bound_of("connection of a task whose policy is gone", reloaded_at)
        .await;

    assert_eq!(conn_b.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, auth(&a), "reload").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn static_task_removed_by_reload_loses_its_connections() {
    let env = start().await;
    let mut conn_agent = intercepted(&env, ("agent", AGENT_TOKEN), Alpn::Http1Only).await;
    let mut conn_ci = intercepted(&env, ("ci", AGENT_TOKEN), Alpn::Http1Only).await;
    assert_eq!(conn_agent.get(&env, API_HOST, "/echo").await, 200);
    assert_eq!(conn_ci.get(&env, API_HOST, "/echo").await, 200);

    let reloaded_at = Instant::now();
    let summary = reload(&env, &[POLICY, OTHER_POLICY], &["ci"]);
    assert_eq!(summary.tasks_removed, vec!["agent".to_string()]);
    conn_agent
        .closes_within_bound_of("connection of a removed static task", reloaded_at)
        .await;

    assert_eq!(conn_ci.get(&env, API_HOST, "/echo").await, 200);
    assert_ended(&env, ("agent", AGENT_TOKEN), "reload").await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn one_tasks_token_does_not_open_another_task() {
    let env = start().await;
    let a = issue(&env, POLICY, "30m");
    let b = issue(&env, POLICY, "30m");
    assert_refused(&env, (&b.id, &a.token)).await;
    assert_refused(&env, (&a.id, &b.token)).await;
    assert_refused(&env, ("agent", &a.token)).await;
    assert_refused(&env, (&a.id, AGENT_TOKEN)).await;
    // Each task's own pair still opens it.
    for task in [&a, &b] {
        let mut conn = intercepted(&env, auth(task), Alpn::Http1Only).await;
        assert_eq!(conn.get(&env, API_HOST, "/echo").await, 200);
    }
    env.assert_no_leaks();
}
