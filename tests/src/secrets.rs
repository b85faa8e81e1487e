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
    let (scan, owner) = real_scan();
    if let Some(m) = scan.find(haystack) {
        match owner[m.pattern().as_usize()] {
            None => panic!(
                "{what} contains a real secret value (prefix {REAL_PREFIX} at byte {})",
                m.start()
            ),
            Some(i) => panic!(
                "{what} contains real secret #{i} base64-encoded (at byte {})",
                m.start()
            ),
        }
    }
}

/// One automaton for the prefix and every base64 form of [`ALL_REAL`] (built once: the
/// outputs checked run to megabytes); beside it, which real value each pattern betrays.
#[allow(clippy::type_complexity)]
fn real_scan() -> &'static (aho_corasick::AhoCorasick, Vec<Option<usize>>) {
    static SCAN: std::sync::OnceLock<(aho_corasick::AhoCorasick, Vec<Option<usize>>)> =
        std::sync::OnceLock::new();
    SCAN.get_or_init(|| {
        let mut needles = vec![REAL_PREFIX.to_string()];
        let mut owner = vec![None];
        for (i, real) in ALL_REAL.iter().enumerate() {
            for form in base64_forms(real.as_bytes()) {
                needles.push(form);
                owner.push(Some(i));
            }
        }
        let scan = aho_corasick::AhoCorasick::new(&needles).expect("needles build");
        (scan, owner)
    })
}

/// Fails the test (without printing any value) if `haystack` holds one of `values` (a value
/// the test added: another real secret, a refreshed one, a task token) as it is or
/// base64-encoded at any alignment. `kind` says what `values` are ("real secret", "task token").
pub fn assert_none_of(what: &str, haystack: &[u8], kind: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    let mut needles = Vec::new();
    let mut owner = Vec::new();
    for (i, value) in values.iter().enumerate() {
        assert!(!value.is_empty(), "an empty {kind} to look for");
        needles.push(value.clone());
        owner.push((i, "as it is"));
        for form in base64_forms(value.as_bytes()) {
            // Too short a fragment matches by chance; the raw value still counts.
            if form.len() >= 8 {
                needles.push(form);
                owner.push((i, "base64-encoded"));
            }
        }
    }
    let scan = aho_corasick::AhoCorasick::new(&needles).expect("needles build");
    if let Some(m) = scan.find(haystack) {
        let (i, how) = owner[m.pattern().as_usize()];
        panic!("{what} contains {kind} #{i} {how} (at byte {})", m.start());
    }
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
