//! Which codings a response declares, which ones keyswap can undo, and which one an
//! undeclared body's first bytes announce. Pure header and byte inspection: no decoding here.

use http::{header, HeaderMap, HeaderValue};

/// Most codings keyswap will undo on one response (`Content-Encoding` and
/// `Transfer-Encoding` together); a longer stack is refused rather than decoded.
pub const MAX_CODINGS: usize = 4;

/// A coding keyswap can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw deflate as browsers also accept
    /// (decided from the first two bytes).
    Deflate,
    /// Zlib-wrapped only (undeclared bodies sniffed by magic number).
    Zlib,
    Brotli,
    Zstd,
}

/// The codings applied to a body, in the order they were applied (decode in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codings {
    list: [Coding; MAX_CODINGS],
    len: u8,
}

impl Codings {
    pub fn as_slice(&self) -> &[Coding] {
        &self.list[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A coding keyswap cannot decode (or too many stacked): the response is refused. It does
/// not carry the coding's name: the upstream chose it, and it could echo a real value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCoding;

/// The codings declared by `Content-Encoding` then `Transfer-Encoding` (minus `chunked`,
/// which hyper has already removed). Read this before hop-by-hop headers are stripped.
pub fn declared_codings(headers: &HeaderMap) -> Result<Codings, UnknownCoding> {
    let mut codings = Codings {
        list: [Coding::Gzip; MAX_CODINGS],
        len: 0,
    };
    for name in [header::CONTENT_ENCODING, header::TRANSFER_ENCODING] {
        for value in headers.get_all(&name) {
            let Ok(value) = value.to_str() else {
                return Err(UnknownCoding);
            };
            for token in value.split(',').map(str::trim) {
                let coding = match token.to_ascii_lowercase().as_str() {
                    "" | "identity" => continue,
                    "chunked" if name == header::TRANSFER_ENCODING => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "br" => Coding::Brotli,
                    "zstd" => Coding::Zstd,
                    _ => return Err(UnknownCoding),
                };
                if codings.len as usize == MAX_CODINGS {
                    return Err(UnknownCoding);
                }
                codings.list[codings.len as usize] = coding;
                codings.len += 1;
            }
        }
    }
    Ok(codings)
}

/// The agent's `Accept-Encoding` narrowed to the codings keyswap can decode, so an upstream
/// is never invited to answer in one it would have to refuse (`compress`, `exi`, …). `*`
/// becomes the decodable list; quality values are kept. `None` when the header needs no
/// change.
pub fn decodable_accept_encoding(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut changed = false;
    let mut kept: Vec<String> = Vec::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            changed = true;
            continue;
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (name, params) = token.split_once(';').unwrap_or((token, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" | "deflate" | "br" | "zstd" | "identity" => {
                    kept.push(token.to_string())
                }
                "*" => {
                    changed = true;
                    let params = if params.is_empty() {
                        String::new()
                    } else {
                        format!(";{params}")
                    };
                    kept.extend(
                        ["gzip", "deflate", "br", "zstd"].map(|coding| format!("{coding}{params}")),
                    );
                }
                _ => changed = true,
            }
        }
    }
    if !changed {
        return None;
    }
    let list = if kept.is_empty() {
        "identity".to_string()
    } else {
        kept.join(", ")
    };
    HeaderValue::from_str(&list).ok()
}

/// The coding an undeclared body's first bytes announce, if any. Brotli has no magic number,
/// so an undeclared brotli body is not recognised.
pub fn sniff(prefix: &[u8]) -> Option<Coding> {
    match prefix {
        // ID1 ID2 CM=8 (deflate): the third byte makes a text body's false positive unlikely.
        [0x1f, 0x8b, 0x08, ..] => Some(Coding::Gzip),
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some(Coding::Zlib),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Coding::Zstd),
        _ => None,
    }
}

/// Bytes needed to sniff.
pub const SNIFF_LEN: usize = 4;
