//! The suite's secrets: real values the proxy holds and placeholders the agent holds, and
//! [`assert_no_real_secret`], the leak check every test runs over what it observed.
//!
//! Never formats a real value: a failed check names the output and the secret, not the value.

use base64::Engine;

/// Real secret values used by the whole suite. Each begins with `KSREAL` so CI can grep
/// every output for that prefix.
pub const GITHUB_REAL: &str = "KSREAL-github-7f3a9c2e1b5d4f60a8e9";
pub const GITHUB_PLACEHOLDER: &str = "ghp_keyswap_github_0000000000000000000000";
pub const OPENAI_REAL: &str = "KSREAL-openai-c41d2e8f9a0b7c36";
pub const OPENAI_PLACEHOLDER: &str = "sk-keyswap-openai-placeholder";
pub const ALL_REAL: &[&str] = &[GITHUB_REAL, OPENAI_REAL];

/// The prefix every real value starts with.
pub const REAL_PREFIX: &str = "KSREAL";

/// Fails the test (without printing the secret) if any real value occurs in `haystack`;
/// `what` names the output checked.
///
/// Also catches the `KSREAL` prefix alone (a truncated leak) and a real value inside
/// base64 at any alignment (a leak through a re-encoded `Basic` credential).
pub fn assert_no_real_secret(what: &str, haystack: &[u8]) {
    if let Some(at) = find(haystack, REAL_PREFIX.as_bytes()) {
        panic!("{what} contains a real secret value (prefix {REAL_PREFIX} at byte {at})");
    }
    for (i, real) in ALL_REAL.iter().enumerate() {
        for needle in base64_forms(real.as_bytes()) {
            if let Some(at) = find(haystack, needle.as_bytes()) {
                panic!("{what} contains real secret #{i} base64-encoded (at byte {at})");
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The base64 characters fixed by `value` alone when it starts at each of the three byte
/// alignments inside a larger encoded buffer, in the standard and URL-safe alphabets.
fn base64_forms(value: &[u8]) -> Vec<String> {
    let mut forms = Vec::new();
    for shift in 0..3usize {
        let mut data = vec![0u8; shift];
        data.extend_from_slice(value);
        // Characters that mix in bits of the bytes before or after vary with context.
        let skip = (8 * shift).div_ceil(6);
        let end = 8 * data.len() / 6;
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let form = engine.encode(&data)[skip..end].to_string();
            if !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(haystack: &[u8]) -> bool {
        let haystack = haystack.to_vec();
        std::panic::catch_unwind(move || assert_no_real_secret("test", &haystack)).is_err()
    }

    #[test]
    fn every_real_value_has_the_prefix() {
        assert!(ALL_REAL.iter().all(|r| r.starts_with(REAL_PREFIX)));
    }

    #[test]
    fn passes_placeholders() {
        assert!(!fails(
            format!("Bearer {GITHUB_PLACEHOLDER} {OPENAI_PLACEHOLDER}").as_bytes()
        ));
    }

    #[test]
    fn catches_raw_and_base64_leaks_at_every_alignment() {
        assert!(fails(format!("x {GITHUB_REAL} y").as_bytes()));
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "a", "ab", "x-access-token:"] {
            let encoded = b64.encode(format!("{prefix}{OPENAI_REAL}:tail"));
            assert!(!encoded.contains(REAL_PREFIX));
            assert!(
                fails(encoded.as_bytes()),
                "missed prefix len {}",
                prefix.len()
            );
        }
    }
}
