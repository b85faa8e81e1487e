//! An upstream WebSocket that sends the real value back, in every shape frames allow: whole,
//! fragmented, across messages, in control frames, encoded, oversized, or in frames the
//! protocol forbids. The handshake's placeholder is swapped, so the upstream holds the real
//! value ("Bearer <real>") and its script ([`WsScript`]) sends it as hand-built frames. The
//! agent must never receive it: each message is scrubbed, or the connection is cut.

use futures_util::StreamExt;
use keyswap_tests::client;
use keyswap_tests::harness::{bearer, TestEnv, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::upstream::{Alpn, WsScript};
use tokio_tungstenite::tungstenite::Message;

/// What keyswap must do with a script.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Every message arrives (up to `end`), with the value replaced by the placeholder.
    Scrubbed,
    /// Cut before `end`; the agent gets a close frame with this code.
    Cut(u16),
}

/// What the agent read until the connection ended.
struct Received {
    /// Payloads of every message (text, binary, ping, pong, close reason) in order.
    bytes: Vec<u8>,
    saw_end: bool,
    close_code: Option<u16>,
}

async fn run(env: &TestEnv, script: WsScript) -> Received {
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut ws = client::websocket_through_proxy(
        &opts,
        &format!("/ws?script={}", script.name()),
        vec![("authorization".into(), bearer(GITHUB_PLACEHOLDER))],
    )
    .await
    .expect("websocket through the proxy");
    let mut received = Received {
        bytes: Vec::new(),
        saw_end: false,
        close_code: None,
    };
    let read_all = async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) if t.as_str() == "end" => received.saw_end = true,
                Message::Text(t) => received.bytes.extend_from_slice(t.as_bytes()),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => {
                    received.bytes.extend_from_slice(&b)
                }
                Message::Close(Some(frame)) => {
                    received.close_code = Some(frame.code.into());
                    received.bytes.extend_from_slice(frame.reason.as_bytes());
                }
                Message::Close(None) | Message::Frame(_) => {}
            }
            received.bytes.push(b'\n');
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
        .await
        .unwrap_or_else(|_| panic!("{}: the connection did not end", script.name()));
    received
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn websocket_secret_in_any_frame_shape_is_scrubbed_or_cut() {
    let cases = [
        (WsScript::Text, Expect::Scrubbed),
        (WsScript::FragmentedText, Expect::Scrubbed),
        (WsScript::FragmentedBinary, Expect::Scrubbed),
        (WsScript::CloseReason, Expect::Scrubbed),
        (WsScript::Ping, Expect::Scrubbed),
        // 1009: message too big; 1002: protocol error.
        (WsScript::OversizedMessage, Expect::Cut(1009)),
        (WsScript::OversizedFrame, Expect::Cut(1009)),
        (WsScript::Rsv1, Expect::Cut(1002)),
        (WsScript::Masked, Expect::Cut(1002)),
    ];
    let env = TestEnv::start_with(keyswap_tests::harness::DEFAULT_CONFIG, Alpn::Http1Only).await;
    for (script, expect) in cases {
        let got = run(&env, script).await;
        let name = script.name();
        assert!(
            !contains(&got.bytes, GITHUB_REAL.as_bytes()),
            "{name}: the agent received the real value"
        );
        match expect {
            Expect::Scrubbed => {
                assert!(got.saw_end, "{name}: the connection was cut");
                assert!(
                    contains(&got.bytes, GITHUB_PLACEHOLDER.as_bytes()),
                    "{name}: the value was not replaced by its placeholder"
                );
            }
            Expect::Cut(code) => {
                assert!(!got.saw_end, "{name}: the connection was not cut");
                assert_eq!(got.close_code, Some(code), "{name}: close code");
            }
        }
        env.keep(&[], &String::from_utf8_lossy(&got.bytes));
    }
    // The handshakes were allowed and audited as before.
    let record = env.audit_where(|r| r["path"] == "/ws").await;
    assert_eq!(record["reason"], "allowed");
    assert_eq!(record["status"], 101);
    env.assert_no_leaks();
}

/// Two separate messages cannot be rewritten together: the first has been sent whole when
/// the second shows the value. keyswap cuts before the second, so the agent holds at most the
/// first part of the value, never all of it. (That first part begins with the suite's
/// `KSREAL` prefix, so this test checks the whole value rather than `assert_no_real_secret`,
/// and does not add what the agent received to the leak check's responses.)
#[tokio::test]
async fn websocket_secret_split_across_messages_is_cut() {
    let env = TestEnv::start_with(keyswap_tests::harness::DEFAULT_CONFIG, Alpn::Http1Only).await;
    let got = run(&env, WsScript::SplitMessages).await;
    assert!(
        !contains(&got.bytes, GITHUB_REAL.as_bytes()),
        "the agent received the whole real value"
    );
    let second_half = &GITHUB_REAL.as_bytes()[GITHUB_REAL.len() / 2..];
    assert!(
        !contains(&got.bytes, second_half),
        "the message completing the value was sent"
    );
    assert!(!got.saw_end, "the connection was not cut");
    assert_eq!(got.close_code, Some(1008), "policy-violation close");
    env.assert_no_leaks();
}

/// The base64 of the value, one of the encoded forms every scrubber holds.
#[tokio::test]
async fn websocket_base64_of_secret_is_scrubbed() {
    let env = TestEnv::start_with(keyswap_tests::harness::DEFAULT_CONFIG, Alpn::Http1Only).await;
    let got = run(&env, WsScript::Base64).await;
    assert!(got.saw_end, "the connection was cut");
    env.keep(&[], &String::from_utf8_lossy(&got.bytes));
    env.assert_no_leaks();
}
