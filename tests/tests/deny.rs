//! Deny by default, with a reason: every refusal is asserted by status AND reason, and for
//! refusals of a request carrying a placeholder, that the upstream never saw it.

use keyswap_tests::client::{self, Alpn, Tunnel};
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
    let (status, reason, _) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (407, Some("no_task")));
    let record = env.audit_where(|r| r["reason"] == "no_task").await;
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["status"], 407);
    env.assert_no_leaks();
}

#[tokio::test]
async fn wrong_token_or_unknown_task_gets_407_bad_token() {
    let env = TestEnv::start().await;
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
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn unlisted_host_is_refused_before_tls() {
    let env = TestEnv::start().await;
    let opts = env.agent("evil.example.com:443", Alpn::Both);
    let (status, reason, body) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (403, Some("host_not_allowed")));
    assert!(
        body.contains("evil.example.com"),
        "the message should name the host"
    );
    assert!(
        env.proxy.leaves_minted() == 0,
        "a certificate was minted for a refused host"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn unlisted_port_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.agent(&format!("{API_HOST}:8443"), Alpn::Both);
    let (status, reason, _) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (403, Some("host_not_allowed")));
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
async fn expired_task_is_refused() {
    let env = TestEnv::start().await;
    let opts = env.client(
        Some(("expired", AGENT_TOKEN)),
        &format!("{API_HOST}:443"),
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
    // A resolve entry pointing at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let template = keyswap_tests::harness::DEFAULT_CONFIG.replace(
        "\"other.upstream.test:443\": \"127.0.0.1:{https_port}\"",
        &format!("\"other.upstream.test:443\": \"127.0.0.1:{port}\""),
    );
    let env = TestEnv::start_with(&template, Alpn::Both).await;
    let opts = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Both);
    let reply = env.request(&opts, "GET", "/echo/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (502, Some("upstream_error"))
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
    // The canonical form is decided by the allowlist like any host.
    let opts = env.agent("127.0.0.1:443", Alpn::Both);
    let (status, reason, _) = refused(&env, &opts).await;
    assert_eq!((status, reason.as_deref()), (403, Some("host_not_allowed")));
    env.assert_no_leaks();
}
