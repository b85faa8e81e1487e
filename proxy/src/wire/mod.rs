//! What bytes on the wire mean, with no state: a connection's [`target::Target`], the header
//! rules both legs share ([`headers`]), and the TLS ClientHello read without consuming it
//! ([`client_hello`]), and a task's token as a needle to search requests for ([`token`]).

pub mod client_hello;
pub mod headers;
pub mod sigv4;
pub mod target;
pub mod token;
