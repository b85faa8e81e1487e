//! keyswap's certificates: the local CA that agents trust ([`CertificateAuthority`]), leaf
//! certificates minted from it per intercepted host, and the per-host rustls
//! `ServerConfig` cache ([`LeafCache`]) that keeps minting off the hot path.
//!
//! No networking here, and no key material in any `Debug` or error message.
#![forbid(unsafe_code)]

mod ca;
mod cache;
mod error;
mod leaf;

pub use ca::{CertificateAuthority, KEY_FILE};
pub use cache::{LeafCache, MAX_CACHED_HOSTS};
pub use error::CertError;
