//! Step 5: swap placeholders for real values in the request.
//!
//! Every part of every request is scanned for every known placeholder, whatever the rule
//! swaps: header names and values (also inside the base64 of an `Authorization: Basic`
//! credential), the path and query as sent and percent-decoded, and the body while it streams
//! ([`ScanBody`]). A placeholder of a secret the matched rule does not grant refuses the
//! request; so does a granted one in a header that the rule's or the secret's `headers:` does
//! not name, where the rule swaps into headers. Only then are granted placeholders replaced,
//! in the parts the rule's `swap_in` names; elsewhere they pass as they are (a placeholder is
//! no secret). Swapped values are marked sensitive so HTTP/2 never indexes them. The body is
//! [`crate::pipeline::swap_body`]'s; trailers are headers and pass the same checks
//! ([`crate::pipeline::trailers`]).
//!
//! The task's own proxy token is refused wherever it appears, like the placeholder of a secret
//! no rule grants ([`Misplaced::TaskToken`]): a header's name or value (also inside any
//! `Basic` credential's base64), the path and query as sent and percent-decoded, a trailer,
//! the body. Only `Proxy-Authorization`, which keyswap reads and strips, may carry it.
//!
//! This is one of the two places that handle real values (the other is [`crate::state::snapshot`]);
//! it writes them into the outgoing request and nowhere else.

use std::collections::BTreeSet;

use base64::Engine;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use keyswap_config::{Config, Rule, Secret, SecretId};
use keyswap_scrub::replace::Replacer;
use percent_encoding::percent_decode_str;

use crate::wire::token::TokenFinder;

/// Placeholders of secrets the rule does not grant, found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotGranted(pub Vec<SecretId>);

/// Why a request's placeholders refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misplaced {
    /// Placeholders of secrets the rule does not grant.
    NotGranted(Vec<SecretId>),
    /// A granted secret's placeholder in a header its `headers:` scope does not name.
    OutOfScope {
        secret: SecretId,
        header: HeaderName,
    },
    /// The task's own proxy token, in the named part of the request.
    TaskToken { part: &'static str },
}

/// What a rule grants in headers (and trailers): which secrets, and in which header names.
pub trait HeaderGrants {
    fn grants(&self, id: SecretId) -> bool;
    /// Whether `secret` may be swapped into header `name` (lower-case).
    fn swaps_into_header(&self, secret: &Secret, name: &str) -> bool;
}

impl HeaderGrants for Rule {
    fn grants(&self, id: SecretId) -> bool {
        Rule::grants(self, id)
    }

    fn swaps_into_header(&self, secret: &Secret, name: &str) -> bool {
        Rule::swaps_into_header(self, secret, name)
    }
}

impl From<NotGranted> for Misplaced {
    fn from(NotGranted(ids): NotGranted) -> Self {
        Misplaced::NotGranted(ids)
    }
}

/// What swapping the headers did.
#[derive(Default)]
pub struct HeaderSwap {
    /// The secrets swapped in. (An upstream that echoes a swapped `Basic` credential's
    /// base64 is caught by the value's base64 forms in the scrubber, see
    /// [`keyswap_scrub::encodings`].)
    pub used: BTreeSet<SecretId>,
}

/// Finds the placeholders in header names and values (including Basic credentials). Refuses
/// the request if one belongs to a secret the rule does not grant or, when `swap` (the rule
/// swaps in headers), sits in a header outside the rule's and the secret's `headers:`.
/// Otherwise, when `swap`, swaps them in place.
///
/// `placeholders` has pattern `i` = placeholder of `SecretId(i)`, replacement = its real value.
pub fn swap_headers<G: HeaderGrants + ?Sized>(
    placeholders: &Replacer,
    headers: &mut HeaderMap,
    rule: &G,
    config: &Config,
    swap: bool,
) -> Result<HeaderSwap, Misplaced> {
    let found = find_in_headers(placeholders, headers);
    let ids: BTreeSet<SecretId> = found.iter().map(|(_, id)| *id).collect();
    check_granted(&ids, |id| rule.grants(id))?;
    if !swap {
        return Ok(HeaderSwap::default());
    }
    if let Some((name, id)) = found
        .iter()
        .find(|(name, id)| !rule.swaps_into_header(config.secret(*id), name.as_str()))
    {
        return Err(Misplaced::OutOfScope {
            secret: *id,
            header: name.clone(),
        });
    }
    let swap = HeaderSwap { used: ids };
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
    check_granted(&found, |id| rule.is_some_and(|r| r.grants(id)))?;
    if found.is_empty() {
        return Ok(None);
    }
    used.extend(found);
    Ok(Some(encode_replacements(placeholders, query)))
}

fn encode_replacements(placeholders: &Replacer, query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 32);
    placeholders.for_each_segment(query.as_bytes(), |segment| match segment {
        keyswap_scrub::replace::Segment::Plain(bytes) => {
            out.push_str(&String::from_utf8_lossy(bytes))
        }
        keyswap_scrub::replace::Segment::Replacement(bytes) => percent_encode_into(&mut out, bytes),
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

fn check_granted(
    found: &BTreeSet<SecretId>,
    grants: impl Fn(SecretId) -> bool,
) -> Result<(), NotGranted> {
    let refused: Vec<SecretId> = found.iter().copied().filter(|id| !grants(*id)).collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(NotGranted(refused))
    }
}

/// Each (header, secret) whose placeholder occurs in that header's value — or, never
/// swapped, in its name.
pub(crate) fn find_in_headers(
    placeholders: &Replacer,
    headers: &HeaderMap,
) -> Vec<(HeaderName, SecretId)> {
    let mut found: Vec<(HeaderName, SecretId)> = Vec::new();
    let mut add = |name: &HeaderName, ids: &mut dyn Iterator<Item = usize>| {
        for id in ids.map(SecretId) {
            if !found.iter().any(|(n, i)| n == name && *i == id) {
                found.push((name.clone(), id));
            }
        }
    };
    for name in headers.keys() {
        add(name, &mut placeholders.find_ids(name.as_str().as_bytes()));
    }
    for (name, value) in headers {
        let bytes = value.as_bytes();
        add(name, &mut placeholders.find_ids(bytes));
        if name == header::AUTHORIZATION {
            if let Some(decoded) = decode_basic(bytes) {
                add(name, &mut placeholders.find_ids(&decoded));
            }
        }
    }
    found
}

/// Refuses a path or query that carries the placeholder of a secret the rule does not grant,
/// as sent or percent-decoded (an agent can percent-encode a placeholder; placeholders are
/// visible ASCII, so one decoding shows it). `path` is the normalised path.
pub fn check_uri(
    placeholders: &Replacer,
    raw_path: &str,
    path: &str,
    query: Option<&str>,
    rule: &Rule,
) -> Result<(), NotGranted> {
    let mut found = BTreeSet::new();
    for part in [Some(raw_path), Some(path), query].into_iter().flatten() {
        found.extend(placeholders.find_ids(part.as_bytes()).map(SecretId));
        if part.contains('%') {
            let decoded: Vec<u8> = percent_decode_str(part).collect();
            found.extend(placeholders.find_ids(&decoded).map(SecretId));
        }
    }
    check_granted(&found, |id| rule.grants(id))
}

/// Whether the task's token is in a header's name or value, or inside the base64 of a
/// `Basic` credential in any header (the form `Proxy-Authorization` itself carries it in).
pub fn token_in_headers(token: &TokenFinder, headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        let bytes = value.as_bytes();
        token.found_in(name.as_str().as_bytes())
            || token.found_in(bytes)
            || decode_basic(bytes).is_some_and(|decoded| token.found_in(&decoded))
    })
}

/// The part of the URI (`path` or `query`) that carries the task's token, as sent or
/// percent-decoded. `path` is the normalised path.
pub fn token_in_uri(
    token: &TokenFinder,
    raw_path: &str,
    path: &str,
    query: Option<&str>,
) -> Option<&'static str> {
    let carries = |part: &str| {
        token.found_in(part.as_bytes())
            || (part.contains('%')
                && token.found_in(&percent_decode_str(part).collect::<Vec<u8>>()))
    };
    if carries(raw_path) || carries(path) {
        Some("path")
    } else if query.is_some_and(carries) {
        Some("query")
    } else {
        None
    }
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
