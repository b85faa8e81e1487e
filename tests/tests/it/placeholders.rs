//! Placeholders where the rule does not let them be: an agent sends the placeholder of a
//! secret its rule does not grant in the path, the query or the body (also percent-encoded,
//! split across frames, or far into a large upload whose start is already upstream), or a
//! granted placeholder in a header its `headers:` scope does not name. Each is refused with
//! `placeholder_not_allowed`; the upstream never sees the placeholder nor a complete request.
//!
//! Bodies go to a recording upstream (in this file: the harness's upstream does not record
//! bodies) that notes every byte it received and whether the body ended cleanly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyswap_tests::client::{self, Alpn, BoxBody};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, Reply, TestEnv, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER, OPENAI_REAL};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const REC_HOST: &str = "rec.upstream.test";

/// `api.upstream.test` grants github, swapped only into `authorization`; the recording host
/// grants github too, swapped into bodies under `/swap/`, scanned only under `/scan/`.
/// No rule grants openai: its placeholder is the ungranted one.
fn config(rec_port: u16) -> String {
    let github = || Rule::host(REC_HOST).secrets(&["github"]);
    ConfigBuilder::new()
        .resolve(&format!("{REC_HOST}:443"), &format!("127.0.0.1:{rec_port}"))
        .secret("github", Secret::github())
        .secret("openai", Secret::openai())
        .task(
            "agent",
            Entry::with_token()
                .rule(
                    Rule::api()
                        .paths(&["/echo/**", "/upload"])
                        .secrets(&["github"])
                        .field("headers", "[authorization]"),
                )
                .rule(
                    github()
                        .paths(&["/swap/**"])
                        .field("swap_in", "[headers, body]")
                        .field("headers", "[authorization]"),
                )
                .rule(
                    github()
                        .paths(&["/scan/**"])
                        .field("headers", "[authorization]"),
                ),
        )
        .yaml()
}

/// What the recording upstream received for one request.
#[derive(Clone, Default)]
struct Recorded {
    path: String,
    body: Vec<u8>,
    /// The body reached its end without an error.
    complete: bool,
    /// Reading the body has finished, cleanly or not.
    ended: bool,
}

impl std::fmt::Debug for Recorded {
    /// No body bytes: they may hold a real value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("path", &self.path)
            .field("body_len", &self.body.len())
            .field("complete", &self.complete)
            .field("ended", &self.ended)
            .finish()
    }
}

/// An HTTPS upstream (certificate from the harness's upstream CA) that keeps every request
/// body and publishes each change, so a test can wait for "N bytes arrived" or "the body
/// ended" without sleeping.
struct Recorder {
    requests: Arc<Mutex<Vec<Recorded>>>,
    changes: watch::Receiver<u64>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Recorder {
    fn start(env: &TestEnv, listener: TcpListener, alpn: Alpn) -> Recorder {
        let (chain, key) = env
            .upstream_ca
            .issue_server_cert(&[REC_HOST])
            .expect("recorder certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("recorder TLS");
        tls.alpn_protocols = alpn.protocols();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (notify, changes) = watch::channel(0u64);
        let notify = Arc::new(notify);
        let state = requests.clone();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state, notify) = (acceptor.clone(), state.clone(), notify.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        record(req, state.clone(), notify.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Recorder {
            requests,
            changes,
            server,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn for_path(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until some request for `path` satisfies `pred` (10 s at most).
    async fn wait_for(&self, path: &str, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        let mut changes = self.changes.clone();
        let wait = async {
            loop {
                if let Some(r) = self.for_path(path).into_iter().find(|r| pred(r)) {
                    return r;
                }
                changes.changed().await.expect("recorder running");
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("recorder: {path} never got there: {:?}", self.requests()))
    }
}

async fn record(
    req: Request<Incoming>,
    state: Arc<Mutex<Vec<Recorded>>>,
    notify: Arc<watch::Sender<u64>>,
) -> Result<Response<BoxBody>, Infallible> {
    let changed = || notify.send_modify(|n| *n += 1);
    let index = {
        let mut s = state.lock().expect("recorder state");
        s.push(Recorded {
            path: req.uri().path().to_string(),
            ..Recorded::default()
        });
        s.len() - 1
    };
    changed();
    let mut body = req.into_body();
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    state.lock().expect("recorder state")[index]
                        .body
                        .extend_from_slice(data);
                    changed();
                }
            }
        }
    };
    {
        let mut s = state.lock().expect("recorder state");
        s[index].complete = complete;
        s[index].ended = true;
    }
    changed();
    Ok(Response::new(client::full("recorded\n")))
}

/// A request body the test feeds frame by frame.
struct Fed(mpsc::UnboundedReceiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn fed() -> (mpsc::UnboundedSender<Bytes>, BoxBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Fed(rx).boxed())
}

/// The test env with the recording upstream (offering `alpn`) behind `rec.upstream.test`.
async fn start(alpn: Alpn) -> (TestEnv, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recorder");
    let port = listener.local_addr().map(|a: SocketAddr| a.port()).unwrap();
    let config = config(port);
    let env = TestEnv::start_with(&config, Alpn::Both).await;
    let recorder = Recorder::start(&env, listener, alpn);
    (env, recorder)
}

/// Sends `chunks` as the body of `POST path` to the recording host, one frame each.
async fn post_chunks(env: &TestEnv, path: &str, chunks: &[&[u8]]) -> Reply {
    let opts = env.agent(&format!("{REC_HOST}:443"), Alpn::Both);
    let mut conn = env.open(&opts).await;
    let (tx, body) = fed();
    for chunk in chunks {
        tx.send(Bytes::copy_from_slice(chunk)).expect("queue chunk");
    }
    drop(tx);
    let req = client::request("POST", REC_HOST, path, conn.negotiated_h2())
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(body)
        .expect("request");
    env.reply(conn.send(req).await.expect("response")).await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn percent_encode_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn ungranted_placeholder_is_refused_wherever_it_is_sent() {
    let (env, recorder) = start(Alpn::Both).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let auth = bearer(GITHUB_PLACEHOLDER);
    let encoded = percent_encode_all(OPENAI_PLACEHOLDER);
    // Where the ungranted (openai) placeholder rides in the URI; the rule swaps in headers only.
    let uris = [
        ("in the path", format!("/echo/{OPENAI_PLACEHOLDER}")),
        ("percent-encoded in the path", format!("/echo/{encoded}")),
        (
            "in the query without swap_in query",
            format!("/echo/q?key={OPENAI_PLACEHOLDER}"),
        ),
        (
            "percent-encoded in the query",
            format!("/echo/q?key={encoded}"),
        ),
    ];
    for (place, uri) in &uris {
        let before = env.upstream.seen_count();
        let reply = env
            .request(&opts, "GET", uri, &[("authorization", &auth)])
            .await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, Some("placeholder_not_allowed")),
            "{place}"
        );
        assert!(
            reply.body.contains("openai"),
            "{place}: refusal names the secret"
        );
        assert_eq!(
            env.upstream.seen_count(),
            before,
            "{place}: reached the upstream"
        );
    }

    // Bodies: (what, path, frames). /swap/ swaps github in bodies, /scan/ only scans.
    let with_tail = |p: &str| format!("{{\"note\": \"{p}\"}}");
    let whole = with_tail(OPENAI_PLACEHOLDER);
    let (first, second) = whole.split_at(whole.len() / 2 + 3);
    let bodies: [(&str, &str, Vec<&[u8]>); 3] = [
        (
            "in a body with swap_in body",
            "/swap/one",
            vec![whole.as_bytes()],
        ),
        (
            "in a body without swap_in body",
            "/scan/one",
            vec![whole.as_bytes()],
        ),
        (
            "in a body split across two frames",
            "/scan/split",
            vec![first.as_bytes(), second.as_bytes()],
        ),
    ];
    for (place, path, frames) in &bodies {
        let reply = post_chunks(&env, path, frames).await;
        assert_eq!(
            (reply.status, reply.reason()),
            (403, Some("placeholder_not_allowed")),
            "{place}"
        );
        let record = env.audit_where(|r| r["path"] == *path).await;
        assert_eq!(record["reason"], "placeholder_not_allowed", "{place}");
        assert_never_completed(&recorder, place, path).await;
    }

    // Controls: the granted placeholder in a body is swapped where swap_in has body, and
    // passes unchanged (no value) where it does not.
    let granted = with_tail(GITHUB_PLACEHOLDER);
    for (path, expect, never) in [
        ("/swap/ok", GITHUB_REAL, GITHUB_PLACEHOLDER),
        ("/scan/ok", GITHUB_PLACEHOLDER, GITHUB_REAL),
    ] {
        let reply = post_chunks(&env, path, &[granted.as_bytes()]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let seen = recorder.wait_for(path, |r| r.ended).await;
        assert!(seen.complete, "{path}");
        assert!(contains(&seen.body, expect), "{path}: body not as expected");
        assert!(!contains(&seen.body, never), "{path}: body not as expected");
    }
    // Again once the controls went through: a refused request that the upstream got only
    // after its refusal (still in flight above) did not complete either.
    for (place, path, _) in &bodies {
        assert_never_completed(&recorder, place, path).await;
    }
    env.assert_no_leaks();
}

/// Whatever part of a refused request reached the upstream for `path` has ended there (the
/// upstream saw its body stop: waited for, not assumed), incomplete and without the
/// placeholder or its value.
async fn assert_never_completed(recorder: &Recorder, place: &str, path: &str) {
    let mut changes = recorder.changes.clone();
    let settled = async {
        while !recorder.for_path(path).iter().all(|r| r.ended) {
            changes.changed().await.expect("recorder running");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), settled)
        .await
        .unwrap_or_else(|_| panic!("{place}: a request to the upstream never ended"));
    for seen in recorder.for_path(path) {
        assert!(
            !seen.complete,
            "{place}: the upstream got a complete request"
        );
        assert!(
            !contains(&seen.body, OPENAI_PLACEHOLDER) && !contains(&seen.body, OPENAI_REAL),
            "{place}: the upstream saw the placeholder"
        );
    }
}

/// The placeholder comes after a megabyte that is already upstream: the upstream request is
/// aborted (h2: stream reset; h1: connection closed), so it never sees a complete request.
async fn ungranted_placeholder_far_into_a_streamed_body(upstream_alpn: Alpn) {
    let (env, recorder) = start(upstream_alpn).await;
    let opts = env.agent(&format!("{REC_HOST}:443"), Alpn::Both);
    let mut conn = env.open(&opts).await;
    let (tx, body) = fed();
    let req = client::request("POST", REC_HOST, "/scan/big", conn.negotiated_h2())
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(body)
        .expect("request");
    const MIB: usize = 1 << 20;
    let feed = async {
        for _ in 0..4 {
            tx.send(Bytes::from(vec![b'a'; MIB / 4])).expect("queue");
        }
        // Only once the first megabyte is upstream does the placeholder follow.
        recorder
            .wait_for("/scan/big", |r| r.body.len() >= MIB - 64)
            .await;
        let bad = format!("..{OPENAI_PLACEHOLDER}..");
        let _ = tx.send(Bytes::from(bad));
        let _ = tx.send(Bytes::from(vec![b'z'; MIB]));
        drop(tx);
    };
    let (response, ()) = tokio::join!(conn.send(req), feed);
    let reply = env.reply(response.expect("response")).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (403, Some("placeholder_not_allowed")),
        "upstream {upstream_alpn:?}"
    );
    let seen = recorder.wait_for("/scan/big", |r| r.ended).await;
    assert!(!seen.complete, "the upstream got a complete request");
    assert!(
        seen.body.len() >= MIB - 64,
        "the first megabyte was not upstream"
    );
    assert!(
        !contains(&seen.body, OPENAI_PLACEHOLDER) && !seen.body.contains(&b'z'),
        "the upstream saw the placeholder or what followed it"
    );
    let record = env.audit_where(|r| r["path"] == "/scan/big").await;
    assert_eq!(record["reason"], "placeholder_not_allowed");
    assert_eq!(record["decision"], "denied");
    env.assert_no_leaks();
}

#[tokio::test]
async fn ungranted_placeholder_far_into_streamed_body_resets_the_h2_upstream_request() {
    ungranted_placeholder_far_into_a_streamed_body(Alpn::Http2Only).await;
}

#[tokio::test]
async fn ungranted_placeholder_far_into_streamed_body_closes_the_h1_upstream_request() {
    ungranted_placeholder_far_into_a_streamed_body(Alpn::Http1Only).await;
}

/// (header, value, expected status, reason, what the upstream must see in that header)
type HeaderCase<'a> = (&'a str, &'a str, u16, Option<&'a str>, Option<&'a str>);

#[tokio::test]
async fn granted_placeholder_is_swapped_only_into_the_headers_named_for_it() {
    let (env, _recorder) = start(Alpn::Both).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let auth = bearer(GITHUB_PLACEHOLDER);
    let real = bearer(GITHUB_REAL);
    let cases: [HeaderCase; 3] = [
        ("authorization", &auth, 200, None, Some(&real)),
        (
            "x-note",
            GITHUB_PLACEHOLDER,
            403,
            Some("placeholder_not_allowed"),
            None,
        ),
        (
            "x-forwarded-user",
            &auth,
            403,
            Some("placeholder_not_allowed"),
            None,
        ),
    ];
    for (i, (name, value, status, reason, upstream_saw)) in cases.iter().enumerate() {
        let path = format!("/echo/scope/{i}");
        let before = env.upstream.seen_count();
        let reply = env.request(&opts, "GET", &path, &[(name, value)]).await;
        assert_eq!((reply.status, reply.reason()), (*status, *reason), "{name}");
        match upstream_saw {
            Some(expected) => {
                let seen = env.upstream.seen();
                let got = seen
                    .iter()
                    .rev()
                    .find(|r| r.path_and_query == path)
                    .and_then(|r| r.header(name));
                assert!(got == Some(*expected), "{name} was not swapped");
            }
            None => {
                assert_eq!(
                    env.upstream.seen_count(),
                    before,
                    "{name} reached the upstream"
                );
                assert!(reply.body.contains(name), "the refusal names the header");
                let record = env.audit_where(|r| r["path"] == path.as_str()).await;
                assert_eq!(record["reason"], "placeholder_not_allowed");
            }
        }
    }
    env.assert_no_leaks();
}
