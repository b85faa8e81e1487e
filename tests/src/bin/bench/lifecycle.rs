//! Scenario 7: keyswap's task lifecycle, driven through its admin socket — how long a revoked
//! task's open connections take to close, what issuing a task costs, and whether a thousand
//! live tasks slow the request path. keyswap only: the peers have no tasks.
//!
//! Never prints a task's token: it only goes into the `Proxy-Authorization` of the task's
//! connections.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use http::HeaderValue;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};

use crate::load::{self, Conn, Endpoint, Route};
use crate::report::{quantile, sorted, Row, KEYSWAP};
use crate::scenarios::{progress, Contender, CpuMeter, Plan};
use crate::setup::POLICY;

/// A revoked task whose connections are still open this long after the `DELETE` fails the
/// scenario (so a broken revocation cannot stall a smoke run).
const REVOKE_LIMIT: Duration = Duration::from_secs(5);

/// Scenario 7 against `keyswap`, whose admin API listens on `socket`.
pub async fn run(plan: &Plan, keyswap: &Contender, socket: &Path) -> Vec<Row> {
    let admin = AdminClient::new(AdminTarget::Socket(socket.to_path_buf()));
    // 7c's baseline must run while a single runtime task is live, so 7b and 7c go first and
    // 7a's hundred tasks come after them.
    let scale = issue_and_scale(plan, keyswap, &admin).await;
    let revocation = revocation(plan, keyswap, &admin).await;
    let mut rows = revocation.unwrap_or_else(|e| vec![not_measured("7a. revocation", "ms", e)]);
    match scale {
        Ok((issue, lookup)) => {
            rows.extend(issue);
            rows.extend(lookup);
        }
        Err(e) => rows.push(not_measured("7b–7c. issue and live tasks", "µs", e)),
    }
    rows
}

fn not_measured(scenario: &str, unit: &'static str, e: anyhow::Error) -> Row {
    let mut row = Row::new(scenario, unit, false);
    row.notes.push(format!("keyswap: not measured: {e:#}"));
    row
}

/// Issues one task from the bench policy (a new admin connection per call, as the CLI does).
pub async fn issue(admin: &AdminClient) -> anyhow::Result<IssuedTask> {
    let request = IssueRequest {
        policy: POLICY.into(),
        ttl: Some("1h".into()),
        ..Default::default()
    };
    Ok(admin.issue(&request).await?)
}

/// `base` (keyswap's contender endpoint) acting as the issued task.
pub fn endpoint_for(base: &Endpoint, task: &IssuedTask) -> anyhow::Result<Endpoint> {
    let Route::Proxy { addr, .. } = base.route else {
        anyhow::bail!("keyswap's endpoint is not a proxy route");
    };
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", task.id, task.token));
    let mut proxy_authorization = HeaderValue::from_str(&format!("Basic {basic}"))?;
    proxy_authorization.set_sensitive(true);
    let mut endpoint = base.clone();
    endpoint.route = Route::Proxy {
        addr,
        proxy_authorization,
    };
    Ok(endpoint)
}

fn millis_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// 7a: `revoke_tasks` tasks each hold `revoke_connections` intercepted connections (CONNECT,
/// TLS, one request, then idle); each task in turn is revoked, timed from sending the
/// `DELETE` until the client has seen every one of its connections end.
async fn revocation(
    plan: &Plan,
    keyswap: &Contender,
    admin: &AdminClient,
) -> anyhow::Result<Vec<Row>> {
    let label = format!(
        "7a. revocation, DELETE until all {} connections of the task closed ({} tasks)",
        plan.revoke_connections, plan.revoke_tasks
    );
    progress(&label, keyswap.name);
    let mut held: Vec<(String, Vec<Conn>)> = Vec::with_capacity(plan.revoke_tasks);
    for _ in 0..plan.revoke_tasks {
        let task = issue(admin).await?;
        let conns = load::idle_connections(
            &endpoint_for(&keyswap.endpoint, &task)?,
            plan.revoke_connections,
        )
        .await?;
        held.push((task.id, conns));
    }
    let (mut closed, mut answered) = (Vec::new(), Vec::new());
    let (mut closed_early, mut miscounted) = (0, Vec::new());
    for (id, conns) in held {
        // Revoking the tasks before this one must have left its connections alone.
        if conns.iter().any(Conn::is_closed) {
            closed_early += 1;
            admin.revoke(&id, "api").await?;
            continue;
        }
        let started = Instant::now();
        let revoked = admin.revoke(&id, "api").await?;
        answered.push(millis_since(started));
        let all_closed = async {
            for conn in &conns {
                conn.closed().await;
            }
        };
        tokio::time::timeout(REVOKE_LIMIT, all_closed)
            .await
            .map_err(|_| {
                let open = conns.iter().filter(|c| !c.is_closed()).count();
                anyhow::anyhow!(
                    "task {id}: {open} of {} connections still open {REVOKE_LIMIT:?} after its DELETE",
                    conns.len()
                )
            })?;
        closed.push(millis_since(started));
        if revoked.connections_closed != conns.len() as u64 {
            miscounted.push(revoked.connections_closed);
        }
    }
    let (closed, answered) = (sorted(closed), sorted(answered));
    let mut rows: Vec<Row> = [("p50", 0.5), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .map(|(name, q)| {
            let mut row = Row::new(format!("{label}: {name}"), "ms", false);
            row.set(KEYSWAP, quantile(&closed, q));
            row
        })
        .collect();
    let notes = &mut rows[0].notes;
    notes.push(format!(
        "keyswap: the DELETE itself was answered in p50 {:.2} ms, max {:.2} ms; the rest is \
         the connections' close reaching the client",
        quantile(&answered, 0.5).unwrap_or(f64::NAN),
        quantile(&answered, 1.0).unwrap_or(f64::NAN),
    ));
    if closed_early > 0 {
        notes.push(format!(
            "keyswap: {closed_early} tasks had a connection closed before their own DELETE \
             (left out)"
        ));
    }
    if !miscounted.is_empty() {
        notes.push(format!(
            "keyswap: {} DELETEs reported connections_closed other than {}: {miscounted:?}",
            miscounted.len(),
            plan.revoke_connections
        ));
    }
    Ok(rows)
}

/// One run of a workload: its rate, keyswap's CPU per request, and failures.
#[derive(Clone, Copy, Default)]
struct Measured {
    rate: f64,
    cpu_us: Option<f64>,
    errors: u64,
}

/// The two ways the request path meets the task registry: keep-alive requests (the task is
/// identified once, at the CONNECT) and new connections (one identification each).
#[derive(Clone, Copy)]
enum Workload {
    KeepAlive,
    NewConnections,
}

const WORKLOADS: [Workload; 2] = [Workload::KeepAlive, Workload::NewConnections];

impl Workload {
    fn label(self, plan: &Plan) -> String {
        match self {
            Workload::KeepAlive => {
                format!("7c. keep-alive HTTP/1.1, {} connections", plan.connections)
            }
            Workload::NewConnections => {
                format!("7c. new connections, {} at a time", plan.churn_concurrency)
            }
        }
    }

    /// The unit of its rate, and what one unit of work is.
    fn unit(self) -> (&'static str, &'static str) {
        match self {
            Workload::KeepAlive => ("req/s", "request"),
            Workload::NewConnections => ("conn/s", "connection"),
        }
    }

    async fn measure(
        self,
        plan: &Plan,
        endpoint: &Endpoint,
        pid: Option<u32>,
    ) -> anyhow::Result<Measured> {
        let mut meter = CpuMeter::new(pid);
        let mark = || meter.mark();
        let (warmup, duration) = (plan.warmup, plan.duration);
        let t = match self {
            Workload::KeepAlive => {
                let conns = plan.connections;
                load::keep_alive(endpoint, false, conns, 1, warmup, duration, mark).await?
            }
            Workload::NewConnections => {
                load::churn(endpoint, plan.churn_concurrency, warmup, duration, mark).await?
            }
        };
        Ok(Measured {
            rate: t.per_second(),
            cpu_us: meter.micros_per(t.requests),
            errors: t.errors,
        })
    }
}

/// Both workloads through `endpoint`.
async fn request_path(
    plan: &Plan,
    endpoint: &Endpoint,
    pid: Option<u32>,
) -> anyhow::Result<[Measured; 2]> {
    let mut measured = [Measured::default(); 2];
    for (m, workload) in measured.iter_mut().zip(WORKLOADS) {
        *m = workload.measure(plan, endpoint, pid).await?;
    }
    Ok(measured)
}

/// 7b and 7c: the request path with one runtime task live, then `issues` timed issues (and
/// untimed ones up to `live_tasks`), then the request path again with the same task among
/// them all. Every task issued here is revoked at the end.
async fn issue_and_scale(
    plan: &Plan,
    keyswap: &Contender,
    admin: &AdminClient,
) -> anyhow::Result<(Vec<Row>, Vec<Row>)> {
    let live = plan.live_tasks.max(plan.issues);
    progress("7c. request path, 1 live task", keyswap.name);
    let started = Instant::now();
    let used = issue(admin).await?;
    let mut micros = vec![started.elapsed().as_secs_f64() * 1e6];
    let endpoint = endpoint_for(&keyswap.endpoint, &used)?;
    let one = request_path(plan, &endpoint, keyswap.pid).await?;

    progress(&format!("7b. issue {} tasks", plan.issues), keyswap.name);
    let mut ids = vec![used.id];
    while ids.len() < live {
        let started = Instant::now();
        let task = issue(admin).await?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        ids.push(task.id);
    }
    micros.truncate(plan.issues);

    progress(
        &format!("7c. request path, {live} live tasks"),
        keyswap.name,
    );
    let many = request_path(plan, &endpoint, keyswap.pid).await?;
    for id in &ids {
        admin.revoke(id, "api").await?;
    }
    Ok((issue_rows(micros), lookup_rows(plan, live, &one, &many)))
}

fn issue_rows(micros: Vec<f64>) -> Vec<Row> {
    let label = format!(
        "7b. issue a task, POST /v1/tasks over the unix socket, {} in a row",
        micros.len()
    );
    let mean = micros.iter().sum::<f64>() / micros.len().max(1) as f64;
    let micros = sorted(micros);
    let mut rows = vec![Row::new(format!("{label}: mean"), "µs", false)];
    rows[0].set(KEYSWAP, Some(mean));
    rows[0].notes.push(
        "keyswap: timed at the client, each on a new connection as `keyswap task issue` does"
            .into(),
    );
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        let mut row = Row::new(format!("{label}: {name}"), "µs", false);
        row.set(KEYSWAP, quantile(&micros, q));
        rows.push(row);
    }
    rows
}

fn lookup_rows(plan: &Plan, live: usize, one: &[Measured; 2], many: &[Measured; 2]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, workload) in WORKLOADS.into_iter().enumerate() {
        let label = workload.label(plan);
        let (unit, per) = workload.unit();
        let first = rows.len();
        rows.extend(compared(
            &label,
            (unit, true),
            live,
            Some(one[i].rate),
            Some(many[i].rate),
        ));
        rows.extend(compared(
            &format!("{label}: proxy CPU per {per}"),
            ("µs", false),
            live,
            one[i].cpu_us,
            many[i].cpu_us,
        ));
        let errors = one[i].errors + many[i].errors;
        if errors > 0 {
            let note = format!("keyswap: {errors} failed {per}s");
            rows[first].notes.push(note);
        }
    }
    rows[0].notes.push(
        "keyswap: the requests use one runtime task; the config's static task is live too. \
         keep-alive requests identify their task once, at the CONNECT; new connections once each"
            .into(),
    );
    rows
}

/// `label` with one live task, with `live` tasks, and the second over the first.
fn compared(
    label: &str,
    (unit, higher_is_better): (&'static str, bool),
    live: usize,
    at_one: Option<f64>,
    at_many: Option<f64>,
) -> [Row; 3] {
    let row = |scenario: String, unit, value| {
        let mut row = Row::new(scenario, unit, higher_is_better);
        row.set(KEYSWAP, value);
        row
    };
    [
        row(format!("{label}, 1 live task"), unit, at_one),
        row(format!("{label}, {live} live tasks"), unit, at_many),
        row(
            format!("{label}: {live} / 1 live task"),
            "×",
            at_one.zip(at_many).map(|(one, many)| many / one),
        ),
    ]
}
