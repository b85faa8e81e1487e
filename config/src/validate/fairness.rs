//! `limits:` → [`Limits`]: how much of keyswap one task and one agent connection may hold
//! at once. Every bound is at least 1 (0 would refuse every request of every task) and at
//! most a figure past which it would no longer protect anything (a task allowed more upstream
//! connections than a process has descriptors bounds nothing).

use super::Checker;
use crate::error::Sink;
use crate::model::{ConnectionLimits, Limits, TaskLimits};
use crate::raw::{RawConnectionLimits, RawLimits, RawTaskLimits};
use crate::read::Located;

/// Most requests of one task in flight: each holds memory and, on HTTP/1.1, a connection.
const MAX_IN_FLIGHT: u64 = 10_000;
/// Most upstream connections of one task: past this, one task alone could use every
/// descriptor a default hard limit (often 65,536 or 1,048,576 / 16) leaves keyswap.
const MAX_UPSTREAM_CONNECTIONS: u64 = 4_096;
/// Most HTTP/2 streams per agent connection (RFC 9113 recommends no less than 100).
const MAX_H2_STREAMS: u64 = 1_000;

pub(super) fn check_limits(
    raw: Option<&Located<RawLimits>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Limits {
    let mut limits = Limits::default();
    let Some(raw) = raw else {
        return limits;
    };
    if let Some(per_task) = &raw.value.per_task {
        limits.per_task = check_per_task(per_task, limits.per_task, sink, checker);
    }
    if let Some(per_connection) = &raw.value.per_connection {
        limits.per_connection = check_per_connection(per_connection, limits.per_connection, sink);
    }
    limits
}

fn check_per_task(
    raw: &Located<RawTaskLimits>,
    default: TaskLimits,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> TaskLimits {
    let r = &raw.value;
    let in_flight = bounded(r.in_flight.as_ref(), MAX_IN_FLIGHT, sink)
        .map_or(default.in_flight, |n| n as usize);
    let upstream_connections = bounded(
        r.upstream_connections.as_ref(),
        MAX_UPSTREAM_CONNECTIONS,
        sink,
    )
    .map_or(default.upstream_connections, |n| n as usize);
    if upstream_connections > in_flight {
        // Every upstream connection carries a request in flight, so the lower bound is the one
        // that applies; said, since the operator may think both do.
        checker.warn(
            sink.file,
            raw.pos,
            &raw.path,
            format!(
                "upstream_connections ({upstream_connections}) is more than in_flight ({in_flight}): \
                 a task can never hold more upstream connections than requests in flight"
            ),
        );
    }
    TaskLimits {
        upstream_connections,
        in_flight,
    }
}

fn check_per_connection(
    raw: &Located<RawConnectionLimits>,
    default: ConnectionLimits,
    sink: &mut Sink<'_>,
) -> ConnectionLimits {
    let h2_streams = bounded(raw.value.h2_streams.as_ref(), MAX_H2_STREAMS, sink)
        .map_or(default.h2_streams, |n| n as u32);
    ConnectionLimits { h2_streams }
}

/// A count from 1 to `max`; an error (and `None`) otherwise, `None` when absent.
fn bounded(value: Option<&Located<u64>>, max: u64, sink: &mut Sink<'_>) -> Option<u64> {
    let value = value?;
    if value.value == 0 {
        sink.at(
            value,
            "0 would refuse every request",
            format!("write a number from 1 to {max}, or leave it out for the default"),
        );
        return None;
    }
    if value.value > max {
        sink.at(
            value,
            format!("{} is more than keyswap can honour", value.value),
            format!("write a number from 1 to {max}, or leave it out for the default"),
        );
        return None;
    }
    Some(value.value)
}
