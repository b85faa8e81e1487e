//! Domain fronting through a `tunnel: true` rule: the CONNECT names the granted host, the TLS
//! inside asks (by SNI) for another host served at the same address — or for none, or is not
//! TLS at all. keyswap reads the ClientHello before any byte reaches the upstream, so each of
//! these is refused and audited, and the upstream sees no byte of it.

use std::time::Duration;

use base64::Engine;
use keyswap_tests::client::{self, Alpn, RawProxyStream, Tunnel};
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST, TUNNEL_HOST};
use tokio::io::AsyncReadExt;

/// Waits until the tunnel upstream has settled the connection keyswap dialled for the
/// CONNECT (bytes arrived, or it closed without any); returns (with data, without data).
async fn upstream_connections(env: &TestEnv) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (with_data, without) = env.tunnel.connections();
        if with_data + without > 0 {
            return (with_data, without);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel upstream never saw keyswap's connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn refused_audit(env: &TestEnv) -> serde_json::Value {
    env.audit_where(|r| {
        r["method"] == "CONNECT" && r["host"] == TUNNEL_HOST && r["decision"] == "denied"
    })
    .await
}

#[tokio::test]
async fn tunnel_with_tls_for_another_host_is_refused() {
    // (what the agent's TLS client sends as SNI, what the case is called)
    let cases = [
        (Some(API_HOST), "SNI of another host (domain fronting)"),
        (Some(""), "no SNI"),
    ];
    for (sni, what) in cases {
        let env = TestEnv::start().await;
        let mut opts = env.agent(&format!("{TUNNEL_HOST}:443"), Alpn::Http1Only);
        opts.trust = vec![env.upstream_ca.cert_der().clone()];
        opts.sni = sni.map(str::to_string);
        match client::connect_tunnel(&opts).await {
            Ok(Tunnel::Open(_)) => panic!("{what}: TLS through the tunnel succeeded"),
            Ok(Tunnel::Refused { status, .. }) => {
                panic!("{what}: the CONNECT itself was refused ({status})")
            }
            Err(_) => {} // the CONNECT got 200; the TLS handshake was cut
        }
        let record = refused_audit(&env).await;
        assert_eq!(record["reason"], "sni_mismatch", "{what}");
        assert_eq!(record["task"], "agent", "{what}");
        assert_eq!(
            upstream_connections(&env).await,
            (0, 1),
            "{what}: the upstream received TLS bytes"
        );
        assert_eq!(env.tunnel.seen_count(), 0, "{what}");
        env.assert_no_leaks();
    }
}

#[tokio::test]
async fn tunnel_carrying_non_tls_bytes_is_refused() {
    let env = TestEnv::start().await;
    let mut raw = RawProxyStream::connect(env.proxy.addr())
        .await
        .expect("proxy");
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("agent:{AGENT_TOKEN}"));
    let head = format!(
        "CONNECT {TUNNEL_HOST}:443 HTTP/1.1\r\nHost: {TUNNEL_HOST}:443\r\n\
         Proxy-Authorization: Basic {credentials}\r\n\r\n"
    );
    raw.send_raw(head.as_bytes()).await.expect("send CONNECT");
    let response = raw.read_response_head().await.expect("CONNECT answer");
    assert_eq!(response.status, 200, "{response:?}");
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: tunnel.upstream.test\r\n\r\n")
        .await
        .expect("send plain HTTP inside the tunnel");
    let mut tcp = raw.into_inner();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "keyswap did not close the tunnel");
    assert!(
        reply.is_empty(),
        "the agent got an answer through the tunnel"
    );
    let record = refused_audit(&env).await;
    assert_eq!(record["reason"], "bad_request");
    assert_eq!(upstream_connections(&env).await, (0, 1));
    assert_eq!(env.tunnel.seen_count(), 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn tunnel_with_matching_sni_passes_the_upstreams_own_tls_through() {
    let env = TestEnv::start().await;
    let mut opts = env.agent(
        &format!("{}:443", TUNNEL_HOST.to_uppercase()),
        Alpn::Http1Only,
    );
    // Only the upstream's CA is trusted: a certificate minted by keyswap would fail.
    opts.trust = vec![env.upstream_ca.cert_der().clone()];
    opts.sni = Some(TUNNEL_HOST.to_string());
    let reply = env.request(&opts, "GET", "/echo/through", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(env.tunnel.connections(), (1, 0));
    assert_eq!(env.tunnel.seen_count(), 1);
    drop(reply);
    let record = env
        .audit_where(|r| r["method"] == "CONNECT" && r["host"] == TUNNEL_HOST)
        .await;
    assert_eq!(record["reason"], "allowed");
    assert!(record["req_bytes"].as_u64().unwrap_or(0) > 0);
    env.assert_no_leaks();
}
