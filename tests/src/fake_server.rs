//! A small in-process HTTPS server for the fakes of third-party services (GitHub, an OAuth
//! provider): every request's body is read whole (they are small) and answered by a handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use keyswap_certs::CertificateAuthority;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::client::{full, BoxBody};
use crate::Tasks;

/// Answers one request whose body was read whole.
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Bytes> + Send + Sync>;

/// A running fake; dropping it stops the server.
pub struct FakeServer {
    pub addr: SocketAddr,
    _tasks: Tasks,
}

impl FakeServer {
    /// Serves HTTPS (h2 and http/1.1) for `names`, with a leaf from `ca`; accepting when
    /// this returns.
    pub async fn start(ca: &CertificateAuthority, names: &[&str], handler: Handler) -> FakeServer {
        let (chain, key) = ca.issue_server_cert(names).expect("fake certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("fake certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().expect("fake address");
        let tasks = Tasks::new();
        let spawner = tasks.spawner();
        tasks.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let (acceptor, handler, inner) =
                    (acceptor.clone(), handler.clone(), spawner.clone());
                spawner.clone().spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let response = handler(Request::from_parts(parts, body));
                                let (parts, body) = response.into_parts();
                                Ok::<_, Infallible>(Response::from_parts(
                                    parts,
                                    full(body) as BoxBody,
                                ))
                            }
                        });
                    let _ = auto::Builder::new(inner)
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeServer {
            addr,
            _tasks: tasks,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A response with a status and a JSON body.
pub fn json(status: u16, body: serde_json::Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .expect("response")
}

/// A bearer or `token` credential of the Authorization header, or the password of a Basic one.
pub fn credential<B>(req: &Request<B>) -> Option<String> {
    use base64::Engine;
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => Some(rest.trim().to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            text.split_once(':')
                .map(|(_, password)| password.to_string())
        }
        _ => None,
    }
}

/// `KSREAL_<kind>_` and 32 random hex digits: CI's grep for `KSREAL` covers every value a fake
/// issues.
pub fn issue_value(kind: &str) -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("random");
    let mut out = format!("KSREAL_{kind}_");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
