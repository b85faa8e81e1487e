//! `keyswap learn`'s policy generation: from the request records of an observed run to the
//! smallest allowlist that covers them ([`observed`] reads and verifies the audit,
//! [`paths`] generalises paths, [`rules`] groups requests into rules, [`render`] writes the
//! `policies:` block, [`replay`] checks a policy against the records).
//!
//! Pure apart from reading the audit files: no socket, no secret value (records carry
//! secret *names* only, and so does everything written here). The output is deterministic:
//! the same records give the same text, whatever their order.

pub mod observed;
pub mod paths;
pub mod render;
pub mod replay;
pub mod rules;

pub use observed::{read_audit, Filter, Observed, ReadAudit};
pub use render::{render, render_merge};
pub use replay::{replay, Refused};
pub use rules::{learn_rules, LearnedRule, DEFAULT_MAX_CHILDREN};
