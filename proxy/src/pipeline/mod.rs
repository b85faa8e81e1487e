//! One request through an allowed connection, as named steps over one per-request context
//! ([`exchange`]): decide ([`route`]) → approve ([`approve`]) → swap ([`swap`]) → charge
//! ([`crate::lifecycle::budget`]) → send ([`crate::upstream`]) → scrub
//! ([`keyswap_scrub::response`]) → record (one [`crate::audit::decision::Decision`]).
//!
//! The connection handlers a door hands a decided connection to: [`intercept`] (TLS
//! terminated with a leaf for the target, each request through [`exchange`]), [`tunnel`]
//! (spliced bytes for a `tunnel: true` rule), [`websocket`] (an upgraded exchange, every
//! message scrubbed). [`conn`] holds what they share: the HTTP server settings toward agents,
//! [`conn::Rewind`], and serving a connection for as long as its task lives. [`fair`] bounds
//! what one task may hold at once (requests in flight, upstream connections).

pub mod agent_api;
pub mod approve;
pub mod conn;
pub mod context;
pub mod exchange;
pub mod fair;
pub mod inbound;
pub mod intercept;
pub mod learn;
pub mod lease;
pub mod outbound;
pub mod route;
pub mod settle;
pub mod sign_aws;
pub mod swap;
pub mod swap_body;
pub mod token_body;
pub mod trailers;
pub mod tunnel;
pub mod websocket;
