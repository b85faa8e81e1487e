//! Step 6: the upstream leg, the only module that dials. One pooled hyper-util client per
//! config snapshot, verified rustls, and a connector that resolves a name once, refuses
//! private addresses unless the config allows them, and dials exactly the address it checked
//! (no second lookup that DNS rebinding could answer differently) — directly, or through the
//! parent proxy of `upstream.proxy` ([`parent_proxy`]).
//!
//! `dial` holds the dialer and the address rules, `connector` the hyper-util connector and
//! the upstream TLS inside it, `parent_proxy` the `CONNECT` and SOCKS5 handshakes,
//! `transport` the stream they all produce, `answer_first` what keeps an early answer readable
//! when the upstream closes the connection under a body keyswap is still writing.

mod answer_first;
mod connector;
mod dial;
mod parent_proxy;
mod transport;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyswap_config::Config;
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

pub use connector::{Connector, UpstreamIo};
pub use dial::{is_private, Dialer};
pub use parent_proxy::Parent;
pub use transport::Transport;

use crate::error::ProxyError;
use crate::wire::target::Target;
use keyswap_scrub::body::ProxyBody;

/// How long one TCP connect (or TLS handshake, or parent proxy handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared upstream clients of one config snapshot (a secret refresh reuses them, with
/// their pooled connections; connections through a parent proxy are pooled the same way,
/// by the upstream's scheme and authority).
#[derive(Clone)]
pub struct UpstreamClients {
    /// Offers `h2` and `http/1.1`; the upstream chooses.
    pub any: Client<Connector, ProxyBody>,
    /// Offers only `http/1.1`: for protocol upgrades (WebSocket).
    pub http1: Client<Connector, ProxyBody>,
    /// Dials tunnels (`tunnel: true`) under the same address rules, through the same parent.
    pub dialer: Arc<Dialer>,
}

impl UpstreamClients {
    pub fn build(
        config: &Config,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, ProxyError> {
        let roots = root_store(config)?;
        let tls = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, ProxyError> {
            let mut tls = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(ProxyError::Tls)?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(tls))
        };
        let parent = match &config.upstream.proxy {
            Some(proxy) => {
                // TLS to an https:// parent: verified against the same roots, by its name.
                let to_parent = (proxy.kind == keyswap_config::ParentKind::Https)
                    .then(|| tls(&[b"http/1.1"]).map(TlsConnector::from))
                    .transpose()?;
                Some(Parent::new(proxy.clone(), to_parent))
            }
            None => None,
        };
        let dialer = Arc::new(Dialer {
            resolve: config.upstream.resolve.clone(),
            allow_private: config.upstream.allow_private,
            parent,
        });
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

    /// Sends `request` upstream through `any` (or `http1` for a protocol upgrade). A
    /// plain-HTTP request routed to an HTTP parent proxy carries the parent's
    /// `Proxy-Authorization` (the connection it goes out on is the parent's); no other
    /// request ever does, and none keeps one the agent sent.
    pub fn request(&self, mut request: Request<ProxyBody>, upgrade: bool) -> ResponseFuture {
        request.headers_mut().remove(header::PROXY_AUTHORIZATION);
        if request.uri().scheme_str() == Some("http") {
            // The host exactly as the connector reads it, so both route it the same way.
            let parent = request
                .uri()
                .authority()
                .and_then(|a| Target::from_authority(a, 80).ok())
                .and_then(|target| self.dialer.parent_for(&target.host))
                .filter(|parent| parent.takes_absolute_form());
            if let Some(value) = parent.and_then(Parent::authorization) {
                request
                    .headers_mut()
                    .insert(header::PROXY_AUTHORIZATION, value);
            }
        }
        let client = if upgrade { &self.http1 } else { &self.any };
        client.request(request)
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

/// Why an upstream connection could not be made. No variant carries the parent proxy's
/// credentials, headers or body: a parent's refusal is its status (or SOCKS reply) only.
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
    #[error("the parent proxy {proxy} could not be reached: {source}")]
    ParentUnreachable { proxy: String, source: io::Error },
    #[error("the parent proxy {proxy} did not answer in time")]
    ParentTimeout { proxy: String },
    #[error("TLS with the parent proxy {proxy} failed: {source}")]
    ParentTls { proxy: String, source: io::Error },
    #[error("the parent proxy {proxy} refused the tunnel with status {status}")]
    ParentRefused { proxy: String, status: u16 },
    #[error("the SOCKS5 proxy {proxy} refused the connection (reply {reply})")]
    SocksRefused { proxy: String, reply: u8 },
    #[error("the parent proxy {proxy} broke the protocol: {problem}")]
    ParentProtocol {
        proxy: String,
        problem: &'static str,
    },
}

impl ConnectError {
    /// The parent proxy's HTTP status when it refused the tunnel, for the audit record.
    pub fn parent_status(&self) -> Option<u16> {
        match self {
            ConnectError::ParentRefused { status, .. } => Some(*status),
            _ => None,
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
