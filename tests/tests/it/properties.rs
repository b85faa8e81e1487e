//! Property test of the streaming replacer that scrubs secrets out of responses and swaps
//! placeholders into bodies: whatever the frame boundaries, its output equals an independent
//! leftmost-longest replace-all. The property lives in `properties/replacer.rs`, which the
//! cargo-fuzz target `replacer_stream` checks too; here it runs on stable in every CI run.
//! Likewise the WebSocket guard (`properties/websocket.rs`, fuzz target `websocket_guard`):
//! values split across messages of every kind, in every form, never reach the agent.

#[path = "properties/replacer.rs"]
mod replacer;
#[path = "properties/websocket.rs"]
mod websocket;

use proptest::prelude::*;

/// (pattern, replacement) pairs, the haystack, and the frame sizes it is cut into.
type Case = (Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>, Vec<usize>);

/// Patterns over a three-letter alphabet, so overlaps, prefixes of one another and near
/// misses are common; replacements of any bytes (also empty, also longer).
fn small_alphabet() -> impl Strategy<Value = Case> {
    let abc = || prop::collection::vec(prop::sample::select(b"abc".to_vec()), 0..7);
    (
        prop::collection::vec((abc(), prop::collection::vec(any::<u8>(), 0..9)), 0..6),
        prop::collection::vec(prop::sample::select(b"abc".to_vec()), 0..300),
        prop::collection::vec(0..24usize, 0..8),
    )
}

/// Secret-like values (longer, printable) hidden in printable noise, cut into frames.
fn secret_like() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(("[a-f0-9]{1,40}", "[A-Z_]{0,30}"), 1..4),
        prop::collection::vec(0..10usize, 0..40),
        prop::collection::vec(0..64usize, 0..8),
        "[ -~]{0,20}",
    )
        .prop_map(|(pairs, picks, sizes, filler)| {
            let mut haystack = Vec::new();
            for pick in picks {
                match pairs.get(pick) {
                    Some((secret, _)) => haystack.extend_from_slice(secret.as_bytes()),
                    None => haystack.extend_from_slice(filler.as_bytes()),
                }
            }
            let pairs = pairs
                .into_iter()
                .map(|(p, r)| (p.into_bytes(), r.into_bytes()))
                .collect();
            (pairs, haystack, sizes)
        })
}

/// Secrets as the config accepts them: values of 8 to 40 characters from token characters,
/// URL and JSON specials, space, tab and non-ASCII; placeholders in keyswap's usual shape.
fn secrets() -> impl Strategy<Value = Vec<(String, String)>> {
    const POOL: &[&str] = &[
        "a", "b", "Z", "0", "9", "-", "_", ".", "+", "/", "=", " ", "\t", "\"", "\\", "<", "&",
        "%", "é", "€", "😀",
    ];
    let value = prop::collection::vec(prop::sample::select(POOL), 8..40).prop_map(|v| v.concat());
    prop::collection::vec((value, "ks-[a-z0-9]{5,12}"), 1..4)
        .prop_filter("the config accepts them", |s| websocket::valid_secrets(s))
}

fn form() -> impl Strategy<Value = websocket::Form> {
    use websocket::Form;
    prop_oneof![
        3 => Just(Form::Raw),
        1 => Just(Form::OtherCase),
        2 => Just(Form::Base64),
        1 => any::<u8>().prop_map(|before| Form::Base64Blob { before }),
        1 => any::<u8>().prop_map(|before| Form::Base64UrlBlob { before }),
        2 => any::<usize>().prop_map(Form::Derived),
    ]
}

fn piece() -> impl Strategy<Value = websocket::Piece> {
    use websocket::Piece;
    prop_oneof![
        3 => "[ -~]{0,12}".prop_map(|s| Piece::Noise(s.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Piece::Noise),
        3 => (0..3usize, form()).prop_map(|(secret, form)| Piece::Value { secret, form }),
        1 => (0..3usize, any::<usize>()).prop_map(|(secret, len)| Piece::Prefix { secret, len }),
    ]
}

/// Streams of noise, values in every form and near misses, cut into messages of every kind
/// at arbitrary points (often inside a value).
fn websocket_case() -> impl Strategy<Value = websocket::Case> {
    (
        secrets(),
        prop::collection::vec(piece(), 0..10),
        prop::collection::vec(0..48usize, 0..8),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(secrets, pieces, sizes, kinds)| websocket::Case {
            secrets,
            pieces,
            sizes,
            kinds,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn websocket_values_never_reach_the_agent_across_messages(case in websocket_case()) {
        websocket::check_guard(&case);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn streamed_replacement_equals_replace_all_under_any_chunking(
        (pairs, haystack, sizes) in small_alphabet()
    ) {
        replacer::check_replacer(&pairs, &haystack, &sizes);
    }

    #[test]
    fn secrets_split_across_frames_are_always_replaced((pairs, haystack, sizes) in secret_like()) {
        replacer::check_replacer(&pairs, &haystack, &sizes);
    }
}
