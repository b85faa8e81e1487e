//! `keyswap_store_state`: whether this replica reaches the store its fleet shares
//! (`store:`), read at scrape time — one series per state, 1 for the current one. Without a
//! store the family has no series.

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::state::fleet::{StoreHealth, StoreState};

/// Where the store's health is put once the fleet link exists.
#[derive(Clone, Default, Debug)]
pub struct StoreSlot(pub(crate) Arc<OnceLock<Arc<StoreHealth>>>);

impl StoreSlot {
    /// The current state, if this replica has a store.
    pub fn state(&self) -> Option<StoreState> {
        self.0.get().map(|h| h.state())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Encodes [`StoreSlot`] on each scrape.
#[derive(Debug)]
pub struct StoreCollector(pub StoreSlot);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(current) = self.0.state() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "store_state",
            "Whether this replica reaches the shared store: connected, grace (lost, serving known tasks) or down (lost past store.grace, refusing), 1 for the current state.",
            None,
            MetricType::Gauge,
        )?;
        for state in [StoreState::Connected, StoreState::Grace, StoreState::Down] {
            let value = i64::from(state == current);
            let labels = StateLabel {
                state: state.as_str(),
            };
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
