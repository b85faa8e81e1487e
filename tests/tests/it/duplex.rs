//! Full duplex over HTTP/2: an upstream that answers 200 at once and streams the request
//! body back as it arrives (as gRPC bidirectional streams and streaming APIs do). keyswap must
//! relay the answer while the agent is still sending — an agent that waits for each echo
//! before it sends more would otherwise wait forever — and still decide the body: a placeholder
//! the rule does not grant, sent after the answer began, cuts the response instead of ending
//! it and is recorded as refused, never `allowed`.

use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keyswap_tests::client::{self, Alpn, BoxBody};
use keyswap_tests::harness::{TestEnv, OTHER_HOST};
use keyswap_tests::secrets::GITHUB_PLACEHOLDER;
use tokio::sync::mpsc;

/// The agent's side of one duplex stream: what it sends next, frame by frame.
type Frames = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn streamed_body() -> (Frames, BoxBody) {
    let (tx, rx) = mpsc::channel(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// A bound against hanging, not a measurement.
const WAIT: Duration = Duration::from_secs(10);

async fn send(frames: &Frames, data: &'static str) {
    frames
        .send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
        .await
        .expect("keyswap reads the request body");
}

/// The next chunk of the response body, or the error that cut it.
async fn next_chunk(body: &mut hyper::body::Incoming) -> Option<Result<Bytes, String>> {
    loop {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the response streams while the request body is still open")?;
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Err(e) => return Some(Err(e.to_string())),
        }
    }
}

/// Reads until `expected` bytes arrived.
async fn read_echo(body: &mut hyper::body::Incoming, expected: &str) {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match next_chunk(body).await {
            Some(Ok(data)) => got.extend_from_slice(&data),
            other => panic!("the echo of {expected:?} was cut: {other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// Opens a duplex stream to `/duplex`, sends a first chunk and reads its echo, with the
/// request body still open: the connection (its driver ends with it), the agent's side of
/// the body and the response body.
async fn duplex_begun(env: &TestEnv) -> (client::ProxyConnection, Frames, hyper::body::Incoming) {
    let conn = env
        .open(&env.agent(&format!("{OTHER_HOST}:443"), Alpn::Http2Only))
        .await;
    let mut sender = conn.h2_sender().expect("h2");
    let (frames, body) = streamed_body();
    let request = client::request("POST", OTHER_HOST, "/duplex", true)
        .body(body)
        .expect("request");
    send(&frames, "ping-1;").await;
    let response = tokio::time::timeout(WAIT, async {
        sender.ready().await?;
        sender.send_request(request).await
    })
    .await
    .expect("the answer's head came while the body was still open")
    .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    read_echo(&mut body, "ping-1;").await;
    (conn, frames, body)
}

#[tokio::test]
async fn a_duplex_stream_is_relayed_while_the_agent_still_sends() {
    let env = TestEnv::start().await;
    let (_conn, frames, mut body) = duplex_begun(&env).await;
    // Only now, having read the echo, does the agent send more and end its body.
    send(&frames, "ping-2;").await;
    read_echo(&mut body, "ping-2;").await;
    drop(frames);
    assert!(
        next_chunk(&mut body).await.is_none(),
        "the response ends after the request body ends"
    );
    let record = env.audit_where(|r| r["path"] == "/duplex").await;
    assert_eq!(record["reason"], "allowed", "{record}");
    assert_eq!(record["req_bytes"], 14, "{record}");
    env.assert_no_leaks();
}

#[tokio::test]
async fn an_ungranted_placeholder_sent_mid_stream_cuts_the_response_and_is_recorded() {
    let env = TestEnv::start().await;
    let (_conn, frames, mut body) = duplex_begun(&env).await;
    // other.upstream.test grants the openai secret only: the github placeholder is refused.
    send(&frames, GITHUB_PLACEHOLDER).await;
    drop(frames);
    loop {
        match next_chunk(&mut body).await {
            Some(Ok(data)) => assert!(
                !String::from_utf8_lossy(&data).contains(GITHUB_PLACEHOLDER),
                "the refused placeholder went upstream and came back"
            ),
            Some(Err(_)) => break,
            None => panic!("the response ended as if the exchange had completed"),
        }
    }
    let record = env.audit_where(|r| r["path"] == "/duplex").await;
    assert_eq!(record["reason"], "placeholder_not_allowed", "{record}");
    env.assert_no_leaks();
}
