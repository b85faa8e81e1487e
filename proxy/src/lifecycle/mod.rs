//! What changes the live state over time: [`tasks`] issues, revokes, expires and reloads
//! tasks; [`budget`] charges a rule's budget and rate and reports them; [`refresh`] re-reads
//! secrets whose source can change; [`leases`] mints, refreshes and revokes credentials per task; [`reload`] swaps in a new config and brings the tasks in
//! line ([`config_diff`] logs what changed).
//!
//! The data these change lives in [`crate::state`]; the request path reaches it only through
//! the state, never through this module's operations (except [`budget::charge`]).

pub mod budget;
pub mod config_diff;
pub mod leases;
pub mod refresh;
pub mod reload;
pub mod tasks;
