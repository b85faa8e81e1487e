//! Budgets and rates across the fleet (`store:`), and the store reached over TLS. Three
//! `keyswap run` processes share a real `redis-server`: a budget of 20 hit by 200 concurrent
//! requests spread over the three allows exactly 20, a rate allows what it allows once for the
//! whole fleet, a rule without a budget or a rate costs the store nothing, a replica cut off
//! from the store refuses budgeted requests (`store_unavailable`) while it serves the others
//! through the grace, and a replica that reaches the store over `rediss://` (with the test's
//! CA in `ca_file`) serves a task issued on another.

use std::collections::BTreeMap;
use std::net::TcpListener as StdTcpListener;

use base64::Engine;
use futures_util::future::join_all;
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::{self, Alpn, DrivenConn as Conn};
use keyswap_tests::harness::{TestEnv, API_HOST};
use keyswap_tests::secrets::GITHUB_PLACEHOLDER;

use crate::fleet_support::{
    assert_store_clean, auth, fleet_ca, intercepted, redis_available, ConnExt, Extra, Redis, Relay,
    Replica,
};

/// A policy with a budgeted rule, a rated rule and a free one, all on the test upstream.
const LIMITED: &str = r#"  fleet-limited:
    allow:
      - host: api.upstream.test
        id: budgeted
        methods: [GET]
        paths: ["/echo/budget/**"]
        secrets: [github]
        budget: {requests: 20}
      - host: api.upstream.test
        id: rated
        methods: [GET]
        paths: ["/echo/rate/**"]
        secrets: [github]
        rate: 1/h
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo", "/echo/**"]
        secrets: [github]
"#;

/// Room for 200 requests of one task at once (the default `limits:` would refuse some with
/// `task_busy` before they reach the budget).
const ROOM: &str = "limits:\n  per_task:\n    in_flight: 256\n    upstream_connections: 256\n";

const EXTRA: Extra<'static> = Extra {
    policies: LIMITED,
    top: ROOM,
    redis: "",
};

/// `count` GETs of `path-N` spread over `conns` (h2, all at once): (status, reason) → how many.
async fn burst(
    env: &TestEnv,
    conns: &[Conn],
    path: &str,
    count: usize,
) -> BTreeMap<(u16, String), usize> {
    let senders: Vec<_> = conns
        .iter()
        .map(|c| c.h2_sender().expect("an h2 connection"))
        .collect();
    let replies = join_all((0..count).map(|i| {
        let mut sender = senders[i % senders.len()].clone();
        async move {
            let req = client::request("GET", API_HOST, &format!("{path}/{i}"), true)
                .header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
                .body(client::empty())
                .expect("request");
            sender.ready().await.expect("connection ready");
            let resp = sender.send_request(req).await.expect("response");
            env.reply(resp).await
        }
    }))
    .await;
    let mut outcomes = BTreeMap::new();
    for reply in &replies {
        let reason = reply.reason().unwrap_or("-").to_string();
        *outcomes.entry((reply.status, reason)).or_insert(0) += 1;
        if reply.status == 429 && reply.reason() == Some("rate_limited") {
            let seconds: u64 = reply
                .header("retry-after")
                .and_then(|s| s.parse().ok())
                .expect("a Retry-After in whole seconds");
            assert!((1..=3600).contains(&seconds), "Retry-After {seconds}");
        }
    }
    outcomes
}

/// Calls of `EVALSHA` the store has answered so far (`INFO commandstats`).
fn evalsha_calls(redis: &Redis) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_20_allows_exactly_20_of_200_concurrent_requests_over_three_replicas_and_a_rate_holds_fleet_wide(
) {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let replicas = [
        Replica::start_with(&env, "a", &redis.url(), "30s", EXTRA),
        Replica::start_with(&env, "b", &redis.url(), "30s", EXTRA),
        Replica::start_with(&env, "c", &redis.url(), "30s", EXTRA),
    ];
    let task = replicas[0].issue_from(&env, "fleet-limited").await;
    let mut conns = Vec::new();
    for replica in &replicas {
        conns.push(intercepted(replica, auth(&task), &ca, Alpn::Http2Only).await);
    }

    // 200 at once, a third through each replica: exactly 20 reach the upstream.
    let outcomes = burst(&env, &conns, "/echo/budget", 200).await;
    let expected = BTreeMap::from([
        ((200, "-".to_string()), 20),
        ((429, "budget_exhausted".to_string()), 180),
    ]);
    assert_eq!(outcomes, expected);
    // The count is the store's, under the task's keys, and goes with the task.
    let keys = redis.cli(&["--scan", "--pattern", "ksfleet:budget:*"]);
    let key = keys.trim();
    assert!(
        key.starts_with(&format!("ksfleet:budget:{}@", task.id)) && key.ends_with(":budgeted"),
        "{keys}"
    );
    assert_eq!(redis.cli(&["GET", key]).trim(), "20");
    let ttl: i64 = redis.cli(&["TTL", key]).trim().parse().expect("a TTL");
    assert!(
        (1..=1800).contains(&ttl),
        "the count expires with the task: {ttl}"
    );

    // A rate of 1/h (a burst of one) for the whole fleet: one of six, wherever they land.
    let outcomes = burst(&env, &conns, "/echo/rate", 6).await;
    let expected = BTreeMap::from([
        ((200, "-".to_string()), 1),
        ((429, "rate_limited".to_string()), 5),
    ]);
    assert_eq!(outcomes, expected);

    // A rule without a budget or a rate makes no round trip to the store.
    let before = evalsha_calls(&redis);
    assert!(
        before >= 206,
        "one EVALSHA per budgeted or rated request: {before}"
    );
    for conn in &mut conns {
        assert_eq!(conn.get(&env, API_HOST, "/echo/free").await.0, 200);
    }
    assert_eq!(evalsha_calls(&redis), before);
    assert_store_clean(&redis, &[&task.token]);
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_refuses_budgeted_requests_and_serves_the_others_through_the_grace(
) {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let relay = Relay::start(redis.socket.clone()).await;
    let a = Replica::start_with(&env, "a", &redis.url(), "30s", EXTRA);
    let b = Replica::start_with(&env, "b", &relay.url(), "30s", EXTRA);
    let task = a.issue_from(&env, "fleet-limited").await;
    let mut conn = intercepted(&b, auth(&task), &ca, Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo/budget/1").await.0, 200);

    // Cut off, within the grace: the exact count cannot be kept, so budgeted and rated
    // requests are refused; the task's other rules are served.
    relay.cut();
    b.child.wait_for("the store is unreachable");
    let unavailable = (503, Some("store_unavailable".to_string()));
    assert_eq!(
        conn.get(&env, API_HOST, "/echo/budget/2").await,
        unavailable
    );
    assert_eq!(conn.get(&env, API_HOST, "/echo/rate/1").await, unavailable);
    assert_eq!(conn.get(&env, API_HOST, "/echo/free").await.0, 200);
    // A, which still reaches the store, carries on counting.
    let mut on_a = intercepted(&a, auth(&task), &ca, Alpn::Http1Only).await;
    assert_eq!(on_a.get(&env, API_HOST, "/echo/budget/3").await.0, 200);

    // Back: B counts again, in the one count.
    relay.restore();
    b.child.wait_for("the store is connected");
    assert_eq!(conn.get(&env, API_HOST, "/echo/budget/4").await.0, 200);
    let keys = redis.cli(&["--scan", "--pattern", "ksfleet:budget:*"]);
    assert_eq!(redis.cli(&["GET", keys.trim()]).trim(), "3", "{keys}");
    env.assert_no_leaks();
}

/// A PEM block of `der`.
fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaching_the_store_over_tls_serves_a_task_issued_on_another() {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let dir = env.dir.path();
    // The store's own CA and certificate for 127.0.0.1, written for redis-server.
    let store_ca = CertificateAuthority::generate("keyswap test store CA").expect("store CA");
    let (chain, key) = store_ca
        .issue_server_cert(&["127.0.0.1"])
        .expect("store certificate");
    std::fs::write(dir.join("store-ca.pem"), store_ca.cert_pem()).expect("write CA");
    std::fs::write(dir.join("store.pem"), pem("CERTIFICATE", &chain[0])).expect("write cert");
    std::fs::write(
        dir.join("store-key.pem"),
        pem("PRIVATE KEY", key.secret_der()),
    )
    .expect("write key");
    let port = {
        let probe = StdTcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address").port()
    };
    let path = |name: &str| dir.join(name).display().to_string();
    let port_text = port.to_string();
    let redis = Redis::start_with(
        dir,
        &[
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port_text,
            "--tls-cert-file",
            &path("store.pem"),
            "--tls-key-file",
            &path("store-key.pem"),
            "--tls-ca-cert-file",
            &path("store-ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let a = Replica::start_with(&env, "a", &redis.url(), "30s", EXTRA);
    let ca_line = format!("    ca_file: {}\n", path("store-ca.pem"));
    let tls = Extra {
        redis: &ca_line,
        ..EXTRA
    };
    let url = format!("rediss://127.0.0.1:{port}");
    let b = Replica::start_with(&env, "b", &url, "30s", tls);
    assert_eq!(b.health().await, (200, "ok store=connected\n".to_string()));

    // Issued on A (unix socket), served on B (TLS), its budget counted in the one store.
    let task = a.issue_from(&env, "fleet-limited").await;
    let mut on_b = intercepted(&b, auth(&task), &ca, Alpn::Http1Only).await;
    assert_eq!(on_b.get(&env, API_HOST, "/echo").await.0, 200);
    assert_eq!(on_b.get(&env, API_HOST, "/echo/budget/1").await.0, 200);
    let mut on_a = intercepted(&a, auth(&task), &ca, Alpn::Http1Only).await;
    assert_eq!(on_a.get(&env, API_HOST, "/echo/budget/2").await.0, 200);
    let keys = redis.cli(&["--scan", "--pattern", "ksfleet:budget:*"]);
    assert_eq!(redis.cli(&["GET", keys.trim()]).trim(), "2", "{keys}");
    // Each replica reports the fleet's count as of its own last request on the rule.
    for (replica, used) in [(&b, 1), (&a, 2)] {
        let shown = replica.admin.show(&task.id).await.expect("task show");
        let budgeted = shown.budgets.iter().find(|r| r.key == "budgeted");
        let budgeted = budgeted.expect("the budgeted rule is reported");
        assert_eq!((budgeted.used, budgeted.remaining), (used, Some(20 - used)));
    }
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|l| l.contains("addr=127.0.0.1:")),
        "B is connected over TCP: {clients}"
    );
    assert_store_clean(&redis, &[&task.token]);
    env.assert_no_leaks();
}
