//! The config loader on arbitrary text, as `keyswap check` loads a file. The properties are
//! `check_load` in config/tests/it/properties/checks.rs (shared with the proptest suite); inputs
//! that could make the loader run a program are skipped there.
#![no_main]

#[allow(dead_code)]
#[path = "../../config/tests/it/properties/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        checks::check_load(text);
    }
});
