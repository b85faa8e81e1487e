//! Every form in which an ordinary API could send a real secret value back: the value itself,
//! its base64 (standard and URL-safe, padded, unpadded, and embedded at each of the three byte
//! alignments inside a longer base64 string), its percent-encodings (the escape sets of the
//! common URL encoders, upper- and lower-case hex, `+` or `%20` for space) and its JSON string
//! escapes (minimal, `\/`, HTML-safe, `\uXXXX` for non-ASCII with surrogate pairs, or for
//! everything). Each form comes with what replaces it in a response: the same encoding of the
//! placeholder where that is well-defined, otherwise the placeholder's base64 at the same
//! alignment, which reveals nothing about the value.
//!
//! The forms are built once per config snapshot (the proxy's `Snapshot`) and all go into the one
//! scrubber automaton, so responses, trailers and WebSocket messages are checked against every
//! form in a single pass.
//!
//! The keyswap-written forms are covered too: the percent-encoding `swap_query` of the proxy
//! writes is the RFC 3986 unreserved set with upper-case hex, and the base64 of a swapped
//! `Basic` credential (`user:value`) contains one of the alignment fragments of the value.
//!
//! This module never formats, logs or returns a form anywhere but to its caller.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;

/// Derived forms shorter than this are not scrubbed: they would match ordinary text. The raw
/// value is always scrubbed; the config refuses values shorter than
/// `keyswap_config::MIN_VALUE_LEN` (8 bytes), and every derived form of such a value is at
/// least 9 bytes long (the shortest is a 10-character base64 fragment), so with a valid
/// config nothing is ever dropped by this limit.
pub const MIN_FORM_LEN: usize = 8;

/// A form of a value and what replaces it.
pub type Form = (Vec<u8>, Bytes);

/// Every form of `value`, each with its replacement derived from `placeholder`. The raw value
/// comes first; duplicates are left in (the caller deduplicates across all secrets).
pub fn forms(value: &str, placeholder: &str) -> Vec<Form> {
    let mut out: Vec<Form> = vec![(
        value.as_bytes().to_vec(),
        Bytes::copy_from_slice(placeholder.as_bytes()),
    )];
    let mut derived = |form: Vec<u8>, replacement: Vec<u8>| {
        if form.len() >= MIN_FORM_LEN {
            out.push((form, Bytes::from(replacement)));
        }
    };
    for style in PERCENT_STYLES {
        for hex in [Hex::Upper, Hex::Lower] {
            derived(
                percent_encode(value.as_bytes(), style, hex).into_bytes(),
                percent_encode(placeholder.as_bytes(), style, hex).into_bytes(),
            );
        }
    }
    for style in json_styles() {
        derived(
            json_escape(value, style).into_bytes(),
            json_escape(placeholder, style).into_bytes(),
        );
    }
    // Whole-value base64: exact, so the placeholder's base64 decodes to the placeholder.
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        derived(
            engine.encode(value).into_bytes(),
            engine.encode(placeholder).into_bytes(),
        );
    }
    // The value inside a longer base64 string (a `Basic` credential, a JWT, a blob).
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3 {
            derived(
                base64_fragment(value.as_bytes(), shift, engine).into_bytes(),
                base64_fragment(placeholder.as_bytes(), shift, engine).into_bytes(),
            );
        }
    }
    out
}

/// The base64 characters that depend only on `value` when it starts at byte offset `shift`
/// (mod 3) of the encoded data: the characters at either end that mix in bits of the
/// neighbouring bytes are left out, since they vary with the context.
pub fn base64_fragment(value: &[u8], shift: usize, engine: &impl Engine) -> String {
    let mut data = vec![0u8; shift];
    data.extend_from_slice(value);
    let skip = (8 * shift).div_ceil(6);
    let end = 8 * data.len() / 6;
    let encoded = engine.encode(&data);
    encoded.get(skip..end).unwrap_or_default().to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hex {
    Upper,
    Lower,
}

fn push_hex(out: &mut String, byte: u8, hex: Hex) {
    let digits: &[u8; 16] = match hex {
        Hex::Upper => b"0123456789ABCDEF",
        Hex::Lower => b"0123456789abcdef",
    };
    out.push(digits[usize::from(byte >> 4)] as char);
    out.push(digits[usize::from(byte & 0xF)] as char);
}

/// One URL encoder's behaviour: which bytes besides ASCII letters and digits it leaves as they
/// are, and whether it writes a space as `+`.
struct PercentStyle {
    keeps: &'static [u8],
    space_as_plus: bool,
}

const PERCENT_STYLES: &[PercentStyle] = &[
    // RFC 3986 unreserved: keyswap's own swap_query, PHP rawurlencode, Python
    // quote(safe=''), Go url.PathEscape's core, .NET EscapeDataString, curl.
    PercentStyle {
        keeps: b"-._~",
        space_as_plus: false,
    },
    // Python urllib.parse.quote (safe='/' by default).
    PercentStyle {
        keeps: b"-._~/",
        space_as_plus: false,
    },
    // Python quote_plus, Go url.QueryEscape, Ruby CGI.escape.
    PercentStyle {
        keeps: b"-._~",
        space_as_plus: true,
    },
    // JavaScript encodeURIComponent.
    PercentStyle {
        keeps: b"-_.!~*'()",
        space_as_plus: false,
    },
    // JavaScript encodeURI.
    PercentStyle {
        keeps: b"-_.!~*'();/?:@&=+$,#",
        space_as_plus: false,
    },
    // WHATWG application/x-www-form-urlencoded (URLSearchParams), Java URLEncoder.
    PercentStyle {
        keeps: b"*-._",
        space_as_plus: true,
    },
    // PHP urlencode.
    PercentStyle {
        keeps: b"-._",
        space_as_plus: true,
    },
    // .NET WebUtility.UrlEncode / HttpUtility.UrlEncode.
    PercentStyle {
        keeps: b"-_.!*()",
        space_as_plus: true,
    },
    // Go url.PathEscape.
    PercentStyle {
        keeps: b"-._~$&+,:;=@",
        space_as_plus: false,
    },
    // Encode every byte.
    PercentStyle {
        keeps: b"",
        space_as_plus: false,
    },
];

fn percent_encode(bytes: &[u8], style: &PercentStyle, hex: Hex) -> String {
    let everything = style.keeps.is_empty() && !style.space_as_plus;
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if !everything && (b.is_ascii_alphanumeric() || style.keeps.contains(&b)) {
            out.push(b as char);
        } else if b == b' ' && style.space_as_plus {
            out.push('+');
        } else {
            out.push('%');
            push_hex(&mut out, b, hex);
        }
    }
    out
}

/// One JSON encoder's behaviour.
#[derive(Clone, Copy)]
struct JsonStyle {
    /// `/` as `\/` (PHP).
    slash: bool,
    /// `<`, `>`, `&`, U+2028 and U+2029 as `\u003c`… (Go, and HTML-safe JS serializers).
    html: bool,
    /// Non-ASCII as `\uXXXX` with surrogate pairs (Python `ensure_ascii`, PHP, Jackson).
    non_ascii: Option<Hex>,
    /// Every character as `\uXXXX`.
    all: Option<Hex>,
}

fn json_styles() -> Vec<JsonStyle> {
    let mut styles = Vec::new();
    for slash in [false, true] {
        for html in [false, true] {
            for non_ascii in [None, Some(Hex::Lower), Some(Hex::Upper)] {
                styles.push(JsonStyle {
                    slash,
                    html,
                    non_ascii,
                    all: None,
                });
            }
        }
    }
    for hex in [Hex::Lower, Hex::Upper] {
        styles.push(JsonStyle {
            slash: false,
            html: false,
            non_ascii: None,
            all: Some(hex),
        });
    }
    styles
}

fn push_u_escape(out: &mut String, c: char, hex: Hex) {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        out.push_str("\\u");
        let [hi, lo] = unit.to_be_bytes();
        push_hex(out, hi, hex);
        push_hex(out, lo, hex);
    }
}

/// The contents of a JSON string holding `text`, escaped as `style` says.
fn json_escape(text: &str, style: JsonStyle) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if let Some(hex) = style.all {
            push_u_escape(&mut out, c, hex);
            continue;
        }
        let hex = style.non_ascii.unwrap_or(Hex::Lower);
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(&mut out, c, hex),
            '/' if style.slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style.html => {
                push_u_escape(&mut out, c, hex)
            }
            c if !c.is_ascii() && style.non_ascii.is_some() => push_u_escape(&mut out, c, hex),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replace::Replacer;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// A value of 8 to 48 characters drawn from token characters, URL and JSON specials,
        /// spaces, tabs and non-ASCII (including characters outside the BMP).
        fn value(&mut self) -> String {
            const POOL: &[&str] = &[
                "a", "Z", "0", "9", "-", "_", ".", "~", "+", "/", "=", " ", "\t", "\"", "\\", "<",
                ">", "&", "'", "(", "*", "!", "%", "?", "#", ":", "@", "é", "ß", "€", "日", "😀",
                "\u{2028}",
            ];
            let len = 8 + self.below(40);
            (0..len).map(|_| POOL[self.below(POOL.len())]).collect()
        }
    }

    fn scrubber(value: &str) -> Replacer {
        Replacer::new(forms(value, "ks-placeholder-0001")).expect("automaton")
    }

    fn percent(bytes: &[u8], keep: impl Fn(u8) -> bool, plus: bool, lower: bool) -> String {
        bytes
            .iter()
            .map(|&b| match b {
                b' ' if plus => "+".to_string(),
                b if keep(b) => (b as char).to_string(),
                b if lower => format!("%{b:02x}"),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Python's json.dumps with ensure_ascii: every non-ASCII char as \uXXXX, lower hex.
    fn ensure_ascii(json: &str) -> String {
        ensure_ascii_hex(json, false)
    }

    /// `ensure_ascii` with upper-case hex, as Jackson's ESCAPE_NON_ASCII writes it.
    fn ensure_ascii_hex(json: &str, upper: bool) -> String {
        let mut out = String::new();
        for c in json.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&if upper {
                        format!("\\u{u:04X}")
                    } else {
                        format!("\\u{u:04x}")
                    });
                }
            }
        }
        out
    }

    /// Encodings produced by real encoders (the `base64` crate, serde_json, the escape sets
    /// of common URL encoders written out independently), each embedded in other text.
    fn encoded_by_real_encoders(value: &str) -> Vec<(&'static str, String)> {
        let b = value.as_bytes();
        let unreserved = |c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c);
        let component = |c: u8| c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c);
        let serde = serde_json::to_string(value).expect("json");
        let serde = serde[1..serde.len() - 1].to_string();
        let mut cases = vec![
            ("raw", value.to_string()),
            ("base64 standard", STANDARD.encode(b)),
            ("base64 url-safe", URL_SAFE.encode(b)),
            ("base64 unpadded", STANDARD_NO_PAD.encode(b)),
            ("base64 url unpadded", URL_SAFE_NO_PAD.encode(b)),
            ("percent rfc3986", percent(b, unreserved, false, false)),
            ("percent rfc3986 lower", percent(b, unreserved, false, true)),
            ("quote_plus", percent(b, unreserved, true, false)),
            ("encodeURIComponent", percent(b, component, false, false)),
            ("percent everything", percent(b, |_| false, false, false)),
            (
                "percent everything lower",
                percent(b, |_| false, false, true),
            ),
            ("json serde", serde.clone()),
            ("json php slash", ensure_ascii(&serde.replace('/', "\\/"))),
            ("json ensure_ascii", ensure_ascii(&serde)),
            ("json ensure_ascii upper", ensure_ascii_hex(&serde, true)),
            (
                "json go html-safe",
                serde
                    .replace('<', "\\u003c")
                    .replace('>', "\\u003e")
                    .replace('&', "\\u0026")
                    .replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029"),
            ),
        ];
        for user in ["", "u", "us", "x-access-token"] {
            let credential = format!("{user}:{value}");
            cases.push(("basic credential", STANDARD.encode(credential.as_bytes())));
        }
        for prefix in ["", "a", "ab"] {
            let blob = format!("{prefix}{value}{prefix}tail");
            cases.push(("base64 blob", STANDARD.encode(blob.as_bytes())));
            cases.push(("base64url blob", URL_SAFE_NO_PAD.encode(blob.as_bytes())));
        }
        cases
    }

    #[test]
    fn real_encoders_output_is_matched_for_random_values() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let value = rng.value();
            let scrubber = scrubber(&value);
            for (what, encoded) in encoded_by_real_encoders(&value) {
                let embedded = format!("{{\"k\":\"{encoded}\"}} and more");
                let replaced = scrubber.replace_all(embedded.as_bytes());
                assert!(replaced.is_some(), "round {round}: {what} not matched");
                let replaced = replaced.unwrap_or_default();
                // The value is gone in that form (the replacement never reintroduces it).
                assert!(
                    !contains(&replaced, encoded.as_bytes()),
                    "round {round}: {what} survived"
                );
            }
        }
    }

    fn unreserved(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"-._~".contains(&c)
    }

    #[test]
    fn exact_forms_are_replaced_by_the_same_encoding_of_the_placeholder() {
        let value = "v/al ue+ü😀<x>";
        let placeholder = "ks-placeholder-0001";
        let scrubber = Replacer::new(forms(value, placeholder)).unwrap();
        let cases = [
            (STANDARD.encode(value), STANDARD.encode(placeholder)),
            (
                URL_SAFE_NO_PAD.encode(value),
                URL_SAFE_NO_PAD.encode(placeholder),
            ),
            (
                percent(value.as_bytes(), unreserved, false, false),
                percent(placeholder.as_bytes(), unreserved, false, false),
            ),
            (ensure_ascii(value), placeholder.to_string()),
        ];
        for (form, want) in cases {
            let got = scrubber.replace_all(form.as_bytes()).expect("matched");
            assert_eq!(got, want.as_bytes());
        }
    }

    /// The cost of one secret in the scrubber, as the README reports it: patterns after
    /// deduplication and the automaton's heap.
    #[test]
    fn one_secret_costs_a_bounded_number_of_patterns() {
        let cases = [
            ("token", "ghp_0123456789abcdefABCDEF0123456789abcd"),
            ("special", "p@ss/w0rd+ü x=&<>\"~😀:"),
        ];
        for (what, value) in cases {
            let r = Replacer::with_case_variants(forms(value, "ks-placeholder-0001")).unwrap();
            eprintln!(
                "{what} ({} bytes): {} patterns, automaton {} bytes",
                value.len(),
                r.pattern_count(),
                r.memory_usage()
            );
            // At most 40 forms, each at most three times (as given, lower- and upper-case).
            assert!(r.pattern_count() <= 120, "{what}: {}", r.pattern_count());
        }
    }

    #[test]
    fn the_shortest_value_keeps_every_derived_form() {
        let value = "abcdefgh";
        let all = forms(value, "ks-placeholder-0001");
        // raw + 20 percent + 14 json + 4 whole base64 + 6 fragments, before deduplication.
        assert_eq!(all.len(), 1 + 20 + 14 + 4 + 6);
        assert!(all.iter().all(|(f, _)| f.len() >= 8));
    }

    #[test]
    fn fragments_leave_out_the_boundary_characters() {
        // "abc" at shift 0 is exactly "YWJj"; at shift 1 only the characters after the first
        // two (which mix in the preceding byte) are fixed.
        assert_eq!(base64_fragment(b"abc", 0, &STANDARD_NO_PAD), "YWJj");
        let inside = STANDARD.encode(b"Xabc");
        let fragment = base64_fragment(b"abc", 1, &STANDARD_NO_PAD);
        assert!(inside.contains(&fragment) && !fragment.is_empty());
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
