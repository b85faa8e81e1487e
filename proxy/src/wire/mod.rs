//! What bytes on the wire mean, with no state: a connection's [`target::Target`], the header
//! rules both legs share ([`headers`]), and the TLS ClientHello read without consuming it
//! ([`client_hello`]).

pub mod client_hello;
pub mod headers;
pub mod target;
