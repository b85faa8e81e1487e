//! keyswap: an egress proxy that lets untrusted automation use real APIs while holding only
//! placeholder tokens.
//!
//! The request path reads top to bottom as in DESIGN.md:
//! [`identify`] → [`target`] → [`intercept`] (or [`tunnel`]) → [`route`] (decide) →
//! [`approval`] (a human, where the task asks for one) → [`swap`] → [`budget`] (limits) →
//! [`upstream`] → [`scrub`] → [`audit`]. [`forward`] strings the per-request steps together;
//! [`listener`] (explicit) and [`transparent`] (redirected) accept connections; [`server`]
//! owns the running proxy.
//!
//! Nothing in this crate formats a real secret value: values are exposed only inside
//! [`swap`] (to write them on the wire) and [`snapshot`] (to build the scrubber).
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod audit_chain;
pub mod audit_verify;
pub mod body;
pub mod budget;
pub mod child_env;
pub mod cli;
pub mod client_hello;
pub mod config_diff;
pub mod decision;
pub mod decode;
pub mod encodings;
pub mod error;
pub mod forward;
pub mod headers;
pub mod identify;
pub mod intercept;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod plaintext;
pub mod process_guard;
pub mod refusal;
pub mod replace;
pub mod route;
pub mod scrub;
pub mod server;
pub mod snapshot;
pub mod swap;
pub mod target;
pub mod transparent;
pub mod tunnel;
pub mod upstream;
pub mod websocket;

pub use decision::{Decision, Reason};
pub use error::ProxyError;
pub use server::{ProxyHandle, ProxyOptions};
