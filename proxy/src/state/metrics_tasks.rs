//! The label sets of the task counters (`keyswap_tasks_issued_total{by}`,
//! `keyswap_tasks_revoked_total{why}`), closed sets that start at zero.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IssuedLabel {
    pub by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RevokedLabel {
    pub why: &'static str,
}

/// Closed sets start at zero, so `rate()` sees the first event instead of a new series.
pub(crate) fn zero_closed_sets(
    issued: &Family<IssuedLabel, Counter>,
    revoked: &Family<RevokedLabel, Counter>,
) {
    for by in ["exec", "api", "config"] {
        drop(issued.get_or_create(&IssuedLabel { by }));
    }
    for why in ["exit", "api", "expired", "reload"] {
        drop(revoked.get_or_create(&RevokedLabel { why }));
    }
}
