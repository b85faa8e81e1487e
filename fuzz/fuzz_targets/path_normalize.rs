//! `normalize_path` on arbitrary request targets. The properties are `check_normalize` in
//! config/tests/it/properties/checks.rs (shared with the proptest suite).
#![no_main]

#[allow(dead_code)]
#[path = "../../config/tests/it/properties/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        checks::check_normalize(raw);
    }
});
