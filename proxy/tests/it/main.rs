//! The integration tests of this crate, one module per file, linked into one binary
//! (each binary links hyper, rustls and tokio again, and a link is most of a build).

mod admin_peer;
mod ca_access;
mod cli;
mod deployment;
mod exec;
mod mcp;
mod plaintext;
mod sandbox;
mod tidy;
