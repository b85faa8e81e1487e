//! Trailers are headers, the task token never leaves keyswap, and an early upstream answer
//! does not hide a refused body. A hostile agent sends, through keyswap, with real clients
//! (Python's `h2` library for HTTP/2 frames with a trailing HEADERS frame; a raw HTTP/1.1
//! client over Python's `ssl` for chunked trailers, which curl 7.88 cannot send), toward an
//! HTTP/1.1 and an HTTP/2 upstream:
//!
//! - a granted placeholder in a trailer its `headers:` scope does not name;
//! - an ungranted placeholder in a trailer;
//! - `Proxy-Authorization` (with the task token) and other hop-by-hop names as trailers;
//! - the task's own token in a header, a `Basic` credential, a trailer, the body, the path,
//!   the query;
//! - `Expect: 100-continue` to an upstream that answers without reading the body, with a
//!   body carrying an ungranted placeholder.
//!
//! Each asserts the refusal's reason in the response and in the audit, and what the upstream
//! received (the harness upstream's `/sink` keeps every body and trailer it read).

use std::process::Stdio;

use base64::Engine;
use keyswap_tests::client::Alpn;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER, OPENAI_REAL};
use tokio::io::AsyncWriteExt;

const AGENT: &str = include_str!("trailers/agent.py");

/// github is granted on `/sink` and `/status/*`, swapped in headers and bodies, and only in
/// `authorization`; openai is granted nowhere.
fn config() -> String {
    ConfigBuilder::new()
        .secret(
            "github",
            Secret::github().field("headers", "[authorization]"),
        )
        .secret("openai", Secret::openai())
        .task(
            "agent",
            Entry::with_token().rule(
                Rule::api()
                    .paths(&["/sink", "/sink/**", "/status/*"])
                    .secrets(&["github"])
                    .field("swap_in", "[headers, body]"),
            ),
        )
        .yaml()
}

/// A Python that has the `h2` library: `python3` on PATH, else Debian's. Under `CI=true`
/// its absence fails the test; elsewhere a notice is printed and the test passes.
pub(crate) fn python_with_h2() -> Option<&'static str> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(python)
            .args(["-c", "import h2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "a python3 with the h2 library (Debian: python3-h2) must be installed in CI"
    );
    eprintln!("\n*** NOTICE: no python3 with h2: a trailers test did NOT run ***\n");
    None
}

/// The agent's protocol toward keyswap.
#[derive(Clone, Copy, Debug)]
enum Proto {
    H1,
    H2,
}

/// One request as the agent sends it.
struct Send<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    chunks: Vec<String>,
    trailers: Vec<(&'a str, String)>,
    expect: bool,
}

impl<'a> Send<'a> {
    fn post(path: &'a str) -> Self {
        Send {
            method: "POST",
            path,
            headers: Vec::new(),
            chunks: vec!["hello ".into(), "world".into()],
            trailers: Vec::new(),
            expect: false,
        }
    }

    fn trailer(mut self, name: &'a str, value: &str) -> Self {
        self.trailers.push((name, value.to_string()));
        self
    }

    fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    fn chunks(mut self, chunks: &[&str]) -> Self {
        self.chunks = chunks.iter().map(|c| c.to_string()).collect();
        self
    }
}

/// What the agent got back.
struct Got {
    status: u16,
    reason: Option<String>,
    body: String,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Got")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Sends `req` with the Python agent, keeps the response for the leak check.
async fn send(env: &TestEnv, python: &str, proto: Proto, req: &Send<'_>) -> Got {
    let ca = env.dir.path().join("proxy-ca.pem");
    std::fs::write(&ca, &env.proxy_ca_pem).expect("write proxy CA");
    let pairs = |list: &[(&str, String)]| -> Vec<[String; 2]> {
        list.iter()
            .map(|(n, v)| [n.to_string(), v.clone()])
            .collect()
    };
    let spec = serde_json::json!({
        "proxy_port": env.proxy.addr().port(),
        "task": "agent",
        "token": AGENT_TOKEN,
        "ca_file": ca,
        "host": API_HOST,
        "proto": match proto { Proto::H1 => "h1", Proto::H2 => "h2" },
        "method": req.method,
        "path": req.path,
        "headers": pairs(&req.headers),
        "chunks": req.chunks,
        "trailers": pairs(&req.trailers),
        "expect": req.expect,
    });
    let script = env.dir.path().join("agent.py");
    std::fs::write(&script, AGENT).expect("write agent.py");
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(spec.to_string().as_bytes())
        .await
        .expect("spec written");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python ends");
    assert!(
        out.status.success(),
        "the agent failed ({proto:?} {}): {}",
        req.path,
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("agent JSON");
    let headers: Vec<(String, String)> = reply["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h[0].as_str().unwrap_or_default().to_string(),
                h[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = reply["body"].as_str().unwrap_or_default().to_string();
    env.keep(&headers, &body);
    let reason = headers
        .iter()
        .find(|(n, _)| n == "x-keyswap-reason")
        .map(|(_, v)| v.clone());
    Got {
        status: reply["status"].as_u64().unwrap_or_default() as u16,
        reason,
        body,
    }
}

/// Each agent protocol toward each upstream protocol: `case` runs once per pair, on a
/// fresh proxy and upstream.
async fn each_pair<F, Fut>(case: F)
where
    F: Fn(TestEnv, &'static str, Proto, Alpn) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(python) = python_with_h2() else {
        return;
    };
    for upstream in [Alpn::Http1Only, Alpn::Http2Only] {
        for proto in [Proto::H1, Proto::H2] {
            let env = TestEnv::start_with(&config(), upstream).await;
            case(env, python, proto, upstream).await;
        }
    }
}

/// Sends `req`, which must be refused with `reason`, in the response and in its one audit
/// record (under `audit_path`), and for which `/sink` never read a complete body.
async fn refused(
    env: &TestEnv,
    python: &str,
    proto: Proto,
    req: &Send<'_>,
    (audit_path, reason): (&str, &str),
    what: &str,
) -> Got {
    let before = env
        .audit()
        .iter()
        .filter(|r| r["path"] == audit_path)
        .count();
    let got = send(env, python, proto, req).await;
    assert_eq!(got.status, 403, "{what}: {got:?}");
    assert_eq!(got.reason.as_deref(), Some(reason), "{what}: {got:?}");
    let records = env
        .audit_at_least(before + 1, |r| r["path"] == audit_path)
        .await;
    assert_eq!(
        records.len(),
        before + 1,
        "{what}: one record for the request"
    );
    assert_eq!(records[before]["reason"], reason, "{what}: audit");
    assert!(
        env.upstream.bodies().iter().all(|b| !b.complete),
        "{what}: the upstream read a complete body: {:?}",
        env.upstream.bodies()
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_in_out_of_scope_trailer_is_refused() {
    each_pair(|env, python, proto, upstream| async move {
        let what = format!("{proto:?} agent, {upstream:?} upstream");
        let req = Send::post("/sink").trailer("x-leak", &format!("Bearer {GITHUB_PLACEHOLDER}"));
        let why = ("/sink", "placeholder_not_allowed");
        let got = refused(&env, python, proto, &req, why, &what).await;
        assert!(
            got.body.contains("x-leak"),
            "{what}: the refusal names the field"
        );
        // Control: the same placeholder in the trailer its scope names is swapped.
        let req =
            Send::post("/sink").trailer("authorization", &format!("Bearer {GITHUB_PLACEHOLDER}"));
        let got = send(&env, python, proto, &req).await;
        assert_eq!(got.status, 200, "{what}: in-scope trailer: {got:?}");
        let bodies = env.upstream.bodies();
        let body = bodies.last().expect("the upstream read the body");
        assert!(
            body.complete && body.body == b"hello world",
            "{what}: {body:?}"
        );
        let authorization = body.trailers.iter().find(|(n, _)| n == "authorization");
        if upstream == Alpn::Http2Only {
            assert!(
                authorization.is_some_and(|(_, v)| *v == format!("Bearer {GITHUB_REAL}")),
                "{what}: the in-scope trailer was not swapped: {body:?}"
            );
        } else {
            // HTTP/1.1 toward the upstream sends no trailers (keyswap drops `Trailer`).
            assert!(authorization.is_none(), "{what}: {body:?}");
        }
        let record = env
            .audit_where(|r| r["path"] == "/sink" && r["reason"] == "allowed")
            .await;
        if upstream == Alpn::Http2Only {
            assert_eq!(record["secrets"], serde_json::json!(["github"]), "{what}");
        }
        env.assert_no_leaks();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_placeholder_in_trailer_is_refused() {
    each_pair(|env, python, proto, upstream| async move {
        let what = format!("{proto:?} agent, {upstream:?} upstream");
        for name in ["x-other", "authorization"] {
            let req = Send::post("/sink").trailer(name, &format!("Bearer {OPENAI_PLACEHOLDER}"));
            let what = format!("{what}, trailer {name}");
            let why = ("/sink", "placeholder_not_allowed");
            refused(&env, python, proto, &req, why, &what).await;
        }
        assert!(
            env.upstream
                .bodies()
                .iter()
                .all(|b| !b.text().contains(OPENAI_REAL) && !b.text().contains(OPENAI_PLACEHOLDER)),
            "{what}: the upstream read the ungranted placeholder or its value"
        );
        env.assert_no_leaks();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_and_hop_by_hop_trailers_are_stripped() {
    each_pair(|env, python, proto, upstream| async move {
        let what = format!("{proto:?} agent, {upstream:?} upstream");
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("agent:{AGENT_TOKEN}"));
        let req = Send::post("/sink")
            .trailer("proxy-authorization", &format!("Basic {basic}"))
            .trailer("proxy-x", "1")
            .trailer("keep-alive", "timeout=5")
            .trailer("te", "trailers")
            .trailer("connection", "x-named")
            .trailer("x-named", "1")
            .trailer("x-kept", "1");
        let got = send(&env, python, proto, &req).await;
        assert_eq!(got.status, 200, "{what}: {got:?}");
        let bodies = env.upstream.bodies();
        let body = bodies.last().expect("the upstream read the body");
        assert!(body.complete, "{what}: {body:?}");
        let mut stripped = vec![
            "proxy-authorization",
            "proxy-x",
            "keep-alive",
            "te",
            "connection",
        ];
        if let Proto::H1 = proto {
            // HTTP/2 has no `Connection` field (RFC 9113 §8.2.2): only HTTP/1.1's names others.
            stripped.push("x-named");
        }
        assert!(
            body.trailers
                .iter()
                .all(|(n, _)| !stripped.contains(&n.as_str())),
            "{what}: a hop-by-hop trailer reached the upstream: {body:?}"
        );
        if upstream == Alpn::Http2Only {
            assert!(
                body.trailers.iter().any(|(n, _)| n == "x-kept"),
                "{what}: an ordinary trailer was lost: {body:?}"
            );
        }
        env.assert_no_leaks();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_token_anywhere_in_a_request_is_refused() {
    each_pair(|env, python, proto, upstream| async move {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("agent:{AGENT_TOKEN}"));
        let (half, rest) = AGENT_TOKEN.split_at(5);
        let in_path = format!("/sink/{AGENT_TOKEN}");
        let in_query = format!("/sink?note={AGENT_TOKEN}");
        let encoded: String = AGENT_TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
        let in_encoded_query = format!("/sink?{encoded}=1");
        let cases: Vec<(&str, Send<'_>, &str)> = vec![
            (
                "a header",
                Send::post("/sink").header("x-note", AGENT_TOKEN),
                "/sink",
            ),
            (
                "a Basic credential",
                Send::post("/sink").header("authorization", &format!("Basic {basic}")),
                "/sink",
            ),
            (
                "a trailer",
                Send::post("/sink").trailer("x-note", AGENT_TOKEN),
                "/sink",
            ),
            (
                "the body",
                Send::post("/sink").chunks(&["a=", AGENT_TOKEN, "&b"]),
                "/sink",
            ),
            (
                "the body, split",
                Send::post("/sink").chunks(&["a=", half, rest]),
                "/sink",
            ),
            (
                "the path",
                Send::post(&in_path),
                "[withheld: it carries the task token]",
            ),
            ("the query", Send::post(&in_query), "/sink"),
            (
                "the query, percent-encoded",
                Send::post(&in_encoded_query),
                "/sink",
            ),
        ];
        for (where_, req, audit_path) in &cases {
            let what = format!("{proto:?} agent, {upstream:?} upstream, token in {where_}");
            let why = (*audit_path, "placeholder_not_allowed");
            let got = refused(&env, python, proto, req, why, &what).await;
            assert!(got.body.contains("proxy token"), "{what}: {}", got.body);
        }
        assert!(
            env.upstream
                .seen()
                .iter()
                .all(|r| !r.path_and_query.contains("note")),
            "a request carrying the token reached the upstream"
        );
        // assert_no_leaks: no token in any head, body or trailer the upstream received, nor
        // in the audit or the log.
        env.assert_no_leaks();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_does_not_hide_a_refused_body() {
    each_pair(|env, python, proto, upstream| async move {
        let what = format!("{proto:?} agent, {upstream:?} upstream");
        // `/status/401` answers without reading the body.
        let mut req = Send::post("/status/401").chunks(&["x=", OPENAI_PLACEHOLDER, "&y=1"]);
        req.expect = true;
        let why = ("/status/401", "placeholder_not_allowed");
        refused(&env, python, proto, &req, why, &what).await;
        let record = env.audit_where(|r| r["path"] == "/status/401").await;
        let body_len = (2 + OPENAI_PLACEHOLDER.len() + 4) as u64;
        assert!(
            record["req_bytes"]
                .as_u64()
                .is_some_and(|n| n > 0 && n <= body_len),
            "{what}: req_bytes {}",
            record["req_bytes"]
        );
        // Control: a clean body gets the upstream's early answer, recorded with its bytes.
        let mut req = Send::post("/status/402").chunks(&["x=1&y=2"]);
        req.expect = true;
        let got = send(&env, python, proto, &req).await;
        assert_eq!(got.status, 402, "{what}: clean body: {got:?}");
        let record = env.audit_where(|r| r["path"] == "/status/402").await;
        assert_eq!(record["reason"], "allowed", "{what}");
        assert_eq!(
            record["req_bytes"], 7,
            "{what}: the clean body was not read"
        );
        env.assert_no_leaks();
    })
    .await;
}
