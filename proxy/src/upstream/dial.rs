//! The dialer: where a target is reached (directly, or through the parent proxy), under the
//! address rules. A name is resolved once, private addresses are refused unless the config
//! allows them, and the address checked is the address dialled (no second lookup that DNS
//! rebinding could answer differently).
//!
//! Through a parent proxy that resolves names itself (`CONNECT` by name, `socks5h`), keyswap
//! still resolves the name first and refuses it when every answer is private; it then hands
//! the parent the *name*, and what the parent's own lookup answers is the parent's (the
//! rebinding gap the manual's "Behind a corporate proxy" chapter describes). With
//! `allow_private: true` keyswap does not resolve names for the parent at all. A `resolve`
//! entry is handed to the parent as its address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use crate::upstream::parent_proxy::{Hop, Parent};
use crate::upstream::transport::{connect_tcp, Transport};
use crate::upstream::ConnectError;
use crate::wire::target::Target;

/// Resolves and dials under the config's address rules, through the parent proxy when one
/// is configured and the target is not in its `no_proxy`.
pub struct Dialer {
    pub(crate) resolve: HashMap<(String, u16), SocketAddr>,
    pub(crate) allow_private: bool,
    pub(crate) parent: Option<Parent>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("allow_private", &self.allow_private)
            .field("parent", &self.parent.as_ref().map(Parent::display))
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A stream to `target`: directly, or tunnelled through the parent proxy (`CONNECT` or
    /// SOCKS5). Either way the address rules were applied first.
    pub async fn dial(&self, target: &Target) -> Result<Transport, ConnectError> {
        match self.parent_for(&target.host) {
            Some(parent) => {
                let hop = self.hop(target, parent).await?;
                parent.tunnel(&hop).await
            }
            None => self.dial_direct(target).await.map(Transport::Tcp),
        }
    }

    /// The parent proxy `host` is reached through; `None` when it is dialled directly (no
    /// parent, or `no_proxy` names it).
    pub(crate) fn parent_for(&self, host: &str) -> Option<&Parent> {
        self.parent.as_ref().filter(|p| !p.bypasses(host))
    }

    /// What the parent is asked to connect to: the `resolve` entry's address, an IP literal,
    /// or the name (checked here first unless `allow_private`).
    async fn hop(&self, target: &Target, parent: &Parent) -> Result<Hop, ConnectError> {
        if let Some(addr) = self.resolve.get(&(target.host.clone(), target.port)) {
            return Ok(Hop::Addr(*addr));
        }
        if target.ip().is_some() || !self.allow_private || !parent.resolves_names() {
            let checked = self.resolve(target).await?;
            if target.ip().is_some() || !parent.resolves_names() {
                return Ok(Hop::Addr(checked[0]));
            }
        }
        Ok(Hop::Name(target.host.clone(), target.port))
    }

    /// The address rules for a target whose name the parent proxy resolves (absolute-form
    /// plain HTTP): the name is resolved and refused if every answer is private, unless
    /// `allow_private`.
    pub(crate) async fn check(&self, target: &Target) -> Result<(), ConnectError> {
        if self.allow_private && target.ip().is_none() {
            return Ok(());
        }
        self.resolve(target).await.map(drop)
    }

    /// Resolves `target` (a `resolve` entry wins and is always allowed), drops addresses
    /// the rules refuse, and connects to the first that answers.
    async fn dial_direct(&self, target: &Target) -> Result<TcpStream, ConnectError> {
        let host = &target.host;
        let candidates = self.resolve(target).await?;
        let mut last_error = None;
        for addr in candidates {
            match connect_tcp(addr).await {
                Ok(stream) => return Ok(stream),
                Err(Some(source)) => {
                    last_error = Some(ConnectError::Connect {
                        host: host.clone(),
                        source,
                    })
                }
                Err(None) => last_error = Some(ConnectError::Timeout { host: host.clone() }),
            }
        }
        Err(last_error.unwrap_or(ConnectError::NoAddress { host: host.clone() }))
    }

    /// The addresses [`Dialer::dial`] tries for `target`, in order: its `resolve` entry, or
    /// what DNS answers minus the addresses the rules refuse.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ConnectError> {
        let host = &target.host;
        if let Some(addr) = self.resolve.get(&(host.clone(), target.port)) {
            return Ok(vec![*addr]);
        }
        let resolved: Vec<SocketAddr> = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => tokio::net::lookup_host((host.as_str(), target.port))
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        if resolved.is_empty() {
            return Err(ConnectError::NoAddress { host: host.clone() });
        }
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| self.allow_private || !is_private(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(ConnectError::PrivateAddress { host: host.clone() });
        }
        Ok(allowed)
    }
}

/// Addresses an agent must not reach through keyswap unless the config allows it:
/// loopback, private, link-local, shared (CGNAT), unspecified, multicast, reserved, and
/// IPv6 forms that embed one of those (mapped, NAT64).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b {
                let embedded = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_private(IpAddr::V4(embedded));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
