//! Property tests of the config crate's parsers, which face hostile input: the loader on
//! mutated fixtures and YAML-ish noise, the path normaliser, host patterns. The properties
//! live in `properties/checks.rs`, which the cargo-fuzz targets in `fuzz/` check too; here
//! they run on stable in every CI run (a few hundred cases each, well under a second).

#[path = "properties/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// Every fixture the loader tests use, except those that run a program (see
/// `checks::may_run_programs`).
fn fixtures() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("fixtures directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        &mut paths,
    );
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("fixture"))
        .filter(|text| !checks::may_run_programs(text))
        .collect()
}

const YAML_PIECES: &[&str] = &[
    "\r",
    "\r\n",
    ":",
    ": ",
    " ",
    "  ",
    "\n",
    "\n  ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "!!int ",
    "<<: *a\n",
    "---\n",
    "...\n",
    "~",
    "null",
    "true",
    "1e9",
    "-1",
    "0x10",
    "99999999999999999999",
    "é",
    "\t",
    "?",
    "|\n",
    ">-\n",
    "%",
    "*.",
    "..",
    "/",
    "host: ",
    "port: ",
    "paths: ",
    "methods: ",
    "secrets: ",
    "tasks:\n",
    "allow:\n",
    "version: 1\n",
    "placeholder: ",
    "from_env: ",
    "expires: ",
    "tunnel: true",
    "swap_in: ",
    "policies:\n",
    "ttl: ",
    "admin:\n",
    "listen: ",
    "upstream:\n",
    "resolve:\n",
];

/// A fixture with up to eight edits: a piece inserted, a range deleted, a line duplicated.
fn mutated_fixture() -> impl Strategy<Value = String> {
    let all = fixtures();
    assert!(all.len() > 10, "the fixtures were not found");
    let edit = (
        0..3u8,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0..YAML_PIECES.len(),
    );
    (0..all.len(), prop::collection::vec(edit, 0..8)).prop_map(move |(i, edits)| {
        let mut text = all[i].clone();
        for (kind, at, len, piece) in edits {
            let boundaries: Vec<usize> = (0..=text.len())
                .filter(|&b| text.is_char_boundary(b))
                .collect();
            let start = boundaries[at.index(boundaries.len())];
            match kind {
                0 => text.insert_str(start, YAML_PIECES[piece]),
                1 => {
                    let end = boundaries[len.index(boundaries.len())].max(start);
                    let end = end.min(start + 40);
                    let end = (end..=text.len())
                        .find(|&b| text.is_char_boundary(b))
                        .unwrap_or(text.len());
                    text.replace_range(start..end, "");
                }
                _ => {
                    let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
                    let line_end = text[start..]
                        .find('\n')
                        .map_or(text.len(), |p| start + p + 1);
                    let line = text[line_start..line_end].to_string();
                    text.insert_str(line_start, &line);
                }
            }
        }
        text
    })
}

fn yaml_noise() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(YAML_PIECES), 0..40).prop_map(|p| p.concat())
}

/// Found by the `config_load` fuzz target: YAML also breaks lines at a lone "\r", so an
/// error after one is on the next line.
#[test]
fn errors_after_a_carriage_return_are_located() {
    checks::check_load("version: 1\rtasks:\r  a: [\r  b: c: d\n");
    checks::check_load("versi\ron: 1\r\ntasks: x: y\n");
}

/// Found by the `config_load` fuzz target: a syntax error at the end of a last line with
/// multi-byte characters is located by its byte column.
#[test]
fn errors_at_the_end_of_multibyte_text_are_located() {
    checks::check_load("version: 1\ntasks:\n>\n t1  .ts:\u{1d} \u{b241}egi0o");
}

/// Found by the `host_pattern` fuzz target: `HostPattern::matches` for `*.suffix` splits the
/// request host at a byte offset that can fall inside a multi-byte character and panics
/// (config/src/host.rs, `HostPattern::matches`).
#[test]
fn wildcard_match_on_a_non_ascii_host_does_not_panic() {
    checks::check_host("*.ab", "x\u{4da}b");
}

#[test]
fn every_fixture_satisfies_the_loader_properties() {
    for text in fixtures() {
        checks::check_load(&text);
    }
}

const PATH_PIECES: &[&str] = &[
    "/", "//", ".", "..", "a", "b", "%2e", "%2E", "%2f", "%2F", "%5c", "%41", "%7e", "%3a", "%3b",
    "%3B", "%25", "%zz", "%", "%4", ";", ";x", "..;", "é", "?", "#", "\\", " ", "\t", "~", "-",
    "_", "%00", "%C3%A9", "*", "\u{7f}",
];

fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(PATH_PIECES), 0..16)
            .prop_map(|p| format!("/{}", p.concat())),
        prop::collection::vec(prop::sample::select(PATH_PIECES), 0..16).prop_map(|p| p.concat()),
        "/[ -~]{0,40}",
        any::<String>(),
    ]
}

const HOST_PIECES: &[&str] = &[
    "a",
    "\u{e9}",
    "\u{4da}",
    "b",
    "example",
    "com",
    "xn--bcher-kva",
    "-",
    "_",
    ".",
    "..",
    "*",
    "*.",
    "0",
    "1",
    "127",
    "255",
    "256",
    "0x7f",
    "0x",
    "00",
    ":",
    "::",
    "::1",
    "[",
    "]",
    "fe80",
    "A",
    "COM",
    " ",
    "/",
    "443",
    "a1",
];

fn host_like() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(HOST_PIECES), 0..10).prop_map(|p| p.concat())
}

/// A request host related to the pattern (so matches happen), or unrelated.
fn pattern_and_host() -> impl Strategy<Value = (String, String)> {
    (host_like(), host_like(), 0..5u8).prop_map(|(pattern, other, how)| {
        let base = pattern.trim_start_matches("*.").to_string();
        let host = match how {
            0 => other,
            1 => format!("{other}.{base}"),
            2 => format!("{}.", base.to_ascii_uppercase()),
            3 => format!("{other}{base}"),
            _ => base,
        };
        (pattern, host)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn loader_never_panics_and_locates_errors_on_mutated_fixtures(text in mutated_fixture()) {
        checks::check_load(&text);
    }

    #[test]
    fn loader_never_panics_and_locates_errors_on_yaml_noise(text in yaml_noise()) {
        checks::check_load(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn normalised_paths_are_canonical_and_never_climb(raw in path_like()) {
        checks::check_normalize(&raw);
    }

    #[test]
    fn host_patterns_are_canonical_and_never_overmatch((pattern, host) in pattern_and_host()) {
        checks::check_host(&pattern, &host);
    }
}
