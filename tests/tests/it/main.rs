//! The integration tests of this crate, one module per file, linked into one binary
//! (each binary links hyper, rustls and tokio again, and a link is most of a build).

mod admin_api;
mod agent_side;
mod approval;
mod audit_chain;
mod aws;
mod budgets;
mod clients;
mod compression;
mod corporate_proxy;
mod deny;
mod docs;
mod duplex;
mod fairness;
mod fleet;
mod harness;
mod java_client;
mod learn;
mod lease_git;
mod lease_state;
mod leases;
mod metrics;
mod operator_log;
mod placeholders;
mod properties;
mod refresh;
mod refusal_clients;
mod revocation;
mod scrub_forms;
mod swap;
mod threats;
mod trailers;
mod transparent;
mod tunnel_sni;
mod websocket_guard;
