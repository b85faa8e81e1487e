//! The fair-use metrics (`limits:`): `task_busy` refusals by the bound that refused them,
//! accept failures (out of descriptors), and, read at scrape time, the requests each task has
//! in flight and the upstream connections keyswap holds against its cap.
//!
//! `keyswap_task_in_flight_requests` is the one family labelled by task id. Its cardinality is
//! bounded twice: only live tasks with a request in flight at the scrape have a series (an
//! ended or idle task leaves none), and at most [`MAX_TASK_SERIES`] of them, the busiest; the
//! rest are summed under [`OVERFLOW_TASK`]. A task id is a config key or an id keyswap issued,
//! never a token.

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The task label of the sum past [`MAX_TASK_SERIES`]: parentheses are not allowed in task
/// ids, so it cannot collide with one (the same word as the metrics' other overflow label).
pub const OVERFLOW_TASK: &str = "(overflow)";

/// Most task series of `keyswap_task_in_flight_requests` in one scrape.
pub const MAX_TASK_SERIES: usize = 64;

/// The bound a `task_busy` refusal hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// `limits.per_task.in_flight`.
    InFlight,
    /// `limits.per_task.upstream_connections`.
    UpstreamConnections,
    /// keyswap's cap on upstream connections (its descriptor limit less a reserve).
    Process,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::InFlight => "in_flight",
            Bound::UpstreamConnections => "upstream_connections",
            Bound::Process => "process",
        }
    }
}

/// What is read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FairSample {
    /// (task id, requests in flight) of the live tasks.
    pub tasks: Vec<(String, u64)>,
    pub upstream_in_use: u64,
    pub upstream_cap: u64,
}

/// Read at scrape time (set once by `server`, over the live tasks).
pub type FairSource = Box<dyn Fn() -> FairSample + Send + Sync>;

#[derive(Clone, Default)]
struct SourceSlot(Arc<OnceLock<FairSource>>);

impl fmt::Debug for SourceSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

/// The fair-use counters; part of [`super::metrics::Metrics`].
#[derive(Debug)]
pub struct FairMetrics {
    busy: Family<BoundLabel, Counter>,
    accept_errors: Counter,
    source: SourceSlot,
}

impl FairMetrics {
    /// Registers the fair-use families in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> FairMetrics {
        let busy = Family::<BoundLabel, Counter>::default();
        for bound in [Bound::InFlight, Bound::UpstreamConnections, Bound::Process] {
            drop(busy.get_or_create(&BoundLabel {
                limit: bound.as_str(),
            }));
        }
        let accept_errors = Counter::default();
        registry.register(
            "task_busy_refusals",
            "Requests and tunnels refused with task_busy, by the limit that refused them",
            busy.clone(),
        );
        registry.register(
            "accept_errors",
            "Connections a listener failed to accept (out of file descriptors and similar)",
            accept_errors.clone(),
        );
        let source = SourceSlot::default();
        registry.register_collector(Box::new(FairCollector(source.clone())));
        FairMetrics {
            busy,
            accept_errors,
            source,
        }
    }

    pub fn task_busy(&self, bound: Bound) {
        self.busy
            .get_or_create(&BoundLabel {
                limit: bound.as_str(),
            })
            .inc();
    }

    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// Where the scrape-time gauges are read from (a second call is ignored).
    pub fn set_source(&self, source: FairSource) {
        let _ = self.source.0.set(source);
    }
}

#[derive(Debug)]
struct FairCollector(SourceSlot);

impl Collector for FairCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(source) = self.0 .0.get() else {
            return Ok(());
        };
        let sample = source();
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        for (name, help, value) in [
            (
                "upstream_connections",
                "Upstream connections, tunnels and WebSockets held now, over all tasks.",
                sample.upstream_in_use,
            ),
            (
                "upstream_connections_limit",
                "The most upstream connections keyswap holds at once (its descriptor limit less a reserve).",
                sample.upstream_cap,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            gauge(value).encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            "task_in_flight_requests",
            "Requests in flight per task, for the busiest live tasks with any.",
            None,
            MetricType::Gauge,
        )?;
        for (task, count) in busiest(sample.tasks) {
            gauge(count).encode(family.encode_family(&TaskLabel { task })?)?;
        }
        Ok(())
    }
}

/// The tasks with requests in flight, busiest first, at most [`MAX_TASK_SERIES`]; the rest
/// summed under the overflow label.
fn busiest(mut tasks: Vec<(String, u64)>) -> Vec<(String, u64)> {
    tasks.retain(|(_, n)| *n > 0);
    tasks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if tasks.len() > MAX_TASK_SERIES {
        let rest: u64 = tasks.drain(MAX_TASK_SERIES..).map(|(_, n)| n).sum();
        tasks.push((OVERFLOW_TASK.to_string(), rest));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_busy_tasks_have_series_and_their_number_is_bounded() {
        let mut tasks: Vec<(String, u64)> = (0..100).map(|i| (format!("t{i:03}"), i)).collect();
        tasks.push(("idle".into(), 0));
        let series = busiest(tasks);
        assert_eq!(series.len(), MAX_TASK_SERIES + 1);
        assert_eq!(series[0], ("t099".to_string(), 99));
        let overflow = series.last().expect("overflow");
        assert_eq!(overflow.0, OVERFLOW_TASK);
        assert_eq!(overflow.1, (1..=35).sum::<u64>());
        assert!(!series.iter().any(|(t, _)| t == "idle"));
    }
}
