//! Scenarios 1–6 of the bench, each run against every contender in turn (direct first),
//! each returning its rows of the report. Scenario 7, keyswap's task lifecycle, is in
//! [`crate::lifecycle`].

use std::time::Duration;

use crate::load::{self, Endpoint};
use crate::procfs;
use crate::report::{Row, DIRECT, KEYSWAP};

/// One way of reaching the upstream: a column of the report.
pub struct Contender {
    pub column: usize,
    pub name: &'static str,
    pub endpoint: Endpoint,
    /// The proxy's process (none for direct).
    pub pid: Option<u32>,
}

/// How long and how large each scenario runs.
pub struct Plan {
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub h2_streams: usize,
    pub churn_concurrency: usize,
    pub new_hosts: usize,
    pub idle_connections: usize,
    pub stream_bytes: u64,
    /// Scenario 7: tasks revoked one by one, each holding this many open connections.
    pub revoke_tasks: usize,
    pub revoke_connections: usize,
    /// Scenario 7: tasks issued back to back to time an issue.
    pub issues: usize,
    /// Scenario 7: live tasks while the request path is measured at scale.
    pub live_tasks: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            warmup: Duration::from_millis(if quick { 300 } else { 2000 }),
            duration: Duration::from_millis(if quick { 1500 } else { 10_000 }),
            connections: 64,
            h2_streams: 64,
            churn_concurrency: 16,
            new_hosts: if quick { 8 } else { crate::setup::NEW_HOSTS },
            idle_connections: if quick { 200 } else { 1000 },
            stream_bytes: if quick { 64 << 20 } else { 1 << 30 },
            revoke_tasks: if quick { 20 } else { 100 },
            revoke_connections: 10,
            issues: if quick { 200 } else { 1000 },
            live_tasks: 1000,
        }
    }
}

/// CPU time the process spent between the two marks, per unit of work, in microseconds.
pub struct CpuMeter {
    pid: Option<u32>,
    marks: Vec<Duration>,
}

impl CpuMeter {
    pub fn new(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self) {
        if let Some(cpu) = self.pid.and_then(procfs::cpu_time) {
            self.marks.push(cpu);
        }
    }

    pub fn micros_per(&self, units: u64) -> Option<f64> {
        match self.marks.as_slice() {
            [start, end] if units > 0 => Some((*end - *start).as_secs_f64() * 1e6 / units as f64),
            _ => None,
        }
    }
}

pub fn progress(what: &str, who: &str) {
    eprintln!("bench: {what}: {who}");
}

/// Scenarios 1 and 2: keep-alive throughput, requests/s and the proxy's CPU per request.
/// Returns the rows and keyswap's requests/s (for scenario 3's rate).
pub async fn keep_alive(
    plan: &Plan,
    contenders: &[Contender],
    h2: bool,
) -> (Vec<Row>, Vec<Option<f64>>) {
    let (label, conns, streams) = if h2 {
        (
            format!(
                "2. keep-alive HTTP/2, 1 connection × {} streams",
                plan.h2_streams
            ),
            1,
            plan.h2_streams,
        )
    } else {
        (
            format!("1. keep-alive HTTP/1.1, {} connections", plan.connections),
            plan.connections,
            1,
        )
    };
    let mut rate = Row::new(label.clone(), "req/s", true);
    let mut cpu = Row::new(format!("{label}: proxy CPU per request"), "µs", false);
    let mut per_column = vec![None; 4];
    for c in contenders {
        progress(&label, c.name);
        let mut meter = CpuMeter::new(c.pid);
        let result = load::keep_alive(
            &c.endpoint,
            h2,
            conns,
            streams,
            plan.warmup,
            plan.duration,
            || meter.mark(),
        )
        .await;
        match result {
            Ok(t) => {
                rate.set(c.column, Some(t.per_second()));
                cpu.set(c.column, meter.micros_per(t.requests));
                per_column[c.column] = Some(t.per_second());
                if t.errors > 0 {
                    rate.notes
                        .push(format!("{}: {} failed requests", c.name, t.errors));
                }
            }
            Err(e) => rate.notes.push(format!("{}: not measured: {e:#}", c.name)),
        }
    }
    // The load generator's CPU saturates before a proxy's does, so the proxies' own limit
    // is read from their CPU time: requests one CPU could carry at this cost.
    let mut capacity = Row::new(
        format!("{label}: proxy capacity of one CPU (10⁶ / CPU per request)"),
        "req/s",
        true,
    );
    for column in 0..cpu.values.len() {
        capacity.set(column, cpu.values[column].map(|us| 1e6 / us));
    }
    (vec![rate, cpu, capacity], per_column)
}

/// Scenario 3: open-loop latency at `rate` requests/s (half of keyswap's saturation).
/// Contenders that saturate below the rate are not run at it.
pub async fn latency(
    plan: &Plan,
    contenders: &[Contender],
    rate: f64,
    saturation: &[Option<f64>],
) -> Vec<Row> {
    let label = format!(
        "3. latency at {rate:.0} req/s open-loop, HTTP/1.1, {} connections",
        plan.connections
    );
    let mut rows = vec![
        Row::new(format!("{label}: p50"), "µs", false),
        Row::new(format!("{label}: p99"), "µs", false),
        Row::new(format!("{label}: p99.9"), "µs", false),
        Row::new("3. added latency vs direct: p50", "µs", false),
        Row::new("3. added latency vs direct: p99", "µs", false),
        Row::new("3. added latency vs direct: p99.9", "µs", false),
    ];
    let mut direct = None;
    for c in contenders {
        if let Some(sat) = saturation[c.column] {
            if sat < rate * 1.05 {
                rows[0].notes.push(format!(
                    "{}: not run, it saturates at {sat:.0} req/s, below the rate",
                    c.name
                ));
                continue;
            }
        }
        progress(&label, c.name);
        match load::open_loop(
            &c.endpoint,
            plan.connections,
            rate,
            plan.warmup,
            plan.duration,
        )
        .await
        {
            Ok(l) => {
                let figures = [l.p50_us, l.p99_us, l.p999_us];
                for (row, value) in rows.iter_mut().zip(figures) {
                    row.set(c.column, Some(value));
                }
                if c.column == DIRECT {
                    direct = Some(figures);
                } else if let Some(d) = direct {
                    for i in 0..3 {
                        rows[3 + i].set(c.column, Some(figures[i] - d[i]));
                    }
                }
                if l.completed * 100 < l.scheduled * 99 {
                    rows[0].notes.push(format!(
                        "{}: only {} of {} scheduled requests answered in time",
                        c.name, l.completed, l.scheduled
                    ));
                }
            }
            Err(e) => rows[0]
                .notes
                .push(format!("{}: not measured: {e:#}", c.name)),
        }
    }
    rows
}

/// Scenario 4: new connections per second (CONNECT + TLS + one request + close) to a host
/// whose leaf is cached. The direct column is `limit`: a plain rustls server pinned like the
/// proxies, reached without a proxy.
pub async fn churn(plan: &Plan, contenders: &[Contender], limit: Option<&Contender>) -> Vec<Row> {
    let label = format!(
        "4. new connections, {} at a time, cached leaf",
        plan.churn_concurrency
    );
    let mut rate = Row::new(label.clone(), "conn/s", true);
    let mut cpu = Row::new(format!("{label}: server CPU per connection"), "µs", false);
    rate.notes.push(
        "direct = a plain rustls TLS-terminating server (the bench upstream) in its own process, \
         pinned like the proxies: the limit for any TLS-intercepting proxy"
            .into(),
    );
    let proxies = contenders.iter().filter(|c| c.column != DIRECT);
    for c in limit.into_iter().chain(proxies) {
        progress(&label, c.name);
        let mut meter = CpuMeter::new(c.pid);
        match load::churn(
            &c.endpoint,
            plan.churn_concurrency,
            plan.warmup,
            plan.duration,
            || meter.mark(),
        )
        .await
        {
            Ok(t) => {
                rate.set(c.column, Some(t.per_second()));
                cpu.set(c.column, meter.micros_per(t.requests));
                if t.errors > 0 {
                    rate.notes
                        .push(format!("{}: {} failed connections", c.name, t.errors));
                }
            }
            Err(e) => rate.notes.push(format!("{}: not measured: {e:#}", c.name)),
        }
    }
    vec![rate, cpu]
}

/// Scenario 4b: the one-time cost of the first connection to a host keyswap has not seen
/// (a leaf to mint, a new upstream connection), against a connection to a cached host.
pub async fn new_host(plan: &Plan, keyswap: &Contender) -> Vec<Row> {
    let label = "4b. first connection to a new host, extra over a cached host";
    progress(label, keyswap.name);
    let mut row = Row::new(label, "ms", false);
    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    for i in 0..plan.new_hosts {
        let host = format!("h{i}.{}", crate::setup::NEW_HOST_DOMAIN);
        let new = load::one_connection(&keyswap.endpoint, &host).await;
        let old = load::one_connection(&keyswap.endpoint, "localhost").await;
        match (new, old) {
            (Ok(new), Ok(old)) => {
                fresh.push(new.as_secs_f64() * 1e3);
                cached.push(old.as_secs_f64() * 1e3);
            }
            (Err(e), _) | (_, Err(e)) => {
                row.notes.push(format!("keyswap: not measured: {e:#}"));
                return vec![row];
            }
        }
    }
    let (fresh, cached) = (median(&mut fresh), median(&mut cached));
    row.set(KEYSWAP, Some(fresh - cached));
    row.notes.push(format!(
        "keyswap, medians of {} hosts: {fresh:.2} ms to a new host, {cached:.2} ms to a cached one; \
         the new host also needs a new upstream connection",
        plan.new_hosts
    ));
    vec![row]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Scenario 5: memory per idle intercepted keep-alive connection.
pub async fn idle(plan: &Plan, contenders: &[Contender]) -> Vec<Row> {
    let label = format!(
        "5. memory per idle intercepted connection ({} open)",
        plan.idle_connections
    );
    let mut row = Row::new(label.clone(), "KiB", false);
    for c in contenders {
        let Some(pid) = c.pid else { continue };
        progress(&label, c.name);
        let Some(before) = procfs::rss(pid) else {
            continue;
        };
        match load::idle_connections(&c.endpoint, plan.idle_connections).await {
            Ok(conns) => {
                if let Some(after) = procfs::rss(pid) {
                    let per = (after as f64 - before as f64) / conns.len() as f64 / 1024.0;
                    row.set(c.column, Some(per));
                }
                drop(conns);
            }
            Err(e) => row.notes.push(format!("{}: not measured: {e:#}", c.name)),
        }
    }
    vec![row]
}

/// Scenario 6: large transfers, throughput and the proxy's peak memory against a 10 MiB
/// transfer.
pub async fn streaming(plan: &Plan, contenders: &[Contender]) -> Vec<Row> {
    let size = size_label(plan.stream_bytes);
    let mut down = Row::new(format!("6. download {size}"), "MB/s", true);
    let mut up = Row::new(format!("6. upload {size}"), "MB/s", true);
    let mut small_peak = Row::new("6. proxy peak RSS, 10 MiB each way", "MiB", false);
    let mut large_peak = Row::new(format!("6. proxy peak RSS, {size} each way"), "MiB", false);
    let mut growth = Row::new(format!("6. peak RSS {size} / 10 MiB"), "×", false);
    for c in contenders {
        progress(&format!("6. streaming {size}"), c.name);
        let peak = |len: u64| {
            let endpoint = c.endpoint.clone();
            let pid = c.pid;
            async move {
                if let Some(pid) = pid {
                    procfs::reset_peak_rss(pid);
                }
                let down = load::transfer(&endpoint, true, len).await?;
                let up = load::transfer(&endpoint, false, len).await?;
                let peak = pid.and_then(procfs::peak_rss).map(|b| b as f64 / 1048576.0);
                anyhow::Ok((down, up, peak))
            }
        };
        let small = peak(10 << 20).await;
        let large = peak(plan.stream_bytes).await;
        match (small, large) {
            (Ok((_, _, small)), Ok((d, u, large))) => {
                down.set(c.column, Some(d / 1e6));
                up.set(c.column, Some(u / 1e6));
                small_peak.set(c.column, small);
                large_peak.set(c.column, large);
                if let (Some(s), Some(l)) = (small, large) {
                    growth.set(c.column, Some(l / s));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                down.notes.push(format!("{}: not measured: {e:#}", c.name))
            }
        }
    }
    vec![down, up, small_peak, large_peak, growth]
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
