//! Protocol upgrades (WebSocket): once the handshake request has been decided and swapped
//! like any other request and the upstream answered 101, both upgraded connections are run
//! through a WebSocket codec (tungstenite) and relayed message by message.
//!
//! Upstream → agent, every message is *scrubbed* with the same [`Replacer`] HTTP responses
//! use, after the codec has reassembled it from its frames: text and binary messages, and the
//! payloads of close (its reason), ping and pong frames. So a value split across a frame and
//! its continuation is whole again before it is looked for, and every form the scrubber knows
//! (it gains encoded forms with the config snapshot) is replaced in WebSocket messages too.
//! A text message stays valid UTF-8 (checked; if not, the connection is cut).
//!
//! A value split across two *messages* cannot be replaced: the first part has already been
//! sent whole. So the last `longest pattern - 1` bytes sent toward the agent are kept, and a
//! message that would complete a value with them is never sent: the connection is cut
//! instead. The agent may therefore have received the first part of a value (never all of
//! it) before a cut.
//!
//! The connection is cut (close toward the agent, both sides dropped, a WARN line without
//! any value) when the upstream sends a frame the codec refuses: reserved bits set (no
//! extension is negotiated — compression is stripped from the handshake in
//! [`crate::pipeline::exchange`]), a masked frame, a fragmented or oversized control frame, invalid
//! UTF-8 in a text message; and with close code 1009 when a frame or a message exceeds
//! [`MAX_MESSAGE_BYTES`], so memory per connection stays bounded by that size.
//!
//! Agent → upstream, messages are passed on unchanged (re-framed by the codec); invalid
//! frames from the agent close the connection. Revocation of the task closes both sides.
//!
//! Never formats a message payload: they may hold values before scrubbing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::pipeline::fair::Held;
use crate::state::tasks::TaskConnection;
use keyswap_scrub::replace::Replacer;

/// Largest WebSocket message (and frame) relayed in either direction: 16 MiB. A frame whose
/// header announces more is refused before its payload is read; a fragmented message is
/// refused as soon as its frames add up to more. Each relayed message is held whole once
/// (to scrub it), so this bounds a connection's memory.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5); a close frame's reason
/// at most 123 after its code.
const MAX_CONTROL_PAYLOAD: usize = 125;
const MAX_CLOSE_REASON: usize = 123;

/// How long a close frame may take to be written when a splice ends.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Joins the agent's and the upstream's upgraded connections in a background task, until
/// either side closes, a message is refused, or the task is revoked.
pub fn splice(
    task_conn: TaskConnection,
    held: Option<Arc<Held>>,
    conn: u64,
    scrubber: Arc<Replacer>,
    agent: OnUpgrade,
    upstream: OnUpgrade,
) {
    tokio::spawn(async move {
        // The task's slots (pipeline::fair) are held as long as the WebSocket lives.
        let _held = held;
        let revoked = task_conn.revoked();
        let (agent, upstream) = match tokio::join!(agent, upstream) {
            (Ok(agent), Ok(upstream)) => (agent, upstream),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(conn, error = %e, "protocol upgrade failed");
                return;
            }
        };
        let agent: Ws =
            WebSocketStream::from_raw_socket(TokioIo::new(agent), Role::Server, Some(config()))
                .await;
        let upstream: Ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config()))
                .await;
        let (mut agent_tx, mut agent_rx) = agent.split();
        let (mut upstream_tx, mut upstream_rx) = upstream.split();
        let mut guard = Guard::new(scrubber);
        let end = tokio::select! {
            end = relay_to_upstream(&mut agent_rx, &mut upstream_tx) => end,
            end = relay_to_agent(&mut guard, &mut upstream_rx, &mut agent_tx) => end,
            _ = revoked => End::Revoked,
        };
        let to_agent = match end {
            End::Closed => None,
            End::Revoked => {
                tracing::debug!(conn, "upgraded connection closed: task ended");
                Some(close(CloseCode::Away, "keyswap: the task ended"))
            }
            End::AgentInvalid(code) => {
                tracing::debug!(
                    conn,
                    "upgraded connection closed: invalid frame from the agent"
                );
                Some(close(code, "keyswap: invalid frame"))
            }
            End::Cut(cut) => {
                tracing::warn!(conn, cause = cut.as_str(), "upgraded connection cut");
                Some(close(cut.close_code(), cut.close_reason()))
            }
        };
        if let Some(frame) = to_agent {
            let _ = tokio::time::timeout(CLOSE_GRACE, agent_tx.send(frame)).await;
            let _ = tokio::time::timeout(CLOSE_GRACE, upstream_tx.send(Message::Close(None))).await;
        }
    });
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Why a splice ended.
enum End {
    /// Either side closed or the transport failed.
    Closed,
    Revoked,
    /// The agent sent a frame its codec refused: the close code it gets.
    AgentInvalid(CloseCode),
    Cut(Cut),
}

/// Why the upstream → agent direction was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A message would have completed a real value with what was already sent.
    ValueAcrossMessages,
    /// A text message was not valid UTF-8 after scrubbing.
    InvalidText,
    /// A frame or message larger than [`MAX_MESSAGE_BYTES`].
    TooLarge,
    /// A frame the codec refused (reserved bits, masking, bad opcode, bad UTF-8, ...).
    Protocol,
}

impl Cut {
    fn as_str(self) -> &'static str {
        match self {
            Cut::ValueAcrossMessages => "a message would complete a real secret value",
            Cut::InvalidText => "a text message was not valid UTF-8 after scrubbing",
            Cut::TooLarge => "a message exceeded the size limit",
            Cut::Protocol => "the upstream sent an invalid or unsupported frame",
        }
    }

    fn close_code(self) -> CloseCode {
        match self {
            Cut::TooLarge => CloseCode::Size,
            Cut::Protocol => CloseCode::Protocol,
            Cut::ValueAcrossMessages | Cut::InvalidText => CloseCode::Policy,
        }
    }

    fn close_reason(self) -> &'static str {
        match self {
            Cut::TooLarge => "keyswap: message too large",
            Cut::Protocol => "keyswap: invalid frame from the upstream",
            Cut::ValueAcrossMessages | Cut::InvalidText => "keyswap: cut by the secret scrubber",
        }
    }
}

async fn relay_to_upstream<R, W>(from_agent: &mut R, to_upstream: &mut W) -> End
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(msg) = from_agent.next().await {
        let msg = match msg {
            Ok(Message::Frame(_)) => return End::AgentInvalid(CloseCode::Protocol),
            Ok(msg) => msg,
            Err(WsError::Capacity(_)) => return End::AgentInvalid(CloseCode::Size),
            Err(WsError::Protocol(_) | WsError::Utf8(_)) => {
                return End::AgentInvalid(CloseCode::Protocol)
            }
            Err(_) => return End::Closed,
        };
        if to_upstream.send(msg).await.is_err() {
            return End::Closed;
        }
    }
    End::Closed
}

async fn relay_to_agent<R, W>(guard: &mut Guard, from_upstream: &mut R, to_agent: &mut W) -> End
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(msg) = from_upstream.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                return End::Cut(Cut::TooLarge)
            }
            Err(WsError::Capacity(_) | WsError::Protocol(_) | WsError::Utf8(_)) => {
                return End::Cut(Cut::Protocol)
            }
            Err(_) => return End::Closed,
        };
        let msg = match guard.toward_agent(msg) {
            Ok(msg) => msg,
            Err(cut) => return End::Cut(cut),
        };
        if to_agent.send(msg).await.is_err() {
            return End::Closed;
        }
    }
    End::Closed
}

/// Scrubs messages on their way to the agent and remembers the end of what was sent, so a
/// value split across two messages is caught at the second.
pub struct Guard {
    scrubber: Arc<Replacer>,
    /// The last `keep` payload bytes sent toward the agent, across messages of every kind.
    tail: Vec<u8>,
    keep: usize,
}

impl Guard {
    pub fn new(scrubber: Arc<Replacer>) -> Guard {
        let keep = scrubber.longest().saturating_sub(1);
        Guard {
            scrubber,
            tail: Vec::with_capacity(2 * keep),
            keep,
        }
    }

    /// The message to send toward the agent in place of `msg`, or why the connection must be
    /// cut instead.
    pub fn toward_agent(&mut self, msg: Message) -> Result<Message, Cut> {
        let msg = match msg {
            Message::Text(text) => {
                match self.scrubber.replace_all(text.as_bytes()) {
                    None => Message::Text(text),
                    // Real values and placeholders are UTF-8, so replacing whole matches in
                    // UTF-8 keeps it UTF-8; checked anyway, failing closed.
                    Some(replaced) => Message::Text(
                        String::from_utf8(replaced)
                            .map_err(|_| Cut::InvalidText)?
                            .into(),
                    ),
                }
            }
            Message::Binary(data) => Message::Binary(self.scrub(data, usize::MAX)),
            Message::Ping(data) => Message::Ping(self.scrub(data, MAX_CONTROL_PAYLOAD)),
            Message::Pong(data) => Message::Pong(self.scrub(data, MAX_CONTROL_PAYLOAD)),
            Message::Close(Some(frame)) => {
                let reason = match self.scrubber.replace_all(frame.reason.as_bytes()) {
                    None => frame.reason,
                    Some(replaced) => {
                        let mut reason =
                            String::from_utf8(replaced).map_err(|_| Cut::InvalidText)?;
                        truncate_utf8(&mut reason, MAX_CLOSE_REASON);
                        reason.into()
                    }
                };
                Message::Close(Some(CloseFrame {
                    code: frame.code,
                    reason,
                }))
            }
            Message::Close(None) => Message::Close(None),
            // Only produced when writing raw frames, never by reading.
            Message::Frame(_) => return Err(Cut::Protocol),
        };
        self.check_junction(payload(&msg))?;
        Ok(msg)
    }

    fn scrub(&self, data: Bytes, max: usize) -> Bytes {
        match self.scrubber.replace_all(&data) {
            None => data,
            Some(mut replaced) => {
                replaced.truncate(max);
                Bytes::from(replaced)
            }
        }
    }

    /// Refuses `next` if the kept tail of what was sent plus its start contains a value
    /// (any match across the boundary is at most `keep + 1` bytes long, so it lies within
    /// `tail + next[..keep]`); otherwise remembers the new tail.
    fn check_junction(&mut self, next: &[u8]) -> Result<(), Cut> {
        if self.keep == 0 {
            return Ok(());
        }
        let head = &next[..next.len().min(self.keep)];
        if !self.tail.is_empty() {
            let at = self.tail.len();
            self.tail.extend_from_slice(head);
            let found = self.scrubber.contains_any(&self.tail);
            self.tail.truncate(at);
            if found {
                return Err(Cut::ValueAcrossMessages);
            }
        }
        if next.len() >= self.keep {
            self.tail.clear();
            self.tail.extend_from_slice(&next[next.len() - self.keep..]);
        } else {
            self.tail.extend_from_slice(next);
            let excess = self.tail.len().saturating_sub(self.keep);
            self.tail.drain(..excess);
        }
        Ok(())
    }
}

/// The payload bytes of a message as the agent will read them.
fn payload(msg: &Message) -> &[u8] {
    match msg {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data,
        Message::Close(Some(frame)) => frame.reason.as_bytes(),
        Message::Close(None) | Message::Frame(_) => &[],
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const VALUE: &str = "SECRET-value-0123456789";
    const PLACEHOLDER: &str = "ph_0000";

    /// The value and, as the snapshot's scrubber carries encoded forms, its base64.
    fn guard() -> Guard {
        let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let scrubber = Replacer::new(vec![
            (
                VALUE.as_bytes().to_vec(),
                Bytes::from_static(PLACEHOLDER.as_bytes()),
            ),
            (b64.into_bytes(), Bytes::from_static(PLACEHOLDER.as_bytes())),
        ])
        .unwrap();
        Guard::new(Arc::new(scrubber))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_message_kind_is_scrubbed() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let cases: Vec<(&str, Message)> = vec![
            ("text", Message::Text(format!("token={VALUE}!").into())),
            ("binary", Message::Binary(format!("\0{VALUE}\0").into())),
            ("ping", Message::Ping(VALUE.to_string().into())),
            ("pong", Message::Pong(format!("x{VALUE}").into())),
            (
                "close reason",
                Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: format!("bad token {VALUE}").into(),
                })),
            ),
            ("base64 in text", Message::Text(format!("b64={b64}").into())),
        ];
        for (what, msg) in cases {
            let out = guard().toward_agent(msg).expect(what);
            let bytes = payload(&out);
            assert!(!contains(bytes, VALUE.as_bytes()), "{what}: value passed");
            assert!(!contains(bytes, b64.as_bytes()), "{what}: base64 passed");
            assert!(
                contains(bytes, PLACEHOLDER.as_bytes()),
                "{what}: not replaced"
            );
        }
    }

    #[test]
    fn value_split_across_messages_is_cut_at_the_second() {
        for split in 1..VALUE.len() {
            let mut g = guard();
            let (a, b) = VALUE.split_at(split);
            assert!(g
                .toward_agent(Message::Text(format!("x{a}").into()))
                .is_ok());
            assert_eq!(
                g.toward_agent(Message::Binary(format!("{b}y").into())),
                Err(Cut::ValueAcrossMessages),
                "split at {split}"
            );
        }
        // Across three small messages and a ping.
        let mut g = guard();
        let (a, rest) = VALUE.split_at(3);
        let (b, c) = rest.split_at(5);
        assert!(g.toward_agent(Message::Text(a.into())).is_ok());
        assert!(g.toward_agent(Message::Ping(b.to_string().into())).is_ok());
        assert_eq!(
            g.toward_agent(Message::Text(c.into())),
            Err(Cut::ValueAcrossMessages)
        );
    }

    #[test]
    fn unrelated_messages_pass_unchanged() {
        let mut g = guard();
        for text in ["SECRET-", "value", "hello", "SECRET-value-012345678"] {
            let out = g.toward_agent(Message::Text(text.into())).unwrap();
            assert_eq!(out, Message::Text(text.into()));
        }
    }

    #[test]
    fn long_replacements_in_control_frames_stay_within_limits() {
        let long = "p".repeat(200);
        let scrubber =
            Replacer::new(vec![(b"SECRET".to_vec(), Bytes::from(long.into_bytes()))]).unwrap();
        let mut g = Guard::new(Arc::new(scrubber));
        let out = g
            .toward_agent(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "é SECRET".into(),
            })))
            .unwrap();
        assert!(payload(&out).len() <= MAX_CLOSE_REASON);
        let out = g.toward_agent(Message::Ping("SECRET".into())).unwrap();
        assert_eq!(payload(&out).len(), MAX_CONTROL_PAYLOAD);
    }
}
