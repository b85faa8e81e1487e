//! The harness itself, without the proxy: the in-process upstream answers every route over
//! HTTP/1.1, h2 and WebSocket to a client trusting the test CA, and the tunnel client speaks
//! CONNECT correctly to a minimal splicing proxy written here.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::{self, Alpn, ProxyClientOptions, RawProxyStream, Tunnel};
use keyswap_tests::upstream::{checksum, pattern, Upstream, CHECKSUM_INIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn https() -> (CertificateAuthority, Upstream) {
    let ca = CertificateAuthority::generate("harness test CA").expect("CA");
    let upstream = Upstream::https(&ca).await;
    (ca, upstream)
}

async fn direct(ca: &CertificateAuthority, up: &Upstream, alpn: Alpn) -> client::ProxyConnection {
    client::connect_direct(up.addr, "localhost", alpn, &[ca.cert_der().clone()])
        .await
        .expect("direct TLS connection")
}

fn pattern_checksum(len: u64) -> u64 {
    let (mut state, mut offset) = (CHECKSUM_INIT, 0);
    while offset < len {
        let n = (len - offset).min(1 << 20) as usize;
        state = checksum(&pattern(offset, n), state);
        offset += n as u64;
    }
    state
}

#[tokio::test]
async fn echo_over_http1_and_h2() {
    let (ca, up) = https().await;
    for (alpn, h2, version) in [
        (Alpn::Http1Only, false, "HTTP/1.1"),
        (Alpn::Http2Only, true, "HTTP/2.0"),
        (Alpn::Both, true, "HTTP/2.0"),
    ] {
        let mut conn = direct(&ca, &up, alpn).await;
        assert_eq!(conn.negotiated_h2(), h2, "{alpn:?}");
        let req = client::request("POST", "localhost", "/echo/a/b?x=1", h2)
            .header("authorization", "Bearer echo-me")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .body(client::full("ignored"))
            .unwrap();
        let resp = conn.send(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let echo: serde_json::Value =
            serde_json::from_str(&client::body_string(resp).await).unwrap();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/echo/a/b");
        assert_eq!(echo["query"], "x=1");
        assert_eq!(echo["version"], version);
        assert_eq!(echo["authority"], "localhost");
        assert_eq!(echo["headers"]["authorization"], "Bearer echo-me");
        assert_eq!(echo["headers"]["x-multi"], serde_json::json!(["1", "2"]));
    }
    let seen = up.seen();
    assert_eq!(up.seen_count(), 3);
    assert_eq!(seen[0].path_and_query, "/echo/a/b?x=1");
    assert_eq!(seen[1].version, "HTTP/2.0");
    assert_eq!(seen[2].header("authorization"), Some("Bearer echo-me"));
    let debug = format!("{:?}", seen[0]);
    assert!(
        debug.contains("authorization") && !debug.contains("echo-me"),
        "Debug shows a value"
    );
}

#[tokio::test]
async fn one_mib_download_has_the_pattern_checksum() {
    let (ca, up) = https().await;
    for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
        let mut conn = direct(&ca, &up, alpn).await;
        let h2 = conn.negotiated_h2();
        let req = client::request("GET", "localhost", "/bytes/1048576", h2)
            .body(client::empty())
            .unwrap();
        let resp = conn.send(req).await.expect("response");
        assert_eq!(resp.headers()["content-length"], "1048576");
        let (count, sum) = client::body_count_and_checksum(resp).await;
        assert_eq!(
            (count, sum),
            (1 << 20, pattern_checksum(1 << 20)),
            "{alpn:?}"
        );
    }
}

#[tokio::test]
async fn upload_counts_and_checksums_a_streamed_body() {
    let (ca, up) = https().await;
    let len = 3 * (1 << 20) + 7;
    for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
        let mut conn = direct(&ca, &up, alpn).await;
        let h2 = conn.negotiated_h2();
        let req = client::request("POST", "localhost", "/upload", h2)
            .body(client::pattern_body(len))
            .unwrap();
        let body = client::body_string(conn.send(req).await.expect("response")).await;
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(summary["bytes"], len, "{alpn:?}");
        assert_eq!(summary["checksum"], pattern_checksum(len), "{alpn:?}");
    }
}

async fn websocket(
    ca: &CertificateAuthority,
    up: &Upstream,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<client::ProxyTlsStream> {
    let trust = [ca.cert_der().clone()];
    let tls = client::tls_direct(up.addr, "localhost", Alpn::Http1Only, &trust)
        .await
        .expect("TLS");
    let mut request = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    let auth = "Bearer ws-token".parse().unwrap();
    request.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("handshake");
    ws
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() {
    let (ca, up) = https().await;
    let mut ws = websocket(&ca, &up, "/ws").await;
    for msg in [
        Message::Text("hello".into()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
    assert_eq!(up.seen()[0].header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn websocket_announces_the_handshake_authorization_when_asked() {
    let (ca, up) = https().await;
    let mut ws = websocket(&ca, &up, "/ws?announce=authorization").await;
    let first = ws.next().await.expect("first message").expect("frame");
    assert_eq!(first, Message::Text("authorization=Bearer ws-token".into()));
    ws.send(Message::Text("then echo".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("then echo".into())
    );
}

#[tokio::test]
async fn reflect_header_splits_the_value_across_two_frames() {
    let (ca, up) = https().await;
    for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
        let mut conn = direct(&ca, &up, alpn).await;
        let req = client::request(
            "GET",
            "localhost",
            "/reflect-header?name=x-token",
            conn.negotiated_h2(),
        )
        .header("x-token", "abcdef")
        .body(client::empty())
        .unwrap();
        let resp = conn.send(req).await.unwrap();
        assert_eq!(resp.headers()["x-reflected"], "abcdef");
        assert_eq!(resp.headers()["set-cookie"], "s=abcdef");
        let mut frames = Vec::new();
        let mut body = resp.into_body();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            frames.extend(frame.unwrap().into_data().ok());
        }
        assert_eq!(frames, ["reflected=abc", "def\n"], "{alpn:?}");
    }
}

#[tokio::test]
async fn status_redirect_and_not_found() {
    let (ca, up) = https().await;
    let mut conn = direct(&ca, &up, Alpn::Http1Only).await;
    let get = |path: &str| {
        let req = client::request("GET", "localhost", path, false);
        req.body(client::empty()).unwrap()
    };
    assert_eq!(conn.send(get("/status/418")).await.unwrap().status(), 418);
    assert_eq!(conn.send(get("/status/99")).await.unwrap().status(), 400);
    let to = "/redirect?to=https%3A%2F%2Fother.upstream.test%2Fx";
    let resp = conn.send(get(to)).await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "https://other.upstream.test/x");
    assert_eq!(conn.send(get("/nowhere")).await.unwrap().status(), 404);
}

#[tokio::test]
async fn raw_stream_reads_heads_and_bodies_from_plain_upstream() {
    let up = Upstream::plain_http().await;
    let mut raw = RawProxyStream::connect(up.addr).await.unwrap();
    raw.send_raw(b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = raw.read_response_head().await.unwrap();
    assert_eq!(head.status, 201);
    assert_eq!(raw.read_body(&head).await.unwrap(), b"status 201\n");
    raw.send_raw(b"GET /reflect-header?name=x-a HTTP/1.1\r\nHost: x\r\nX-A: 1234\r\n\r\n")
        .await
        .unwrap();
    let head = raw.read_response_head().await.unwrap();
    assert_eq!(head.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(raw.read_body(&head).await.unwrap(), b"reflected=1234\n");
    raw.send_raw(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = raw.read_response_head().await.unwrap();
    raw.read_body(&head).await.unwrap();
    assert!(
        raw.read_response_head().await.is_err(),
        "closed connection read as a response"
    );
}

/// A minimal CONNECT proxy: refuses with 407 unless `Proxy-Authorization` is present, else
/// answers 200 and splices to `target`.
async fn splicing_proxy(target: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if !head.contains("proxy-authorization: basic dgfzazp0b2tlbg==") {
                let refusal = "HTTP/1.1 407 Proxy Authentication Required\r\n\
                               x-keyswap-reason: no_task\r\ncontent-length: 6\r\n\r\nwho?\r\n";
                let _ = tcp.write_all(refusal.as_bytes()).await;
                continue;
            }
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tunnel_client_speaks_connect_then_tls_then_http() {
    let (ca, up) = https().await;
    let (proxy, task) = splicing_proxy(up.addr).await;
    let mut opts = ProxyClientOptions {
        proxy,
        auth: None,
        connect_to: format!("localhost:{}", up.port()),
        sni: None,
        alpn: Alpn::Both,
        trust: vec![ca.cert_der().clone()],
    };
    match client::connect_tunnel(&opts).await.unwrap() {
        Tunnel::Refused {
            status,
            reason,
            body,
        } => {
            assert_eq!(
                (status, reason.as_deref(), body.as_str()),
                (407, Some("no_task"), "who?\r\n")
            )
        }
        Tunnel::Open(_) => panic!("not refused"),
    }
    opts.auth = Some(("task".into(), "token".into()));
    let Tunnel::Open(mut conn) = client::connect_tunnel(&opts).await.unwrap() else {
        panic!("refused");
    };
    assert!(conn.negotiated_h2());
    let authority = opts.connect_to.as_str();
    let req = client::request("GET", authority, "/echo", true)
        .body(client::empty())
        .unwrap();
    let echo = client::body_string(conn.send(req).await.unwrap()).await;
    assert!(echo.contains(authority), "authority not sent");

    let ws = client::websocket_through_proxy(
        &opts,
        "/ws?announce=authorization",
        vec![("authorization".into(), "B x".into())],
    );
    let first = ws.await.expect("websocket").next().await.unwrap().unwrap();
    assert_eq!(first, Message::Text("authorization=B x".into()));

    opts.sni = Some("api.upstream.test".into());
    assert!(
        client::connect_tunnel(&opts).await.is_ok(),
        "certificate covers this name too"
    );
    opts.sni = Some("not-covered.test".into());
    assert!(
        client::connect_tunnel(&opts).await.is_err(),
        "TLS failure must be an Err"
    );
    task.abort();
}

#[tokio::test]
async fn dropping_the_upstream_ends_its_connections() {
    let (ca, up) = https().await;
    let mut conn = direct(&ca, &up, Alpn::Http1Only).await;
    let req = || {
        client::request("GET", "localhost", "/echo", false)
            .body(client::empty())
            .unwrap()
    };
    assert_eq!(conn.send(req()).await.unwrap().status(), 200);
    drop(up);
    assert!(
        conn.send(req()).await.is_err(),
        "a connection outlived its upstream"
    );
}

/// The leak check itself can fail: each output it reads fails it when it holds a value it
/// looks for. The canary is no `KSREAL` value, so CI's grep of the kept output stays clean.
mod leak_check {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use base64::Engine;
    use keyswap_tests::client::Alpn;
    use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, TUNNEL_HOST};

    const CANARY: &str = "ks-leak-check-canary-4d1c9e07b2a85f36";

    /// The leak check's panic message, if it failed.
    fn failure(env: &TestEnv) -> Option<String> {
        let panic = catch_unwind(AssertUnwindSafe(|| env.assert_no_leaks())).err()?;
        Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn fails_on_a_task_token_the_upstream_received() {
        let env = TestEnv::start().await;
        // keyswap refuses a request that carries the token; a `tunnel: true` host is passed
        // through unread, so that is how one reaches an upstream.
        let mut opts = env.agent(&format!("{TUNNEL_HOST}:443"), Alpn::Both);
        opts.trust = vec![env.upstream_ca.cert_der().clone()];
        let reply = env
            .request(&opts, "GET", "/public/x", &[("x-forwarded", AGENT_TOKEN)])
            .await;
        // The upstream has no such page: it answered, so it got the request.
        assert_eq!(reply.status, 404, "{reply:?}");
        let failed = failure(&env).expect("a token the upstream received passed");
        assert!(failed.contains("the tunnel upstream received"), "{failed}");
    }

    #[tokio::test]
    async fn fails_on_a_task_token_base64_encoded_in_a_response() {
        let env = TestEnv::start().await;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("agent:{AGENT_TOKEN}"));
        env.keep(&[("x-echo".into(), basic)], "");
        let failed = failure(&env).expect("a token in a response passed");
        assert!(
            failed.contains("response #0") && failed.contains("base64-encoded"),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn fails_on_a_remembered_value_logged_on_another_thread() {
        let env = TestEnv::start().await;
        env.remember_secret(CANARY);
        assert!(failure(&env).is_none(), "the check failed before the leak");
        std::thread::spawn(|| tracing::warn!(value = CANARY, "a leak off the test's thread"))
            .join()
            .expect("logging thread");
        let failed = failure(&env).expect("a value logged on another thread passed");
        assert!(failed.contains("other threads"), "{failed}");
    }

    #[tokio::test]
    async fn fails_when_the_audit_file_is_missing() {
        let env = TestEnv::start().await;
        std::fs::remove_file(env.audit_path()).expect("remove the audit file");
        let failed = failure(&env).expect("a missing audit file passed");
        assert!(failed.contains("audit file"), "{failed}");
    }
}
