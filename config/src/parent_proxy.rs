//! `upstream.proxy`: the parent (corporate) proxy keyswap's upstream leg goes through, and
//! which hosts bypass it (`no_proxy`).
//!
//! The parent's credentials (`auth_env`, `user:password`) live only in a
//! [`secrecy::SecretString`]; [`ParentAuth`]'s `Debug` names the variable, never the value.

use std::fmt;
use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};

/// How keyswap talks to the parent proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentKind {
    /// `http://`: `CONNECT` (and absolute-form for plain HTTP) over TCP.
    Http,
    /// `https://`: the same over TLS to the proxy.
    Https,
    /// `socks5://`: SOCKS5, keyswap resolves names and hands the proxy an address.
    Socks5,
    /// `socks5h://`: SOCKS5, the proxy resolves names.
    Socks5h,
}

impl ParentKind {
    pub fn scheme(self) -> &'static str {
        match self {
            ParentKind::Http => "http",
            ParentKind::Https => "https",
            ParentKind::Socks5 => "socks5",
            ParentKind::Socks5h => "socks5h",
        }
    }

    /// Whether this is an HTTP proxy (`CONNECT`, absolute-form), over TCP or TLS.
    pub fn is_http(self) -> bool {
        matches!(self, ParentKind::Http | ParentKind::Https)
    }
}

/// `upstream.proxy`, validated.
#[derive(Debug, Clone)]
pub struct ParentProxy {
    pub kind: ParentKind,
    /// Lowercased; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    pub auth: Option<ParentAuth>,
    pub no_proxy: Vec<NoProxy>,
}

impl ParentProxy {
    /// Whether `host` (a lowercased name or an IP literal without brackets) is dialled
    /// directly rather than through the parent.
    pub fn bypasses(&self, host: &str) -> bool {
        let ip = host.parse::<IpAddr>().ok();
        self.no_proxy.iter().any(|entry| entry.matches(host, ip))
    }

    /// The parent as `scheme://host:port`, for messages (never with credentials).
    pub fn display(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{}://{host}:{}", self.kind.scheme(), self.port)
    }
}

/// The parent's credentials, `user:password`, read from `auth_env`.
#[derive(Clone)]
pub struct ParentAuth {
    /// The environment variable they were read from.
    pub env: String,
    /// `user:password`.
    pub credentials: SecretString,
}

impl ParentAuth {
    /// The user and password, for a handshake (SOCKS5) or a `Basic` credential.
    pub fn expose_user_password(&self) -> (&str, &str) {
        let credentials = self.credentials.expose_secret();
        credentials.split_once(':').unwrap_or((credentials, ""))
    }
}

impl fmt::Debug for ParentAuth {
    // The credentials are never formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentAuth")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoProxy {
    /// `.corp.example`: `corp.example` and every name under it (stored without the dot).
    Suffix(String),
    /// `build.corp.example`: that name only.
    Exact(String),
    /// `10.1.2.3`, `::1`.
    Ip(IpAddr),
    /// `10.0.0.0/8`: an IP literal target in the range. A name is not resolved to match.
    Net(IpAddr, u8),
}

impl NoProxy {
    /// Parses one entry; `Err` says what is wrong.
    pub fn parse(entry: &str) -> Result<NoProxy, String> {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            return Err("an empty no_proxy entry".into());
        }
        if let Some((net, bits)) = entry.split_once('/') {
            let ip: IpAddr = net
                .parse()
                .map_err(|_| format!("\"{entry}\": {net} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("\"{entry}\": the prefix length is not 0 to {max}"))?;
            return Ok(NoProxy::Net(ip, bits));
        }
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(NoProxy::Ip(ip));
        }
        let (suffix, name) = match entry.strip_prefix('.') {
            Some(name) => (true, name),
            None => (false, entry.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "\"{entry}\" is not a host name, IP address or CIDR"
            ));
        }
        Ok(if suffix {
            NoProxy::Suffix(name.to_string())
        } else {
            NoProxy::Exact(name.to_string())
        })
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        let host = host.trim_end_matches('.');
        match (self, ip) {
            (NoProxy::Suffix(name), None) => {
                host == name
                    || (host.len() > name.len()
                        && host.ends_with(name.as_str())
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.')
            }
            (NoProxy::Exact(name), None) => host == name,
            (NoProxy::Ip(want), Some(ip)) => canonical(*want) == canonical(ip),
            (NoProxy::Net(net, bits), Some(ip)) => in_net(canonical(ip), canonical(*net), *bits),
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Parses `scheme://host:port[/]` of `upstream.proxy.url`; `Err` is (what is wrong, fix).
pub fn parse_url(url: &str) -> Result<(ParentKind, String, u16), (String, String)> {
    let example = "write scheme://host:port, e.g. http://proxy.corp.example:3128";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err((format!("\"{url}\" has no scheme"), example.into()));
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => ParentKind::Http,
        "https" => ParentKind::Https,
        "socks5" => ParentKind::Socks5,
        "socks5h" => ParentKind::Socks5h,
        other => {
            return Err((
                format!("scheme \"{other}\" is not supported for a parent proxy"),
                "use http, https, socks5h or socks5".into(),
            ))
        }
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        // The URL would be shown in messages and logs; credentials go in auth_env.
        return Err((
            "the proxy URL carries credentials".into(),
            "remove user:password@ from the URL and name an environment variable holding them in auth_env".into(),
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err((format!("\"{url}\" has a path"), example.into()));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err((format!("\"{url}\" has no port"), example.into()));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err((format!("\"{port}\" is not a port"), example.into())),
    };
    let host = host.to_ascii_lowercase();
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6.to_string(),
        Some(_) => return Err((format!("\"{host}\" is not an IPv6 address"), example.into())),
        None if host.is_empty() || host.contains([':', '[', ']', ' ']) => {
            return Err((format!("\"{url}\" has no valid host"), example.into()))
        }
        None => host,
    };
    Ok((kind, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(entries: &[&str]) -> ParentProxy {
        ParentProxy {
            kind: ParentKind::Http,
            host: "proxy.corp".into(),
            port: 3128,
            auth: None,
            no_proxy: entries.iter().map(|e| NoProxy::parse(e).unwrap()).collect(),
        }
    }

    #[test]
    fn no_proxy_matches_suffixes_names_ips_and_cidrs() {
        let p = proxy(&[
            ".corp.example",
            "build.test",
            "192.0.2.7",
            "10.0.0.0/8",
            "fd00::/8",
        ]);
        for direct in [
            "corp.example",
            "git.corp.example",
            "a.b.corp.example",
            "build.test",
            "192.0.2.7",
            "10.200.1.1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(p.bypasses(direct), "{direct}");
        }
        for proxied in [
            "evilcorp.example",
            "corp.example.com",
            "x.build.test",
            "192.0.2.8",
            "11.0.0.1",
            "fe80::1",
            "api.github.com",
        ] {
            assert!(!p.bypasses(proxied), "{proxied}");
        }
    }

    #[test]
    fn bad_no_proxy_entries_are_refused() {
        for bad in ["", "10.0.0.0/33", "bad host", "a..b", "x/8", "*.corp"] {
            assert!(NoProxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_parse_or_say_why() {
        assert_eq!(
            parse_url("http://Proxy.Corp:3128/").unwrap(),
            (ParentKind::Http, "proxy.corp".into(), 3128)
        );
        assert_eq!(
            parse_url("socks5h://[::1]:1080").unwrap(),
            (ParentKind::Socks5h, "::1".into(), 1080)
        );
        for bad in [
            "proxy.corp:3128",
            "ftp://proxy:21",
            "http://u:p@proxy:3128",
            "http://proxy",
            "http://proxy:0",
            "http://proxy:3128/path",
            "http://:3128",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let auth = ParentAuth {
            env: "CORP_PROXY_AUTH".into(),
            credentials: SecretString::from("user:debug-probe-password"),
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("CORP_PROXY_AUTH"));
        assert!(!shown.contains("debug-probe"));
        assert_eq!(
            auth.expose_user_password(),
            ("user", "debug-probe-password")
        );
    }
}
