//! keyswap's scrubber: what finds a value in a stream of bytes and replaces it, in every form
//! a program could reverse.
//!
//! - [`replace`]: the streaming replacer (one Aho-Corasick automaton, built once per config
//!   snapshot) over byte chunks and HTTP bodies, holding back a tail that could start a match;
//! - [`encodings`]: every encoded form of a value (base64 variants, percent, JSON and other
//!   escapes, hex), each paired with the same form of its replacement;
//! - [`decode`]: push-model decoders for gzip, deflate, brotli and zstd response bodies, so a
//!   compressed body is scrubbed as what it decodes to, with a bound on its expansion;
//! - [`response`]: how a response is scrubbed: its headers, and the body policy (decode,
//!   sniff, or pass) its codings call for;
//! - [`body`]: the boxed body type these share with the proxy.
//!
//! This crate never opens a socket, reads a config file or writes a log line that holds
//! bytes it scanned: it knows bytes, patterns and codings only.
#![forbid(unsafe_code)]

pub mod body;
pub mod decode;
pub mod encodings;
pub mod replace;
pub mod response;
