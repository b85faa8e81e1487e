//! The task lifecycle: tasks issued when an agent starts and revoked when it ends.
//!
//! [`registry`] holds the live tasks (static and runtime) and the cancellation each of their
//! connections watches; [`tasks`] issues, revokes, expires and reloads them; [`closing`]
//! serves a connection for as long as its task lives; [`approvals`] holds requests that
//! wait for a human and what humans granted; [`refresh`] re-reads secrets whose
//! source can change; [`admin`] is the admin API and [`api`] its JSON bodies; [`client`] is
//! the CLI's client of it.
//!
//! Arrows go from here into the pipeline's shared state, never back: the request path only
//! asks the registry who a task is and watches its cancellation.

pub mod admin;
pub mod api;
pub mod approvals;
pub mod client;
pub mod closing;
pub mod refresh;
pub mod registry;
pub mod tasks;
