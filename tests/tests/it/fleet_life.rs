//! The fleet (`store:`) beyond tasks and revocations: lifelines are heartbeats in the store,
//! so a task whose lifeline's replica is killed is revoked on the others; a request held for
//! a human on one replica is listed on every replica and answered through any; and the task
//! listing names the replicas holding each task's connections. Three `keyswap run`
//! processes share a real `redis-server` (helpers in `fleet_support`).
//!
//! Nothing is timed: every wait polls for its outcome up to a generous bound.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use keyswap::admin::client::LifelineHandle;
use keyswap::api::{AnswerRequest, ApprovalInfo, IssueRequest, IssuedTask};
use keyswap_tests::client::Alpn;
use keyswap_tests::harness::{TestEnv, API_HOST};
use tokio::time::sleep;

use crate::fleet_support::{
    assert_store_clean, auth, connect, ends_by, fleet_ca, intercepted, redis_available, ConnExt,
    Redis, Replica,
};

/// Polls `check` (every 50 ms) until it returns `Some`, failing with `what` past the fleet
/// tests' bound.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ends_by(what, async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The name replica `r` has in the store: host name and process id.
fn replica_name(r: &Replica) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    format!("{}-{}", host.trim(), r.child.pid())
}

async fn issue_on(
    env: &TestEnv,
    r: &Replica,
    policy: &str,
    lifeline: bool,
) -> (IssuedTask, Option<LifelineHandle>) {
    let request = IssueRequest {
        policy: policy.into(),
        ttl: Some("30m".into()),
        ..IssueRequest::default()
    };
    let (issued, handle) = if lifeline {
        let (issued, handle) = r.admin.issue_with_lifeline(&request).await.expect("issued");
        (issued, Some(handle))
    } else {
        (r.admin.issue(&request).await.expect("issued"), None)
    };
    env.remember_token(&issued.token);
    (issued, handle)
}

/// The CONNECT status `task` gets from `r`.
async fn connect_status(r: &Replica, task: &IssuedTask) -> u16 {
    connect(r, auth(task), &format!("{API_HOST}:443")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_holding_a_lifeline_has_its_task_revoked_on_every_other_replica() {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let [a, b, c] = Replica::three(&env, &redis);

    // A lifeline closed normally revokes its task everywhere at once, heartbeat and all.
    let (closed, handle) = issue_on(&env, &b, "fleet-agent", true).await;
    let beat_key = format!("ksfleet:lifeline:{}", closed.id);
    assert_eq!(redis.cli(&["EXISTS", &beat_key]).trim(), "1");
    let mut on_c = intercepted(&c, auth(&closed), &ca, Alpn::Http1Only).await;
    assert_eq!(on_c.get(&env, API_HOST, "/echo").await.0, 200);
    drop(handle);
    on_c.closes("C closing the connection of a task whose lifeline closed")
        .await;
    until("A refusing the task whose lifeline closed", || async {
        (connect_status(&a, &closed).await == 407).then_some(())
    })
    .await;
    until("the closed lifeline's heartbeat key going", || async {
        (redis.cli(&["EXISTS", &beat_key]).trim() == "0").then_some(())
    })
    .await;

    // A lifeline held on A stays alive while A refreshes it: past several of its TTLs.
    let (task, _lifeline) = issue_on(&env, &a, "fleet-agent", true).await;
    let beat_key = format!("ksfleet:lifeline:{}", task.id);
    assert_eq!(redis.cli(&["GET", &beat_key]).trim(), replica_name(&a));
    let mut on_b = intercepted(&b, auth(&task), &ca, Alpn::Http2Only).await;
    assert_eq!(on_b.get(&env, API_HOST, "/echo").await.0, 200);
    let mut refreshes = 0;
    let mut last = i64::MAX;
    until("A refreshing its heartbeat four times", || {
        let pttl: i64 = redis.cli(&["PTTL", &beat_key]).trim().parse().unwrap_or(-2);
        assert!(pttl > 0, "the heartbeat of a held lifeline expired");
        if pttl > last {
            refreshes += 1;
        }
        last = pttl;
        async move { (refreshes >= 4).then_some(()) }
    })
    .await;
    assert_eq!(on_b.get(&env, API_HOST, "/echo").await.0, 200);
    let mut on_c = intercepted(&c, auth(&task), &ca, Alpn::Http1Only).await;
    assert_eq!(on_c.get(&env, API_HOST, "/echo").await.0, 200);

    // A dies without a word: its heartbeat expires, and B and C revoke the task.
    let killed = Command::new("kill")
        .args(["-KILL", &a.child.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    on_b.closes("B closing the task's connection after A died")
        .await;
    on_c.closes("C closing the task's connection after A died")
        .await;
    for r in [&b, &c] {
        until("the task being refused", || async {
            (connect_status(r, &task).await == 407).then_some(())
        })
        .await;
    }
    assert_eq!(
        redis.cli(&["HEXISTS", "ksfleet:tasks", &task.id]).trim(),
        "0"
    );
    assert_eq!(
        redis
            .cli(&["SISMEMBER", "ksfleet:lifelines", &task.id])
            .trim(),
        "0"
    );
    until("B or C logging why the task ended", || async {
        let logs = b.child.log() + &c.child.log();
        logs.contains("the replica holding the task's lifeline is gone")
            .then_some(())
    })
    .await;
    assert_store_clean(&redis, &[&task.token, &closed.token]);
    env.assert_no_leaks();
}

/// The waiting request of `task` as `r` lists it.
async fn listed(r: &Replica, task: &str) -> ApprovalInfo {
    until("the held request being listed", || async {
        let all = r.admin.approvals(None).await.expect("approvals");
        all.into_iter().find(|a| a.task == task)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_answered_through_any_replica_and_the_listing_names_connection_holders() {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let [a, b, c] = Replica::three(&env, &redis);
    let (task, _) = issue_on(&env, &a, "fleet-asks", false).await;
    let mut conn = intercepted(&a, auth(&task), &ca, Alpn::Http1Only).await;

    // Held on A, listed on every replica, approved through C: the request on A goes through.
    let approve = AnswerRequest {
        answer: "approve".into(),
        ..AnswerRequest::default()
    };
    let (reply, answered) = tokio::join!(conn.get(&env, API_HOST, "/echo/asks/1"), async {
        let held = listed(&c, &task.id).await;
        assert_eq!(held.replica.as_deref(), Some(replica_name(&a).as_str()));
        assert_eq!(
            (held.method.as_str(), held.path.as_deref()),
            ("GET", Some("/echo/asks/1"))
        );
        assert_eq!(listed(&b, &task.id).await.id, held.id);
        assert_eq!(
            listed(&a, &task.id).await.replica,
            None,
            "A holds it itself"
        );
        c.admin
            .answer(&held.id, &approve)
            .await
            .expect("answered through C")
    });
    assert_eq!(reply.0, 200, "the approved request was refused: {reply:?}");
    assert!(
        answered.by.ends_with(&format!(" via {}", replica_name(&c))),
        "A audits who answered and through which replica: {}",
        answered.by
    );
    assert_eq!(
        (answered.task.as_str(), answered.answer.as_str()),
        (task.id.as_str(), "approved")
    );

    // Held again, denied through B with a reason: refused on A.
    let deny = AnswerRequest {
        answer: "deny".into(),
        reason: Some("not from this fleet".into()),
        ..AnswerRequest::default()
    };
    let (reply, answered) = tokio::join!(conn.get(&env, API_HOST, "/echo/asks/2"), async {
        let held = listed(&b, &task.id).await;
        b.admin
            .answer(&held.id, &deny)
            .await
            .expect("answered through B")
    });
    assert_eq!(reply, (403, Some("approval_denied".to_string())));
    assert_eq!(answered.answer, "denied");
    // A, the holder, audits both answers (its sink writes on its own thread).
    until("A auditing both answers", || async {
        let audit = std::fs::read_to_string(env.dir.path().join("a-audit.jsonl")).ok()?;
        let both = ["\"answer\":\"approved\"", "\"answer\":\"denied\""]
            .iter()
            .all(|answer| audit.contains(answer));
        both.then_some(())
    })
    .await;
    assert!(c.admin.answer("ap-nobody.1", &approve).await.is_err());
    until("the answered requests leaving every listing", || async {
        let mut waiting = 0;
        for r in [&a, &b, &c] {
            waiting += r.admin.approvals(None).await.expect("approvals").len();
        }
        (waiting == 0).then_some(())
    })
    .await;

    // One more connection on A and one on B: every replica's listing names both holders.
    let _second = intercepted(&a, auth(&task), &ca, Alpn::Http2Only).await;
    let _on_b = intercepted(&b, auth(&task), &ca, Alpn::Http1Only).await;
    let expected = BTreeMap::from([(replica_name(&a), 2), (replica_name(&b), 1)]);
    for r in [&a, &b, &c] {
        until("the listing naming both holders", || async {
            let list = r.admin.list().await.expect("task list");
            let info = list.into_iter().find(|t| t.id == task.id)?;
            (info.replicas == expected).then_some(())
        })
        .await;
    }
    assert_eq!(
        c.admin.show(&task.id).await.expect("show").replicas,
        expected
    );
    assert_store_clean(&redis, &[&task.token]);
    env.assert_no_leaks();
}
