//! Decides where a request is going: the host and port named by a CONNECT, an absolute-form
//! URI, a `Host` header or an `:authority`. Only canonical forms are accepted — an IP literal in
//! any other notation (`2130706433`, `0x7f.1`, `127.1`) is refused, because resolvers would
//! quietly turn it into an address the allowlist never named.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use http::uri::Authority;

/// A host and port, normalised: lowercase, no trailing dot, IPv6 without brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// Why an authority could not be turned into a [`Target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the authority names no host")]
    MissingHost,
    #[error("the authority has no port")]
    MissingPort,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("the host is not a valid DNS name or IP address")]
    BadHost,
    #[error("an IP address must be written in canonical form (e.g. 127.0.0.1)")]
    NonCanonicalIp,
    #[error("the authority carries userinfo")]
    Userinfo,
}

impl Target {
    /// Parses `host:port` (CONNECT's authority-form; the port is required).
    pub fn from_connect(authority: &Authority) -> Result<Target, TargetError> {
        let port = authority.port_u16().ok_or(TargetError::MissingPort)?;
        Target::new(authority.as_str(), authority.host(), port)
    }

    /// Parses an authority whose port may be omitted (then `default_port`).
    pub fn from_authority(authority: &Authority, default_port: u16) -> Result<Target, TargetError> {
        if authority.as_str().contains('@') {
            return Err(TargetError::Userinfo);
        }
        let port = match authority.port() {
            Some(p) => p.as_u16(),
            None if authority.as_str().ends_with(':') => return Err(TargetError::BadPort),
            None => default_port,
        };
        Target::new(authority.as_str(), authority.host(), port)
    }

    /// Parses a `Host` header value.
    pub fn from_host_header(value: &[u8], default_port: u16) -> Result<Target, TargetError> {
        let text = std::str::from_utf8(value).map_err(|_| TargetError::BadHost)?;
        let authority: Authority = text.parse().map_err(|_| TargetError::BadHost)?;
        Target::from_authority(&authority, default_port)
    }

    fn new(whole: &str, host: &str, port: u16) -> Result<Target, TargetError> {
        if whole.contains('@') {
            return Err(TargetError::Userinfo);
        }
        if port == 0 {
            return Err(TargetError::BadPort);
        }
        Ok(Target {
            host: normalize_host(host)?,
            port,
        })
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Same host (already normalised on both sides) and port.
    pub fn same_as(&self, other: &Target) -> bool {
        self == other
    }
}

impl fmt::Display for Target {
    /// `host:port`, with brackets around an IPv6 literal: usable in a URI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Lowercases, strips one trailing dot, unwraps `[v6]`, and refuses anything that is not a
/// canonical IP literal or a syntactically valid DNS name.
pub fn normalize_host(host: &str) -> Result<String, TargetError> {
    if host.is_empty() {
        return Err(TargetError::MissingHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(TargetError::BadHost)?;
        // Zone identifiers ("%25eth0") have no meaning off this machine.
        let ip: Ipv6Addr = inner.parse().map_err(|_| TargetError::BadHost)?;
        return Ok(ip.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err(TargetError::BadHost);
    }
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    let mut last_label = "";
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(TargetError::BadHost);
        }
        last_label = label;
    }
    // WHATWG URL and inet_aton treat a name whose last label is numeric as an IPv4 address
    // in some notation; no real DNS name ends that way.
    let numeric = last_label.bytes().all(|b| b.is_ascii_digit())
        || (last_label.starts_with("0x") && last_label[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(TargetError::NonCanonicalIp);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_or_refused() {
        let cases: &[(&str, Result<&str, TargetError>)] = &[
            ("API.GitHub.com", Ok("api.github.com")),
            ("api.github.com.", Ok("api.github.com")),
            ("127.0.0.1", Ok("127.0.0.1")),
            ("[::1]", Ok("::1")),
            ("[0:0:0:0:0:0:0:1]", Ok("::1")),
            ("2130706433", Err(TargetError::NonCanonicalIp)),
            ("0x7f.0.0.1", Err(TargetError::NonCanonicalIp)),
            ("127.1", Err(TargetError::NonCanonicalIp)),
            ("0177.0.0.1", Err(TargetError::NonCanonicalIp)),
            ("127.0.0.0x1", Err(TargetError::NonCanonicalIp)),
            ("a..b", Err(TargetError::BadHost)),
            ("-a.com", Err(TargetError::BadHost)),
            ("a b.com", Err(TargetError::BadHost)),
            ("[::1", Err(TargetError::BadHost)),
            ("", Err(TargetError::MissingHost)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize_host(input).as_deref().map_err(|e| *e),
                expected.as_ref().map(|s| *s).map_err(|e| *e),
                "{input}"
            );
        }
    }

    #[test]
    fn connect_authority_needs_a_port() {
        let a: Authority = "example.com".parse().unwrap();
        assert_eq!(Target::from_connect(&a), Err(TargetError::MissingPort));
        let a: Authority = "[::1]:8443".parse().unwrap();
        let t = Target::from_connect(&a).unwrap();
        assert_eq!(t.to_string(), "[::1]:8443");
    }

    #[test]
    fn host_header_defaults_port() {
        let t = Target::from_host_header(b"Example.com", 443).unwrap();
        assert_eq!(
            t,
            Target {
                host: "example.com".into(),
                port: 443
            }
        );
        assert!(Target::from_host_header(b"user@example.com", 443).is_err());
    }
}
