//! `HostPattern::parse` and `matches` on arbitrary text `pattern\nhost` (without a newline
//! the text is both). The properties are `check_host` in config/tests/it/properties/checks.rs
//! (shared with the proptest suite).
#![no_main]

#[allow(dead_code)]
#[path = "../../config/tests/it/properties/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (raw, host) = text.split_once('\n').unwrap_or((text, text));
        checks::check_host(raw, host);
    }
});
