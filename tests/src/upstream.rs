//! In-process upstream servers: HTTPS (certificate from a test CA, ALPN as asked) or plain
//! HTTP on `127.0.0.1:0`, with the routes the suite needs — `/echo`, `/reflect-header`,
//! `/reflect-form`, `/bytes/N`, `/upload`, `/discard`, `/status/N`, `/redirect`, `/compressed`,
//! `/ws` (WebSocket echo, or with `?script=` hand-built frames: [`WsScript`]) — and a record of
//! every request that reached the handler ([`Upstream::seen`]) and of whether each TCP
//! connection sent any byte at all ([`Upstream::connections`]).
//!
//! This server plays the real API, so it does see and echo real values: that is what lets a
//! test prove the swap happened. It never logs them, and [`SeenRequest`]'s `Debug` prints
//! header names only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use keyswap_certs::CertificateAuthority;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{empty, full, BoxBody};
use crate::{Spawner, Tasks};

/// Which protocols a TLS endpoint offers (server) or asks for (client) by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1Only,
    Http2Only,
    Both,
}

impl Alpn {
    /// ALPN identifiers in preference order.
    pub fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
            Alpn::Http2Only => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// DNS names or IP addresses the server certificate is valid for.
    pub names: Vec<String>,
    pub alpn: Alpn,
    /// `false` serves plain HTTP (the CA is then unused).
    pub tls: bool,
    /// Keep every request in [`Upstream::seen`]. The bench turns this off: millions of
    /// requests would otherwise grow the list without bound.
    pub record: bool,
    /// Answer 401 to any request whose `Authorization` is not exactly this: the bench's proof
    /// that every request through a proxy carried the swapped value.
    pub require_authorization: Option<HeaderValue>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            alpn: Alpn::Both,
            tls: true,
            record: true,
            require_authorization: None,
        }
    }
}

/// One request as the upstream received it.
#[derive(Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The URI authority (HTTP/2 `:authority`, absolute-form) or else the `Host` header.
    pub authority: String,
    /// Lowercase names, values decoded as lossy UTF-8, in received order.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for SeenRequest {
    /// Header names only: values may be real secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SeenRequest")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("version", &self.version)
            .field("header_names", &names)
            .finish()
    }
}

/// A request body as `/sink` received it: its bytes and its trailers.
#[derive(Clone)]
pub struct SeenBody {
    pub path_and_query: String,
    pub body: Vec<u8>,
    /// Lowercase names, values decoded as lossy UTF-8.
    pub trailers: Vec<(String, String)>,
    /// The body reached its end without an error.
    pub complete: bool,
}

impl SeenBody {
    /// Everything the upstream received after the head, as one text to search.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.body).into_owned();
        for (n, v) in &self.trailers {
            text.push_str(&format!("\n{n}: {v}"));
        }
        text
    }
}

impl std::fmt::Debug for SeenBody {
    /// Lengths and trailer names only: the bytes may be real secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.trailers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SeenBody")
            .field("path_and_query", &self.path_and_query)
            .field("body_len", &self.body.len())
            .field("trailer_names", &names)
            .field("complete", &self.complete)
            .finish()
    }
}

/// A running upstream; dropping it stops the server and every connection it serves.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    _tasks: Tasks,
}

struct State {
    seen: Mutex<Vec<SeenRequest>>,
    /// What `/sink` read: every body and its trailers.
    bodies: Mutex<Vec<SeenBody>>,
    /// TCP connections that sent at least one byte / closed before sending any.
    with_data: AtomicUsize,
    without_data: AtomicUsize,
    record: bool,
    require_authorization: Option<HeaderValue>,
    spawner: Spawner,
    /// Set by [`Upstream::serve_files`]: `/files/…` and `/git/…` come from here.
    docroot: Mutex<Option<std::path::PathBuf>>,
}

impl Upstream {
    /// Starts a server as `opts` says; it is accepting when this returns.
    pub async fn start(ca: &CertificateAuthority, opts: UpstreamOptions) -> Upstream {
        let tls = opts.tls.then(|| server_tls(ca, &opts));
        Upstream::serve(tls, opts).await
    }

    /// HTTPS offering h2 and http/1.1, valid for `localhost`, `127.0.0.1`,
    /// `api.upstream.test` and `other.upstream.test`.
    pub async fn https(ca: &CertificateAuthority) -> Upstream {
        let names = [
            "localhost",
            "127.0.0.1",
            "api.upstream.test",
            "other.upstream.test",
        ];
        let opts = UpstreamOptions {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..UpstreamOptions::default()
        };
        Upstream::start(ca, opts).await
    }

    /// Plain HTTP (http/1.1, or h2 with prior knowledge).
    pub async fn plain_http() -> Upstream {
        let opts = UpstreamOptions {
            tls: false,
            ..UpstreamOptions::default()
        };
        Upstream::serve(None, opts).await
    }

    async fn serve(tls: Option<TlsAcceptor>, opts: UpstreamOptions) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let tasks = Tasks::new();
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            with_data: AtomicUsize::new(0),
            without_data: AtomicUsize::new(0),
            record: opts.record,
            require_authorization: opts.require_authorization,
            spawner: tasks.spawner(),
            docroot: Mutex::new(None),
        });
        tasks.spawn(accept_loop(listener, tls, opts.alpn, state.clone()));
        Upstream {
            addr,
            state,
            _tasks: tasks,
        }
    }

    /// Every request that reached the handler, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Every body (with its trailers) that `/sink` read, in order.
    pub fn bodies(&self) -> Vec<SeenBody> {
        self.state
            .bodies
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// The `Authorization` the upstream received with the latest request for exactly
    /// `path_and_query`: what a swap delivered.
    pub fn authorization_for(&self, path_and_query: &str) -> Option<String> {
        self.seen()
            .into_iter()
            .rev()
            .find(|r| r.path_and_query == path_and_query)
            .and_then(|r| r.header("authorization").map(str::to_string))
    }

    /// TCP connections accepted so far that sent at least one byte, and that closed before
    /// sending any: proof of whether a client's TLS bytes ever reached this server.
    pub fn connections(&self) -> (usize, usize) {
        (
            self.state.with_data.load(Ordering::SeqCst),
            self.state.without_data.load(Ordering::SeqCst),
        )
    }

    /// Serves `root/files/…` at `/files/…` and the git repositories in `root/git` at
    /// `/git/…` through `git http-backend` ([`crate::files`]).
    pub fn serve_files(&self, root: &std::path::Path) {
        if let Ok(mut docroot) = self.state.docroot.lock() {
            *docroot = Some(root.to_path_buf());
        }
    }

    pub fn seen_count(&self) -> usize {
        self.state.seen.lock().map(|s| s.len()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn server_tls(ca: &CertificateAuthority, opts: &UpstreamOptions) -> TlsAcceptor {
    let names: Vec<&str> = opts.names.iter().map(String::as_str).collect();
    let (chain, key) = ca
        .issue_server_cert(&names)
        .expect("issue upstream certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("upstream certificate");
    config.alpn_protocols = opts.alpn.protocols();
    TlsAcceptor::from(Arc::new(config))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    alpn: Alpn,
    state: Arc<State>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        let (tls, state) = (tls.clone(), state.clone());
        state
            .spawner
            .clone()
            .spawn(serve_tcp(tcp, tls, alpn, state));
    }
}

async fn serve_tcp(tcp: TcpStream, tls: Option<TlsAcceptor>, alpn: Alpn, state: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    if !matches!(tcp.peek(&mut [0u8; 1]).await, Ok(n) if n > 0) {
        state.without_data.fetch_add(1, Ordering::SeqCst);
        return;
    }
    state.with_data.fetch_add(1, Ordering::SeqCst);
    match tls {
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(tcp).await {
                serve_io(TokioIo::new(stream), alpn, state).await;
            }
        }
        None => serve_io(TokioIo::new(tcp), alpn, state).await,
    }
}

async fn serve_io<I>(io: I, alpn: Alpn, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(state.spawner.clone());
    builder = match alpn {
        Alpn::Http1Only => builder.http1_only(),
        Alpn::Http2Only => builder.http2_only(),
        Alpn::Both => builder,
    };
    // Large streams through two TLS legs: let h2 grow its windows instead of 64 KiB steps.
    builder.http2().adaptive_window(true);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, state).await) }
    });
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<BoxBody> {
    if state.record {
        if let Ok(mut seen) = state.seen.lock() {
            seen.push(seen_request(&req));
        }
    }
    if let Some(required) = &state.require_authorization {
        if req.headers().get(header::AUTHORIZATION) != Some(required) {
            return text(
                StatusCode::UNAUTHORIZED,
                "authorization is not the real value\n",
            );
        }
    }
    let docroot = state.docroot.lock().ok().and_then(|d| d.clone());
    let req = match docroot {
        Some(root) => match crate::files::serve(req, &root).await {
            Ok(response) => return response,
            Err(req) => req,
        },
        None => req,
    };
    let path = req.uri().path().to_string();
    if path == "/echo" || path.starts_with("/echo/") {
        echo(&req)
    } else if path == "/reflect-header" {
        reflect_header(&req)
    } else if path == "/reflect-form" {
        reflect_form(&req)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        bytes(n)
    } else if path == "/upload" {
        upload(req).await
    } else if path == "/duplex" {
        duplex(req)
    } else if path == "/discard" {
        discard(req).await
    } else if path == "/sink" {
        sink(req, &state).await
    } else if let Some(n) = path.strip_prefix("/status/") {
        status(n)
    } else if path == "/redirect" {
        redirect(&req)
    } else if path == "/compressed" {
        compressed(&req)
    } else if path == "/ws" {
        websocket(req, &state.spawner)
    } else {
        text(StatusCode::NOT_FOUND, "not found\n")
    }
}

fn seen_request(req: &Request<Incoming>) -> SeenRequest {
    SeenRequest {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        authority: authority(req),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), lossy(v)))
            .collect(),
    }
}

fn authority(req: &Request<Incoming>) -> String {
    match req.uri().authority() {
        Some(a) => a.to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .map(lossy)
            .unwrap_or_default(),
    }
}

fn echo(req: &Request<Incoming>) -> Response<BoxBody> {
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "authority": authority(req),
        "headers": headers_json(req.headers()),
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("echo response")
}

fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<serde_json::Value> = headers
            .get_all(name)
            .iter()
            .map(|v| lossy(v).into())
            .collect();
        let value = match <[_; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => many.into(),
        };
        map.insert(name.as_str().to_string(), value);
    }
    map.into()
}

/// Sends the header's value back in `x-reflected`, `set-cookie` and a body whose two frames
/// split the value in half, so a scrubber must match across frames.
fn reflect_header(req: &Request<Incoming>) -> Response<BoxBody> {
    let name = query_param(req.uri().query(), "name").unwrap_or_default();
    let Some(value) = req.headers().get(name.as_str()) else {
        return text(StatusCode::BAD_REQUEST, "no such request header\n");
    };
    let value = value.as_bytes();
    let (first, second) = value.split_at(value.len() / 2);
    let cookie = [b"s=".as_slice(), value].concat();
    let frames = vec![
        Bytes::from([b"reflected=".as_slice(), first].concat()),
        Bytes::from([second, b"\n".as_slice()].concat()),
    ];
    let reflected = HeaderValue::from_bytes(value);
    let cookie = HeaderValue::from_bytes(&cookie);
    let (Ok(reflected), Ok(cookie)) = (reflected, cookie) else {
        return text(StatusCode::BAD_REQUEST, "value not reflectable\n");
    };
    Response::builder()
        .header("x-reflected", reflected)
        .header(header::SET_COOKIE, cookie)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(PacedFrames::new(frames).boxed())
        .expect("reflect response")
}

/// The encodings `/reflect-form` can apply, each as a real encoder writes it (written here
/// independently of keyswap's own list, so a test compares two implementations).
pub const FORMS: &[&str] = &[
    "raw",
    "base64",
    "base64url",
    "base64-nopad",
    "base64url-nopad",
    "base64-blob-0",
    "base64-blob-1",
    "base64-blob-2",
    "base64url-blob-1",
    "basic",
    "percent-rfc3986",
    "percent-rfc3986-lower",
    "percent-plus",
    "percent-component",
    "percent-form",
    "percent-all",
    "percent-all-lower",
    "json-serde",
    "json-slash",
    "json-ascii",
    "json-ascii-upper",
    "json-html",
    "json-all",
    "json-all-upper",
];

/// `value` in encoding `form` (one of [`FORMS`]); `None` for an unknown form.
pub fn encode_form(form: &str, value: &[u8]) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let text = String::from_utf8_lossy(value);
    let percent = |keep: &dyn Fn(u8) -> bool, plus: bool, lower: bool| -> String {
        value
            .iter()
            .map(|&b| match b {
                b' ' if plus => "+".to_string(),
                b if keep(b) => (b as char).to_string(),
                b if lower => format!("%{b:02x}"),
                b => format!("%{b:02X}"),
            })
            .collect()
    };
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let serde = serde_json::to_string(&text).ok()?;
    let serde = serde[1..serde.len() - 1].to_string();
    let u_escape = |upper: bool, only_non_ascii: bool, json: &str| -> String {
        let mut out = String::new();
        for c in json.chars() {
            if only_non_ascii && c.is_ascii() {
                out.push(c);
                continue;
            }
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&if upper {
                    format!("\\u{u:04X}")
                } else {
                    format!("\\u{u:04x}")
                });
            }
        }
        out
    };
    // A value inside a longer base64 blob, starting at byte offset `shift`.
    let blob = |shift: usize| [&b"xyz"[..shift], value, b"-tail"].concat();
    Some(match form {
        "raw" => text.into_owned(),
        "base64" => STANDARD.encode(value),
        "base64url" => URL_SAFE.encode(value),
        "base64-nopad" => STANDARD_NO_PAD.encode(value),
        "base64url-nopad" => URL_SAFE_NO_PAD.encode(value),
        "base64-blob-0" => STANDARD.encode(blob(0)),
        "base64-blob-1" => STANDARD.encode(blob(1)),
        "base64-blob-2" => STANDARD.encode(blob(2)),
        "base64url-blob-1" => URL_SAFE_NO_PAD.encode(blob(1)),
        "basic" => STANDARD.encode([b"x-access-token:", value].concat()),
        "percent-rfc3986" => percent(&unreserved, false, false),
        "percent-rfc3986-lower" => percent(&unreserved, false, true),
        "percent-plus" => percent(&unreserved, true, false),
        "percent-component" => percent(
            &|b| b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b),
            false,
            false,
        ),
        "percent-form" => percent(
            &|b| b.is_ascii_alphanumeric() || b"*-._".contains(&b),
            true,
            false,
        ),
        "percent-all" => percent(&|_| false, false, false),
        "percent-all-lower" => percent(&|_| false, false, true),
        "json-serde" => serde,
        "json-slash" => u_escape(false, true, &serde.replace('/', "\\/")),
        "json-ascii" => u_escape(false, true, &serde),
        "json-ascii-upper" => u_escape(true, true, &serde),
        "json-html" => serde
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026"),
        "json-all" => u_escape(false, false, &text),
        "json-all-upper" => u_escape(true, false, &text),
        _ => return None,
    })
}

/// Sends request header `name`'s value back in encoding `form` (see [`encode_form`]), in the
/// place `in` names: `body` (split over three frames, so a scrubber must match across them),
/// `header` (a header value), `name` (a header name, lowercased as HTTP requires), `reason`
/// (the HTTP/1.1 reason phrase) or `trailer` (a trailer's value and another trailer's name).
fn reflect_form(req: &Request<Incoming>) -> Response<BoxBody> {
    let query = req.uri().query();
    let name = query_param(query, "name").unwrap_or_default();
    let (Some(form), Some(place)) = (query_param(query, "form"), query_param(query, "in")) else {
        return text(StatusCode::BAD_REQUEST, "reflect-form: want form and in\n");
    };
    let Some(value) = req.headers().get(name.as_str()) else {
        return text(StatusCode::BAD_REQUEST, "no such request header\n");
    };
    let Some(encoded) = encode_form(&form, value.as_bytes()) else {
        return text(StatusCode::BAD_REQUEST, "reflect-form: unknown form\n");
    };
    let encoded = encoded.into_bytes();
    let third = encoded.len() / 3;
    let body_frames = |e: &[u8]| {
        vec![
            Bytes::from([b"{\"v\":\"".as_slice(), &e[..third]].concat()),
            Bytes::copy_from_slice(&e[third..2 * third]),
            Bytes::from([&e[2 * third..], b"\"}\n".as_slice()].concat()),
        ]
    };
    let mut resp = Response::builder().header(header::CONTENT_TYPE, "application/json");
    let body = match place.as_str() {
        "body" => PacedFrames::new(body_frames(&encoded)).boxed(),
        "header" => match HeaderValue::from_bytes(&[b"v=".as_slice(), &encoded].concat()) {
            Ok(v) => {
                resp = resp.header("x-reflected", v);
                full("header\n")
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "not a header value\n"),
        },
        "name" => {
            let lower = [b"x-".as_slice(), &encoded].concat().to_ascii_lowercase();
            match header::HeaderName::from_bytes(&lower) {
                Ok(n) => {
                    resp = resp.header(n, "1").header("x-kept", "yes");
                    full("name\n")
                }
                Err(_) => return text(StatusCode::BAD_REQUEST, "not a header name\n"),
            }
        }
        "reason" => match hyper::ext::ReasonPhrase::try_from(encoded.clone()) {
            Ok(reason) => {
                let mut resp = Response::new(full("reason\n"));
                resp.extensions_mut().insert(reason);
                return resp;
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "not a reason phrase\n"),
        },
        "trailer" => {
            let lower = [b"x-".as_slice(), &encoded].concat().to_ascii_lowercase();
            let (Ok(value), Ok(name)) = (
                HeaderValue::from_bytes(&encoded),
                header::HeaderName::from_bytes(&lower),
            ) else {
                return text(StatusCode::BAD_REQUEST, "not a trailer\n");
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", value);
            trailers.insert(name, HeaderValue::from_static("1"));
            let frames = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"trailer\n"))),
                Ok(Frame::trailers(trailers)),
            ]));
            BodyExt::boxed(frames)
        }
        _ => return text(StatusCode::BAD_REQUEST, "reflect-form: unknown place\n"),
    };
    resp.body(body).expect("reflect-form response")
}

const MAX_BYTES: u64 = 2 << 30;

fn bytes(n: &str) -> Response<BoxBody> {
    match n.parse::<u64>() {
        Ok(len) if len <= MAX_BYTES => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(PatternBody::new(len).boxed())
            .expect("bytes response"),
        _ => text(
            StatusCode::BAD_REQUEST,
            "bytes: want a length up to 2 GiB\n",
        ),
    }
}

async fn upload(req: Request<Incoming>) -> Response<BoxBody> {
    let mut body = req.into_body();
    let (mut count, mut state) = (0u64, CHECKSUM_INIT);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return text(StatusCode::BAD_REQUEST, "upload: body failed\n");
        };
        if let Some(data) = frame.data_ref() {
            count += data.len() as u64;
            state = checksum(data, state);
        }
    }
    let summary = serde_json::json!({ "bytes": count, "checksum": state });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(summary.to_string()))
        .expect("upload response")
}

/// Reads the body and its trailers, keeps them in [`Upstream::bodies`], answers with the
/// body's length.
async fn sink(req: Request<Incoming>, state: &State) -> Response<BoxBody> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut body = req.into_body();
    let mut seen = SeenBody {
        path_and_query,
        body: Vec::new(),
        trailers: Vec::new(),
        complete: false,
    };
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => seen.body.extend_from_slice(&data),
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        for (n, v) in trailers {
                            seen.trailers.push((n.as_str().to_string(), lossy(v)));
                        }
                    }
                }
            },
        }
    };
    seen.complete = complete;
    let len = seen.body.len();
    if let Ok(mut bodies) = state.bodies.lock() {
        bodies.push(seen);
    }
    Response::new(full(format!("{len}\n")))
}

/// Reads the body and answers with its length only: an upload sink that costs the server as
/// little as possible (the bench), where `/upload` also checksums every byte.
/// Full duplex: answers 200 at once and streams the request body back frame by frame, as
/// it arrives (gRPC-style bidirectional streaming).
fn duplex(req: Request<Incoming>) -> Response<BoxBody> {
    let body = req
        .into_body()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .boxed();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .expect("duplex response")
}

async fn discard(req: Request<Incoming>) -> Response<BoxBody> {
    let mut body = req.into_body();
    let mut count = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return text(StatusCode::BAD_REQUEST, "discard: body failed\n");
        };
        if let Some(data) = frame.data_ref() {
            count += data.len() as u64;
        }
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(format!("{count}\n")))
        .expect("discard response")
}

fn status(n: &str) -> Response<BoxBody> {
    let code = n.parse::<u16>().ok().filter(|c| (200..=599).contains(c));
    let Some(code) = code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return text(StatusCode::BAD_REQUEST, "status: want 200..=599\n");
    };
    let body = match code {
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => empty(),
        _ => full(format!("status {}\n", code.as_u16())),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    resp
}

fn redirect(req: &Request<Incoming>) -> Response<BoxBody> {
    let to = query_param(req.uri().query(), "to").map(|t| HeaderValue::from_str(&t));
    let Some(Ok(location)) = to else {
        return text(StatusCode::BAD_REQUEST, "redirect: want ?to=URL\n");
    };
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .body(full("redirecting\n"))
        .expect("redirect response")
}

/// Answers a valid HTTP/1.1 WebSocket upgrade with 101, then echoes text and binary
/// messages. With `?announce=authorization` the first message is
/// `authorization=<the handshake's Authorization header>`: through keyswap that sends a real
/// value back, which the proxy must replace with its placeholder, so it is opt-in.
fn websocket(mut req: Request<Incoming>, spawner: &Spawner) -> Response<BoxBody> {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let valid = req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && has(header::SEC_WEBSOCKET_VERSION, "13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (valid, key) else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket upgrade\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let announce = query_param(req.uri().query(), "announce").as_deref() == Some("authorization");
    let script = query_param(req.uri().query(), "script").and_then(|s| WsScript::parse(&s));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(lossy)
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(&mut req);
    spawner.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        if let Some(script) = script {
            return script.run(&mut io, authorization.as_bytes()).await;
        }
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let first = Message::Text(format!("authorization={authorization}").into());
        if announce && ws.send(first).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(empty())
        .expect("101 response")
}

/// A compressed body: `codings` (comma list, applied in order: gzip, x-gzip, deflate = zlib,
/// raw-deflate, br, zstd), declared by `declare` = `ce` (Content-Encoding, the default), `te`
/// (`Transfer-Encoding: <codings>, chunked`, HTTP/1.1 only) or `none`. The content is
/// [`compressed_content`] with, for `reflect=NAME`, that request header's value inside;
/// `pad=N` puts N bytes of text first; `zeros=N` makes it N zero bytes instead (a bomb). The compressed bytes go out in two
/// frames split in the middle, so a value's encoding straddles them.
fn compressed(req: &Request<Incoming>) -> Response<BoxBody> {
    let query = req.uri().query();
    let codings = query_param(query, "codings").unwrap_or_else(|| "gzip".into());
    let declare = query_param(query, "declare").unwrap_or_else(|| "ce".into());
    let content = match query_param(query, "zeros").map(|n| n.parse::<usize>()) {
        Some(Ok(n)) if n as u64 <= MAX_BYTES => vec![0u8; n],
        Some(_) => return text(StatusCode::BAD_REQUEST, "zeros: want a length\n"),
        None => {
            let value = query_param(query, "reflect")
                .and_then(|name| req.headers().get(name.as_str()).cloned());
            let pad = query_param(query, "pad").and_then(|n| n.parse::<u64>().ok());
            let mut content = pad
                .map(|n| pattern_text(n.min(MAX_BYTES)))
                .unwrap_or_default();
            content.extend(compressed_content(value.as_ref().map(|v| v.as_bytes())));
            content
        }
    };
    let Some(body) = compress(&codings, &content) else {
        return text(StatusCode::BAD_REQUEST, "compressed: unknown coding\n");
    };
    let mut resp = Response::builder().header(header::CONTENT_TYPE, "application/octet-stream");
    let named = codings.replace(',', ", ").replace("raw-deflate", "deflate");
    match declare.as_str() {
        "ce" => resp = resp.header(header::CONTENT_ENCODING, named),
        "te" => resp = resp.header(header::TRANSFER_ENCODING, format!("{named}, chunked")),
        _ => {}
    }
    let mid = body.len() / 2;
    let frames = vec![
        Bytes::copy_from_slice(&body[..mid]),
        Bytes::copy_from_slice(&body[mid..]),
    ];
    resp.body(PacedFrames::new(frames).boxed())
        .expect("compressed response")
}

/// `len` bytes of numbered text: compresses about 3×, like real JSON.
pub fn pattern_text(len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut i = 0u64;
    while (out.len() as u64) < len {
        out.extend_from_slice(format!("{} ", i.wrapping_mul(2654435761) % 100000).as_bytes());
        i += 1;
    }
    out.truncate(len as usize);
    out
}

/// The plain content of `/compressed` (after `pad=N` bytes of [`pattern_text`]): some text, `value` (if any), more text.
pub fn compressed_content(value: Option<&[u8]>) -> Vec<u8> {
    let mut content = b"{\"greeting\": \"hello\", \"token\": \"".to_vec();
    content.extend_from_slice(value.unwrap_or(b"none"));
    content.extend_from_slice(b"\", \"filler\": \"");
    for i in 0..2000u32 {
        content.extend_from_slice(format!("{i} ").as_bytes());
    }
    content.extend_from_slice(b"\"}\n");
    content
}

/// `content` compressed with each of `codings` (comma list) in order; `None` for a coding
/// this helper does not know (which the test of unknown codings relies on: `compress`).
pub fn compress(codings: &str, content: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut data = content.to_vec();
    for coding in codings.split(',').map(str::trim) {
        data = match coding {
            "gzip" | "x-gzip" => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&data).ok()?;
                e.finish().ok()?
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&data).ok()?;
                e.finish().ok()?
            }
            "raw-deflate" => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&data).ok()?;
                e.finish().ok()?
            }
            "br" => {
                let mut out = Vec::new();
                let params = brotli::enc::BrotliEncoderParams::default();
                brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
                out
            }
            "zstd" => zstd::encode_all(&data[..], 3).ok()?,
            // Not compressed: lets a test send a coding name keyswap must refuse.
            "compress" => data,
            _ => return None,
        };
    }
    Some(data)
}

fn text(status: StatusCode, body: &'static str) -> Response<BoxBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name))?
        .1;
    let (mut out, mut bytes) = (Vec::new(), value.as_bytes().iter());
    while let Some(&b) = bytes.next() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match b {
            b'%' => {
                let rest = bytes.as_slice();
                match (hex(rest.first()), hex(rest.get(1))) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        bytes.nth(1);
                    }
                    _ => out.push(b),
                }
            }
            _ => out.push(b),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// FNV-1a 64 offset basis: the state before any byte.
pub const CHECKSUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `data` into a FNV-1a 64 `state`; chunk boundaries do not change the result.
pub fn checksum(data: &[u8], state: u64) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const PERIOD: u64 = 251;
/// Frame size of streamed pattern bodies.
pub const FRAME: usize = 64 * 1024;

/// `len` bytes of the test pattern starting at `offset`: byte i is `(i % 251) as u8`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % PERIOD) as u8)
        .collect()
}

/// `len` pattern bytes in [`FRAME`]-sized frames, each a slice of one shared buffer: no
/// allocation per frame and never the whole body in memory.
pub(crate) struct PatternBody {
    offset: u64,
    remaining: u64,
    period: Bytes,
}

impl PatternBody {
    pub(crate) fn new(len: u64) -> PatternBody {
        PatternBody {
            offset: 0,
            remaining: len,
            period: Bytes::from(pattern(0, FRAME + PERIOD as usize)),
        }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(FRAME as u64);
        let start = (this.offset % PERIOD) as usize;
        let chunk = this.period.slice(start..start + n as usize);
        this.offset += n;
        this.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Frames with a pause (one `Pending`, immediately re-woken) between them, so hyper flushes
/// each frame on its own: separate chunks in HTTP/1.1, separate DATA frames in h2.
struct PacedFrames {
    frames: VecDeque<Bytes>,
    pause: bool,
}

impl PacedFrames {
    fn new(frames: Vec<Bytes>) -> PacedFrames {
        PacedFrames {
            frames: frames.into(),
            pause: false,
        }
    }
}

impl http_body::Body for PacedFrames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.pause && !this.frames.is_empty() {
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pause = true;
        Poll::Ready(this.frames.pop_front().map(|f| Ok(Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

/// What `/ws?script=NAME` sends after the handshake, as hand-built frames (not through a
/// codec, so they can be split, masked or flagged as a well-behaved server never would).
/// `V` below is the handshake's `Authorization` value — through keyswap, the real one. Each
/// script ends with a text message `end` and a close frame (reason `bye`), so an agent that
/// reads `end` knows nothing was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsScript {
    /// `token=V` in one text frame.
    Text,
    /// `token=V` split in the middle of `V` across a text frame and its continuation.
    FragmentedText,
    /// `V` split across two binary frames of one message.
    FragmentedBinary,
    /// `V` split across two separate text messages.
    SplitMessages,
    /// `V` as the reason of the closing frame.
    CloseReason,
    /// `V` as a ping's payload.
    Ping,
    /// The value after `Bearer ` base64-encoded (standard alphabet) in a text message.
    Base64,
    /// A binary message of two 9 MiB frames (over keyswap's 16 MiB limit), `V` at its end.
    OversizedMessage,
    /// One binary frame announcing 16 MiB + 1 bytes, `V` at its end.
    OversizedFrame,
    /// `V` in a text frame with RSV1 set (as if compressed, with no extension negotiated).
    Rsv1,
    /// `V` in a masked text frame (servers must not mask).
    Masked,
}

impl WsScript {
    pub const ALL: [WsScript; 11] = [
        WsScript::Text,
        WsScript::FragmentedText,
        WsScript::FragmentedBinary,
        WsScript::SplitMessages,
        WsScript::CloseReason,
        WsScript::Ping,
        WsScript::Base64,
        WsScript::OversizedMessage,
        WsScript::OversizedFrame,
        WsScript::Rsv1,
        WsScript::Masked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WsScript::Text => "text",
            WsScript::FragmentedText => "fragmented-text",
            WsScript::FragmentedBinary => "fragmented-binary",
            WsScript::SplitMessages => "split-messages",
            WsScript::CloseReason => "close-reason",
            WsScript::Ping => "ping",
            WsScript::Base64 => "base64",
            WsScript::OversizedMessage => "oversized-message",
            WsScript::OversizedFrame => "oversized-frame",
            WsScript::Rsv1 => "rsv1",
            WsScript::Masked => "masked",
        }
    }

    fn parse(name: &str) -> Option<WsScript> {
        WsScript::ALL.into_iter().find(|s| s.name() == name)
    }

    async fn run<IO>(self, io: &mut IO, value: &[u8])
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use base64::Engine;
        use tokio::io::AsyncWriteExt;
        const FIN: u8 = 0x80;
        const RSV1: u8 = 0x40;
        const CONT: u8 = 0x0;
        const TEXT: u8 = 0x1;
        const BINARY: u8 = 0x2;
        const CLOSE: u8 = 0x8;
        const PING: u8 = 0x9;
        let (first, second) = value.split_at(value.len() / 2);
        let token = [b"token=".as_slice(), value].concat();
        let big = |len: usize, tail: &[u8]| {
            let mut payload = vec![b'x'; len - tail.len()];
            payload.extend_from_slice(tail);
            payload
        };
        let mut close_reason = b"bye".to_vec();
        let frames: Vec<Vec<u8>> = match self {
            WsScript::Text => vec![ws_frame(FIN | TEXT, &token, None)],
            WsScript::FragmentedText => vec![
                ws_frame(TEXT, &[b"token=".as_slice(), first].concat(), None),
                ws_frame(FIN | CONT, second, None),
            ],
            WsScript::FragmentedBinary => vec![
                ws_frame(BINARY, first, None),
                ws_frame(FIN | CONT, second, None),
            ],
            WsScript::SplitMessages => vec![
                ws_frame(FIN | TEXT, &[b"token=".as_slice(), first].concat(), None),
                ws_frame(FIN | TEXT, second, None),
            ],
            WsScript::CloseReason => {
                close_reason = token.clone();
                Vec::new()
            }
            WsScript::Ping => vec![ws_frame(FIN | PING, value, None)],
            WsScript::Base64 => {
                let bare = value.strip_prefix(b"Bearer ").unwrap_or(value);
                let encoded = base64::engine::general_purpose::STANDARD.encode(bare);
                vec![ws_frame(
                    FIN | TEXT,
                    format!("b64={encoded}").as_bytes(),
                    None,
                )]
            }
            WsScript::OversizedMessage => vec![
                ws_frame(BINARY, &big(9 << 20, b""), None),
                ws_frame(FIN | CONT, &big(9 << 20, value), None),
            ],
            WsScript::OversizedFrame => {
                vec![ws_frame(FIN | BINARY, &big((16 << 20) + 1, value), None)]
            }
            WsScript::Rsv1 => vec![ws_frame(FIN | RSV1 | TEXT, &token, None)],
            WsScript::Masked => vec![ws_frame(FIN | TEXT, &token, Some([0x12, 0x34, 0x56, 0x78]))],
        };
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(&close_reason);
        let end = [
            ws_frame(FIN | TEXT, b"end", None),
            ws_frame(FIN | CLOSE, &close, None),
        ];
        for frame in frames.iter().chain(end.iter()) {
            if io.write_all(frame).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
        // Read (and drop) whatever comes back until the peer closes.
        let _ = tokio::io::copy(io, &mut tokio::io::sink()).await;
    }
}

/// One WebSocket frame: `first` is FIN, RSV and opcode; `mask` masks the payload as a client's
/// would be.
fn ws_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
