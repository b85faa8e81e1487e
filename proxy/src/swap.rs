//! Step 5: swap placeholders for real values in the request.
//!
//! Every header value is scanned for every known placeholder — also inside the base64 of an
//! `Authorization: Basic` credential. If any placeholder belongs to a secret the matched rule
//! does not grant, nothing is swapped and the request is refused. Only then are granted
//! placeholders replaced. Swapped values are marked sensitive so HTTP/2 never indexes them.
//!
//! This is one of the two places that handle real values (the other is [`crate::snapshot`]);
//! it writes them into the outgoing request and nowhere else.

use std::collections::BTreeSet;

use base64::Engine;
use http::{header, HeaderMap, HeaderValue};
use keyswap_config::{Rule, SecretId};

use crate::replace::Replacer;

/// Placeholders of secrets the rule does not grant, found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotGranted(pub Vec<SecretId>);

/// What swapping the headers did.
#[derive(Default)]
pub struct HeaderSwap {
    /// The secrets swapped in. (An upstream that echoes a swapped `Basic` credential's
    /// base64 is caught by the value's base64 forms in the scrubber, see
    /// [`crate::encodings`].)
    pub used: BTreeSet<SecretId>,
}

/// Finds the placeholders in header values (including Basic credentials) and, when the rule
/// grants all of them, swaps them in place.
///
/// `placeholders` has pattern `i` = placeholder of `SecretId(i)`, replacement = its real value.
pub fn swap_headers(
    placeholders: &Replacer,
    headers: &mut HeaderMap,
    rule: Option<&Rule>,
) -> Result<HeaderSwap, NotGranted> {
    let found = find_in_headers(placeholders, headers);
    check_granted(&found, rule)?;
    let swap = HeaderSwap { used: found };
    if swap.used.is_empty() {
        return Ok(swap);
    }
    for (name, value) in headers.iter_mut() {
        let bytes = value.as_bytes();
        let basic = if name == header::AUTHORIZATION {
            swap_basic(placeholders, bytes)
        } else {
            None
        };
        let replaced = basic.or_else(|| placeholders.replace_all(bytes));
        if let Some(replaced) = replaced {
            // Real values were checked free of CR, LF and NUL when the config loaded.
            if let Ok(mut new_value) = HeaderValue::from_bytes(&replaced) {
                new_value.set_sensitive(true);
                *value = new_value;
            }
        }
    }
    Ok(swap)
}

/// Swaps placeholders in a raw query string; real values are percent-encoded so the URI
/// stays valid. Returns `None` when there was nothing to swap.
pub fn swap_query(
    placeholders: &Replacer,
    query: &str,
    rule: Option<&Rule>,
    used: &mut BTreeSet<SecretId>,
) -> Result<Option<String>, NotGranted> {
    let found: BTreeSet<SecretId> = placeholders
        .find_ids(query.as_bytes())
        .map(SecretId)
        .collect();
    check_granted(&found, rule)?;
    if found.is_empty() {
        return Ok(None);
    }
    used.extend(found);
    Ok(Some(encode_replacements(placeholders, query)))
}

fn encode_replacements(placeholders: &Replacer, query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 32);
    placeholders.for_each_segment(query.as_bytes(), |segment| match segment {
        crate::replace::Segment::Plain(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        crate::replace::Segment::Replacement(bytes) => percent_encode_into(&mut out, bytes),
    });
    out
}

fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn check_granted(found: &BTreeSet<SecretId>, rule: Option<&Rule>) -> Result<(), NotGranted> {
    let refused: Vec<SecretId> = found
        .iter()
        .copied()
        .filter(|id| !rule.is_some_and(|r| r.grants(*id)))
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(NotGranted(refused))
    }
}

fn find_in_headers(placeholders: &Replacer, headers: &HeaderMap) -> BTreeSet<SecretId> {
    let mut found = BTreeSet::new();
    for (name, value) in headers {
        let bytes = value.as_bytes();
        found.extend(placeholders.find_ids(bytes).map(SecretId));
        if name == header::AUTHORIZATION {
            if let Some(decoded) = decode_basic(bytes) {
                found.extend(placeholders.find_ids(&decoded).map(SecretId));
            }
        }
    }
    found
}

/// The decoded credential of `Basic <base64>`, if the value is one.
fn decode_basic(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

/// `Basic base64(user:PLACEHOLDER)` → `Basic base64(user:REAL)`.
fn swap_basic(placeholders: &Replacer, value: &[u8]) -> Option<Vec<u8>> {
    let decoded = decode_basic(value)?;
    let swapped = placeholders.replace_all(&decoded)?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = b"Basic ".to_vec();
    out.extend_from_slice(engine.encode(swapped).as_bytes());
    Some(out)
}
