//! Scenario 14: the fleet (`store:`) against the in-memory store, in one run. A real
//! `redis-server` (on a unix socket in the bench's directory) and three keyswap replicas
//! sharing it, beside one keyswap without `store:`; each row puts the in-memory keyswap in the
//! `direct` column and the fleet in the `keyswap` column:
//!
//! - 14a: issuing a task (the admin API's answer);
//! - 14b: revocation fan-out — a task issued on replica C holds an idle connection on A and
//!   one on B; timed from the `DELETE` on C until both have closed (in memory: the same task's
//!   two connections on the one keyswap);
//! - 14c: one request on a rule with a budget (sequential, on one keep-alive connection), and
//!   what the budget adds to the same request on a rule without one;
//! - 14d: keep-alive throughput on a rule without a budget (the store must cost it nothing:
//!   the target is a ratio of at least 0.97, reported, not enforced, on a shared machine).
//!
//! Needs `redis-server`: without it the scenario is skipped with the reason, and under
//! `CI=true` the bench fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use http::HeaderValue;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};

use crate::lifecycle::endpoint_for;
use crate::load::{self, Endpoint, Route};
use crate::peer::Spawned;
use crate::report::{quantile, sorted, Row, DIRECT, KEYSWAP};
use crate::setup::{self, World, POLICY, TASK};

/// The policy whose rule has a budget (large enough never to run out during the bench).
const BUDGETED: &str = "bench-budgeted";

/// Longest wait for a replica's store, a revocation, or redis-server to start.
const LIMIT: Duration = Duration::from_secs(10);

/// What the scenario needs from the rest of the bench.
pub struct Inputs<'a> {
    pub quick: bool,
    pub world: &'a World,
    pub cpu: Option<usize>,
    pub token: &'a str,
    pub binary: Option<&'a Path>,
}

/// How large each part runs.
struct Sizes {
    issues: usize,
    revocations: usize,
    requests: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        Sizes {
            issues: if quick { 30 } else { 500 },
            revocations: if quick { 10 } else { 100 },
            requests: if quick { 100 } else { 5000 },
            connections: if quick { 4 } else { 64 },
            warmup: Duration::from_millis(if quick { 100 } else { 2000 }),
            duration: Duration::from_millis(if quick { 300 } else { 10_000 }),
        }
    }
}

/// The rows of scenario 14; `Ok(Err(why))`: skipped; `Err`: redis-server is missing in CI.
pub async fn run(inputs: Inputs<'_>) -> anyhow::Result<Result<Vec<Row>, String>> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "14. fleet: redis-server must be on PATH in CI"
        );
        return Ok(Err(
            "14. fleet: redis-server is not on PATH (Debian: apt-get install redis-server)".into(),
        ));
    }
    Ok(measure(&inputs)
        .await
        .map_err(|e| format!("14. fleet: {e:#}")))
}

/// A `redis-server` on a unix socket, stopped when dropped.
struct RedisServer {
    child: Child,
    socket: PathBuf,
}

impl RedisServer {
    fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("redis.sock");
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let stdout = child.stdout.take().context("redis-server's output")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Ready to accept connections" (7.2) or "ready to accept connections at PATH" (7.0).
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("eady to accept connections") => break,
                Some(Ok(_)) => continue,
                _ => anyhow::bail!("redis-server exited before it was ready"),
            }
        }
        // Keep reading, so the pipe never fills.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(RedisServer { child, socket })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keyswap: its process, its admin API, and its endpoint acting as the static task.
struct Proxy {
    _spawned: Spawned,
    admin: AdminClient,
    endpoint: Endpoint,
}

/// The bench's keyswap config, plus a policy with a budget and (for the fleet) a store.
fn config(inputs: &Inputs<'_>, setup: &setup::PeerSetupOwned, store: Option<&Path>) -> String {
    let upstream = inputs.world.upstream.addr;
    let mut text = setup::keyswap_config(&setup.borrow(), &inputs.world.proxy_ca_dir, upstream);
    text.push_str(&format!(
        "  {BUDGETED}:\n    ttl: 1h\n    allow:\n      - host: localhost\n        port: {}\n        \
         secrets: [api]\n        budget: {{requests: 1000000000}}\n",
        upstream.port()
    ));
    if let Some(socket) = store {
        text.push_str(&format!(
            "store:\n  redis:\n    url: redis+unix://{}\n    prefix: \"ksbench:\"\n",
            socket.display()
        ));
    }
    text
}

fn start(inputs: &Inputs<'_>, name: &str, store: Option<&Path>) -> anyhow::Result<Proxy> {
    let setup = inputs.world.peer_setup(name, inputs.cpu)?;
    let text = config(inputs, &setup, store);
    let spawned = setup::spawn_keyswap_with(&setup.borrow(), &text, inputs.token, inputs.binary)?;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{TASK}:{}", inputs.token));
    let route = Route::Proxy {
        addr: spawned.addr,
        proxy_authorization: HeaderValue::from_str(&format!("Basic {basic}"))?,
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {}", setup::PLACEHOLDER))?;
    let endpoint = Endpoint::new(
        route,
        inputs.world.upstream.addr.port(),
        bearer,
        &inputs.world.trust,
    )?;
    Ok(Proxy {
        _spawned: spawned,
        admin: AdminClient::new(AdminTarget::Socket(setup::admin_socket(&setup.dir))),
        endpoint,
    })
}

async fn issue(admin: &AdminClient, policy: &str) -> anyhow::Result<IssuedTask> {
    let request = IssueRequest {
        policy: policy.into(),
        ttl: Some("1h".into()),
        ..Default::default()
    };
    Ok(admin.issue(&request).await?)
}

/// Issues until the replica has reached its store (it issues nothing before).
async fn ready(proxy: &Proxy) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        match issue(&proxy.admin, POLICY).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the store never answered"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn measure(inputs: &Inputs<'_>) -> anyhow::Result<Vec<Row>> {
    let sizes = Sizes::new(inputs.quick);
    let redis = RedisServer::start(&inputs.world.dir.path().join("fleet-redis"))?;
    let memory = start(inputs, "fleet-memory", None)?;
    let mut fleet = Vec::new();
    for name in ["fleet-a", "fleet-b", "fleet-c"] {
        fleet.push(start(inputs, name, Some(&redis.socket))?);
    }
    for proxy in fleet.iter().chain([&memory]) {
        ready(proxy).await?;
    }
    let note = "direct column: keyswap without store: (in memory); keyswap column: three \
                replicas sharing a redis-server";
    let mut rows = Vec::new();

    crate::scenarios::progress("14a. issue a task", "keyswap");
    let pair = [
        issue_times(&memory, sizes.issues).await?,
        issue_times(&fleet[0], sizes.issues).await?,
    ];
    rows.extend(quantile_rows("14a. issue a task", "ms", &pair, note));

    crate::scenarios::progress("14b. revocation fan-out", "keyswap");
    let pair = [
        revocations(&memory, [&memory, &memory], sizes.revocations).await?,
        revocations(&fleet[2], [&fleet[0], &fleet[1]], sizes.revocations).await?,
    ];
    let label = "14b. revocation, DELETE on one replica until a connection on each of two \
                 others closed";
    rows.extend(quantile_rows(label, "ms", &pair, note));

    crate::scenarios::progress("14c. budgeted request", "keyswap");
    let mut budgeted = Row::new("14c. one request on a budgeted rule: p50", "µs", false);
    let mut added = Row::new(
        "14c. added by the budget (budgeted − unbudgeted rule): p50",
        "µs",
        false,
    );
    for (column, proxy) in [(DIRECT, &memory), (KEYSWAP, &fleet[0])] {
        let with = request_p50(proxy, BUDGETED, sizes.requests).await?;
        let without = request_p50(proxy, POLICY, sizes.requests).await?;
        budgeted.set(column, Some(with));
        added.set(column, Some(with - without));
    }
    budgeted.notes.push(note.into());
    added.notes.push(note.into());
    rows.extend([budgeted, added]);

    crate::scenarios::progress("14d. keep-alive, unbudgeted rule", "keyswap");
    let mut throughput = Row::new(
        format!(
            "14d. keep-alive throughput, rule without a budget, HTTP/1.1 ×{}",
            sizes.connections
        ),
        "req/s",
        true,
    );
    for (column, proxy) in [(DIRECT, &memory), (KEYSWAP, &fleet[0])] {
        let measured = load::keep_alive(
            &proxy.endpoint,
            false,
            sizes.connections,
            1,
            sizes.warmup,
            sizes.duration,
            || {},
        )
        .await?;
        anyhow::ensure!(measured.errors == 0, "{} requests failed", measured.errors);
        throughput.set(column, Some(measured.per_second()));
    }
    throughput
        .notes
        .push(format!("{note}; target: keyswap/direct ≥ 0.97"));
    rows.push(throughput);
    drop(redis);
    Ok(rows)
}

/// Milliseconds of each of `count` issues on `proxy`, back to back.
async fn issue_times(proxy: &Proxy, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        issue(&proxy.admin, POLICY).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// `count` times: a task issued on `revoker` holds one idle connection through each of
/// `holders`; milliseconds from its `DELETE` on `revoker` until both connections closed.
async fn revocations(
    revoker: &Proxy,
    holders: [&Proxy; 2],
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let task = issue(&revoker.admin, POLICY).await?;
        let mut held = Vec::new();
        for holder in holders {
            let endpoint = endpoint_for(&holder.endpoint, &task)?;
            held.extend(load::idle_connections(&endpoint, 1).await?);
        }
        let started = Instant::now();
        revoker.admin.revoke(&task.id, "api").await?;
        let all_closed = async {
            for conn in &held {
                conn.closed().await;
            }
        };
        tokio::time::timeout(LIMIT, all_closed)
            .await
            .map_err(|_| anyhow::anyhow!("a revoked task's connection stayed open {LIMIT:?}"))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// The median microseconds of `count` sequential requests of a task of `policy` on one
/// keep-alive connection through `proxy` (after a few unmeasured ones).
async fn request_p50(proxy: &Proxy, policy: &str, count: usize) -> anyhow::Result<f64> {
    let task = issue(&proxy.admin, policy).await?;
    let mut conn = endpoint_for(&proxy.endpoint, &task)?
        .open(false, None)
        .await?;
    for _ in 0..10 {
        conn.get("/bytes/1024").await?;
    }
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        conn.get("/bytes/1024").await?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    proxy.admin.revoke(&task.id, "api").await?;
    quantile(&sorted(times), 0.5).context("no request measured")
}

/// p50 and p99 rows of `[in memory, fleet]` samples.
fn quantile_rows(label: &str, unit: &'static str, pair: &[Vec<f64>; 2], note: &str) -> Vec<Row> {
    let pair = [sorted(pair[0].clone()), sorted(pair[1].clone())];
    [("p50", 0.5), ("p99", 0.99)]
        .into_iter()
        .map(|(name, q)| {
            let mut row = Row::new(format!("{label}: {name}"), unit, false);
            row.set(DIRECT, quantile(&pair[0], q));
            row.set(KEYSWAP, quantile(&pair[1], q));
            row.notes.push(note.into());
            row
        })
        .collect()
}
