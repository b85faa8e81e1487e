//! Clients that reach upstreams through the proxy the way agents do: `CONNECT` with
//! `Proxy-Authorization`, TLS trusting the proxy's CA, then HTTP/1.1 or h2 as ALPN decides
//! ([`connect_tunnel`]); plain-HTTP forwarding ([`plain_proxy_request`]); WebSocket
//! ([`websocket_through_proxy`]); and a raw byte stream for hand-written requests
//! ([`RawProxyStream`]).
//!
//! Never prints a header value: `Debug` of these types shows names, statuses and reasons.

use std::io;
use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, PROXY_AUTHORIZATION};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

pub use crate::upstream::Alpn;
use crate::upstream::{checksum, PatternBody, CHECKSUM_INIT};
use crate::Tasks;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;
/// The agent's TLS session with the proxy, inside the CONNECT tunnel.
pub type ProxyTlsStream = tokio_rustls::client::TlsStream<TcpStream>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct ProxyClientOptions {
    pub proxy: SocketAddr,
    /// Task and token, sent as `Proxy-Authorization: Basic base64(task:token)`.
    pub auth: Option<(String, String)>,
    /// The CONNECT authority, e.g. `localhost:4433`.
    pub connect_to: String,
    /// TLS server name; `None` = host of `connect_to`; `Some("")` = send no SNI (the
    /// certificate is still checked against the host of `connect_to`).
    pub sni: Option<String>,
    /// What the client offers by ALPN.
    pub alpn: Alpn,
    /// Roots the client trusts (the proxy's CA).
    pub trust: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ProxyClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyClientOptions")
            .field("proxy", &self.proxy)
            .field("task", &self.auth.as_ref().map(|(task, _)| task))
            .field("connect_to", &self.connect_to)
            .field("sni", &self.sni)
            .field("alpn", &self.alpn)
            .finish()
    }
}

/// The outcome of a CONNECT.
pub enum Tunnel {
    Open(ProxyConnection),
    /// Any status but 200, with `x-keyswap-reason` and the body read fully.
    Refused {
        status: u16,
        reason: Option<String>,
        body: String,
    },
}

/// CONNECT, then (on 200) the TLS handshake with the proxy and an HTTP client handshake for
/// the protocol ALPN chose. A TLS failure (e.g. the proxy refusing the SNI) is an `Err`.
pub async fn connect_tunnel(opts: &ProxyClientOptions) -> io::Result<Tunnel> {
    match open_tls(opts, opts.alpn).await? {
        Ok(tls) => ProxyConnection::handshake(tls).await.map(Tunnel::Open),
        Err(refused) => Ok(refused),
    }
}

/// An HTTP connection inside a tunnel (or straight to an upstream, [`connect_direct`]);
/// dropping it closes it and aborts its tasks, so keep it
/// alive until response bodies are read.
pub struct ProxyConnection {
    sender: Sender,
    _tasks: Tasks,
}

enum Sender {
    H1(http1::SendRequest<BoxBody>),
    H2(http2::SendRequest<BoxBody>),
}

impl ProxyConnection {
    async fn handshake(tls: ProxyTlsStream) -> io::Result<ProxyConnection> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        let tasks = Tasks::new();
        let sender = if h2 {
            let (sender, conn) = http2::Builder::new(tasks.spawner())
                .adaptive_window(true)
                .handshake(io)
                .await
                .map_err(io::Error::other)?;
            tasks.spawn(async move {
                let _ = conn.await;
            });
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(io::Error::other)?;
            tasks.spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Sender::H1(sender)
        };
        Ok(ProxyConnection {
            sender,
            _tasks: tasks,
        })
    }

    pub fn negotiated_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Another handle on an h2 connection, to send many streams at once (`None` on
    /// HTTP/1.1, where one request at a time is all a connection carries).
    pub fn h2_sender(&self) -> Option<http2::SendRequest<BoxBody>> {
        match &self.sender {
            Sender::H2(sender) => Some(sender.clone()),
            Sender::H1(_) => None,
        }
    }

    /// Sends one request; build it with [`request`] so its URI suits the protocol.
    pub async fn send(&mut self, req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// A request builder for use inside a tunnel: origin-form URI plus `Host` for HTTP/1.1,
/// `https://authority/path` for h2 (whose client needs scheme and authority).
pub fn request(method: &str, authority: &str, path: &str, h2: bool) -> http::request::Builder {
    let builder = Request::builder().method(method);
    if h2 {
        builder
            .version(Version::HTTP_2)
            .uri(format!("https://{authority}{path}"))
    } else {
        builder.uri(path).header(HOST, authority)
    }
}

pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A streaming body of `len` pattern bytes ([`crate::upstream::pattern`]) in 64 KiB frames,
/// never held whole.
pub fn pattern_body(len: u64) -> BoxBody {
    PatternBody::new(len).boxed()
}

/// Reads a (small) response body fully, as lossy UTF-8.
pub async fn body_string(resp: Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.expect("response body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// Streams a (large) response body, returning its length and [`checksum`].
pub async fn body_count_and_checksum(resp: Response<Incoming>) -> (u64, u64) {
    let mut body = resp.into_body();
    let (mut count, mut state) = (0u64, CHECKSUM_INIT);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("response body").data_ref() {
            count += data.len() as u64;
            state = checksum(data, state);
        }
    }
    (count, state)
}

/// Plain-HTTP forward proxying (`HTTP_PROXY`): sends `req` (absolute-form URI) to the proxy
/// on a new HTTP/1.1 connection, adding `Proxy-Authorization` and, if missing, `Host`.
///
/// Panics if the proxy cannot be reached. The connection task is not owned by anyone: it
/// ends by itself once the response body is read or dropped.
pub async fn plain_proxy_request(
    proxy: SocketAddr,
    auth: Option<(&str, &str)>,
    mut req: Request<BoxBody>,
) -> hyper::Result<Response<Incoming>> {
    let tcp = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let _ = tcp.set_nodelay(true);
    if let Some((task, token)) = auth {
        req.headers_mut()
            .insert(PROXY_AUTHORIZATION, proxy_authorization(task, token));
    }
    if !req.headers().contains_key(HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| a.as_str().parse().ok()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

/// WebSocket through the proxy: CONNECT, TLS offering only http/1.1, then the WebSocket
/// handshake for `wss://<connect_to>/<path>` with `headers` added.
pub async fn websocket_through_proxy(
    opts: &ProxyClientOptions,
    path: &str,
    headers: Vec<(String, String)>,
) -> Result<WebSocketStream<ProxyTlsStream>, BoxError> {
    let tls = match open_tls(opts, Alpn::Http1Only).await? {
        Ok(tls) => tls,
        Err(Tunnel::Refused { status, reason, .. }) => {
            return Err(format!("CONNECT refused: {status} {reason:?}").into())
        }
        Err(Tunnel::Open(_)) => return Err("unexpected tunnel state".into()),
    };
    let authority = opts
        .connect_to
        .strip_suffix(":443")
        .unwrap_or(&opts.connect_to);
    let mut request = format!("wss://{authority}{path}").into_client_request()?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())?;
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(&value)?);
    }
    let (ws, _response) = tokio_tungstenite::client_async(request, tls).await?;
    Ok(ws)
}

/// CONNECT and TLS; `Err(Tunnel::Refused)` when the proxy answers anything but 200.
pub async fn open_tls(
    opts: &ProxyClientOptions,
    alpn: Alpn,
) -> io::Result<Result<ProxyTlsStream, Tunnel>> {
    let mut raw = RawProxyStream::connect(opts.proxy).await?;
    let mut head = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", opts.connect_to);
    if let Some((task, token)) = &opts.auth {
        let value = proxy_authorization(task, token);
        head.push_str(&format!(
            "Proxy-Authorization: {}\r\n",
            value.to_str().unwrap_or("")
        ));
    }
    head.push_str("\r\n");
    raw.send_raw(head.as_bytes()).await?;
    let response = raw.read_response_head().await?;
    if response.status != 200 {
        let body = raw.read_body(&response).await?;
        return Ok(Err(Tunnel::Refused {
            status: response.status,
            reason: response.header("x-keyswap-reason").map(str::to_string),
            body: String::from_utf8_lossy(&body).into_owned(),
        }));
    }
    if !raw.buf.is_empty() {
        return Err(invalid(
            "proxy sent bytes after its 200 before the TLS handshake",
        ));
    }
    let (name, send_sni) = server_name(opts)?;
    let config = client_tls(&opts.trust, alpn, send_sni)?;
    let connector = TlsConnector::from(std::sync::Arc::new(config));
    connector.connect(name, raw.into_inner()).await.map(Ok)
}

/// A TLS connection straight to `addr` (no proxy), verifying `server_name` against `trust`.
pub async fn tls_direct(
    addr: SocketAddr,
    server_name: &str,
    alpn: Alpn,
    trust: &[CertificateDer<'static>],
) -> io::Result<ProxyTlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|e| invalid(&e.to_string()))?;
    let connector = TlsConnector::from(std::sync::Arc::new(client_tls(trust, alpn, true)?));
    connector.connect(name, tcp).await
}

/// An HTTPS connection straight to an upstream, for comparison with the proxied path.
pub async fn connect_direct(
    addr: SocketAddr,
    server_name: &str,
    alpn: Alpn,
    trust: &[CertificateDer<'static>],
) -> io::Result<ProxyConnection> {
    ProxyConnection::handshake(tls_direct(addr, server_name, alpn, trust).await?).await
}

fn client_tls(
    trust: &[CertificateDer<'static>],
    alpn: Alpn,
    send_sni: bool,
) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trust {
        roots
            .add(cert.clone())
            .map_err(|e| invalid(&e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    config.enable_sni = send_sni;
    Ok(config)
}

/// The name to verify the proxy's certificate against, and whether to send it as SNI.
fn server_name(opts: &ProxyClientOptions) -> io::Result<(ServerName<'static>, bool)> {
    let host = host_of(&opts.connect_to);
    let (name, send) = match opts.sni.as_deref() {
        Some("") => (host, false),
        Some(sni) => (sni, true),
        None => (host, true),
    };
    let name = ServerName::try_from(name.to_string()).map_err(|e| invalid(&e.to_string()))?;
    Ok((name, send))
}

/// The host of an authority: `a.b:443` → `a.b`, `[::1]:443` → `::1`.
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `Basic base64(task:token)`, as clients send it in `Proxy-Authorization`.
pub fn proxy_authorization(task: &str, token: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{task}:{token}"));
    HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Longest response head [`RawProxyStream`] accepts.
const MAX_HEAD: usize = 1 << 20;

/// A raw TCP connection to the proxy for hand-written requests (smuggling tests).
pub struct RawProxyStream {
    tcp: TcpStream,
    /// Bytes read past the last head (or body) returned.
    buf: Vec<u8>,
}

/// A response head as the proxy wrote it.
pub struct RawResponse {
    pub status: u16,
    /// Lowercase names, trimmed values, in received order.
    pub headers: Vec<(String, String)>,
}

impl RawResponse {
    /// The first value of `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for RawResponse {
    /// Status, reason and header names: values can echo what the agent sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("reason", &self.header("x-keyswap-reason"))
            .field("header_names", &names)
            .finish()
    }
}

impl RawProxyStream {
    pub async fn connect(proxy: SocketAddr) -> io::Result<RawProxyStream> {
        let tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        Ok(RawProxyStream {
            tcp,
            buf: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tcp.write_all(bytes).await?;
        self.tcp.flush().await
    }

    /// Reads up to the blank line ending a response head; the body, if any, is left unread
    /// (see [`RawProxyStream::read_body`]). `UnexpectedEof` if the proxy closes first.
    pub async fn read_response_head(&mut self) -> io::Result<RawResponse> {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too long"));
            }
            self.fill().await?;
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        parse_head(&head)
    }

    /// Reads the body of the response whose head was just read: by `Content-Length`,
    /// chunked, or to EOF. Not for responses to HEAD or for 1xx/204/304.
    pub async fn read_body(&mut self, head: &RawResponse) -> io::Result<Vec<u8>> {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return self.read_chunked().await;
        }
        match head.header("content-length").map(|l| l.parse::<usize>()) {
            Some(Ok(len)) => self.take(len).await,
            Some(Err(_)) => Err(invalid("bad content-length")),
            None => {
                while self.fill().await.is_ok() {}
                Ok(std::mem::take(&mut self.buf))
            }
        }
    }

    /// The socket; bytes already read past the last head or body are dropped.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size).await?);
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).take(at).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill().await?;
        }
    }

    async fn take(&mut self, len: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < len {
            self.fill().await?;
        }
        Ok(self.buf.drain(..len).collect())
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        match self.tcp.read(&mut chunk).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

fn parse_head(head: &[u8]) -> io::Result<RawResponse> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(invalid("not an HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (l.trim().to_ascii_lowercase(), String::new()),
        })
        .collect();
    Ok(RawResponse { status, headers })
}

/// One HTTP/1.1 or h2 client connection and the task driving it, which ends when the
/// connection does (its read returned EOF or an error): a test awaits `driver` to see a
/// connection closed.
pub struct DrivenConn {
    sender: DrivenSender,
    pub driver: JoinHandle<()>,
}

enum DrivenSender {
    H1(http1::SendRequest<BoxBody>),
    H2(http2::SendRequest<BoxBody>),
}

impl DrivenConn {
    pub async fn handshake<T>(io: T, h2: bool) -> DrivenConn
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let (sender, driver) = if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .expect("h2 handshake");
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (DrivenSender::H2(sender), driver)
        } else {
            let (sender, conn) = http1::handshake(io).await.expect("http/1.1 handshake");
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (DrivenSender::H1(sender), driver)
        };
        DrivenConn { sender, driver }
    }

    /// TLS over `tcp` (inside a tunnel), verifying `host` against `trust`; HTTP/1.1 or h2 as
    /// ALPN chose.
    pub async fn over_tls(
        tcp: TcpStream,
        host: &str,
        trust: &CertificateDer<'static>,
        alpn: Alpn,
    ) -> DrivenConn {
        let mut roots = RootCertStore::empty();
        roots.add(trust.clone()).expect("trust root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.protocols();
        let name = ServerName::try_from(host.to_string()).expect("server name");
        let tls = TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        DrivenConn::handshake(tls, h2).await
    }

    pub fn h2(&self) -> bool {
        matches!(self.sender, DrivenSender::H2(_))
    }

    /// A handle on an h2 connection's sender, to send several requests on it at once.
    pub fn h2_sender(&self) -> Option<http2::SendRequest<BoxBody>> {
        match &self.sender {
            DrivenSender::H2(s) => Some(s.clone()),
            DrivenSender::H1(_) => None,
        }
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            DrivenSender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            DrivenSender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}
