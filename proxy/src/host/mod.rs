//! The machine keyswap runs on: the environment and trust files an agent is started with
//! ([`child_env`]), keyswap's own process hardening and the ancestry of a peer
//! ([`process_guard`]), its descriptor limit and the upstream cap it leaves ([`fds`]),
//! binding keyswap's listeners ([`listen`]), and the search for plaintext secrets in the
//! agent's reach ([`plaintext`]).

pub mod child_env;
pub mod fds;
pub mod listen;
pub mod plaintext;
pub mod process_guard;
