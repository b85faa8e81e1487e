//! Property test of the streaming replacer that scrubs secrets out of responses and swaps
//! placeholders into bodies: whatever the frame boundaries, its output equals an independent
//! leftmost-longest replace-all. The property lives in `properties/replacer.rs`, which the
//! cargo-fuzz target `replacer_stream` checks too; here it runs on stable in every CI run.

#[path = "properties/replacer.rs"]
mod replacer;

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
