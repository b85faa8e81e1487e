//! `bench soak`: the real `keyswap` binary (a child process, so `/proc/<pid>` measures the
//! proxy alone) under a steady mix of hostile traffic at half its measured capacity, with a
//! config reload (SIGHUP) every 10 s, for `--duration` (30 min by default).
//!
//! Every request runs on a new CONNECT tunnel, alternately HTTP/1.1 and HTTP/2, and carries the
//! placeholder; the soak upstream answers 401 unless it received the real value. Scenarios and
//! what each must end with (anything else is *lost* if nothing wrong was delivered, *garbled*
//! if wrong bytes were delivered or a truncation was presented as complete):
//!
//! - `plain`: GET of blocks of pattern bytes each followed by the real value, in frames that
//!   cut the value anywhere, plus a header holding the value: 200, the exact body with every
//!   value replaced by the placeholder, the header equal to the placeholder.
//! - `upload`: POST of 64 KiB–1 MiB: 200 and the upstream's length and checksum of the exact
//!   bytes sent.
//! - `reset`: the upstream sends half the body, then aborts the response: either a 200 whose
//!   body ends in an error after a prefix of the expected bytes, or a 502 with
//!   `x-keyswap-reason`. A body that ends cleanly is garbled (a silent truncation).
//! - `upload-abort`: the client aborts its upload halfway: any client-side outcome; the
//!   upstream must never see that body end cleanly (garbled otherwise).
//! - `download-abort`: the client reads a few frames of a 2 MiB body and drops the
//!   connection: 200 and a prefix of the expected bytes.
//! - `slow-reader`: a 260 KiB body read one frame per millisecond: as `plain`.
//!
//! Leaks: the real value must not appear in any header or body byte any client received
//! (partial bodies included), nor in the proxy's log or audit file. RSS and open fds of the
//! proxy are read at the start (after a warm-up), the middle and the end (idle again) and must
//! stay flat. Any failed check makes the soak exit non-zero.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::{self, BoxBody, ProxyClientOptions, Tunnel};
use keyswap_tests::upstream::{checksum, pattern, Alpn, CHECKSUM_INIT};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::setup::{self, World, SECRET_ENV, TASK};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the mix runs: `30m`, `120s`, `1h`.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second; by default half the capacity measured for 5 s first.
    #[arg(long)]
    rate: Option<f64>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("not a duration: {s:?} (use s, m or h)")),
    }
}

const RELOAD_EVERY: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_IN_FLIGHT: u64 = 256;
/// Pattern bytes before each real value in a response block.
const BLOCK: usize = 997;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scenario {
    Plain,
    Upload,
    Reset,
    UploadAbort,
    DownloadAbort,
    SlowReader,
}

impl Scenario {
    /// Ten requests in a row: half plain, one of each of the others.
    fn of(i: u64) -> Scenario {
        match i % 10 {
            5 => Scenario::Upload,
            6 => Scenario::Reset,
            7 => Scenario::UploadAbort,
            8 => Scenario::DownloadAbort,
            9 => Scenario::SlowReader,
            _ => Scenario::Plain,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Upload => "upload",
            Scenario::Reset => "reset",
            Scenario::UploadAbort => "upload-abort",
            Scenario::DownloadAbort => "download-abort",
            Scenario::SlowReader => "slow-reader",
        }
    }
}

enum Outcome {
    Expected,
    Lost(String),
    Garbled(String),
}

#[derive(Default)]
struct Tally {
    expected: AtomicU64,
    lost: AtomicU64,
    garbled: AtomicU64,
    leaks: AtomicU64,
    /// Aborted uploads whose body the upstream saw end cleanly.
    truncated_upload_accepted: AtomicU64,
    by_scenario: std::sync::Mutex<HashMap<&'static str, [u64; 3]>>,
    examples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, scenario: Scenario, outcome: Outcome) {
        let (slot, note) = match outcome {
            Outcome::Expected => {
                self.expected.fetch_add(1, Ordering::Relaxed);
                (0, None)
            }
            Outcome::Lost(why) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                (1, Some(format!("lost {}: {why}", scenario.name())))
            }
            Outcome::Garbled(why) => {
                self.garbled.fetch_add(1, Ordering::Relaxed);
                (2, Some(format!("garbled {}: {why}", scenario.name())))
            }
        };
        if let Ok(mut by) = self.by_scenario.lock() {
            by.entry(scenario.name()).or_default()[slot] += 1;
        }
        if let Some(note) = note {
            if let Ok(mut examples) = self.examples.lock() {
                if examples.len() < 20 {
                    examples.push(note);
                }
            }
        }
    }

    fn done(&self) -> u64 {
        self.expected.load(Ordering::Relaxed)
            + self.lost.load(Ordering::Relaxed)
            + self.garbled.load(Ordering::Relaxed)
    }
}

/// What the client must receive for `blocks` blocks, with `value` after each block.
fn blocks_body(blocks: usize, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * (BLOCK + value.len()));
    for i in 0..blocks {
        out.extend_from_slice(&pattern((i * BLOCK) as u64, BLOCK));
        out.extend_from_slice(value);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The soak upstream.

struct UpstreamState {
    secret: String,
    tally: Arc<Tally>,
}

/// A response body of frames, optionally failing after them (an aborted response).
struct FramesThenError {
    frames: std::collections::VecDeque<Bytes>,
    fail_at_end: bool,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for FramesThenError {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if !self.fail_at_end {
            return Poll::Ready(None);
        }
        // Let what was sent reach the proxy before the abort.
        let delay = self
            .delay
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        match delay.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::other("soak upstream abort")))),
        }
    }
}

fn frames_of(data: &[u8], size: usize) -> std::collections::VecDeque<Bytes> {
    data.chunks(size).map(Bytes::copy_from_slice).collect()
}

async fn upstream_handle(
    req: Request<Incoming>,
    state: Arc<UpstreamState>,
) -> Result<Response<BoxBody>, Infallible> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .body(client::full(body))
            .expect("a response")
    };
    let wanted = format!("Bearer {}", state.secret);
    if req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes) != Some(wanted.as_bytes()) {
        return Ok(text(StatusCode::UNAUTHORIZED, "no real value\n".into()));
    }
    let path = req.uri().path().to_string();
    let blocks = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
    };
    let body = |blocks: usize, fail: bool| {
        let all = blocks_body(blocks, state.secret.as_bytes());
        let data = if fail {
            &all[..all.len() / 2]
        } else {
            &all[..]
        };
        FramesThenError {
            // 1000-byte frames cut the value at every offset over a body.
            frames: frames_of(data, 1000),
            fail_at_end: fail,
            delay: None,
        }
        .boxed()
    };
    let response = if let Some(n) = blocks("/blocks/") {
        Response::builder()
            .header("x-soak-echo", state.secret.as_str())
            .body(body(n, false))
            .expect("a response")
    } else if let Some(n) = blocks("/reset/") {
        Response::builder().body(body(n, true)).expect("a response")
    } else if path == "/upload" || path == "/upload-abort" {
        let mut incoming = req.into_body();
        let (mut len, mut sum, mut clean) = (0u64, CHECKSUM_INIT, true);
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        len += data.len() as u64;
                        sum = checksum(data, sum);
                    }
                }
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        if path == "/upload-abort" && clean {
            state
                .tally
                .truncated_upload_accepted
                .fetch_add(1, Ordering::Relaxed);
        }
        text(StatusCode::OK, format!("{len} {sum}"))
    } else {
        text(StatusCode::NOT_FOUND, "unknown path\n".into())
    };
    Ok(response)
}

async fn start_upstream(
    ca_dir: &Path,
    secret: &str,
    tally: Arc<Tally>,
) -> anyhow::Result<SocketAddr> {
    let ca = CertificateAuthority::load_or_create(ca_dir)?;
    let (chain, key) = ca.issue_server_cert(&["localhost"])?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = Alpn::Both.protocols();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(UpstreamState {
        secret: secret.to_string(),
        tally,
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req| upstream_handle(req, state.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// An upload body that stops with an error halfway (the client aborting).
struct AbortingUpload {
    sent: u64,
    abort_at: u64,
}

impl Body for AbortingUpload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.sent >= self.abort_at {
            return Poll::Ready(Some(Err(io::Error::other("client abort"))));
        }
        let n = (self.abort_at - self.sent).min(16 * 1024);
        let data = pattern(self.sent, n as usize);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.abort_at * 2)
    }
}

struct Client {
    h1: ProxyClientOptions,
    h2: ProxyClientOptions,
    authority: String,
    placeholder: String,
    secret: String,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Client {
    async fn open(&self, h2: bool) -> Result<client::ProxyConnection, String> {
        let opts = if h2 { &self.h2 } else { &self.h1 };
        match client::connect_tunnel(opts).await {
            Ok(Tunnel::Open(conn)) => Ok(conn),
            Ok(Tunnel::Refused { status, reason, .. }) => {
                Err(format!("CONNECT refused: {status} {reason:?}"))
            }
            Err(e) => Err(format!("CONNECT: {e}")),
        }
    }

    fn request(&self, method: &str, path: &str, h2: bool, body: BoxBody) -> Request<BoxBody> {
        client::request(method, &self.authority, path, h2)
            .header(AUTHORIZATION, format!("Bearer {}", self.placeholder))
            .body(body)
            .expect("a request")
    }

    /// Counts a leak if the real value is in any header of `resp`.
    fn headers_leak(&self, resp: &Response<Incoming>, tally: &Tally) -> bool {
        let leaked = resp
            .headers()
            .values()
            .any(|v| contains(v.as_bytes(), self.secret.as_bytes()));
        if leaked {
            tally.leaks.fetch_add(1, Ordering::Relaxed);
        }
        leaked
    }

    fn body_leaks(&self, body: &[u8], tally: &Tally) {
        if contains(body, self.secret.as_bytes()) {
            tally.leaks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads a body up to `max_frames` frames (all if `None`), `pause` after each; returns
    /// the bytes and whether it ended cleanly (`Some(true)`), with an error (`Some(false)`),
    /// or was left unread (`None`).
    async fn read(
        resp: Response<Incoming>,
        max_frames: Option<usize>,
        pause: Option<Duration>,
    ) -> (Vec<u8>, Option<bool>) {
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let mut frames = 0;
        loop {
            if max_frames.is_some_and(|max| frames >= max) {
                return (out, None);
            }
            match body.frame().await {
                None => return (out, Some(true)),
                Some(Err(_)) => return (out, Some(false)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        out.extend_from_slice(data);
                        frames += 1;
                    }
                }
            }
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
    }

    async fn run(&self, scenario: Scenario, i: u64, tally: &Tally) -> Outcome {
        let h2 = i % 2 == 1;
        let mut conn = match self.open(h2).await {
            Ok(conn) => conn,
            Err(e) => return Outcome::Lost(e),
        };
        let placeholder = self.placeholder.as_bytes();
        match scenario {
            Scenario::Plain | Scenario::SlowReader | Scenario::DownloadAbort => {
                let blocks = match scenario {
                    Scenario::Plain => 1 + (i as usize * 7) % 64,
                    Scenario::SlowReader => 256,
                    _ => 2048,
                };
                let req = self.request("GET", &format!("/blocks/{blocks}"), h2, client::empty());
                let resp = match conn.send(req).await {
                    Ok(resp) => resp,
                    Err(e) => return Outcome::Lost(format!("request: {e}")),
                };
                let status = resp.status();
                let leaked_header = self.headers_leak(&resp, tally);
                let echo = resp.headers().get("x-soak-echo").cloned();
                let (max_frames, pause) = match scenario {
                    Scenario::SlowReader => (None, Some(Duration::from_millis(1))),
                    Scenario::DownloadAbort => (Some(3), None),
                    _ => (None, None),
                };
                let (body, end) = Self::read(resp, max_frames, pause).await;
                self.body_leaks(&body, tally);
                let want = blocks_body(blocks, placeholder);
                if status != StatusCode::OK {
                    return Outcome::Lost(format!("status {status}"));
                }
                if leaked_header || echo.as_ref().map(HeaderValue::as_bytes) != Some(placeholder) {
                    return Outcome::Garbled("x-soak-echo is not the placeholder".into());
                }
                if scenario == Scenario::DownloadAbort {
                    drop(conn);
                    return if want.starts_with(&body) {
                        Outcome::Expected
                    } else {
                        Outcome::Garbled("partial body is not a prefix".into())
                    };
                }
                match end {
                    Some(true) if body == want => Outcome::Expected,
                    Some(true) => Outcome::Garbled(format!(
                        "{} bytes received, {} expected, or different bytes",
                        body.len(),
                        want.len()
                    )),
                    _ if want.starts_with(&body) => {
                        Outcome::Lost(format!("body failed after {} bytes", body.len()))
                    }
                    _ => Outcome::Garbled("failed body is not a prefix".into()),
                }
            }
            Scenario::Reset => {
                let blocks = 64;
                let req = self.request("GET", &format!("/reset/{blocks}"), h2, client::empty());
                let resp = match conn.send(req).await {
                    Ok(resp) => resp,
                    Err(e) => return Outcome::Lost(format!("request: {e}")),
                };
                let status = resp.status();
                self.headers_leak(&resp, tally);
                let has_reason = resp.headers().contains_key("x-keyswap-reason");
                let (body, end) = Self::read(resp, None, None).await;
                self.body_leaks(&body, tally);
                let want = blocks_body(blocks, placeholder);
                match (status, end) {
                    (StatusCode::BAD_GATEWAY, _) if has_reason => Outcome::Expected,
                    (StatusCode::OK, Some(false)) if want.starts_with(&body) => Outcome::Expected,
                    (StatusCode::OK, Some(false)) => {
                        Outcome::Garbled("bytes before the reset are not a prefix".into())
                    }
                    (StatusCode::OK, _) => Outcome::Garbled(format!(
                        "an upstream reset reached the client as a complete body of {} bytes",
                        body.len()
                    )),
                    (status, _) => Outcome::Lost(format!("status {status}")),
                }
            }
            Scenario::Upload => {
                let len = 64 * 1024 + (i * 104_729) % (960 * 1024);
                let req = self.request("POST", "/upload", h2, client::pattern_body(len));
                let resp = match conn.send(req).await {
                    Ok(resp) => resp,
                    Err(e) => return Outcome::Lost(format!("request: {e}")),
                };
                let status = resp.status();
                self.headers_leak(&resp, tally);
                let (body, end) = Self::read(resp, None, None).await;
                self.body_leaks(&body, tally);
                let sum = checksum(&pattern(0, len as usize), CHECKSUM_INIT);
                if status != StatusCode::OK || end != Some(true) {
                    return Outcome::Lost(format!("status {status}, body end {end:?}"));
                }
                if body != format!("{len} {sum}").as_bytes() {
                    return Outcome::Garbled(format!(
                        "upstream saw {:?}, sent {len} bytes",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Outcome::Expected
            }
            Scenario::UploadAbort => {
                let abort_at = 256 * 1024;
                let body = AbortingUpload { sent: 0, abort_at }.boxed();
                let req = self.request("POST", "/upload-abort", h2, body);
                // The client aborts: whatever it gets back is fine unless it leaks; the
                // upstream checks that the body never ends cleanly.
                if let Ok(resp) = conn.send(req).await {
                    self.headers_leak(&resp, tally);
                    let (body, _) = Self::read(resp, None, None).await;
                    self.body_leaks(&body, tally);
                }
                Outcome::Expected
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy process.

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32) -> anyhow::Result<Sample> {
    let rss = crate::procfs::rss(pid).context("reading the proxy's RSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("reading the proxy's fds")?
        .count() as u64;
    Ok(Sample {
        rss_kib: rss / 1024,
        fds,
    })
}

/// Rewrites the config with one more `resolve` entry each time (a real change), then SIGHUP.
fn reload(
    config: &Path,
    original: &str,
    n: u64,
    upstream: SocketAddr,
    pid: u32,
) -> anyhow::Result<()> {
    let extra = format!(
        "  resolve:\n    \"reload-{n}.{}:{}\": \"{upstream}\"\n",
        setup::NEW_HOST_DOMAIN,
        upstream.port()
    );
    let text = original.replacen("  resolve:\n", &extra, 1);
    anyhow::ensure!(
        text != original,
        "the config has no resolve section to change"
    );
    let tmp = config.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, config)?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("kill -HUP")?;
    anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
    Ok(())
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.matches(needle).count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

pub fn main(args: &SoakArgs) -> anyhow::Result<()> {
    let secret = setup::random_token("KSREAL-soak-")?;
    let token = setup::random_token("task-token-")?;
    // The real value reaches the proxy through its environment; set before any thread starts.
    std::env::set_var(SECRET_ENV, &secret);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(soak(args, secret, token))
}

/// Runs requests open-loop at `rate` until `stop`, each scenario by its index.
async fn drive(
    client: Arc<Client>,
    tally: Arc<Tally>,
    rate: f64,
    until: Instant,
    next_index: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut delayed = 0;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            delayed += 1;
            while in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let i = next_index.fetch_add(1, Ordering::Relaxed);
        let (client, tally, in_flight) = (client.clone(), tally.clone(), in_flight.clone());
        in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let scenario = Scenario::of(i);
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, client.run(scenario, i, &tally))
                .await
                .unwrap_or_else(|_| Outcome::Lost("timed out".into()));
            tally.record(scenario, outcome);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        next += interval;
    }
    delayed
}

/// Closed loop with `workers` concurrent requests for `duration`: completed requests/s.
async fn capacity(client: Arc<Client>, tally: Arc<Tally>, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let index = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, tally, stop, done, index) = (
            client.clone(),
            tally.clone(),
            stop.clone(),
            done.clone(),
            index.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = index.fetch_add(1, Ordering::Relaxed);
                let scenario = Scenario::of(i);
                let outcome =
                    tokio::time::timeout(REQUEST_TIMEOUT, client.run(scenario, i, &tally))
                        .await
                        .unwrap_or_else(|_| Outcome::Lost("timed out".into()));
                tally.record(scenario, outcome);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let finished = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    finished as f64 / elapsed.as_secs_f64()
}

async fn soak(args: &SoakArgs, secret: String, token: String) -> anyhow::Result<()> {
    let tally = Arc::new(Tally::default());
    let world = World::create(&secret).await?;
    let upstream = start_upstream(&world.upstream_ca_dir, &secret, tally.clone()).await?;
    let peer = world.peer_setup("keyswap-soak", None)?;
    let proxy = setup::spawn_keyswap(&peer.borrow(), &world.proxy_ca_dir, upstream, &token, None)?;
    let pid = proxy.pid();
    let config_path: PathBuf = peer.dir.join("keyswap.yaml");
    let original_config = std::fs::read_to_string(&config_path)?;
    let log_path = peer.dir.join("keyswap.log");
    let audit_path = peer.dir.join("audit.jsonl");

    let authority = format!("localhost:{}", upstream.port());
    let opts = |alpn| ProxyClientOptions {
        proxy: proxy.addr,
        auth: Some((TASK.to_string(), token.clone())),
        connect_to: authority.clone(),
        sni: None,
        alpn,
        trust: world.trust.clone(),
    };
    let client = Arc::new(Client {
        h1: opts(Alpn::Http1Only),
        h2: opts(Alpn::Http2Only),
        authority: authority.clone(),
        placeholder: setup::PLACEHOLDER.to_string(),
        secret: secret.clone(),
    });
    let idle = sample(pid)?;

    let rate = match args.rate {
        Some(rate) => rate,
        None => {
            let measured = capacity(client.clone(), tally.clone(), Duration::from_secs(5)).await;
            println!("soak: capacity of the mix, closed loop with 16 clients: {measured:.0} req/s");
            measured / 2.0
        }
    };
    anyhow::ensure!(
        rate > 0.0,
        "no capacity measured (is the proxy carrying requests?)"
    );
    println!(
        "soak: {}s at {rate:.0} req/s, a config reload every {}s; proxy pid {pid}, idle: {} KiB RSS, {} fds",
        args.duration.as_secs(),
        RELOAD_EVERY.as_secs(),
        idle.rss_kib,
        idle.fds
    );

    let probed = tally.done();
    let started = Instant::now();
    let until = started + args.duration;
    let in_flight = Arc::new(AtomicU64::new(0));
    let driver = tokio::spawn(drive(
        client.clone(),
        tally.clone(),
        rate,
        until,
        Arc::new(AtomicU64::new(1_000_000)),
        in_flight.clone(),
    ));
    let warmup = (args.duration / 10).max(Duration::from_secs(5));
    let (mut at_start, mut at_middle) = (None, None);
    let mut reloads = 0u64;
    let mut next_reload = started + RELOAD_EVERY;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed();
        if at_start.is_none() && elapsed >= warmup {
            at_start = Some(sample(pid)?);
        }
        if at_middle.is_none() && elapsed >= args.duration / 2 {
            at_middle = Some(sample(pid)?);
        }
        if Instant::now() >= next_reload && Instant::now() < until {
            reloads += 1;
            reload(&config_path, &original_config, reloads, upstream, pid)?;
            next_reload += RELOAD_EVERY;
            let now = sample(pid)?;
            println!(
                "soak: {:>5}s  {} done, {} lost, {} garbled, {} leaks, {} in flight; proxy {} KiB RSS, {} fds; reload {reloads}",
                elapsed.as_secs(),
                tally.done(),
                tally.lost.load(Ordering::Relaxed),
                tally.garbled.load(Ordering::Relaxed),
                tally.leaks.load(Ordering::Relaxed),
                in_flight.load(Ordering::Relaxed),
                now.rss_kib,
                now.fds
            );
        }
    }
    let delayed = driver.await?;
    let drained = async {
        while in_flight.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), drained).await;
    let unfinished = in_flight.load(Ordering::Relaxed);
    // Let the proxy close what the last requests left (tunnels, upstream connections).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_end = sample(pid)?;
    let at_start = at_start.unwrap_or(idle);
    let at_middle = at_middle.unwrap_or(at_start);
    // Give the log thread a moment to copy the last reload lines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloaded = count_in(&log_path, "config reloaded");
    let not_reloaded = count_in(&log_path, "config not reloaded");
    let log_leaks = count_in(&log_path, &secret) + count_in(&audit_path, &secret);
    drop(proxy);

    let elapsed = started.elapsed().as_secs_f64();
    let lost = tally.lost.load(Ordering::Relaxed) + unfinished;
    let garbled = tally.garbled.load(Ordering::Relaxed);
    let leaks = tally.leaks.load(Ordering::Relaxed);
    let truncated = tally.truncated_upload_accepted.load(Ordering::Relaxed);
    println!("\n# keyswap soak\n");
    println!(
        "duration {:.0}s, target rate {rate:.0} req/s, achieved {:.0} req/s ({} requests, {} scheduled late at {MAX_IN_FLIGHT} in flight; {probed} more in the capacity probe, counted below too)",
        elapsed,
        (tally.done() - probed) as f64 / elapsed,
        tally.done() - probed,
        delayed
    );
    println!("\n| scenario | as expected | lost | garbled |\n| --- | --- | --- | --- |");
    let by = tally
        .by_scenario
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    for s in [
        Scenario::Plain,
        Scenario::Upload,
        Scenario::Reset,
        Scenario::UploadAbort,
        Scenario::DownloadAbort,
        Scenario::SlowReader,
    ] {
        let [ok, lost, garbled] = by.get(s.name()).copied().unwrap_or_default();
        println!("| {} | {ok} | {lost} | {garbled} |", s.name());
    }
    println!(
        "\nproxy (pid {pid}) | idle before | start (after {}s) | middle | end (idle)\n--- | --- | --- | --- | ---\nRSS KiB | {} | {} | {} | {}\nopen fds | {} | {} | {} | {}",
        warmup.as_secs(),
        idle.rss_kib,
        at_start.rss_kib,
        at_middle.rss_kib,
        at_end.rss_kib,
        idle.fds,
        at_start.fds,
        at_middle.fds,
        at_end.fds
    );
    if let Ok(examples) = tally.examples.lock() {
        for e in examples.iter() {
            println!("example: {e}");
        }
    }

    let rss_limit = at_start.rss_kib + (at_start.rss_kib / 4).max(16 * 1024);
    let fd_limit = at_start.fds.max(idle.fds) + 16;
    let checks = [
        ("requests lost", lost == 0, lost.to_string()),
        ("requests garbled", garbled == 0, garbled.to_string()),
        (
            "secret leaks in what clients received",
            leaks == 0,
            leaks.to_string(),
        ),
        (
            "secret leaks in the proxy's log and audit",
            log_leaks == 0,
            log_leaks.to_string(),
        ),
        (
            "aborted uploads the upstream saw end cleanly",
            truncated == 0,
            truncated.to_string(),
        ),
        (
            "config reloads applied",
            reloaded as u64 >= reloads && not_reloaded == 0,
            format!("{reloaded} of {reloads} ({not_reloaded} refused)"),
        ),
        (
            "RSS flat (end <= start + max(25%, 16 MiB))",
            at_end.rss_kib <= rss_limit,
            format!(
                "{} KiB -> {} KiB (limit {rss_limit})",
                at_start.rss_kib, at_end.rss_kib
            ),
        ),
        (
            "open fds flat (end <= start + 16)",
            at_end.fds <= fd_limit,
            format!("{} -> {} (limit {fd_limit})", at_start.fds, at_end.fds),
        ),
    ];
    println!();
    let mut failed = Vec::new();
    for (what, ok, value) in &checks {
        println!("{} {what}: {value}", if *ok { "ok  " } else { "FAIL" });
        if !ok {
            failed.push(*what);
        }
    }
    anyhow::ensure!(failed.is_empty(), "soak failed: {}", failed.join(", "));
    println!("\nsoak: every check passed");
    Ok(())
}
