//! The live state every connection shares ([`shared::Shared`]), and the config
//! [`snapshot::Snapshot`] it holds. The data lives here; what changes it over time (issuing
//! and revoking tasks, budgets, refresh, reload) is [`crate::lifecycle`]'s.
//!
//! - [`tasks`]: the live tasks, their tokens and the cancellation each connection watches;
//! - [`usage`]: per task and rule, what its budget and rate have used;
//! - [`approvals`]: requests waiting for a human, and what humans granted ([`held`]: what
//!   a held request is and how it can be answered);
//! - [`leases`]: credentials minted per (task, secret), what swaps and scrubs them
//!   ([`lease_file`]: those not yet revoked, on disk for a restart);
//! - [`fair`]: per task, the requests in flight and upstream connections held (`limits:`),
//!   and keyswap's cap on upstream connections;
//! - [`fleet`]: the shared store's health and the events this replica sends it (`store:`);
//! - [`metrics`]: the counters the metrics listener reads ([`metrics_fair`]: those of
//!   `limits:`).

pub mod agent_side;
pub mod approvals;
pub mod fair;
pub mod fleet;
pub mod fleet_conn;
pub mod held;
pub mod lease_file;
pub mod leases;
pub mod metrics;
pub mod metrics_fair;
pub mod metrics_store;
pub mod metrics_tasks;
pub mod shared;
pub mod snapshot;
pub mod tasks;
pub mod token_digest;
pub mod usage;
pub mod webhook;
