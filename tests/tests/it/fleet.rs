//! The fleet (`store:`): three `keyswap run` processes share their runtime tasks and
//! revocations through a real `redis-server` (on a unix socket in the test's directory). A
//! task issued on one replica is used on the others; a revocation on one closes the task's
//! connections (intercepted HTTP/1.1 and h2, `tunnel: true`) on the others; a replica cut off
//! from the store serves the tasks it knows for `store.grace`, issues none, then refuses
//! everything, and on reconnecting honours a revocation it missed. The store holds neither a
//! real secret nor a task token.
//!
//! A replica is cut off by a relay the test owns between it and Redis (TCP to the unix
//! socket), so only that replica loses the store while the others keep it.

use std::time::Duration;

use keyswap::admin::client::ClientError;
use keyswap::api::IssueRequest;
use keyswap_tests::client::Alpn;
use keyswap_tests::harness::{TestEnv, API_HOST, TUNNEL_HOST};

use crate::fleet_support::{
    assert_store_clean, auth, connect, ends_by, fleet_ca, http_get, intercepted, redis_available,
    tunnelled, ConnExt, Redis, Relay, Replica,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_issued_on_one_replica_works_on_all_and_a_revocation_anywhere_closes_it_everywhere()
{
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let [a, b, c] = Replica::three(&env, &redis);

    // Issued on A, used at once on B and C (each either heard of it or looks it up once).
    let task = a.issue(&env).await;
    let other = b.issue(&env).await;
    for replica in [&a, &b, &c] {
        let mut conn = intercepted(replica, auth(&task), &ca, Alpn::Http1Only).await;
        assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    }
    let wrong = (task.id.as_str(), "not-the-token-0123456789");
    assert_eq!(connect(&c, wrong, &format!("{API_HOST}:443")).await.0, 407);
    // Every replica lists the whole fleet's tasks.
    for replica in [&a, &b, &c] {
        let listed = replica.admin.list().await.expect("task list");
        for id in [&task.id, &other.id] {
            assert!(listed.iter().any(|t| &t.id == id), "{id} not listed");
        }
    }
    assert_store_clean(&redis, &[&task.token, &other.token]);
    let records = redis.cli(&["HKEYS", "ksfleet:tasks"]);
    assert!(
        records.contains(&task.id) && records.contains(&other.id),
        "{records}"
    );

    // Open connections on A and B: HTTP/1.1 and h2 intercepted, and a tunnel.
    let mut open = Vec::new();
    for replica in [&a, &b] {
        for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
            let mut conn = intercepted(replica, auth(&task), &ca, alpn).await;
            assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
            open.push(conn);
        }
        let mut conn = tunnelled(&env, replica, auth(&task)).await;
        assert_eq!(conn.get(&env, TUNNEL_HOST, "/echo/t").await.0, 200);
        open.push(conn);
    }
    let mut kept = intercepted(&b, auth(&other), &ca, Alpn::Http2Only).await;

    // Revoked on C: every connection on A and B closes.
    c.admin.revoke(&task.id, "api").await.expect("revoke on C");
    for (i, conn) in open.iter_mut().enumerate() {
        conn.closes(&format!("closing connection {i} of the revoked task"))
            .await;
    }
    for replica in [&a, &b, &c] {
        let (status, _) = connect(replica, auth(&task), &format!("{API_HOST}:443")).await;
        assert_eq!(status, 407, "the revoked task was let through");
    }
    // The other task carries on.
    assert_eq!(kept.get(&env, API_HOST, "/echo").await.0, 200);
    let records = redis.cli(&["HKEYS", "ksfleet:tasks"]);
    assert!(
        !records.contains(&task.id) && records.contains(&other.id),
        "{records}"
    );
    assert_store_clean(&redis, &[&task.token, &other.token]);
    for replica in [&a, &b, &c] {
        assert!(replica.child.log().contains("the store is connected"));
    }
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_serves_known_tasks_for_the_grace_then_refuses_and_honours_missed_revocations(
) {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let relay = Relay::start(redis.socket.clone()).await;
    let a = Replica::start(&env, "a", &redis.url(), "30s");
    let b = Replica::start(&env, "b", &relay.url(), "8s");

    let kept = a.issue(&env).await;
    let revoked = a.issue(&env).await;
    let mut on_b = intercepted(&b, auth(&revoked), &ca, Alpn::Http1Only).await;
    assert_eq!(on_b.get(&env, API_HOST, "/echo").await.0, 200);
    let mut conn = intercepted(&b, auth(&kept), &ca, Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    assert_eq!(b.health().await, (200, "ok store=connected\n".to_string()));

    // B loses the store: within the grace it serves what it knows and issues nothing.
    relay.cut();
    b.child.wait_for("the store is unreachable");
    let (status, body) = b.health().await;
    assert_eq!((status, body.as_str()), (200, "ok store=grace\n"));
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    let mut fresh = intercepted(&b, auth(&kept), &ca, Alpn::Http2Only).await;
    assert_eq!(fresh.get(&env, API_HOST, "/echo").await.0, 200);
    match b
        .admin
        .issue(&IssueRequest {
            policy: "fleet-agent".into(),
            ..IssueRequest::default()
        })
        .await
    {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(
                (status.as_u16(), error.reason.as_str()),
                (503, "store_unavailable")
            );
        }
        Ok(_) => panic!("a task was issued without the store"),
        Err(other) => panic!("unexpected answer: {other}"),
    }

    // Meanwhile A revokes a task B holds a connection of.
    a.admin
        .revoke(&revoked.id, "api")
        .await
        .expect("revoke on A");

    // Past the grace, B refuses every request.
    ends_by("B giving up on its store", async {
        while b.health().await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(b.health().await.1, "unavailable store=down\n");
    let (_, metrics) = http_get(b.metrics, "/metrics").await;
    assert!(
        metrics.contains("keyswap_store_state{state=\"down\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        conn.get(&env, API_HOST, "/echo").await,
        (503, Some("store_unavailable".to_string()))
    );

    // Back: B first catches up with what it missed, then serves again.
    relay.restore();
    b.child.wait_for("the store is connected");
    on_b.closes("B closing the connection of the task revoked while it was cut off")
        .await;
    let (status, _) = connect(&b, auth(&revoked), &format!("{API_HOST}:443")).await;
    assert_eq!(status, 407, "a task revoked while B was cut off was served");
    let mut conn = intercepted(&b, auth(&kept), &ca, Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    assert_eq!(b.health().await, (200, "ok store=connected\n".to_string()));
    assert_store_clean(&redis, &[&kept.token, &revoked.token]);
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_issue_while_the_store_still_answers_leaves_the_replica_serving() {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let a = Replica::start(&env, "a", &redis.url(), "30s");
    let known = a.issue(&env).await;

    // Writes pause for longer than one call to the store may take: the issue's write times
    // out, while reads (the worker's ping, its reconciliation) go on being answered.
    redis.cli(&["CLIENT", "PAUSE", "1100", "WRITE"]);
    match a
        .admin
        .issue(&IssueRequest {
            policy: "fleet-agent".into(),
            ..IssueRequest::default()
        })
        .await
    {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(
                (status.as_u16(), error.reason.as_str()),
                (503, "store_unavailable")
            );
        }
        Ok(issued) => {
            env.remember_token(&issued.token);
            panic!("a task was issued while the store refused writes");
        }
        Err(other) => panic!("unexpected answer: {other}"),
    }

    // The store answers throughout: the replica is back in line (its worker reconciles and
    // serves again), not left to run out its grace and refuse every task.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = a.health().await;
        if health == (200, "ok store=connected\n".to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not come back in line: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = a.issue(&env).await;
    for task in [&known, &fresh] {
        let mut conn = intercepted(&a, auth(task), &ca, Alpn::Http1Only).await;
        assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    }
    env.assert_no_leaks();
}
