//! One agent cannot starve the others (`limits:`). An attacker task floods keyswap with
//! several HTTP/2 connections of many POST streams whose bodies never finish, toward an
//! HTTP/1.1 upstream (where every request in progress needs a connection of its own). The
//! upstream must see no more connections than `limits.per_task.upstream_connections`, the
//! attacker's excess requests must be refused with `task_busy` (status, header, body, audit,
//! metrics), and a second task's new CONNECTs and requests during the flood must all be
//! answered 200.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, BoxBody};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule};
use keyswap_tests::harness::{Reply, TestEnv, AGENT_TOKEN, API_HOST, TUNNEL_HOST};

/// The attacker's bounds in this test: small, so the flood is quick.
const UPSTREAM_CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 8;
const H2_STREAMS: usize = 16;
/// The flood: connections × streams, every stream a POST whose body never ends.
const FLOOD_CONNECTIONS: usize = 3;
const VICTIM_TOKEN_ENV: &str = "KS_FAIR_VICTIM_TOKEN";
const VICTIM_TOKEN: &str = "victim-token-0123456789";

fn config() -> String {
    ConfigBuilder::new()
        .section(
            "limits",
            &format!(
                "per_task:\n  upstream_connections: {UPSTREAM_CONNECTIONS}\n  in_flight: {IN_FLIGHT}\n\
                 per_connection:\n  h2_streams: {H2_STREAMS}"
            ),
        )
        // The victim's host is served by another upstream, so the attacker's upstream counts
        // the attacker's connections alone.
        .resolve(&format!("{TUNNEL_HOST}:443"), "127.0.0.1:{tunnel_port}")
        .task(
            "attacker",
            Entry::with_token().rule(Rule::api().methods(&["POST"]).paths(&["/upload"])),
        )
        .task(
            "victim",
            Entry::new()
                .field("token_env", VICTIM_TOKEN_ENV)
                .rule(Rule::host(TUNNEL_HOST).methods(&["GET"])),
        )
        .yaml()
}

/// A request body that sends one chunk and then never ends.
fn endless_body() -> BoxBody {
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"part of a body")))
    });
    let stream = first.chain(futures_util::stream::pending());
    BodyExt::boxed(StreamBody::new(stream))
}

/// `true` once `reply` is the refusal a busy task gets.
fn is_task_busy(reply: &Reply) -> bool {
    reply.status == 429
        && reply.reason() == Some("task_busy")
        && reply.header("retry-after") == Some("1")
        && reply
            .body
            .contains("keyswap refused this request (task_busy)")
        && reply.body.contains("task attacker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tasks_flood_leaves_another_task_answered() {
    let env = TestEnv::start_with_env(
        &config(),
        Alpn::Http1Only,
        ProxyOptions::default(),
        &[(VICTIM_TOKEN_ENV, VICTIM_TOKEN)],
    )
    .await;

    // The flood: every stream sent at once on its connection's h2 sender.
    let attacker = env.client(
        Some(("attacker", AGENT_TOKEN)),
        &format!("{API_HOST}:443"),
        Alpn::Http2Only,
    );
    let mut connections = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let conn = env.open(&attacker).await;
        let sender = conn.h2_sender().expect("the attacker speaks h2");
        for _ in 0..H2_STREAMS {
            let mut sender = sender.clone();
            let request = client::request("POST", API_HOST, "/upload", true)
                .body(endless_body())
                .expect("request");
            streams.push(tokio::spawn(async move {
                sender.ready().await?;
                sender.send_request(request).await
            }));
        }
        connections.push(conn);
    }
    let total = FLOOD_CONNECTIONS * H2_STREAMS;

    // Meanwhile a second task opens new tunnels and is answered, each within a bound on the
    // outcome (not a benchmark: an unanswered request took over 6 s before the limits).
    let victim = env.client(
        Some(("victim", VICTIM_TOKEN)),
        &format!("{TUNNEL_HOST}:443"),
        Alpn::Both,
    );
    for i in 0..5 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            env.request(&victim, "GET", &format!("/echo/victim/{i}"), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("victim request {i} got no answer within 5 s"));
        assert_eq!(reply.status, 200, "victim request {i}: {reply:?}");
    }

    // Every stream past the bounds is refused: at once past in_flight, after a short wait
    // past upstream_connections. Those that hold an upstream connection never answer.
    let expected_refusals = total - UPSTREAM_CONNECTIONS;
    let mut answered = futures_util::stream::FuturesUnordered::new();
    for stream in streams.drain(..) {
        answered.push(stream);
    }
    for i in 0..expected_refusals {
        let joined = tokio::time::timeout(Duration::from_secs(10), answered.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {total} flood streams were answered"))
            .expect("a stream is left");
        let response = joined.expect("stream task").expect("a response head");
        let reply = env.reply(response).await;
        assert!(
            is_task_busy(&reply),
            "a flood stream got {reply:?}: {}",
            reply.body
        );
    }
    // The streams holding the task's upstream connections are still waiting for their
    // bodies, so they have no answer.
    assert_eq!(answered.len(), UPSTREAM_CONNECTIONS);
    assert!(answered.iter().all(|s| !s.is_finished()));

    // (1) The upstream saw at most the task's bound of connections, and the victim's
    // answers came from the other upstream.
    let (upstream_connections, _) = env.upstream.connections();
    assert!(
        (1..=UPSTREAM_CONNECTIONS).contains(&upstream_connections),
        "the attacker's upstream saw {upstream_connections} connections"
    );
    assert!(env.upstream.seen_count() <= UPSTREAM_CONNECTIONS);
    assert_eq!(env.tunnel.seen_count(), 5);

    // (3) The refusals are audited as the attacker's, with their status.
    let busy = env
        .audit_at_least(expected_refusals, |r| {
            r["reason"] == "task_busy" && r["task"] == "attacker"
        })
        .await;
    assert_eq!(busy.len(), expected_refusals);
    assert!(busy
        .iter()
        .all(|r| r["status"] == 429 && r["decision"] == "denied" && r["path"] == "/upload"));
    let victim_records: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r["task"] == "victim" && r["event"] == "request")
        .collect();
    assert_eq!(victim_records.len(), 5);
    assert!(
        victim_records.iter().all(|r| r["reason"] == "allowed"),
        "the victim's requests: {:?}",
        victim_records
            .iter()
            .map(|r| &r["reason"])
            .collect::<Vec<_>>()
    );

    // The metrics show the attacker's requests in flight and the refusals by bound.
    let metrics = env.proxy.shared().metrics.encode();
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{prefix} has no value"))
    };
    assert_eq!(
        line("keyswap_task_in_flight_requests{task=\"attacker\"}"),
        UPSTREAM_CONNECTIONS as f64
    );
    let by_in_flight = line("keyswap_task_busy_refusals_total{limit=\"in_flight\"}");
    let by_connections = line("keyswap_task_busy_refusals_total{limit=\"upstream_connections\"}");
    assert_eq!(by_in_flight, (total - IN_FLIGHT) as f64);
    assert_eq!(by_connections, (IN_FLIGHT - UPSTREAM_CONNECTIONS) as f64);
    assert!(
        !metrics.contains("task=\"victim\""),
        "an idle task has no series"
    );

    drop(answered);
    drop(connections);
    env.assert_no_leaks();
}

#[tokio::test]
async fn a_task_at_its_connection_bound_gets_task_busy_for_a_tunnel_too() {
    let config = ConfigBuilder::new()
        .section(
            "limits",
            "per_task:\n  upstream_connections: 1\n  in_flight: 4",
        )
        .resolve(&format!("{TUNNEL_HOST}:443"), "127.0.0.1:{tunnel_port}")
        .task(
            "agent",
            Entry::with_token()
                .rule(Rule::host(TUNNEL_HOST).field("tunnel", "true"))
                .rule(Rule::api().methods(&["POST"]).paths(&["/upload"])),
        )
        .yaml();
    let env = TestEnv::start_with(&config, Alpn::Http1Only).await;

    // One request holds the task's one upstream connection...
    let mut conn = env
        .open(&env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only))
        .await;
    let request = client::request("POST", API_HOST, "/upload", false)
        .body(endless_body())
        .expect("request");
    let held = tokio::spawn(async move {
        let sent = conn.send(request).await;
        (conn, sent)
    });
    wait_for_upstream(&env).await;

    // ...so a tunnel of the same task waits, then is refused on the CONNECT itself.
    let tunnel = env.agent(&format!("{TUNNEL_HOST}:443"), Alpn::Both);
    match client::connect_tunnel(&tunnel).await.expect("tunnel io") {
        client::Tunnel::Refused {
            status,
            reason,
            body,
        } => {
            assert_eq!(status, 429);
            assert_eq!(reason.as_deref(), Some("task_busy"));
            assert!(body.contains("upstream connections"), "{body}");
        }
        client::Tunnel::Open(_) => panic!("a tunnel past the task's connection bound opened"),
    }
    assert_eq!(
        env.tunnel.connections().0,
        0,
        "the tunnel upstream was dialled"
    );
    env.audit_where(|r| r["reason"] == "task_busy" && r["host"] == TUNNEL_HOST)
        .await;
    held.abort();
    env.assert_no_leaks();
}

/// Waits until the upstream has received the request that holds the connection.
async fn wait_for_upstream(env: &TestEnv) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.upstream.seen_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the holding request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_agent_connection_is_offered_only_its_h2_streams() {
    let config = ConfigBuilder::new()
        .section("limits", "per_connection:\n  h2_streams: 7")
        .task(
            "agent",
            Entry::with_token().rule(Rule::api().methods(&["GET"]).paths(&["/echo/**"])),
        )
        .yaml();
    let env = TestEnv::start_with(&config, Alpn::Http1Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http2Only);
    let Ok(tls) = client::open_tls(&opts, Alpn::Http2Only)
        .await
        .expect("tunnel io")
    else {
        panic!("the tunnel was refused");
    };
    let (mut sender, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    // A whole exchange, so keyswap's SETTINGS have been read by the time it is answered.
    let request = http::Request::get(format!("https://{API_HOST}/echo/settings"))
        .body(())
        .expect("request");
    let (response, _) = sender.send_request(request, true).expect("stream");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(sender.current_max_send_streams(), 7);
    driver.abort();
    env.assert_no_leaks();
}
