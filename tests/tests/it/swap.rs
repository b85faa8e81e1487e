//! The allowed path: placeholders swapped on the way out, real values scrubbed on the way
//! back, over HTTP/1.1, HTTP/2, plain HTTP, tunnels and WebSocket, with streaming bodies.

use base64::Engine;
use keyswap_tests::client::{self, Alpn};
use keyswap_tests::harness::{bearer, TestEnv, API_HOST, OTHER_HOST, PLAIN_HOST, TUNNEL_HOST};
use keyswap_tests::secrets::{
    assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER, OPENAI_REAL,
};

fn seen_header(env: &TestEnv, path_prefix: &str, name: &str) -> Option<String> {
    env.upstream
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query.starts_with(path_prefix))
        .and_then(|r| {
            r.headers
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
        })
}

#[tokio::test]
async fn bearer_placeholder_is_swapped_and_echo_is_scrubbed() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/user",
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let upstream_saw =
        seen_header(&env, "/echo/user", "authorization").expect("upstream got the header");
    assert!(
        upstream_saw == format!("Bearer {GITHUB_REAL}"),
        "upstream did not receive the real token"
    );
    // The echo quotes the real value back; the agent must see the placeholder instead.
    assert!(
        reply.body.contains(GITHUB_PLACEHOLDER),
        "echo not scrubbed back to the placeholder"
    );
    assert_no_real_secret("echo body", reply.body.as_bytes());
    let record = env.audit_where(|r| r["path"] == "/echo/user").await;
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["reason"], "allowed");
    assert_eq!(record["secrets"], serde_json::json!(["github"]));
    assert_eq!(record["rule"], 0);
    assert_eq!(record["task"], "agent");
    assert_eq!(record["status"], 200);
    assert_eq!(record["host"], API_HOST);
    env.assert_no_leaks();
}

#[tokio::test]
async fn basic_credential_placeholder_is_swapped_inside_base64() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let b64 = base64::engine::general_purpose::STANDARD;
    let credential = format!(
        "Basic {}",
        b64.encode(format!("x-access-token:{GITHUB_PLACEHOLDER}"))
    );
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/basic",
            &[("authorization", &credential)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let saw = seen_header(&env, "/echo/basic", "authorization").expect("header reached upstream");
    let decoded = saw
        .strip_prefix("Basic ")
        .and_then(|e| b64.decode(e).ok())
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .unwrap_or_default();
    assert!(
        decoded == format!("x-access-token:{GITHUB_REAL}"),
        "Basic credential not swapped"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn http2_on_both_legs() {
    let env = TestEnv::start_with(keyswap_tests::harness::DEFAULT_CONFIG, Alpn::Http2Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http2Only);
    let mut conn = env.open(&opts).await;
    assert!(conn.negotiated_h2(), "agent leg did not negotiate h2");
    for i in 0..3 {
        let req = client::request("GET", API_HOST, &format!("/echo/h2/{i}"), true)
            .header("authorization", bearer(GITHUB_PLACEHOLDER))
            .body(client::empty())
            .unwrap();
        let reply = env.reply(conn.send(req).await.expect("h2 response")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let echoed: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
        assert_eq!(echoed["version"], "HTTP/2.0", "upstream leg was not h2");
    }
    let saw = seen_header(&env, "/echo/h2/2", "authorization").expect("header reached upstream");
    assert!(
        saw == format!("Bearer {GITHUB_REAL}"),
        "not swapped over h2"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn second_secret_swaps_only_where_granted() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Both);
    let reply = env
        .request(
            &opts,
            "POST",
            "/echo/anything",
            &[("x-api-key", OPENAI_PLACEHOLDER)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let saw = seen_header(&env, "/echo/anything", "x-api-key").expect("header reached upstream");
    assert!(saw == OPENAI_REAL, "openai placeholder not swapped");
    env.assert_no_leaks();
}

#[tokio::test]
async fn plain_http_forwarding_swaps_and_scrubs() {
    let env = TestEnv::start().await;
    let req = http::Request::builder()
        .method("GET")
        .uri(format!(
            "http://{PLAIN_HOST}/echo/plain?per_page=5&token=zzz"
        ))
        .header("host", PLAIN_HOST)
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
    assert_eq!(reply.status, 200, "{reply:?}");
    let saw = env
        .plain
        .seen()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/echo/plain"))
        .and_then(|r| r.headers.into_iter().find(|(n, _)| n == "authorization"))
        .map(|(_, v)| v)
        .expect("plain upstream got the header");
    assert!(
        saw == format!("Bearer {GITHUB_REAL}"),
        "not swapped over plain HTTP"
    );
    assert!(reply.body.contains(GITHUB_PLACEHOLDER));
    let record = env.audit_where(|r| r["path"] == "/echo/plain").await;
    assert_eq!(record["scheme"], "http");
    assert_eq!(
        record["query_keys"],
        serde_json::json!(["per_page", "token"])
    );
    let audit = std::fs::read_to_string(env.audit_path()).unwrap();
    assert!(
        !audit.contains("zzz"),
        "a query value reached the audit log"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn reflected_secret_split_across_frames_is_scrubbed_in_headers_and_body() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env
        .request(
            &opts,
            "GET",
            "/reflect-header?name=authorization",
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("x-reflected"),
        Some(bearer(GITHUB_PLACEHOLDER).as_str())
    );
    assert!(reply
        .header("set-cookie")
        .unwrap_or_default()
        .contains(GITHUB_PLACEHOLDER));
    assert!(
        reply
            .body
            .contains(&format!("reflected=Bearer {GITHUB_PLACEHOLDER}")),
        "split value not scrubbed"
    );
    assert_no_real_secret("reflected response", reply.body.as_bytes());
    env.assert_no_leaks();
}

#[tokio::test]
async fn tunnel_rule_passes_tls_through_untouched() {
    let env = TestEnv::start().await;
    // The agent talks TLS with the upstream itself: it must trust the upstream's CA.
    let mut opts = env.agent(&format!("{TUNNEL_HOST}:443"), Alpn::Http1Only);
    opts.trust = vec![env.upstream_ca.cert_der().clone()];
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/tunnelled",
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Not intercepted, so not swapped: the placeholder arrives as is.
    let saw = env
        .tunnel
        .seen()
        .into_iter()
        .find_map(|r| {
            r.headers
                .into_iter()
                .find(|(n, _)| n == "authorization")
                .map(|(_, v)| v)
        })
        .expect("tunnel upstream got the request");
    assert_eq!(saw, bearer(GITHUB_PLACEHOLDER));
    drop(reply);
    let record = env
        .audit_where(|r| r["method"] == "CONNECT" && r["host"] == TUNNEL_HOST)
        .await;
    assert_eq!(record["reason"], "allowed");
    assert!(record["req_bytes"].as_u64().unwrap_or(0) > 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn websocket_upgrade_is_swapped_then_spliced() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut ws = client::websocket_through_proxy(
        &opts,
        "/ws",
        vec![("authorization".into(), bearer(GITHUB_PLACEHOLDER))],
    )
    .await
    .expect("websocket through the proxy");
    let saw = seen_header(&env, "/ws", "authorization").expect("handshake reached upstream");
    assert!(
        saw == format!("Bearer {GITHUB_REAL}"),
        "handshake header not swapped"
    );
    ws.send(Message::Text("hello through keyswap".into()))
        .await
        .unwrap();
    let mut echoed = None;
    while let Some(msg) = ws.next().await {
        match msg.expect("frame") {
            Message::Text(t) if t.as_str() == "hello through keyswap" => {
                echoed = Some(t.to_string());
                break;
            }
            Message::Text(t) => assert_no_real_secret("websocket message", t.as_bytes()),
            _ => {}
        }
    }
    assert_eq!(echoed.as_deref(), Some("hello through keyswap"));
    env.assert_no_leaks();
}

#[tokio::test]
async fn hundred_mib_download_and_upload_arrive_intact() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let mut conn = env.open(&opts).await;
    let h2 = conn.negotiated_h2();

    let req = client::request("GET", API_HOST, &format!("/bytes/{SIZE}"), h2)
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .unwrap();
    let resp = conn.send(req).await.expect("download");
    assert_eq!(resp.status(), 200);
    let (count, checksum) = client::body_count_and_checksum(resp).await;
    let expected = pattern_checksum(SIZE);
    assert_eq!(count, SIZE);
    assert_eq!(checksum, expected, "download corrupted");

    let req = client::request("POST", API_HOST, "/upload", h2)
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .header("content-length", SIZE.to_string())
        .body(client::pattern_body(SIZE))
        .unwrap();
    let reply = env.reply(conn.send(req).await.expect("upload")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let summary: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(summary["bytes"], SIZE);
    assert_eq!(summary["checksum"], expected, "upload corrupted");
    let record = env.audit_where(|r| r["path"] == "/upload").await;
    assert_eq!(record["req_bytes"], SIZE);
    env.assert_no_leaks();
}

/// Checksum of `len` pattern bytes, computed a chunk at a time.
fn pattern_checksum(len: u64) -> u64 {
    let mut state = keyswap_tests::upstream::CHECKSUM_INIT;
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(1 << 20) as usize;
        state =
            keyswap_tests::upstream::checksum(&keyswap_tests::upstream::pattern(offset, n), state);
        offset += n as u64;
    }
    state
}

#[tokio::test]
async fn websocket_that_sends_a_real_secret_back_is_scrubbed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut ws = client::websocket_through_proxy(
        &opts,
        "/ws?announce=authorization",
        vec![("authorization".into(), bearer(GITHUB_PLACEHOLDER))],
    )
    .await
    .expect("websocket through the proxy");
    // The upstream's first message quotes the real token: keyswap replaces it with the
    // placeholder, as in HTTP responses (tests/tests/it/websocket_guard.rs covers frame shapes).
    let first = ws.next().await.expect("a message").expect("a valid frame");
    let Message::Text(text) = first else {
        panic!("the announcement is not a text message")
    };
    assert_no_real_secret("websocket message", text.as_bytes());
    assert!(
        text.as_str() == format!("authorization={}", bearer(GITHUB_PLACEHOLDER)),
        "the real value was not replaced by the placeholder"
    );
    env.keep(&[], text.as_str());
    env.assert_no_leaks();
}
