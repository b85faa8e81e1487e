//! The WebSocket guard (upstream → agent) under arbitrary secrets and message streams. The
//! property is `check_guard` in tests/tests/it/properties/websocket.rs (shared with the
//! proptest suite): whatever the secrets, the forms their values take and where the stream
//! is cut into text, binary, ping, pong and close messages, no form of a value reaches the
//! agent, messages keep their kind and protocol limits, and a stream without any value
//! passes unchanged.
#![no_main]

use arbitrary::Arbitrary;

#[path = "../../tests/tests/it/properties/websocket.rs"]
mod websocket;

use websocket::{Case, Form, Piece};

#[derive(Arbitrary, Debug)]
enum InputForm {
    Raw,
    OtherCase,
    Base64,
    Base64Blob(u8),
    Base64UrlBlob(u8),
    Derived(u8),
}

#[derive(Arbitrary, Debug)]
enum InputPiece {
    Noise(Vec<u8>),
    Value(u8, InputForm),
    Prefix(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// (value, placeholder); cases the config would refuse are skipped.
    secrets: Vec<(String, String)>,
    pieces: Vec<InputPiece>,
    sizes: Vec<u8>,
    kinds: Vec<u8>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let Input {
        mut secrets,
        mut pieces,
        sizes,
        kinds,
    } = input;
    secrets.truncate(4);
    for (value, placeholder) in &mut secrets {
        truncate_utf8(value, 64);
        truncate_utf8(placeholder, 32);
    }
    if !websocket::valid_secrets(&secrets) {
        return;
    }
    pieces.truncate(32);
    let pieces = pieces
        .into_iter()
        .map(|piece| match piece {
            InputPiece::Noise(mut bytes) => {
                bytes.truncate(256);
                Piece::Noise(bytes)
            }
            InputPiece::Value(secret, form) => Piece::Value {
                secret: usize::from(secret),
                form: match form {
                    InputForm::Raw => Form::Raw,
                    InputForm::OtherCase => Form::OtherCase,
                    InputForm::Base64 => Form::Base64,
                    InputForm::Base64Blob(before) => Form::Base64Blob { before },
                    InputForm::Base64UrlBlob(before) => Form::Base64UrlBlob { before },
                    InputForm::Derived(n) => Form::Derived(usize::from(n)),
                },
            },
            InputPiece::Prefix(secret, len) => Piece::Prefix {
                secret: usize::from(secret),
                len: usize::from(len),
            },
        })
        .collect();
    let case = Case {
        secrets,
        pieces,
        sizes: sizes.into_iter().map(usize::from).collect(),
        kinds,
    };
    websocket::check_guard(&case);
});

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}
