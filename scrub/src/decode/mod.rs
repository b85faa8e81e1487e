//! Decoding compressed response bodies so the scrubber sees what the agent will read.
//!
//! Two cases, both streaming with bounded memory:
//! - **Declared** codings (`Content-Encoding`, and `Transfer-Encoding` codings other than
//!   `chunked`): [`DecodingBody`] decodes them (stacked codings in reverse order) and the
//!   agent receives the decoded body, scrubbed by [`crate::replace::ReplacingBody`].
//! - **Undeclared** compression (a body that begins with a gzip, zlib or zstd magic number):
//!   [`SniffingBody`] passes the ORIGINAL bytes on (downloads stay byte-exact) but decodes a
//!   copy for scanning, and releases compressed bytes only once everything they decode to has
//!   been scanned clean. A real value in the decoded copy cuts the body (an error, so the
//!   agent's stream is aborted, never a truncated body that looks complete).
//!
//! Expansion is bounded by [`MAX_EXPANSION`] and [`EXPANSION_ALLOWANCE`]; a body that decodes
//! to more is cut. The decoders are push-model (feed compressed bytes, get at most [`STEP`]
//! decoded bytes per step), so keyswap always knows which compressed prefix produced which
//! decoded prefix, and no step holds more than [`STEP`] decoded bytes.
//!
//! This module never formats body bytes or scrubber patterns: errors name the coding only.

use std::io;

mod codings;
mod decoding_body;
mod pipeline;
mod scan;
mod sniffing_body;
mod stage;

pub use codings::{
    declared_codings, decodable_accept_encoding, sniff, Coding, Codings, UnknownCoding,
    MAX_CODINGS, SNIFF_LEN,
};
pub use decoding_body::DecodingBody;
pub use sniffing_body::SniffingBody;

/// A body may decode to at most this many times its compressed size (plus
/// [`EXPANSION_ALLOWANCE`]); more is treated as a decompression bomb and the body is cut.
/// Real text and JSON compress 3–20×; 100× leaves room for very repetitive data while a bomb
/// (1,000× for deflate, far more for zstd/brotli) is stopped within a few MiB.
pub const MAX_EXPANSION: u64 = 100;

/// Decoded bytes always allowed regardless of the ratio, so small, highly repetitive bodies
/// (a page of zeros, an empty JSON array padded by the server) are not mistaken for bombs.
pub const EXPANSION_ALLOWANCE: u64 = 1 << 20;

/// Most decoded bytes one decoding step produces: the per-stage memory bound.
pub const STEP: usize = 64 * 1024;

/// Compressed bytes fed between two release points of an undeclared-compressed body: the
/// granularity at which scanned-clean compressed bytes are released.
const SCAN_SLICE: usize = 8 * 1024;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}
