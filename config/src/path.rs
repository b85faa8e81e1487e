//! Request paths: the one normalisation the proxy both matches on and forwards, and the
//! path globs of rules.
//!
//! Owns RFC 3986 dot-segment removal and the refusals an agent could use to make the proxy
//! and the upstream disagree about which resource a path names (`%2e%2e`, `%2f`, `//`,
//! `..;`, backslashes). It never clamps or guesses: anything ambiguous is an error.
//! Matching is case-sensitive, as paths are.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Why a request path was refused. Displays as a short phrase an agent can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with \"/\"")]
    NotOriginForm,
    #[error("invalid percent-encoding in the path")]
    InvalidPercentEncoding,
    #[error("encoded slash (%2F) in the path")]
    EncodedSlash,
    #[error("backslash in the path")]
    Backslash,
    #[error("\"..\" climbs above the root")]
    EscapesRoot,
    #[error("\".\" or \"..\" segment with \";\" parameters")]
    DotSegmentWithParameters,
    #[error("control character or space in the path")]
    ControlCharacter,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: these mean the same encoded or not, so they are decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_encoded(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

/// Normalises the path of an origin-form request target (no query).
///
/// Decodes `%XX` of unreserved characters, upper-cases the hex of other escapes, encodes
/// non-ASCII bytes (and a stray `?` or `#`) as `%XX`, collapses runs of `/`, and removes dot
/// segments (RFC 3986 §5.2.4), keeping a trailing slash. Refuses what upstreams could read
/// differently: encoded `/` or `\`, raw `\`, control characters and spaces, bad escapes, a
/// `..` above the root, and `.`/`..` with `;` parameters (servlet containers treat `..;` as
/// `..`). The result is what the proxy matches and forwards.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                match (hi << 4) | lo {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    d if is_unreserved(d) => decoded.push(char::from(d)),
                    d => push_encoded(&mut decoded, d),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x20 | 0x7F => return Err(PathError::ControlCharacter),
            b'?' | b'#' | 0x80..=0xFF => push_encoded(&mut decoded, b),
            _ => decoded.push(char::from(b)),
        }
        i += 1;
    }
    remove_dot_segments(&decoded)
}

enum Segment {
    Dot,
    DotDot,
    DotWithParameters,
    Name,
}

fn classify(segment: &str) -> Segment {
    match segment {
        "." => return Segment::Dot,
        ".." => return Segment::DotDot,
        _ => {}
    }
    let end = [segment.find(';'), segment.find("%3B")]
        .into_iter()
        .flatten()
        .min();
    match end.map(|end| &segment[..end]) {
        Some("." | "..") => Segment::DotWithParameters,
        _ => Segment::Name,
    }
}

/// Collapses `/` runs and removes dot segments of an already-decoded absolute path.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut trailing_slash = path.len() > 1 && path.ends_with('/');
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        match classify(segment) {
            Segment::Name => kept.push(segment),
            Segment::Dot => trailing_slash |= last,
            Segment::DotDot => {
                // Clamping at the root (as browsers do) would let "/../admin" match a rule
                // for "/admin" while some upstreams answer 400 or resolve it elsewhere.
                if kept.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
                trailing_slash |= last;
            }
            Segment::DotWithParameters => return Err(PathError::DotSegmentWithParameters),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// A rule's `paths:`: globs over normalised paths. `*` matches within one segment (never
/// `/`), `**` as a whole segment matches any number of segments, `?` one character,
/// `[abc]` and `{a,b}` as usual. Case-sensitive. `"/repos/**"` matches `/repos/x` and
/// `/repos/x/y` but not `/repos`.
#[derive(Debug, Clone)]
pub struct PathPatterns {
    sources: Vec<String>,
    set: GlobSet,
}

/// Why one pattern of a `paths:` list was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPatternError {
    pub index: usize,
    pub message: String,
    pub fix: String,
}

impl PathPatterns {
    /// Compiles the patterns; reports every bad one.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PathPatterns, Vec<PathPatternError>> {
        let mut builder = GlobSetBuilder::new();
        let mut errors = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let pattern = pattern.as_ref();
            let glob = check_form(pattern).and_then(|()| {
                GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .case_insensitive(false)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| {
                        (
                            format!("\"{pattern}\" is not a valid pattern: {}", e.kind()),
                            "check brackets and braces; \"*\" matches one segment, \"**\" any rest"
                                .into(),
                        )
                    })
            });
            match glob {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err((message, fix)) => errors.push(PathPatternError {
                    index,
                    message,
                    fix,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let set = builder.build().map_err(|e| {
            vec![PathPatternError {
                index: 0,
                message: format!("the patterns could not be compiled: {}", e.kind()),
                fix: "simplify the patterns".into(),
            }]
        })?;
        let sources = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        Ok(PathPatterns { sources, set })
    }

    /// Whether a normalised path (see [`normalize_path`]) matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// The patterns as written in the config, for display.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }
}

/// The patterns as written, joined by commas (`/repos/acme/**,/user`).
impl fmt::Display for PathPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sources.join(","))
    }
}

/// A pattern that no normalised path could ever match is a mistake: say so at load time.
fn check_form(pattern: &str) -> Result<(), (String, String)> {
    if !pattern.starts_with('/') {
        return Err((
            format!("\"{pattern}\" does not start with \"/\""),
            format!("write \"/{}\"", pattern.trim_start_matches("./")),
        ));
    }
    if pattern.bytes().any(|b| b <= 0x20 || b == 0x7F) {
        return Err((
            format!(
                "\"{}\" contains a space or control character",
                pattern.escape_debug()
            ),
            "write spaces as %20".into(),
        ));
    }
    let segments: Vec<&str> = pattern[1..].split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index + 1 < segments.len() {
            return Err((
                format!("\"{pattern}\" contains \"//\", which never appears in a normalised path"),
                "use a single \"/\"".into(),
            ));
        }
        if matches!(*segment, "." | "..") {
            return Err((
                format!("\"{pattern}\" contains a \".\" or \"..\" segment, which never appears in a normalised path"),
                "write the path without dot segments".into(),
            ));
        }
    }
    let bytes = pattern.as_bytes();
    for (i, _) in pattern.match_indices('%') {
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err((
                format!("\"{pattern}\" has an invalid percent-encoding"),
                "write \"%\" followed by two hex digits, or %25 for a literal \"%\"".into(),
            ));
        };
        let escape = &pattern[i..i + 3];
        let decoded = (hi << 4) | lo;
        if matches!(decoded, b'/' | b'\\') {
            return Err((
                format!("\"{pattern}\" contains {escape}, which requests may not contain"),
                "remove it: encoded slashes and backslashes are refused".into(),
            ));
        }
        if is_unreserved(decoded) {
            return Err((
                format!("\"{pattern}\" contains {escape}, which normalised paths decode"),
                format!("write \"{}\" instead of {escape}", char::from(decoded)),
            ));
        }
        if escape.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err((
                format!("\"{pattern}\" contains {escape}, but normalised paths use uppercase hex"),
                format!("write {}", escape.to_ascii_uppercase()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::*;

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/../b", Ok("/b")),
            ("/%2e%2e/x", Err(EscapesRoot)),
            ("/a/%2e%2e/b", Ok("/b")),
            ("/a/%2E%2e/b", Ok("/b")),
            ("/a/.%2e/b", Ok("/b")),
            ("/a%2fb", Err(EncodedSlash)),
            ("/a%2Fb", Err(EncodedSlash)),
            ("//a///b", Ok("/a/b")),
            ("/A%7e", Ok("/A~")),
            ("/a%41%2d%5f", Ok("/aA-_")),
            ("/a/..;/b", Err(DotSegmentWithParameters)),
            ("/a/..;x/b", Err(DotSegmentWithParameters)),
            ("/a/.;/b", Err(DotSegmentWithParameters)),
            ("/a/%2e%2e;/b", Err(DotSegmentWithParameters)),
            ("/a/..%3b/b", Err(DotSegmentWithParameters)),
            ("/a;x/b", Ok("/a;x/b")),
            ("/a/...;/b", Ok("/a/...;/b")),
            ("/%zz", Err(InvalidPercentEncoding)),
            ("/%", Err(InvalidPercentEncoding)),
            ("/%4", Err(InvalidPercentEncoding)),
            ("/a\\b", Err(Backslash)),
            ("/a%5cb", Err(Backslash)),
            ("/../x", Err(EscapesRoot)),
            ("/..", Err(EscapesRoot)),
            ("/a/../../x", Err(EscapesRoot)),
            ("/a/./b/", Ok("/a/b/")),
            ("/a/.", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/a//../b", Ok("/b")),
            ("/a%3ab%3A", Ok("/a%3Ab%3A")),
            ("/a%20b", Ok("/a%20b")),
            ("/a b", Err(ControlCharacter)),
            ("/a\tb", Err(ControlCharacter)),
            ("/a\u{7f}", Err(ControlCharacter)),
            ("/a\0", Err(ControlCharacter)),
            ("/caf\u{e9}", Ok("/caf%C3%A9")),
            ("/a#b", Ok("/a%23b")),
            ("/%252e%252e/x", Ok("/%252e%252e/x")),
            ("", Err(NotOriginForm)),
            ("*", Err(NotOriginForm)),
            ("a/b", Err(NotOriginForm)),
            ("http://h/a", Err(NotOriginForm)),
        ];
        for (raw, want) in cases {
            let got = normalize_path(raw);
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{raw:?}");
            if let Ok(once) = &got {
                assert_eq!(
                    normalize_path(once).as_deref(),
                    Ok(once.as_str()),
                    "idempotent: {raw:?}"
                );
            }
        }
    }

    #[test]
    fn errors_display_short_lowercase_messages() {
        for e in [
            NotOriginForm,
            InvalidPercentEncoding,
            EncodedSlash,
            Backslash,
            EscapesRoot,
            DotSegmentWithParameters,
            ControlCharacter,
        ] {
            let text = e.to_string();
            assert!(
                text.len() < 60 && !text.starts_with(char::is_uppercase),
                "{text}"
            );
        }
    }

    fn patterns(p: &[&str]) -> PathPatterns {
        PathPatterns::new(p).expect("valid patterns")
    }

    #[test]
    fn glob_semantics() {
        let star = patterns(&["/repos/*/issues"]);
        assert!(star.matches("/repos/acme/issues"));
        assert!(!star.matches("/repos/acme/widget/issues"));
        assert!(!star.matches("/repos/issues"));

        let rest = patterns(&["/repos/acme/**"]);
        assert!(rest.matches("/repos/acme/widget"));
        assert!(rest.matches("/repos/acme/widget/issues/1"));
        assert!(rest.matches("/repos/acme/"));
        assert!(!rest.matches("/repos/acme"));
        assert!(!rest.matches("/repos/acmex/widget"));
        assert!(!rest.matches("/REPOS/acme/widget"));

        let exact = patterns(&["/echo", "/bytes/*"]);
        assert!(exact.matches("/echo") && exact.matches("/bytes/10"));
        assert!(
            !exact.matches("/echo/") && !exact.matches("/bytes/10/x") && !exact.matches("/Echo")
        );
        assert_eq!(exact.sources(), ["/echo", "/bytes/*"]);
        assert_eq!(exact.to_string(), "/echo,/bytes/*");

        let all = patterns(&["/**"]);
        assert!(all.matches("/a") && all.matches("/a/b/c"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_fix() {
        let cases = [
            (
                "repos/**",
                "does not start with \"/\"",
                "write \"/repos/**\"",
            ),
            ("/a//b", "\"//\"", "single"),
            ("/a/../b", "\"..\" segment", "without dot segments"),
            ("/a[", "not a valid pattern", "brackets"),
            ("/a%2Fb", "%2F", "encoded slashes"),
            ("/a%7e", "decode", "write \"~\""),
            ("/a%3a", "uppercase", "write %3A"),
            ("/a%zz", "invalid percent-encoding", "two hex digits"),
            ("/a b", "space", "%20"),
        ];
        for (pattern, message, fix) in cases {
            let errors = PathPatterns::new(&["/ok", pattern]).expect_err(pattern);
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].index, 1);
            assert!(
                errors[0].message.contains(message),
                "{pattern}: {}",
                errors[0].message
            );
            assert!(errors[0].fix.contains(fix), "{pattern}: {}", errors[0].fix);
        }
    }
}
