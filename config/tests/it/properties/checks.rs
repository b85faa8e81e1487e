//! The properties of the config crate's parsers, checked on one input each. Shared by the
//! proptest suite (`config/tests/it/properties.rs`, on stable, in every CI run) and the cargo-fuzz
//! targets (`fuzz/fuzz_targets/`, which include this file), so both check the same contract.
//! Each function panics with the offending input when a property fails.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use keyswap_config::{normalize_path, HostPattern, PathError};

/// Fake values the loader's environment holds; they must never be shown.
pub const SECRET: &str = "props-fixture-real-value-0123456789";
pub const TOKEN: &str = "props-fixture-token-value-000001";

/// Whether loading `text` could run a program the input chose: `from_command` (also spelled
/// with YAML escapes, hence any backslash) or a `tasks_dir` whose files may say it. Such
/// inputs are never loaded by the property checks: generated input must not be executed.
pub fn may_run_programs(text: &str) -> bool {
    text.contains("from_command") || text.contains("tasks_dir") || text.contains('\\')
}

/// The loader, as `keyswap check` runs it (`load` = read the file + `load_str`), on `text`:
/// never panics; an error says what and how to fix; an error in this file points inside the
/// text (1-based line and column, or the end of the text); no value from the environment appears
/// in an error or in the loaded config's `Debug`. Skips what [`may_run_programs`].
pub fn check_load(text: &str) {
    if may_run_programs(text) {
        return;
    }
    let env = HashMap::from([
        ("KEYSWAP_FIXTURE_SECRET".to_string(), SECRET.to_string()),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN.to_string()),
        ("KEYSWAP_FIXTURE_ADMIN_TOKEN".to_string(), TOKEN.repeat(2)),
    ]);
    let file = Path::new("props.yaml");
    let values_in_text = text.contains(SECRET) || text.contains(TOKEN);
    let shows_value = |shown: &str| shown.contains(SECRET) || shown.contains(TOKEN);
    let errors = match keyswap_config::load_str(text, file, &env) {
        Ok(config) => {
            assert!(
                values_in_text || !shows_value(&format!("{config:?}")),
                "a value in Debug: {text:?}"
            );
            return;
        }
        Err(errors) => errors,
    };
    assert!(!errors.0.is_empty(), "Err without an error: {text:?}");
    // YAML's line breaks: \r\n, \r and \n.
    let lines: Vec<&str> = text
        .split("\r\n")
        .flat_map(|l| l.split(['\r', '\n']))
        .collect();
    for e in &errors.0 {
        // The field may be empty: the document root has no name (`file:1:1 : expected a
        // mapping`).
        assert!(
            !e.message.is_empty() && !e.fix.is_empty(),
            "no message or fix in {e}: {text:?}"
        );
        // One past the last line, column 1, is the end of a text without a final newline
        // (where yaml-rust2 reports a syntax error at the end).
        let at_end = e.line == lines.len() + 1 && e.column == 1;
        if e.file == file && !at_end {
            assert!(
                (1..=lines.len()).contains(&e.line),
                "line of {e} outside 1..={}: {text:?}",
                lines.len()
            );
            // In bytes: yaml-rust2 counts some columns in bytes (a syntax error at the end of
            // a line with multi-byte characters), which never exceeds the byte length + 1.
            let width = lines[e.line - 1].len();
            assert!(
                (1..=width + 1).contains(&e.column),
                "column of {e} outside 1..={}: {text:?}",
                width + 1
            );
        }
        assert!(
            values_in_text || !shows_value(&e.to_string()),
            "a value in an error: {text:?}"
        );
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `normalize_path`'s contract: refuses a target without a leading "/", a raw backslash or
/// a control character or space; on success the result starts with "/", normalises to
/// itself, has no empty, "." or ".." segment, no control character, space, backslash, "?",
/// "#" or non-ASCII byte, every "%" starts an upper-case escape of a byte that is neither
/// unreserved nor "/" or "\", and it has no more segments than the input.
pub fn check_normalize(raw: &str) {
    let result = normalize_path(raw);
    if !raw.starts_with('/') {
        assert_eq!(result, Err(PathError::NotOriginForm), "{raw:?}");
        return;
    }
    if raw.bytes().any(|b| b == b'\\' || b <= 0x20 || b == 0x7F) {
        assert!(result.is_err(), "accepted: {raw:?} -> {result:?}");
    }
    let Ok(out) = result else {
        return;
    };
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
    assert_eq!(
        normalize_path(&out).as_deref(),
        Ok(out.as_str()),
        "not idempotent: {raw:?}"
    );
    assert!(!out.contains("//"), "{raw:?} -> {out:?}");
    let body = out.strip_suffix('/').unwrap_or(&out);
    let segments: Vec<&str> = body.split('/').skip(1).collect();
    for segment in &segments {
        assert!(
            !segment.is_empty() && *segment != "." && *segment != "..",
            "segment {segment:?}: {raw:?} -> {out:?}"
        );
    }
    let input_segments = raw.split('/').filter(|s| !s.is_empty()).count();
    assert!(segments.len() <= input_segments, "{raw:?} -> {out:?}");
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        assert!(
            b > 0x20 && b < 0x7F && !matches!(b, b'\\' | b'?' | b'#'),
            "byte {b:#x}: {raw:?} -> {out:?}"
        );
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(upper_hex);
            let lo = bytes.get(i + 2).copied().and_then(upper_hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                panic!("bad escape at {i}: {raw:?} -> {out:?}");
            };
            let d = (hi << 4) | lo;
            assert!(
                !is_unreserved(d) && d != b'/' && d != b'\\',
                "escape of {d:#x} kept: {raw:?} -> {out:?}"
            );
        }
    }
}

/// `HostPattern::parse` and `matches` for the pattern `raw` and the request host `host`:
/// parsing is canonical (the Display of a pattern parses to the same pattern; names are
/// lowercase without a trailing dot; an all-numeric name is a dotted quad; IPv6 is in its
/// canonical form); an exact name matches itself in any case and with one trailing dot; and
/// a pattern never matches more than the operator wrote: an exact name only hosts equal to
/// it ignoring case and one trailing dot (IPv6 by address), `*.suffix` only one or more
/// labels followed by `.suffix`, never `suffix` itself and never an IPv4 literal.
pub fn check_host(raw: &str, host: &str) {
    let Ok(pattern) = HostPattern::parse(raw) else {
        return;
    };
    let shown = pattern.to_string();
    assert_eq!(HostPattern::parse(&shown).as_ref(), Ok(&pattern), "{raw:?}");
    let bare = host.strip_suffix('.').unwrap_or(host);
    match &pattern {
        HostPattern::Exact(name) if name.contains(':') => {
            let v6: Ipv6Addr = name.parse().expect("an exact pattern with ':' is IPv6");
            assert_eq!(v6.to_string(), *name, "not canonical: {raw:?}");
            assert!(pattern.matches(name) && pattern.matches(&format!("[{name}]")));
            if pattern.matches(host) {
                let inner = bare
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(bare);
                assert_eq!(
                    inner.parse::<Ipv6Addr>().ok(),
                    Some(v6),
                    "{raw:?} ~ {host:?}"
                );
            }
        }
        HostPattern::Exact(name) => {
            assert!(
                !name.is_empty() && !name.ends_with('.'),
                "{raw:?} -> {name:?}"
            );
            assert_eq!(*name, name.to_ascii_lowercase(), "{raw:?}");
            if name
                .split('.')
                .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
            {
                assert!(name.parse::<Ipv4Addr>().is_ok(), "numeric name {name:?}");
            }
            assert!(pattern.matches(name) && pattern.matches(&name.to_ascii_uppercase()));
            assert!(pattern.matches(&format!("{name}.")), "{raw:?}");
            assert!(!pattern.matches(&format!("{name}..")), "{raw:?}");
            assert!(!pattern.matches(&format!("x.{name}")), "{raw:?}");
            assert_eq!(
                pattern.matches(host),
                bare.eq_ignore_ascii_case(name),
                "{raw:?} ~ {host:?}"
            );
        }
        HostPattern::Wildcard { suffix } => {
            assert!(!suffix.is_empty() && !suffix.ends_with('.') && !suffix.contains('*'));
            assert_eq!(*suffix, suffix.to_ascii_lowercase(), "{raw:?}");
            assert!(!pattern.matches(suffix), "{raw:?} matches its own suffix");
            assert!(!pattern.matches(&format!(".{suffix}")), "{raw:?}");
            assert!(pattern.matches(&format!("a.{suffix}")), "{raw:?}");
            assert!(
                pattern.matches(&format!("A._b.{}.", suffix.to_ascii_uppercase())),
                "{raw:?}"
            );
            if pattern.matches(host) {
                assert!(bare.parse::<Ipv4Addr>().is_err(), "IPv4 {host:?} ~ {raw:?}");
                let lower = bare.to_ascii_lowercase();
                let labels = lower
                    .strip_suffix(suffix.as_str())
                    .and_then(|p| p.strip_suffix('.'))
                    .unwrap_or_else(|| panic!("{host:?} is not under {suffix:?}"));
                assert!(
                    labels.split('.').all(|l| !l.is_empty() && l.len() <= 63),
                    "{host:?} ~ {raw:?}"
                );
            }
        }
    }
}
