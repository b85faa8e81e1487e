//! Step 6: the upstream leg. One pooled hyper-util client per config snapshot, verified
//! rustls, and a connector that resolves a name once, refuses private addresses unless the
//! config allows them, and dials exactly the address it checked (no second lookup that DNS
//! rebinding could answer differently).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use keyswap_config::Config;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ProxyError;
use crate::wire::target::Target;
use keyswap_scrub::body::ProxyBody;

/// How long one TCP connect (or TLS handshake) to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared upstream clients of one config snapshot (a secret refresh reuses them, with
/// their pooled connections).
#[derive(Clone)]
pub struct UpstreamClients {
    /// Offers `h2` and `http/1.1`; the upstream chooses.
    pub any: Client<Connector, ProxyBody>,
    /// Offers only `http/1.1`: for protocol upgrades (WebSocket).
    pub http1: Client<Connector, ProxyBody>,
    /// Dials tunnels (`tunnel: true`) under the same address rules.
    pub dialer: Arc<Dialer>,
}

impl UpstreamClients {
    pub fn build(
        config: &Config,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, ProxyError> {
        let roots = root_store(config)?;
        let dialer = Arc::new(Dialer {
            resolve: config.upstream.resolve.clone(),
            allow_private: config.upstream.allow_private,
        });
        let tls = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, ProxyError> {
            let mut tls = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ProxyError::Tls)?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(tls))
        };
        let client = |tls: Arc<ClientConfig>| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(Connector {
                    dialer: dialer.clone(),
                    tls: TlsConnector::from(tls),
                })
        };
        Ok(UpstreamClients {
            any: client(tls(&[b"h2", b"http/1.1"])?),
            http1: client(tls(&[b"http/1.1"])?),
            dialer,
        })
    }
}

fn root_store(config: &Config) -> Result<RootCertStore, ProxyError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.upstream.extra_roots {
        let pem = std::fs::read(path).map_err(|e| ProxyError::ExtraRoots {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ProxyError::ExtraRoots {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| ProxyError::ExtraRoots {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(ProxyError::ExtraRoots {
                path: path.clone(),
                problem: "no PEM certificate found".into(),
            });
        }
    }
    Ok(roots)
}

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{host} resolves only to private, loopback or link-local addresses")]
    PrivateAddress { host: String },
    #[error("could not resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("could not connect to {host}: {source}")]
    Connect { host: String, source: io::Error },
    #[error("connecting to {host} timed out")]
    Timeout { host: String },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("the upstream URI has no host")]
    BadUri,
}

/// Resolves and dials under the config's address rules.
#[derive(Debug)]
pub struct Dialer {
    resolve: HashMap<(String, u16), SocketAddr>,
    allow_private: bool,
}

impl Dialer {
    /// Resolves `target` (a `resolve` entry wins and is always allowed), drops addresses
    /// the rules refuse, and connects to the first that answers.
    pub async fn dial(&self, target: &Target) -> Result<TcpStream, ConnectError> {
        let host = &target.host;
        let candidates = self.resolve(target).await?;
        let mut last_error = None;
        for addr in candidates {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(source)) => {
                    last_error = Some(ConnectError::Connect {
                        host: host.clone(),
                        source,
                    })
                }
                Err(_) => last_error = Some(ConnectError::Timeout { host: host.clone() }),
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

/// Finds the [`ConnectError`] behind a client error, if any.
pub fn connect_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<ConnectError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// hyper-util connector: `Dialer` + optional rustls.
#[derive(Clone)]
pub struct Connector {
    dialer: Arc<Dialer>,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamIo>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let authority = uri.authority().ok_or(ConnectError::BadUri)?;
            let target = Target::from_authority(authority, if https { 443 } else { 80 })
                .map_err(|_| ConnectError::BadUri)?;
            let tcp = this.dialer.dial(&target).await?;
            if !https {
                return Ok(TokioIo::new(UpstreamIo::Plain(tcp)));
            }
            let name =
                ServerName::try_from(target.host.clone()).map_err(|_| ConnectError::BadUri)?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, this.tls.connect(name, tcp))
                .await
                .map_err(|_| ConnectError::Timeout {
                    host: target.host.clone(),
                })?
                .map_err(|source| ConnectError::Tls {
                    host: target.host.clone(),
                    source,
                })?;
            Ok(TokioIo::new(UpstreamIo::Tls(Box::new(tls))))
        })
    }
}

/// A connection to an upstream, plain or TLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain(_) => Connected::new(),
            UpstreamIo::Tls(tls) => {
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
