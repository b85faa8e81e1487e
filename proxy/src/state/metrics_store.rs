//! `keyswap_store_state`: whether this replica reaches the store its fleet shares
//! (`store:`), read at scrape time — one series per state, 1 for the current one. Without a
//! store the family has no series.

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use prometheus_client::registry::Registry;

/// Where a replica stands with the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// Reachable: tasks are issued, revoked and served fleet-wide.
    Connected,
    /// Unreachable for less than `store.grace`: known tasks are served, none is issued.
    Grace,
    /// Unreachable for longer: every request is refused until the store is back.
    Down,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Connected => "connected",
            StoreState::Grace => "grace",
            StoreState::Down => "down",
        }
    }
}

/// Reads the store's state at scrape time.
pub type StoreSource = Box<dyn Fn() -> StoreState + Send + Sync>;

/// Where the store's state is read from once the fleet link exists.
#[derive(Clone, Default)]
pub struct StoreSlot(Arc<OnceLock<StoreSource>>);

impl fmt::Debug for StoreSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl StoreSlot {
    /// A slot whose `keyswap_store_state` is encoded by `registry`.
    pub fn register(registry: &mut Registry) -> StoreSlot {
        let slot = StoreSlot::default();
        registry.register_collector(Box::new(StoreCollector(slot.clone())));
        slot
    }

    /// Where the state is read from (set once; a second call is ignored).
    pub fn set(&self, source: StoreSource) {
        let _ = self.0.set(source);
    }

    /// The current state, if this replica has a store.
    pub fn state(&self) -> Option<StoreState> {
        self.0.get().map(|read| read())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Encodes [`StoreSlot`] on each scrape.
#[derive(Debug)]
struct StoreCollector(StoreSlot);

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
