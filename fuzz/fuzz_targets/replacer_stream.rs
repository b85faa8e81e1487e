//! The streaming replacer under arbitrary patterns, replacements, haystack and chunking. The
//! property is `check_replacer` in tests/tests/it/properties/replacer.rs (shared with the
//! proptest suite): the streamed output under any chunking equals an independent
//! leftmost-longest replace-all.
#![no_main]

use arbitrary::Arbitrary;

#[path = "../../tests/tests/it/properties/replacer.rs"]
mod replacer;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Maps every pattern and haystack byte onto "abc", so that matches, overlaps and
    /// near-matches are common; otherwise the bytes are used as given.
    small_alphabet: bool,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    haystack: Vec<u8>,
    /// Frame sizes, used in turn (0 is an empty frame).
    sizes: Vec<u8>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let Input {
        small_alphabet,
        mut pairs,
        mut haystack,
        sizes,
    } = input;
    pairs.truncate(8);
    haystack.truncate(4096);
    for (pattern, replacement) in &mut pairs {
        pattern.truncate(24);
        replacement.truncate(24);
    }
    if small_alphabet {
        let onto_abc = |v: &mut Vec<u8>| v.iter_mut().for_each(|b| *b = b'a' + *b % 3);
        pairs.iter_mut().for_each(|(pattern, _)| onto_abc(pattern));
        onto_abc(&mut haystack);
    }
    let sizes: Vec<usize> = sizes.into_iter().map(usize::from).collect();
    replacer::check_replacer(&pairs, &haystack, &sizes);
});
