//! Scenario 11: what one task's flood costs another task. An issued task opens HTTP/2
//! connections full of `POST` streams whose bodies never end — each holds a request in
//! flight for as long as the client keeps it — while the bench's own task times its requests
//! on a kept-alive connection and on new connections (CONNECT, TLS, one request). The same
//! requests are timed before the flood, so the rows read as "without" against "during".
//! keyswap only: the peers have no tasks and no `limits:`.
//!
//! The flood runs at keyswap's default `limits:` (64 requests in flight per task, 100 streams
//! per connection): past them its requests are refused with `task_busy`, counted here.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use keyswap::admin::client::{AdminClient, AdminTarget};

use crate::lifecycle::{endpoint_for, issue};
use crate::load::{self, Endpoint};
use crate::report::{quantile, sorted, Row, KEYSWAP};
use crate::scenarios::{progress, Contender, Plan};

/// The flood: HTTP/2 connections, each with this many endless streams (the default
/// `limits.per_connection.h2_streams`).
const FLOOD_CONNECTIONS: usize = 4;
const FLOOD_STREAMS: usize = 100;
/// The default `limits.per_task.in_flight`: the flood's requests past it are refused.
const IN_FLIGHT: u64 = 64;
/// How long the flood may take to fill its slots before the neighbour is timed anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// The neighbour's timings, in milliseconds.
struct Timings {
    kept_alive: Vec<f64>,
    new_connection: Vec<f64>,
}

/// Scenario 11 against `keyswap`, whose admin API listens on `socket`.
pub async fn run(plan: &Plan, keyswap: &Contender, socket: &Path) -> Vec<Row> {
    progress("11. a neighbour's flood", "keyswap");
    match measure(plan, keyswap, socket).await {
        Ok(rows) => rows,
        Err(e) => {
            let mut row = Row::new("11. a neighbour's flood", "ms", false);
            row.notes.push(format!("keyswap: not measured: {e:#}"));
            vec![row]
        }
    }
}

async fn measure(plan: &Plan, keyswap: &Contender, socket: &Path) -> anyhow::Result<Vec<Row>> {
    let rounds = if plan.duration < Duration::from_secs(5) {
        50
    } else {
        500
    };
    let quiet = neighbour(&keyswap.endpoint, rounds).await?;
    let admin = AdminClient::new(AdminTarget::Socket(socket.to_path_buf()));
    let flooder = issue(&admin).await?;
    let flood = Flood::start(&endpoint_for(&keyswap.endpoint, &flooder)?).await?;
    let settled = flood.settle().await;
    let during = neighbour(&keyswap.endpoint, rounds).await;
    let (refused, other) = (flood.refused(), flood.other());
    drop(flood);
    admin.revoke(&flooder.id, "api").await?;
    let during = during?;
    let mut rows = Vec::new();
    let label = format!(
        "11. a neighbour's flood ({FLOOD_CONNECTIONS} h2 connections × {FLOOD_STREAMS} endless \
         POSTs)"
    );
    for (what, quiet, during) in [
        (
            "another task's GET, kept-alive h1",
            &quiet.kept_alive,
            &during.kept_alive,
        ),
        (
            "another task's new connection + GET",
            &quiet.new_connection,
            &during.new_connection,
        ),
    ] {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (before, flooded) = (quantile(quiet, q), quantile(during, q));
            let mut row = Row::new(format!("{label}: {what}: {name} during"), "ms", false);
            row.set(KEYSWAP, flooded);
            if let (Some(before), Some(flooded)) = (before, flooded) {
                row.notes.push(format!(
                    "keyswap: {before:.2} ms without the flood (×{:.2}), {} requests each",
                    flooded / before,
                    quiet.len()
                ));
            }
            rows.push(row);
        }
    }
    let mut row = Row::new(
        format!("{label}: flood requests refused task_busy"),
        "requests",
        false,
    );
    row.set(KEYSWAP, Some(refused as f64));
    row.notes.push(format!(
        "keyswap: of {} sent; {} answered otherwise; at most {IN_FLIGHT} in flight per task{}",
        FLOOD_CONNECTIONS * FLOOD_STREAMS,
        other,
        if settled {
            ""
        } else {
            "; the flood had not filled its slots when the neighbour was timed"
        }
    ));
    rows.push(row);
    Ok(rows)
}

/// `rounds` GETs on one kept-alive HTTP/1.1 connection, then a tenth as many new
/// connections of one GET each, timed at the client.
async fn neighbour(endpoint: &Endpoint, rounds: usize) -> anyhow::Result<Timings> {
    let mut conn = endpoint.open(false, None).await?;
    let mut kept_alive = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        conn.get("/bytes/1024").await?;
        kept_alive.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mut new_connection = Vec::with_capacity(rounds / 10);
    for _ in 0..(rounds / 10).max(5) {
        let took = load::one_connection(endpoint, "localhost").await?;
        new_connection.push(took.as_secs_f64() * 1e3);
    }
    Ok(Timings {
        kept_alive: sorted(kept_alive),
        new_connection: sorted(new_connection),
    })
}

/// The flooding task's streams; dropping it ends them (their connections close).
struct Flood {
    streams: tokio::task::JoinSet<()>,
    refused: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
}

impl Flood {
    async fn start(endpoint: &Endpoint) -> anyhow::Result<Flood> {
        let mut streams = tokio::task::JoinSet::new();
        let refused = Arc::new(AtomicU64::new(0));
        let other = Arc::new(AtomicU64::new(0));
        for _ in 0..FLOOD_CONNECTIONS {
            let conn = endpoint.open(true, None).await?;
            for _ in 0..FLOOD_STREAMS {
                let Some(mut stream) = conn.another_stream() else {
                    anyhow::bail!("the flood's connection is not HTTP/2");
                };
                let (refused, other) = (refused.clone(), other.clone());
                streams.spawn(async move {
                    match stream.post_endless("/upload").await {
                        Ok(StatusCode::TOO_MANY_REQUESTS) => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                    // The stream stays open (an accepted one holds its slot) until the flood
                    // is dropped.
                    std::future::pending::<()>().await;
                });
            }
        }
        Ok(Flood {
            streams,
            refused,
            other,
        })
    }

    /// Waits until every stream past the in-flight bound has been refused; false if that
    /// did not happen within [`SETTLE_LIMIT`].
    async fn settle(&self) -> bool {
        let expected = (FLOOD_CONNECTIONS * FLOOD_STREAMS) as u64 - IN_FLIGHT;
        let started = Instant::now();
        while self.refused() + self.other() < expected {
            if started.elapsed() > SETTLE_LIMIT {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn other(&self) -> u64 {
        self.other.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.streams.abort_all();
    }
}
