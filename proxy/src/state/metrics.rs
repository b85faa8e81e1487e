//! keyswap's Prometheus metrics: the counters, gauges and histogram the proxy updates, their
//! OpenMetrics text encoding (by `prometheus-client`, never formatted by hand). The listener
//! that serves them is [`crate::telemetry`]'s.
//!
//! Label values come from closed sets (`&'static str` reasons) or from names in the config
//! (policies, secrets). This module never takes a task id, token, host or path as a label: those
//! are unbounded, and a token in a label would publish a credential to every scraper (the one
//! bounded exception, in-flight requests per busy task, is [`crate::state::metrics_fair`]'s).

use crate::state::metrics_tasks::{zero_closed_sets, IssuedLabel, RevokedLabel};
use std::fmt;
use std::sync::{Arc, OnceLock};

use dashmap::DashSet;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::state::metrics_fair::FairMetrics;

/// The `Content-Type` of `/metrics`: `prometheus-client` writes OpenMetrics text, whose counter
/// families are named without `_total`; a Prometheus 0.0.4 text parser would read them untyped.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of `keyswap_request_duration_seconds`: a cached local answer (sub-millisecond)
/// up to a long upstream call; past 30 s only `+Inf` counts.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct values kept per config-named label (`policy`, `secret`). Config names are bounded,
/// so this is only reached by a caller bug; it caps series instead of letting them grow.
pub const MAX_NAMED_LABEL_VALUES: usize = 512;

/// The label value that stands for every name past [`MAX_NAMED_LABEL_VALUES`]. Parentheses are
/// not allowed in config names, so it cannot collide with a real policy or secret.
pub const OVERFLOW_LABEL: &str = "(overflow)";

/// Values read at scrape time from counters owned elsewhere (atomics in other crates).
pub struct MetricSources {
    /// `keyswap_leaf_certificates_minted_total`.
    pub leaves_minted: Box<dyn Fn() -> u64 + Send + Sync>,
    /// `keyswap_audit_records_dropped_total`.
    pub audit_records_dropped: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl fmt::Debug for MetricSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricSources").finish_non_exhaustive()
    }
}

/// Encodes [`MetricSources`] on each scrape, so the owners keep their plain atomics.
#[derive(Debug)]
struct SourceCollector(MetricSources);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counters: [(&str, &str, &(dyn Fn() -> u64 + Send + Sync)); 2] = [
            (
                "leaf_certificates_minted",
                "Leaf certificates minted for intercepted hosts.",
                &*self.0.leaves_minted,
            ),
            (
                "audit_records_dropped",
                "Audit records dropped because the audit writer fell behind.",
                &*self.0.audit_records_dropped,
            ),
        ];
        for (name, help, read) in counters {
            let counter = ConstCounter::new(read());
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// One series of `keyswap_budget_used_requests`: the requests counted on one rule, summed
/// over the live tasks of one policy (`"static"` for a static task without a policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSample {
    pub policy: String,
    pub rule: String,
    pub used: u64,
    /// Live tasks whose budget on this rule is used up.
    pub exhausted_tasks: u64,
}

/// Read at scrape time: the budget series of the live tasks (`crate::lifecycle::budget::samples`).
pub type BudgetSource = Box<dyn Fn() -> Vec<BudgetSample> + Send + Sync>;

/// Encodes the budget gauges from the [`BudgetSource`], once one is set: counts stay in the
/// tasks' atomics, and a task that ends leaves no series behind.
#[derive(Debug)]
struct BudgetCollector(BudgetSlot);

/// Where the [`BudgetSource`] is put once it exists.
#[derive(Clone, Default)]
struct BudgetSlot(Arc<OnceLock<BudgetSource>>);

impl fmt::Debug for BudgetSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    policy: String,
    rule: String,
}

impl Collector for BudgetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(source) = self.0 .0.get() else {
            return Ok(());
        };
        let samples = source();
        if samples.is_empty() {
            return Ok(());
        }
        type Read = fn(&BudgetSample) -> u64;
        let gauges: [(&str, &str, Read); 2] = [
            (
                "budget_used_requests",
                "Requests counted against rule budgets, summed over the live tasks, by policy and rule.",
                |s| s.used,
            ),
            (
                "budget_exhausted_tasks",
                "Live tasks whose budget on a rule is used up, by policy and rule.",
                |s| s.exhausted_tasks,
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for sample in &samples {
                let labels = BudgetLabels {
                    policy: sample.policy.clone(),
                    rule: sample.rule.clone(),
                };
                let value = i64::try_from(read(sample)).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    reason: &'static str,
    policy: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: Arc<str>,
}

/// Shares one `Arc<str>` per config name, so a label set for a name seen before is built
/// without allocating: the hot path pays a shard read lock and a reference count.
#[derive(Debug)]
struct Names {
    seen: DashSet<Arc<str>>,
    overflow: Arc<str>,
}

impl Names {
    fn new() -> Names {
        Names {
            seen: DashSet::new(),
            overflow: Arc::from(OVERFLOW_LABEL),
        }
    }

    fn get(&self, name: &str) -> Arc<str> {
        if let Some(known) = self.seen.get(name) {
            return known.key().clone();
        }
        // A race may let a few names past the cap; it bounds growth, not an exact count.
        if self.seen.len() >= MAX_NAMED_LABEL_VALUES {
            return self.overflow.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.seen.insert(name.clone());
        name
    }
}

type DurationFamily = Family<PolicyLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// keyswap's metrics: created once per proxy and shared via `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: DurationFamily,
    open_connections: Gauge,
    active_tasks: Gauge,
    tasks_issued: Family<IssuedLabel, Counter>,
    tasks_revoked: Family<RevokedLabel, Counter>,
    upstream_errors: Counter,
    secret_refresh_failures: Family<SecretLabel, Counter>,
    policies: Names,
    secrets: Names,
    budgets: BudgetSlot,
    /// `keyswap_store_state` and `/healthz`'s store state (`store:`).
    pub store: crate::state::metrics_store::StoreSlot,
    /// `task_busy` refusals, accept failures, in-flight requests per task.
    pub fair: FairMetrics,
}

impl Metrics {
    pub fn new(sources: MetricSources) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = DurationFamily::new_with_constructor(duration_histogram);
        let open_connections = Gauge::default();
        let active_tasks = Gauge::default();
        let tasks_issued = Family::<IssuedLabel, Counter>::default();
        let tasks_revoked = Family::<RevokedLabel, Counter>::default();
        let upstream_errors = Counter::default();
        let secret_refresh_failures = Family::<SecretLabel, Counter>::default();

        zero_closed_sets(&tasks_issued, &tasks_revoked);

        // The registry appends the final "." to each help text; the collector's are verbatim.
        let mut registry = Registry::with_prefix("keyswap");
        registry.register(
            "requests",
            "Finished requests and refused CONNECTs, by decision reason and policy",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to the end of the response, by policy",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "open_connections",
            "Agent connections currently open",
            open_connections.clone(),
        );
        registry.register(
            "active_tasks",
            "Tasks currently holding a token",
            active_tasks.clone(),
        );
        registry.register(
            "tasks_issued",
            "Task tokens issued, by who issued them",
            tasks_issued.clone(),
        );
        registry.register(
            "tasks_revoked",
            "Task tokens revoked, by why",
            tasks_revoked.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream connections or exchanges that failed",
            upstream_errors.clone(),
        );
        registry.register(
            "secret_refresh_failures",
            "Failed refreshes of a secret's value, by secret name",
            secret_refresh_failures.clone(),
        );
        registry.register_collector(Box::new(SourceCollector(sources)));
        let budgets = BudgetSlot::default();
        registry.register_collector(Box::new(BudgetCollector(budgets.clone())));
        Metrics {
            fair: FairMetrics::register(&mut registry),
            store: crate::state::metrics_store::StoreSlot::register(&mut registry),
            registry,
            requests,
            duration,
            open_connections,
            active_tasks,
            tasks_issued,
            tasks_revoked,
            upstream_errors,
            secret_refresh_failures,
            policies: Names::new(),
            secrets: Names::new(),
            budgets,
        }
    }

    /// Where `keyswap_budget_*` are read from at scrape time (set once, when the task registry
    /// exists; a second call is ignored). Label values are policy names and rule keys from the
    /// config, so the series are bounded by its size.
    pub fn set_budget_source(&self, source: BudgetSource) {
        let _ = self.budgets.0.set(source);
    }

    /// One finished request (or refused CONNECT). `reason` is a closed-set value such as
    /// `"allowed"` or `"host_not_allowed"`; `policy` is a config policy name, `"static"` or
    /// `"none"`.
    pub fn request(&self, reason: &'static str, policy: &str, seconds: f64) {
        let policy = self.policies.get(policy);
        self.requests
            .get_or_create(&RequestLabels {
                reason,
                policy: policy.clone(),
            })
            .inc();
        self.duration
            .get_or_create(&PolicyLabel { policy })
            .observe(seconds);
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// `by`: `"exec"`, `"api"` or `"config"`.
    pub fn task_issued(&self, by: &'static str) {
        self.tasks_issued.get_or_create(&IssuedLabel { by }).inc();
        self.active_tasks.inc();
    }

    /// `why`: `"exit"`, `"api"`, `"expired"` or `"reload"`.
    pub fn task_revoked(&self, why: &'static str) {
        self.tasks_revoked
            .get_or_create(&RevokedLabel { why })
            .inc();
        self.active_tasks.dec();
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    /// `secret` is a secret's name from the config, never its value.
    pub fn secret_refresh_failed(&self, secret: &str) {
        let secret = self.secrets.get(secret);
        self.secret_refresh_failures
            .get_or_create(&SecretLabel { secret })
            .inc();
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn try_encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// As [`Metrics::try_encode`]; on an encoder error (logged) the text is empty, which a
    /// scraper rejects for its missing `# EOF` rather than reading partial values as complete.
    pub fn encode(&self) -> String {
        self.try_encode().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "encoding metrics failed");
            String::new()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use prometheus_parse::{Sample, Scrape, Value};

    use super::*;

    fn metrics_with(leaves: Arc<AtomicU64>, dropped: Arc<AtomicU64>) -> Metrics {
        Metrics::new(MetricSources {
            leaves_minted: Box::new(move || leaves.load(Ordering::Relaxed)),
            audit_records_dropped: Box::new(move || dropped.load(Ordering::Relaxed)),
        })
    }

    fn metrics() -> Metrics {
        metrics_with(Arc::default(), Arc::default())
    }

    pub(crate) fn parse(text: &str) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parseable exposition")
    }

    /// The sample named `name` whose label set is exactly `labels`.
    fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        let found: Vec<&Sample> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?} in {:#?}", scrape.samples);
        found[0]
    }

    /// A counter or gauge value. prometheus-parse types samples by the `# TYPE` name, and
    /// OpenMetrics names a counter family without `_total`, so counters read as untyped here.
    pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        match sample(scrape, name, labels).value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    fn samples_named<'a>(scrape: &'a Scrape, name: &'a str) -> impl Iterator<Item = &'a Sample> {
        scrape.samples.iter().filter(move |s| s.metric == name)
    }

    #[test]
    fn metrics_is_send_and_sync() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Metrics>();
    }

    #[test]
    fn requests_count_by_reason_and_policy_and_time_by_policy() {
        let m = metrics();
        m.request("allowed", "github", 0.003);
        m.request("allowed", "github", 0.2);
        m.request("host_not_allowed", "github", 0.0001);
        m.request("allowed", "static", 45.0);

        let scrape = parse(&m.encode());
        let requests = "keyswap_requests_total";
        assert_eq!(
            value(
                &scrape,
                requests,
                &[("reason", "allowed"), ("policy", "github")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                requests,
                &[("reason", "host_not_allowed"), ("policy", "github")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                requests,
                &[("reason", "allowed"), ("policy", "static")]
            ),
            1.0
        );
        assert_eq!(samples_named(&scrape, requests).count(), 3);

        let histogram = sample(
            &scrape,
            "keyswap_request_duration_seconds",
            &[("policy", "github")],
        );
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("not a histogram: {histogram:?}");
        };
        let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
        let mut expected = DURATION_BUCKETS.to_vec();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected);
        let count_le = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
        assert_eq!(count_le(0.0005), 1.0);
        assert_eq!(count_le(0.0025), 1.0);
        assert_eq!(count_le(0.005), 2.0);
        assert_eq!(count_le(0.1), 2.0);
        assert_eq!(count_le(0.25), 3.0);
        assert_eq!(count_le(f64::INFINITY), 3.0);
        let count = value(
            &scrape,
            "keyswap_request_duration_seconds_count",
            &[("policy", "github")],
        );
        assert_eq!(count, 3.0);
        let sum = value(
            &scrape,
            "keyswap_request_duration_seconds_sum",
            &[("policy", "github")],
        );
        assert!((sum - 0.2031).abs() < 1e-9, "sum {sum}");

        // Past the last bound only +Inf counts.
        let slow = sample(
            &scrape,
            "keyswap_request_duration_seconds",
            &[("policy", "static")],
        );
        let Value::Histogram(buckets) = &slow.value else {
            panic!("not a histogram: {slow:?}");
        };
        assert!(buckets
            .iter()
            .all(|b| b.count == if b.less_than.is_infinite() { 1.0 } else { 0.0 }));
    }

    #[test]
    fn gauges_and_task_counters_move() {
        let m = metrics();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.task_issued("exec");
        m.task_issued("api");
        m.task_issued("api");
        m.task_revoked("exit");
        m.upstream_error();
        m.upstream_error();
        m.secret_refresh_failed("github_token");

        let scrape = parse(&m.encode());
        assert_eq!(value(&scrape, "keyswap_open_connections", &[]), 1.0);
        assert_eq!(value(&scrape, "keyswap_active_tasks", &[]), 2.0);
        let issued = "keyswap_tasks_issued_total";
        assert_eq!(value(&scrape, issued, &[("by", "exec")]), 1.0);
        assert_eq!(value(&scrape, issued, &[("by", "api")]), 2.0);
        assert_eq!(value(&scrape, issued, &[("by", "config")]), 0.0);
        let revoked = "keyswap_tasks_revoked_total";
        assert_eq!(value(&scrape, revoked, &[("why", "exit")]), 1.0);
        for why in ["api", "expired", "reload"] {
            assert_eq!(value(&scrape, revoked, &[("why", why)]), 0.0);
        }
        assert_eq!(value(&scrape, "keyswap_upstream_errors_total", &[]), 2.0);
        assert_eq!(
            value(
                &scrape,
                "keyswap_secret_refresh_failures_total",
                &[("secret", "github_token")]
            ),
            1.0
        );
    }

    #[test]
    fn scrape_time_sources_are_read_on_each_encode() {
        let leaves = Arc::new(AtomicU64::new(3));
        let dropped = Arc::new(AtomicU64::new(0));
        let m = metrics_with(leaves.clone(), dropped.clone());

        let scrape = parse(&m.encode());
        assert_eq!(
            value(&scrape, "keyswap_leaf_certificates_minted_total", &[]),
            3.0
        );
        assert_eq!(
            value(&scrape, "keyswap_audit_records_dropped_total", &[]),
            0.0
        );

        leaves.fetch_add(4, Ordering::Relaxed);
        dropped.fetch_add(9, Ordering::Relaxed);
        let scrape = parse(&m.encode());
        assert_eq!(
            value(&scrape, "keyswap_leaf_certificates_minted_total", &[]),
            7.0
        );
        assert_eq!(
            value(&scrape, "keyswap_audit_records_dropped_total", &[]),
            9.0
        );
    }

    #[test]
    fn every_family_is_typed_with_help() {
        let m = metrics();
        // A labelled family with no series yet is left out of the exposition entirely.
        m.request("allowed", "static", 0.01);
        m.secret_refresh_failed("github_token");
        m.set_budget_source(Box::new(|| {
            vec![BudgetSample {
                policy: "openai".into(),
                rule: "https://api.openai.com:443 * /**".into(),
                used: 7,
                exhausted_tasks: 0,
            }]
        }));
        m.fair
            .set_source(Box::new(|| crate::state::metrics_fair::FairSample {
                tasks: vec![("t".into(), 3)],
                upstream_in_use: 3,
                upstream_cap: 100,
            }));
        let text = m.encode();
        for (name, kind) in [
            ("keyswap_task_busy_refusals", "counter"),
            ("keyswap_accept_errors", "counter"),
            ("keyswap_upstream_connections", "gauge"),
            ("keyswap_upstream_connections_limit", "gauge"),
            ("keyswap_task_in_flight_requests", "gauge"),
            ("keyswap_requests", "counter"),
            ("keyswap_request_duration_seconds", "histogram"),
            ("keyswap_open_connections", "gauge"),
            ("keyswap_active_tasks", "gauge"),
            ("keyswap_tasks_issued", "counter"),
            ("keyswap_tasks_revoked", "counter"),
            ("keyswap_leaf_certificates_minted", "counter"),
            ("keyswap_upstream_errors", "counter"),
            ("keyswap_audit_records_dropped", "counter"),
            ("keyswap_secret_refresh_failures", "counter"),
            ("keyswap_budget_used_requests", "gauge"),
            ("keyswap_budget_exhausted_tasks", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
            let help = format!("# HELP {name} ");
            let help = text.lines().find(|l| l.starts_with(&help));
            let help = help.unwrap_or_else(|| panic!("{name} has no help:\n{text}"));
            assert!(help.ends_with('.') && !help.ends_with(".."), "{help}");
        }
    }

    #[test]
    fn unbounded_policy_names_fold_into_one_series() {
        let m = metrics();
        for i in 0..MAX_NAMED_LABEL_VALUES + 10 {
            m.request("allowed", &format!("p{i}"), 0.001);
        }
        let scrape = parse(&m.encode());
        let series = samples_named(&scrape, "keyswap_requests_total").count();
        assert_eq!(series, MAX_NAMED_LABEL_VALUES + 1);
        assert_eq!(
            value(
                &scrape,
                "keyswap_requests_total",
                &[("reason", "allowed"), ("policy", OVERFLOW_LABEL)]
            ),
            10.0
        );
        // A name seen before the cap keeps its own series.
        m.request("allowed", "p0", 0.001);
        let scrape = parse(&m.encode());
        assert_eq!(
            value(
                &scrape,
                "keyswap_requests_total",
                &[("reason", "allowed"), ("policy", "p0")]
            ),
            2.0
        );
    }
}
