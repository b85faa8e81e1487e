//! Deny by default, with a reason: every refusal is asserted by status AND reason, and for
//! refusals of a request carrying a placeholder, that the upstream never saw it.

use keyswap_tests::client::{self, Alpn, RawProxyStream, Tunnel};
use keyswap_tests::harness::{bearer, TestEnv, AGENT_TOKEN, API_HOST, OTHER_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, OPENAI_PLACEHOLDER};

async fn refused(
    env: &TestEnv,
    opts: &client::ProxyClientOptions,
) -> (u16, Option<String>, String) {
    match client::connect_tunnel(opts).await.expect("tunnel io") {
        Tunnel::Refused {
            status,
            reason,
            body,
        } => {
            env.keep(&[], &body);
            (status, reason, body)
        }
        Tunnel::Open(_) => panic!("CONNECT to {} was not refused", opts.connect_to),
    }
}

#[tokio::test]
async fn connect_without_identity_gets_407_no_task() {
    let env = TestEnv::start().await;
    let opts = env.client(None, &format!("{API_HOST}:443"), Alpn::Both);
    let (status, reason, body) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (407, Some("no_task")));
    // The example proxy URL names where this keyswap listens, not a default address.
    let listening = env.proxy.addr().to_string();
    assert!(
        body.contains(&format!("@{listening}")),
        "the 407 body does not name {listening}: {body}"
    );
    let record = env.audit_where(|r| r["reason"] == "no_task").await;
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["status"], 407);
    // Before identity is known, the record still says where the agent was going.
    assert_eq!(
        (&record["host"], &record["port"]),
        (&API_HOST.into(), &443.into())
    );
    assert!(record.get("claimed_task").is_none(), "{record}");
    env.assert_no_leaks();
}

#[tokio::test]
async fn wrong_token_or_unknown_task_gets_407_bad_token() {
    let env = TestEnv::start().await;
    let listening = env.proxy.addr().to_string();
    for auth in [
        ("agent", "wrong-token"),
        ("no-such-task", AGENT_TOKEN),
        ("agent", ""),
    ] {
        let opts = env.client(Some(auth), &format!("{API_HOST}:443"), Alpn::Both);
        let (status, reason, body) = refused(&env, &opts).await;
        assert_eq!(
            (status, reason.as_deref()),
            (407, Some("bad_token")),
            "{auth:?}"
        );
        assert!(
            !body.contains("no-such-task"),
            "refusal echoes what the agent sent"
        );
        assert!(body.contains(&listening), "{body}");
    }
    let records: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r["reason"] == "bad_token")
        .collect();
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(record["task"], serde_json::Value::Null);
        assert_eq!(
            (&record["host"], &record["port"]),
            (&API_HOST.into(), &443.into())
        );
    }
    // The claimed task is recorded, marked as claimed, when it names a real task; a name
    // that is no task (it could be a mistyped token) is not written.
    let claimed: Vec<_> = records
        .iter()
        .map(|r| r.get("claimed_task").cloned())
        .collect();
    assert_eq!(
        claimed,
        vec![Some("agent".into()), None, Some("agent".into())]
    );
    env.assert_no_leaks();
}

/// A request inside a tunnel that keyswap opened only to refuse it.
async fn refused_inside(
    env: &TestEnv,
    opts: &client::ProxyClientOptions,
    path: &str,
) -> keyswap_tests::harness::Reply {
    env.request(opts, "GET", path, &[]).await
}

#[tokio::test]
async fn unlisted_host_is_refused_inside_the_tunnel_over_http1_and_h2() {
    // The unlisted host resolves to the in-process upstream: had keyswap dialled, it would
    // have seen a connection.
    let template = keyswap_tests::harness::DEFAULT_CONFIG.replace(
        "  resolve:\n",
        "  resolve:\n    \"unlisted.upstream.test:443\": \"127.0.0.1:{https_port}\"\n",
    );
    let env = TestEnv::start_with(&template, Alpn::Both).await;
    let connections_before = env.upstream.connections();
    for (alpn, version) in [(Alpn::Http1Only, "HTTP/1.1"), (Alpn::Http2Only, "h2")] {
        let opts = env.agent("unlisted.upstream.test:443", alpn);
        let reply = refused_inside(&env, &opts, "/repos/a/./b/../c?per_page=5").await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, Some("host_not_allowed")),
            "{version}"
        );
        assert!(
            reply
                .body
                .contains("unlisted.upstream.test:443 is not in task agent's allowlist"),
            "{version}: {}",
            reply.body
        );
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    assert_eq!(
        env.upstream.seen_count(),
        0,
        "a refused request reached the upstream"
    );
    assert_eq!(
        env.upstream.connections(),
        connections_before,
        "keyswap dialled a refused host"
    );
    let records: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r["reason"] == "host_not_allowed")
        .collect();
    assert_eq!(records.len(), 2, "one record per refused request");
    for record in records {
        assert_eq!(record["method"], "GET");
        assert_eq!(record["path"], "/repos/a/c", "the normalised path");
        assert_eq!(record["query_keys"], serde_json::json!(["per_page"]));
        assert_eq!(record["status"], 403);
        assert_eq!(record["decision"], "denied");
        assert_eq!(record["task"], "agent");
        assert_eq!(record["host"], "unlisted.upstream.test");
    }
    let log = String::from_utf8_lossy(&env.log()).into_owned();
    assert!(
        log.lines().any(|l| l.contains("request refused")
            && l.contains("method=GET")
            && l.contains("path=/repos/a/c")
            && l.contains("host_not_allowed")),
        "the refusal's log line names method and normalised path"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn refusal_connection_answers_once_then_closes() {
    let env = TestEnv::start().await;
    let opts = env.agent("evil.example.com:443", Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    let send = |path: &str| {
        client::request("GET", "evil.example.com", path, false)
            .body(client::empty())
            .unwrap()
    };
    let reply = env
        .reply(conn.send(send("/first")).await.expect("first answer"))
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("host_not_allowed"))
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        conn.send(send("/second")).await.is_err(),
        "a refusal connection served a second request"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn clear_text_http_inside_a_refused_tunnel_gets_the_refusal() {
    let env = TestEnv::start().await;
    let mut raw = RawProxyStream::connect(env.proxy.addr()).await.unwrap();
    let auth = client::proxy_authorization("agent", AGENT_TOKEN);
    let auth = auth.to_str().unwrap();
    raw.send_raw(
        format!("CONNECT evil.example.com:80 HTTP/1.1\r\nHost: evil.example.com:80\r\nProxy-Authorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let head = raw.read_response_head().await.unwrap();
    assert_eq!(head.status, 200);
    raw.send_raw(b"GET /x HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = raw.read_response_head().await.unwrap();
    assert_eq!(
        (head.status, head.header("x-keyswap-reason")),
        (403, Some("host_not_allowed"))
    );
    let body = String::from_utf8(raw.read_body(&head).await.unwrap()).unwrap();
    env.keep(&[], &body);
    assert!(
        body.contains("evil.example.com:80 is not in task agent's allowlist"),
        "{body}"
    );
    let record = env
        .audit_where(|r| r["reason"] == "host_not_allowed" && r["method"] == "GET")
        .await;
    assert_eq!(record["scheme"], "http");
    env.assert_no_leaks();
}

#[tokio::test]
async fn a_refused_tunnel_that_gets_neither_tls_nor_http_is_closed_and_audited() {
    let env = TestEnv::start().await;
    let mut raw = RawProxyStream::connect(env.proxy.addr()).await.unwrap();
    let auth = client::proxy_authorization("agent", AGENT_TOKEN);
    let auth = auth.to_str().unwrap();
    raw.send_raw(
        format!("CONNECT evil.example.com:22 HTTP/1.1\r\nHost: evil.example.com:22\r\nProxy-Authorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let head = raw.read_response_head().await.unwrap();
    assert_eq!(head.status, 200);
    // An SSH client speaks first with its version line; keyswap cannot answer it in kind.
    raw.send_raw(b"\x00\x00\x00\x2c not a protocol keyswap speaks\r\n")
        .await
        .unwrap();
    let rest = raw.read_body(&head).await.unwrap();
    assert!(rest.is_empty(), "keyswap wrote into a non-HTTP tunnel");
    let record = env
        .audit_where(|r| r["reason"] == "host_not_allowed" && r["method"] == "CONNECT")
        .await;
    assert_eq!(record["status"], 0, "no HTTP response was delivered");
    assert_eq!(
        (&record["host"], &record["port"]),
        (&"evil.example.com".into(), &22.into())
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn revoking_the_task_closes_a_refusal_connection() {
    let env = TestEnv::start().await;
    let opts = env.agent("evil.example.com:443", Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    // The task leaves the config: it is revoked, and its refusal connection must close too.
    let without_agent = env.config_yaml.replace("  agent:\n", "  agent-renamed:\n");
    let config = keyswap_config::load_str(
        &without_agent,
        &env.dir.path().join("keyswap.yaml"),
        &keyswap_tests::harness::test_env_values(),
    )
    .expect("config");
    env.proxy.reload(config).expect("reload");
    let req = client::request("GET", "evil.example.com", "/x", false)
        .body(client::empty())
        .unwrap();
    assert!(
        conn.send(req).await.is_err(),
        "a revoked task's refusal connection still answered"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn unlisted_port_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:8443"), Alpn::Both);
    let reply = refused_inside(&env, &opts, "/echo/x").await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("host_not_allowed"))
    );
    assert!(
        reply.body.contains(&format!("{API_HOST}:8443")),
        "{}",
        reply.body
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn unlisted_route_and_method_are_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let before = env.upstream.seen_count();
    let reply = env.request(&opts, "GET", "/admin/users", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("route_not_allowed"))
    );
    let reply = env.request(&opts, "DELETE", "/echo/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("route_not_allowed"))
    );
    // Methods are case-sensitive (RFC 9110 §9.1): "get" is not GET.
    let reply = env.request(&opts, "get", "/echo/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("route_not_allowed"))
    );
    assert_eq!(
        env.upstream.seen_count(),
        before,
        "a refused request reached the upstream"
    );
    env.audit_where(|r| r["reason"] == "route_not_allowed" && r["method"] == "DELETE")
        .await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn placeholder_on_a_route_without_the_grant_never_reaches_upstream() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let before = env.upstream.seen_count();
    // Rule 1 allows /public/** with no secret.
    let reply = env
        .request(
            &opts,
            "GET",
            "/public/page",
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("placeholder_not_allowed"))
    );
    assert!(reply.body.contains("github"), "message names the secret");
    // Rule 0 grants github only; openai's placeholder must not pass there.
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/x",
            &[("x-api-key", OPENAI_PLACEHOLDER)],
        )
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("placeholder_not_allowed"))
    );
    assert_eq!(
        env.upstream.seen_count(),
        before,
        "the upstream saw a refused request"
    );
    let record = env
        .audit_where(|r| r["reason"] == "placeholder_not_allowed")
        .await;
    assert_eq!(record["decision"], "denied");
    env.assert_no_leaks();
}

#[tokio::test]
async fn placeholder_of_another_host_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Both);
    let before = env.upstream.seen_count();
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/x",
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("placeholder_not_allowed"))
    );
    assert_eq!(env.upstream.seen_count(), before);
    env.assert_no_leaks();
}

#[tokio::test]
async fn expired_task_is_refused_inside_the_tunnel() {
    let env = TestEnv::start().await;
    for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
        let opts = env.client(
            Some(("expired", AGENT_TOKEN)),
            &format!("{API_HOST}:443"),
            alpn,
        );
        let reply = refused_inside(&env, &opts, "/echo/x").await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, Some("task_expired")),
            "{alpn:?}"
        );
        assert!(
            reply.body.contains("task expired has expired"),
            "{}",
            reply.body
        );
    }
    assert_eq!(env.upstream.seen_count(), 0);
    let record = env
        .audit_where(|r| r["reason"] == "task_expired" && r["method"] == "GET")
        .await;
    assert_eq!(record["task"], "expired");
    env.assert_no_leaks();
}

#[tokio::test]
async fn expired_task_on_a_tunnel_host_is_refused_at_connect() {
    let template = keyswap_tests::harness::DEFAULT_CONFIG.replace(
        "    expires: 2020-01-01T00:00:00Z\n    allow:\n",
        "    expires: 2020-01-01T00:00:00Z\n    allow:\n      - host: tunnel.upstream.test\n        tunnel: true\n",
    );
    let env = TestEnv::start_with(&template, Alpn::Both).await;
    let opts = env.client(
        Some(("expired", AGENT_TOKEN)),
        &format!("{}:443", keyswap_tests::harness::TUNNEL_HOST),
        Alpn::Both,
    );
    let (status, reason, _) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (403, Some("task_expired")));
    env.assert_no_leaks();
}

#[tokio::test]
async fn private_address_without_resolve_entry_is_refused() {
    let env = TestEnv::start().await;
    let port = env.upstream.port();
    let opts = env.agent(&format!("localhost:{port}"), Alpn::Both);
    let before = env.upstream.seen_count();
    let reply = env.request(&opts, "GET", "/echo/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("private_address"))
    );
    assert_eq!(env.upstream.seen_count(), before);
    env.assert_no_leaks();
}

#[tokio::test]
async fn upstream_failure_is_502_upstream_error() {
    // A resolve entry pointing at a closed port: bound (so no other test can take it) but
    // not listening, so a connection to it is refused.
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = closed.local_addr().expect("addr").port();
    let template = keyswap_tests::harness::DEFAULT_CONFIG.replace(
        "\"other.upstream.test:443\": \"127.0.0.1:{https_port}\"",
        &format!("\"other.upstream.test:443\": \"127.0.0.1:{port}\""),
    );
    let env = TestEnv::start_with(&template, Alpn::Both).await;
    let opts = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Both);
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/x",
            &[("x-api-key", OPENAI_PLACEHOLDER)],
        )
        .await;
    assert_eq!(
        (reply.status, reply.reason()),
        (502, Some("upstream_error"))
    );
    let record = env.audit_where(|r| r["reason"] == "upstream_error").await;
    assert_eq!(record["decision"], "error", "a failure is not a refusal");
    assert_eq!(
        record["secrets"],
        serde_json::json!([]),
        "nothing was sent, so no secret was used"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn ip_literals_in_non_canonical_notation_are_refused() {
    let env = TestEnv::start().await;
    for target in [
        "2130706433:443",
        "127.1:443",
        "0x7f.0.0.1:443",
        "0177.0.0.1:443",
    ] {
        let opts = env.agent(target, Alpn::Both);
        let (status, reason, _) = refused(&env, &opts).await;
        assert_eq!(
            (status, reason.as_deref()),
            (400, Some("bad_request")),
            "{target}"
        );
    }
    // The canonical form is decided by the allowlist like any host (and the refusal is
    // delivered inside the tunnel, with a leaf for the IP address).
    let opts = env.agent("127.0.0.1:443", Alpn::Both);
    let reply = refused_inside(&env, &opts, "/").await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("host_not_allowed"))
    );
    env.assert_no_leaks();
}
