//! keyswap: an egress proxy that lets untrusted automation use real APIs while holding only
//! placeholder tokens.
//!
//! The modules below are declared in layer order, top to bottom: each may import only the
//! modules declared after it (and the crates keyswap is built on). This list is the one place
//! the order is written; `tests/it/tidy.rs` fails naming the import that breaks it, and any
//! import circle. ARCHITECTURE.md walks through each layer.
//!
//! The request path, from the layers' point of view: a door ([`doors`]) accepts a connection,
//! identifies its task and decides its target ([`doors::decide_target`]); the [`pipeline`]
//! serves each request on it as named steps (decide → approve → swap → charge → send → scrub
//! → record) over the live state ([`state`]) that the [`lifecycle`] keeps (tasks, approvals,
//! budgets, refreshed secrets); [`upstream`] is the only module that dials; every request ends
//! in one [`audit::decision::Decision`], written once to the audit log, the log and the
//! metrics.
//!
//! Nothing in this crate formats a real secret value: values are exposed only inside
//! [`pipeline::swap`] (to write them on the wire), [`state::snapshot`] (to build the
//! scrubber), [`state::leases`] (the same for minted credentials), [`state::lease_file`] (to
//! write the GitHub tokens a restart must revoke to the 0600 lease state file) and
//! [`lifecycle::leases`] (to mint and revoke them).
#![forbid(unsafe_code)]

// Layer: commands.
pub mod cli;
// Layer: the running proxy — starts the doors, the admin API and the metrics listener.
pub mod server;
// Layer: operator-facing — the admin API server and its client; metrics and health over HTTP.
pub mod admin;
pub mod telemetry;
// Layer: the machine keyswap runs on — the agent's environment and trust files, keyswap's own
// process hardening, the search for plaintext secrets.
pub mod host;
// Layer: the two doors (explicit, transparent) and refusals delivered inside a tunnel.
pub mod doors;
// Layer: one request as named steps; the intercept, tunnel and WebSocket connection handlers.
pub mod pipeline;
// Layer: the fleet — replicas sharing their tasks and revocations through a store (Redis).
pub mod fleet;
// Layer: what changes the live state — issuing, revoking and expiring tasks, budgets, secret
// refresh, reloads.
pub mod lifecycle;
// Layer: the live state every connection shares, and the config snapshot.
pub mod state;
// Layer: the JSON bodies of the admin API, shared by its server, its client, and the state
// that fills them.
pub mod api;
// Layer: the upstream leg — the only module that dials.
pub mod upstream;
// Layer: `keyswap learn`'s policy generation from audit records (pure: reads files only).
pub mod learn;
// Layer: decisions and their audit records, the sink, the hash chain, verification.
pub mod audit;
// Layer: what bytes on the wire mean — targets, headers, the ClientHello.
pub mod error;
pub mod wire;

pub use audit::decision::{Decision, Reason};
pub use error::ProxyError;
pub use server::{ProxyHandle, ProxyOptions};
