//! The WebSocket guard's property, checked on one input. Shared by the proptest suite
//! (`tests/tests/it/properties.rs`, on stable, in every CI run) and the cargo-fuzz target
//! `websocket_guard` (which includes this file), so both check the same contract.
//!
//! A case is a set of secrets, a stream of pieces (noise, values in some form, prefixes of
//! values) and a way to cut that stream into messages of every kind. The guard is built on the
//! scrubber the config snapshot builds (`encodings::forms` of every (value, placeholder), each
//! also all-lower and all-upper case), and the messages are passed through it in order, as
//! `websocket::relay_to_agent` does, stopping at the first cut.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use keyswap::pipeline::websocket::{Cut, Guard};
use keyswap_scrub::encodings;
use keyswap_scrub::replace::{Replacer, Segment};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// RFC 6455 §5.5: a control frame's payload, and a close frame's reason after its code.
const MAX_CONTROL_PAYLOAD: usize = 125;
const MAX_CLOSE_REASON: usize = 123;

/// How a value is written into the stream.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    Raw,
    /// Raw, all lower-case (all upper-case when that is the same): the scrubber also holds
    /// each form in all-lower and all-upper case.
    OtherCase,
    /// Standard base64 of the value alone.
    Base64,
    /// Standard base64 of `before` bytes, the value, and a tail: the value inside a longer
    /// base64 string, at each of the three alignments.
    Base64Blob {
        before: u8,
    },
    /// URL-safe unpadded base64 of the value inside a longer string.
    Base64UrlBlob {
        before: u8,
    },
    /// The `n`th form (modulo their number) `encodings::forms` derives: percent, JSON, ...
    Derived(usize),
}

/// One piece of the stream the upstream sends.
#[derive(Clone, Debug)]
pub enum Piece {
    Noise(Vec<u8>),
    /// The value of secret `secret` (modulo the number of secrets) in `form`.
    Value {
        secret: usize,
        form: Form,
    },
    /// The first `len` bytes (modulo the value's length) of a value: a near miss.
    Prefix {
        secret: usize,
        len: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Case {
    /// (real value, placeholder) pairs.
    pub secrets: Vec<(String, String)>,
    pub pieces: Vec<Piece>,
    /// Message sizes, used in turn (0 is an empty message); the rest goes in one last message.
    pub sizes: Vec<usize>,
    /// Message kinds, used in turn: text, binary, ping, pong, close (modulo 5). A piece of the
    /// stream that a kind cannot carry (invalid UTF-8 in text or a close reason, a control
    /// payload over its limit) is sent as binary instead.
    pub kinds: Vec<u8>,
}

/// Whether the secrets are ones the config accepts: values of 8 bytes or more without line
/// breaks, NUL or other control characters but tab; placeholders of 8 to 256 visible ASCII
/// characters, none containing another, none contained in a value, none containing a value
/// (config/src/secrets.rs and config/src/validate/secrets.rs).
pub fn valid_secrets(secrets: &[(String, String)]) -> bool {
    let value_ok = |v: &str| {
        v.len() >= 8 && v.len() <= 8192 && v.bytes().all(|b| (b >= 0x20 || b == b'\t') && b != 0x7F)
    };
    let placeholder_ok =
        |p: &str| (8..=256).contains(&p.len()) && p.bytes().all(|b| (b'!'..=b'~').contains(&b));
    !secrets.is_empty()
        && secrets
            .iter()
            .all(|(v, p)| value_ok(v) && placeholder_ok(p))
        && secrets.iter().enumerate().all(|(i, (a_value, a_ph))| {
            secrets.iter().enumerate().all(|(j, (b_value, b_ph))| {
                (i == j || !a_ph.contains(b_ph.as_str()))
                    && !a_value.contains(b_ph.as_str())
                    && !a_ph.contains(b_value.as_str())
            })
        })
}

/// The scrubber exactly as `snapshot::scrub_pairs` and `Snapshot::assemble` build it.
pub fn scrubber(secrets: &[(String, String)]) -> Replacer {
    Replacer::with_case_variants(
        secrets
            .iter()
            .flat_map(|(value, placeholder)| encodings::forms(value, placeholder))
            .collect(),
    )
    .expect("the scrubber builds")
}

/// The bytes the upstream sends, pieces concatenated.
pub fn stream(case: &Case) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in &case.pieces {
        match piece {
            Piece::Noise(bytes) => out.extend_from_slice(bytes),
            Piece::Value { secret, form } => {
                let (value, placeholder) = &case.secrets[secret % case.secrets.len()];
                out.extend_from_slice(&write_form(value, placeholder, *form));
            }
            Piece::Prefix { secret, len } => {
                let value = case.secrets[secret % case.secrets.len()].0.as_bytes();
                out.extend_from_slice(&value[..len % value.len()]);
            }
        }
    }
    out
}

fn write_form(value: &str, placeholder: &str, form: Form) -> Vec<u8> {
    let blob = |before: u8| {
        let mut data = vec![b'x'; usize::from(before % 3)];
        data.extend_from_slice(value.as_bytes());
        data.extend_from_slice(b"-tail");
        data
    };
    match form {
        Form::Raw => value.as_bytes().to_vec(),
        Form::OtherCase if value.to_ascii_lowercase() != value => {
            value.to_ascii_lowercase().into_bytes()
        }
        Form::OtherCase => value.to_ascii_uppercase().into_bytes(),
        Form::Base64 => STANDARD.encode(value).into_bytes(),
        Form::Base64Blob { before } => STANDARD.encode(blob(before)).into_bytes(),
        Form::Base64UrlBlob { before } => URL_SAFE_NO_PAD.encode(blob(before)).into_bytes(),
        Form::Derived(n) => {
            let forms = encodings::forms(value, placeholder);
            forms[n % forms.len()].0.clone()
        }
    }
}

/// Cuts `stream` into messages of the case's sizes and kinds.
pub fn messages(case: &Case, stream: &[u8]) -> Vec<Message> {
    let mut chunks = Vec::new();
    let mut pos = 0;
    for &size in case
        .sizes
        .iter()
        .cycle()
        .take(4 * stream.len() + case.sizes.len())
    {
        if pos == stream.len() {
            break;
        }
        let end = (pos + size).min(stream.len());
        chunks.push(&stream[pos..end]);
        pos = end;
    }
    if pos < stream.len() || chunks.is_empty() {
        chunks.push(&stream[pos..]);
    }
    let kinds = if case.kinds.is_empty() {
        &[0][..]
    } else {
        &case.kinds[..]
    };
    chunks
        .into_iter()
        .zip(kinds.iter().cycle())
        .map(|(chunk, kind)| message(chunk, *kind))
        .collect()
}

fn message(chunk: &[u8], kind: u8) -> Message {
    let binary = || Message::Binary(Bytes::copy_from_slice(chunk));
    let text = std::str::from_utf8(chunk).ok();
    match kind % 5 {
        0 => text.map_or_else(binary, |t| Message::Text(t.to_owned().into())),
        1 => binary(),
        2 | 3 if chunk.len() > MAX_CONTROL_PAYLOAD => binary(),
        2 => Message::Ping(Bytes::copy_from_slice(chunk)),
        3 => Message::Pong(Bytes::copy_from_slice(chunk)),
        _ => match text {
            Some("") => Message::Close(None),
            Some(t) if t.len() <= MAX_CLOSE_REASON => Message::Close(Some(CloseFrame {
                code: CloseCode::from(1000 + u16::from(kind % 16)),
                reason: t.to_owned().into(),
            })),
            _ => binary(),
        },
    }
}

/// The payload bytes the agent reads from a message.
pub fn payload(msg: &Message) -> &[u8] {
    match msg {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data,
        Message::Close(Some(frame)) => frame.reason.as_bytes(),
        Message::Close(None) | Message::Frame(_) => &[],
    }
}

/// The forms of `value` an agent could decode, derived here from their definitions: the raw
/// value; its base64 in both alphabets, padded or not, alone or inside a longer base64 string
/// at each of the three byte alignments (only the characters fixed by the value itself);
/// RFC 3986 percent-encoding with upper- and lower-case hex; and its JSON string escaping.
fn forms_of(value: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE};
    let bytes = value.as_bytes();
    let mut out = vec![bytes.to_vec()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(bytes).into_bytes());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3usize {
            let mut data = vec![0u8; shift];
            data.extend_from_slice(bytes);
            // Characters holding bits of the bytes before or after vary with the context.
            let (skip, end) = ((8 * shift).div_ceil(6), 8 * data.len() / 6);
            out.push(engine.encode(&data).as_bytes()[skip..end].to_vec());
        }
    }
    for hex in ["0123456789ABCDEF", "0123456789abcdef"] {
        let mut encoded = Vec::new();
        for &b in bytes {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                encoded.push(b);
            } else {
                encoded.extend_from_slice(&[
                    b'%',
                    hex.as_bytes()[usize::from(b >> 4)],
                    hex.as_bytes()[usize::from(b & 15)],
                ]);
            }
        }
        out.push(encoded);
    }
    // RFC 8259 §7, escaping only what must be: the quote, the backslash, controls (tab).
    let mut json = String::new();
    for c in value.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\t' => json.push_str("\\t"),
            c if u32::from(c) < 0x20 => json.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => json.push(c),
        }
    }
    out.push(json.into_bytes());
    out
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the scrubber makes of `payload`, and which of its bytes it wrote (a replacement)
/// rather than passed on from the upstream.
fn scrubbed(scrubber: &Replacer, payload: &[u8]) -> (Vec<u8>, Vec<bool>) {
    let mut bytes = Vec::with_capacity(payload.len());
    let mut written = Vec::with_capacity(payload.len());
    scrubber.for_each_segment(payload, |segment| {
        let (part, by_keyswap) = match segment {
            Segment::Plain(part) => (part, false),
            Segment::Replacement(part) => (part, true),
        };
        bytes.extend_from_slice(part);
        written.extend(std::iter::repeat_n(by_keyswap, part.len()));
    });
    (bytes, written)
}

/// For one case with valid secrets: every message the guard lets through toward the agent
/// (in order, until the first cut) is the scrubbed message (a control payload cut to its
/// limit), of the same kind (a close keeps its code), text stays valid UTF-8, a control
/// payload within 125 bytes and a close reason within 123; the only cut is
/// `ValueAcrossMessages`; when the stream holds no form of any value at all, every message
/// passes unchanged; and the payloads that passed, concatenated, hold no form of any value
/// (the raw value, its base64, percent and JSON forms; each also all-lower and all-upper case) made of upstream
/// bytes alone, whether the value came whole, split across messages, or in a control frame.
///
/// "Of upstream bytes alone": an occurrence that overlaps a replacement is not counted. The
/// scrubber replaces in one pass, so a placeholder whose end equals a value's start (or the
/// reverse) can form the value again with the bytes the upstream sent next to it (value
/// `abcdefgh`, placeholder `xx-abcde`, message `abcdefghfgh` → `xx-abcdefgh`). The agent
/// learns nothing from that it did not already hold (the placeholder, and upstream bytes that
/// are no value), and forbidding it would exclude most configs (a base64 form of a
/// placeholder and of a value commonly share a character at an end).
pub fn check_guard(case: &Case) {
    assert!(valid_secrets(&case.secrets), "invalid secrets in a case");
    // What must never reach the agent is written out here, not taken from the code under
    // test (`encodings::forms`): a form it forgot would otherwise be forgotten here too.
    let forms: Vec<Vec<u8>> = case
        .secrets
        .iter()
        .flat_map(|(v, _)| forms_of(v))
        .flat_map(|form| [form.to_ascii_lowercase(), form.to_ascii_uppercase(), form])
        .collect();
    let stream = stream(case);
    let messages = messages(case, &stream);
    // Clean: the case put no value in the stream, and no form of one arose by chance.
    let clean = !case.pieces.iter().any(|p| matches!(p, Piece::Value { .. }))
        && !forms.iter().any(|f| contains(&stream, f));

    let scrubber = Arc::new(scrubber(&case.secrets));
    let mut guard = Guard::new(scrubber.clone());
    let mut passed = Vec::new();
    let mut written = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let out = match guard.toward_agent(msg.clone()) {
            Ok(out) => out,
            Err(cut) => {
                assert!(
                    !clean,
                    "message {i} cut ({cut:?}) though no value is present"
                );
                assert_eq!(cut, Cut::ValueAcrossMessages, "message {i}: unexpected cut");
                break;
            }
        };
        match (msg, &out) {
            (Message::Text(_), Message::Text(text)) => assert!(
                std::str::from_utf8(text.as_bytes()).is_ok(),
                "message {i}: text not UTF-8"
            ),
            (Message::Binary(_), Message::Binary(_))
            | (Message::Close(None), Message::Close(None)) => {}
            (Message::Ping(_), Message::Ping(data)) | (Message::Pong(_), Message::Pong(data)) => {
                assert!(
                    data.len() <= MAX_CONTROL_PAYLOAD,
                    "message {i}: control payload {} bytes",
                    data.len()
                )
            }
            (Message::Close(Some(sent)), Message::Close(Some(frame))) => {
                assert_eq!(sent.code, frame.code, "message {i}: close code changed");
                assert!(
                    frame.reason.len() <= MAX_CLOSE_REASON,
                    "message {i}: close reason {} bytes",
                    frame.reason.len()
                );
            }
            _ => panic!("message {i}: the guard changed the message's kind"),
        }
        if clean {
            assert!(
                &out == msg,
                "message {i} changed though no value is present"
            );
        }
        let (want, by_keyswap) = scrubbed(&scrubber, payload(msg));
        let got = payload(&out);
        let limited = matches!(out, Message::Ping(_) | Message::Pong(_) | Message::Close(_));
        assert!(
            want.starts_with(got) && (got.len() == want.len() || limited),
            "message {i}: not the scrubbed message"
        );
        passed.extend_from_slice(got);
        written.extend_from_slice(&by_keyswap[..got.len()]);
    }
    for (n, form) in forms.iter().enumerate() {
        let upstream_only = (0..(passed.len() + 1).saturating_sub(form.len())).find(|&at| {
            passed[at..at + form.len()] == form[..] && !written[at..at + form.len()].contains(&true)
        });
        assert!(
            upstream_only.is_none(),
            "form {n} of a value reached the agent at byte {upstream_only:?}; {} messages, sizes {:?}",
            messages.len(),
            messages.iter().map(|m| payload(m).len()).collect::<Vec<_>>()
        );
    }
}
