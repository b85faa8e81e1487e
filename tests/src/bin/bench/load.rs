//! The load generator: opens connections the way an agent does (straight to the upstream, or
//! `CONNECT` through a proxy, then TLS, then HTTP/1.1 or HTTP/2), and drives the workloads
//! the scenarios measure — closed-loop keep-alive throughput, open-loop latency at a fixed
//! rate, connection churn, idle connections and large transfers.
//!
//! The client does the same work on every path, so what differs between `direct` and a proxy
//! is the proxy. TLS session resumption is off: every new connection is a full handshake, as
//! with a fresh `curl` per call.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONNECTION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyswap_tests::client::{empty, pattern_body, BoxBody};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How a client reaches the upstream.
#[derive(Clone)]
pub enum Route {
    /// Straight to the upstream, holding the real value.
    Direct(SocketAddr),
    /// `CONNECT` through a proxy, holding the placeholder.
    Proxy {
        addr: SocketAddr,
        proxy_authorization: HeaderValue,
    },
}

/// Everything a client needs to reach the upstream one way.
#[derive(Clone)]
pub struct Endpoint {
    pub route: Route,
    /// Port of the upstream; the host is `localhost` unless a call names another.
    pub upstream_port: u16,
    /// `Bearer <real>` for direct, `Bearer <placeholder>` through a proxy.
    pub authorization: HeaderValue,
    tls_h1: TlsConnector,
    tls_h2: TlsConnector,
}

impl Endpoint {
    /// `trust`: the upstream's CA and the proxies' CAs.
    pub fn new(
        route: Route,
        upstream_port: u16,
        authorization: HeaderValue,
        trust: &[CertificateDer<'static>],
    ) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            route,
            upstream_port,
            authorization,
            tls_h1: client_tls(trust, b"http/1.1")?,
            tls_h2: client_tls(trust, b"h2")?,
        })
    }

    /// A new connection to `host` (`localhost` by default), ready for requests.
    pub async fn open(&self, h2: bool, host: Option<&str>) -> io::Result<Conn> {
        let host = host.unwrap_or("localhost");
        let authority = format!("{host}:{}", self.upstream_port);
        let tcp = match &self.route {
            Route::Direct(addr) => TcpStream::connect(addr).await?,
            Route::Proxy {
                addr,
                proxy_authorization,
            } => {
                let mut tcp = TcpStream::connect(addr).await?;
                connect_through(&mut tcp, &authority, proxy_authorization).await?;
                tcp
            }
        };
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
        let connector = if h2 { &self.tls_h2 } else { &self.tls_h1 };
        let tls = connector.connect(name, tcp).await?;
        let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        if h2 && !negotiated_h2 {
            return Err(io::Error::other(
                "the server did not agree to HTTP/2 by ALPN",
            ));
        }
        let io = TokioIo::new(tls);
        let (sender, closed) = if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .adaptive_window(true)
                .max_concurrent_reset_streams(0)
                .handshake(io)
                .await
                .map_err(io::Error::other)?;
            (Sender::H2(sender), drive(conn))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(io::Error::other)?;
            (Sender::H1(sender), drive(conn))
        };
        Ok(Conn {
            sender,
            closed,
            authority,
            authorization: self.authorization.clone(),
        })
    }
}

/// Drives a client connection on its own task; the receiver turns `true` when the
/// connection has ended (the server closed it, a read failed, or the client let it go).
fn drive<F>(conn: F) -> tokio::sync::watch::Receiver<bool>
where
    F: std::future::Future + Send + 'static,
{
    let (ended, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = ended.send(true);
    });
    closed
}

fn client_tls(trust: &[CertificateDer<'static>], alpn: &[u8]) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trust {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Sends `CONNECT authority` and reads the proxy's answer head; anything but 200 is an error.
async fn connect_through(
    tcp: &mut TcpStream,
    authority: &str,
    proxy_authorization: &HeaderValue,
) -> io::Result<()> {
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        proxy_authorization.to_str().map_err(io::Error::other)?
    );
    tcp.write_all(head.as_bytes()).await?;
    // The proxy says nothing more until the client speaks TLS, so reading up to the end of
    // the head cannot swallow tunnel bytes.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Err(io::Error::other(
                "the proxy closed or sent an oversized CONNECT answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status_line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let ok = status_line.starts_with(b"HTTP/1.1 200") || status_line.starts_with(b"HTTP/1.0 200");
    if !ok {
        return Err(io::Error::other(format!(
            "CONNECT refused: {}",
            String::from_utf8_lossy(status_line)
        )));
    }
    Ok(())
}

enum Sender {
    H1(http1::SendRequest<BoxBody>),
    H2(http2::SendRequest<BoxBody>),
}

/// One client connection.
pub struct Conn {
    sender: Sender,
    closed: tokio::sync::watch::Receiver<bool>,
    authority: String,
    authorization: HeaderValue,
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, for another concurrent stream; `None`
    /// for HTTP/1.1, which carries one request at a time.
    pub fn another_stream(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                closed: self.closed.clone(),
                authority: self.authority.clone(),
                authorization: self.authorization.clone(),
            }),
            Sender::H1(_) => None,
        }
    }

    /// Whether the connection has ended (read EOF or an error).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        let _ = self.closed.clone().wait_for(|ended| *ended).await;
    }

    fn request(&self, method: &str, path: &str, body: BoxBody) -> Request<BoxBody> {
        let builder = Request::builder()
            .method(method)
            .header(AUTHORIZATION, self.authorization.clone());
        let builder = match self.sender {
            Sender::H2(_) => builder
                .version(Version::HTTP_2)
                .uri(format!("https://{}{path}", self.authority)),
            Sender::H1(_) => builder.uri(path).header(HOST, &self.authority),
        };
        builder.body(body).expect("a request from valid parts")
    }

    async fn send(&mut self, req: Request<BoxBody>) -> io::Result<Response<Incoming>> {
        let result = match &mut self.sender {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
        };
        result.map_err(io::Error::other)
    }

    /// `GET path`, reading the whole body; returns its length. A status other than 200 is
    /// an error (the bench upstream answers 401 when the swap did not happen).
    pub async fn get(&mut self, path: &str) -> io::Result<u64> {
        let req = self.request("GET", path, empty());
        let resp = self.send(req).await?;
        drain(resp).await
    }

    /// `GET path` with `Connection: close`, for one-request connections.
    pub async fn get_and_close(&mut self, path: &str) -> io::Result<u64> {
        let mut req = self.request("GET", path, empty());
        if matches!(self.sender, Sender::H1(_)) {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let resp = self.send(req).await?;
        drain(resp).await
    }

    /// `POST path` with a streamed body of `len` bytes; returns the response body length.
    pub async fn upload(&mut self, path: &str, len: u64) -> io::Result<u64> {
        let req = self.request("POST", path, pattern_body(len));
        let resp = self.send(req).await?;
        drain(resp).await
    }
}

impl Conn {
    /// `POST path` whose body sends one small frame and then never ends (a flood's request,
    /// which holds its slot for as long as the client keeps it); returns the response status
    /// once a head arrives — a refusal's at once, an accepted request's only when the
    /// upstream answers before the body ends.
    pub async fn post_endless(&mut self, path: &str) -> io::Result<StatusCode> {
        use futures_util::StreamExt;
        let first = futures_util::stream::once(async {
            Ok::<_, io::Error>(hyper::body::Frame::data(bytes::Bytes::from_static(
                b"flood",
            )))
        });
        let body = http_body_util::StreamBody::new(first.chain(futures_util::stream::pending()));
        let req = self.request("POST", path, BodyExt::boxed(body));
        let resp = self.send(req).await?;
        Ok(resp.status())
    }
}

async fn drain(resp: Response<Incoming>) -> io::Result<u64> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
        }
    }
    if status != StatusCode::OK {
        return Err(io::Error::other(format!("status {status}")));
    }
    Ok(len)
}

/// The outcome of a closed-loop run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// A measuring window: counters only count while it is open.
#[derive(Default)]
struct Window {
    open: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
}

impl Window {
    fn count(&self, ok: bool) {
        if self.open.load(Ordering::Relaxed) {
            if ok {
                self.done.fetch_add(1, Ordering::Relaxed);
            } else {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits out the warm-up, counts for `duration` (calling `mark` as it opens and closes),
    /// then stops the workers and waits for them.
    async fn run(
        &self,
        workers: Vec<tokio::task::JoinHandle<()>>,
        warmup: Duration,
        duration: Duration,
        mut mark: impl FnMut(),
    ) -> Throughput {
        tokio::time::sleep(warmup).await;
        mark();
        let started = Instant::now();
        self.open.store(true, Ordering::Relaxed);
        tokio::time::sleep(duration).await;
        self.open.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed();
        mark();
        self.stop.store(true, Ordering::Relaxed);
        for worker in workers {
            let _ = worker.await;
        }
        Throughput {
            requests: self.done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            elapsed,
        }
    }
}

/// Keep-alive throughput: `conns` connections, each carrying `streams` concurrent request
/// loops (1 for HTTP/1.1), for `warmup + duration`. `mark` is called as the measuring window
/// opens and closes (the caller reads the proxy's CPU time there).
pub async fn keep_alive(
    ep: &Endpoint,
    h2: bool,
    conns: usize,
    streams: usize,
    warmup: Duration,
    duration: Duration,
    mark: impl FnMut(),
) -> anyhow::Result<Throughput> {
    let window = Arc::new(Window::default());
    let mut workers = Vec::new();
    let worker = |mut conn: Conn, window: Arc<Window>| async move {
        while !window.stop.load(Ordering::Relaxed) {
            let ok = conn.get("/bytes/1024").await.is_ok();
            window.count(ok);
            if !ok {
                break;
            }
        }
    };
    for _ in 0..conns {
        let conn = ep.open(h2, None).await?;
        for _ in 1..streams.max(1) {
            if let Some(stream) = conn.another_stream() {
                workers.push(tokio::spawn(worker(stream, window.clone())));
            }
        }
        workers.push(tokio::spawn(worker(conn, window.clone())));
    }
    Ok(window.run(workers, warmup, duration, mark).await)
}

/// Latency percentiles of an open-loop run, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Requests scheduled in the measuring window.
    pub scheduled: u64,
    /// Of those, completed with a 200.
    pub completed: u64,
}

/// Open-loop latency: requests are scheduled at `rate` per second whatever the responses do,
/// and each one's latency counts from when it was *scheduled*, so a stall is charged to every
/// request it delays (no coordinated omission). A dedicated thread keeps the schedule with
/// sub-millisecond precision; `conns` HTTP/1.1 connections take requests as they come.
pub async fn open_loop(
    ep: &Endpoint,
    conns: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = Vec::new();
    for _ in 0..conns {
        let mut conn = ep.open(false, None).await?;
        let (rx, histogram, completed) = (rx.clone(), histogram.clone(), completed.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(scheduled) = next else { break };
                let ok = conn.get("/bytes/1024").await.is_ok();
                if scheduled >= measure_from && ok {
                    let us = scheduled.elapsed().as_micros() as u64;
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record(us.max(1));
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                if !ok {
                    break;
                }
            }
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let scheduler = std::thread::spawn(move || {
        let mut scheduled_in_window = 0u64;
        let mut next = start;
        while next < end {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            if tx.send(next).is_err() {
                break;
            }
            if next >= measure_from {
                scheduled_in_window += 1;
            }
            next += interval;
        }
        scheduled_in_window
    });
    let scheduled = tokio::task::spawn_blocking(move || scheduler.join().unwrap_or(0)).await?;
    // Requests not answered this long after the schedule ends count as not completed.
    let grace = Duration::from_secs(2) + duration / 2;
    let all_answered = async {
        while completed.load(Ordering::Relaxed) < scheduled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(grace, all_answered).await;
    for worker in &workers {
        worker.abort();
    }
    let total = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("a latency worker panicked"))?
        .clone();
    Ok(Latency {
        p50_us: total.value_at_quantile(0.50) as f64,
        p99_us: total.value_at_quantile(0.99) as f64,
        p999_us: total.value_at_quantile(0.999) as f64,
        scheduled,
        completed: completed.load(Ordering::Relaxed),
    })
}

/// Connection churn: `concurrency` loops each opening a new connection (for a proxy: CONNECT
/// + TLS handshake), sending one request and closing.
pub async fn churn(
    ep: &Endpoint,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    mark: impl FnMut(),
) -> anyhow::Result<Throughput> {
    let window = Arc::new(Window::default());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (ep, window) = (ep.clone(), window.clone());
        workers.push(tokio::spawn(async move {
            while !window.stop.load(Ordering::Relaxed) {
                let ok = match ep.open(false, None).await {
                    Ok(mut conn) => conn.get_and_close("/bytes/1024").await.is_ok(),
                    Err(_) => false,
                };
                window.count(ok);
            }
        }));
    }
    Ok(window.run(workers, warmup, duration, mark).await)
}

/// The time of one whole new connection (connect, CONNECT, TLS, one request, close) to `host`.
pub async fn one_connection(ep: &Endpoint, host: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = ep.open(false, Some(host)).await?;
    conn.get_and_close("/bytes/1024").await?;
    Ok(started.elapsed())
}

/// Opens `count` connections, each carrying one request, and keeps them open (idle).
pub async fn idle_connections(ep: &Endpoint, count: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count);
    // In batches, as a busy agent would, so the proxy also holds a realistic upstream pool.
    const BATCH: usize = 50;
    while conns.len() < count {
        let batch = BATCH.min(count - conns.len());
        let mut opening = Vec::with_capacity(batch);
        for _ in 0..batch {
            let ep = ep.clone();
            opening.push(tokio::spawn(async move {
                let mut conn = ep.open(false, None).await?;
                conn.get("/bytes/1024").await?;
                Ok::<_, io::Error>(conn)
            }));
        }
        for handle in opening {
            conns.push(handle.await??);
        }
    }
    Ok(conns)
}

/// One large transfer over HTTP/1.1: `download` of `len` bytes, else an upload of `len`.
/// Returns bytes per second.
pub async fn transfer(ep: &Endpoint, download: bool, len: u64) -> anyhow::Result<f64> {
    let mut conn = ep.open(false, None).await?;
    let started = Instant::now();
    let moved = if download {
        conn.get(&format!("/bytes/{len}")).await?
    } else {
        conn.upload("/discard", len).await?;
        len
    };
    anyhow::ensure!(moved == len, "moved {moved} of {len} bytes");
    Ok(len as f64 / started.elapsed().as_secs_f64())
}
