//! The machine's floor for latency: a 64-byte TCP round trip over loopback between the load
//! generator's CPU and the proxies' CPU, with no TLS and no HTTP. Every request through a
//! proxy crosses between the CPUs twice more than a direct one, so the added latency of any
//! proxy here cannot be much below one such round trip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::peer::spawn_bench_child;
use crate::report::{Row, DIRECT};

const MESSAGE: usize = 64;

/// Child side of `bench serve-echo`: echoes one connection's bytes back.
pub fn serve_echo() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; MESSAGE];
    while stream.read_exact(&mut buf).is_ok() {
        stream.write_all(&buf)?;
    }
    Ok(())
}

/// Median and 99th percentile of `rounds` round trips, `gap` apart, in microseconds.
fn round_trips(stream: &mut TcpStream, rounds: usize, gap: Duration) -> anyhow::Result<(f64, f64)> {
    let mut buf = [7u8; MESSAGE];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let started = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[rounds / 2], times[rounds * 99 / 100]))
}

/// Rows "0. machine floor": back to back (both CPUs kept busy) and 2 ms apart (the CPUs
/// go idle between requests, as under light load). Blocking; run off the async runtime.
pub fn measure(cpu: Option<usize>, quick: bool) -> anyhow::Result<Vec<Row>> {
    let echo = spawn_bench_child(&["serve-echo".as_ref()], cpu)?;
    let mut stream = TcpStream::connect(echo.addr)?;
    stream.set_nodelay(true)?;
    let rounds = if quick { 500 } else { 2000 };
    round_trips(&mut stream, 200, Duration::ZERO)?;
    let mut rows = Vec::new();
    for (label, gap) in [
        ("back to back", Duration::ZERO),
        ("2 ms apart", Duration::from_millis(2)),
    ] {
        let (p50, p99) = round_trips(&mut stream, rounds, gap)?;
        for (quantile, value) in [("p50", p50), ("p99", p99)] {
            let mut row = Row::new(
                format!("0. machine floor: TCP round trip CPU 0 ↔ proxy CPU, {label}: {quantile}"),
                "µs",
                false,
            );
            row.set(DIRECT, Some(value));
            rows.push(row);
        }
    }
    if let Some(first) = rows.first_mut() {
        first.notes.push(
            "64 bytes over loopback to an echo process pinned like the proxies, no TLS, no HTTP: \
             a proxy adds two such crossings to every request"
                .into(),
        );
    }
    Ok(rows)
}
