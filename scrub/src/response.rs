//! Step 7: real secret values never reach the agent. Every response header value and every
//! body byte the agent will read passes the scrubber, which turns a real value back into its
//! placeholder — streaming, including values split across frames.
//!
//! Compressed bodies ([`body_policy`], [`crate::decode`]): declared codings
//! (`Content-Encoding`, and `Transfer-Encoding` codings other than `chunked`) are decoded and
//! the agent receives the decoded, scrubbed body without `Content-Encoding`/`Content-Length`;
//! an unknown coding refuses the response. A body that declares no coding but begins with a
//! gzip/zlib/zstd magic number passes byte-exact, released only as its decoded copy is
//! scanned clean; a real value in it cuts the body. Decoding is bounded (decompression bombs
//! are cut).

use std::sync::Arc;

use http::{header, HeaderMap, StatusCode};
use http_body::Body;

use crate::body::{boxed, BoxError, ProxyBody};
use crate::decode::{declared_codings, Codings, DecodingBody, SniffingBody, UnknownCoding};
use crate::replace::{Replacer, ReplacingBody};

/// What to do with a response body, decided from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Identity (or nothing to scrub): scrub it, watching for undeclared compression.
    Scrub,
    /// Declared codings: decode, then scrub.
    Decode(Codings),
}

/// Decides from the upstream's headers, BEFORE hop-by-hop headers are stripped (a
/// `Transfer-Encoding: gzip, chunked` coding is otherwise lost and the agent would get gzip
/// bytes nobody scanned). When the body will be decoded, `Content-Encoding` and
/// `Content-Length` are removed: the agent receives the decoded body. Re-compressing it for
/// the agent is not worth the CPU on a loopback hop.
///
/// `bodyless` (HEAD, 1xx, 204, 304) responses keep their headers. With `scrubbing` false
/// (no secret to scrub) content codings pass as they are; transfer codings are still undone,
/// since the header that names them does not survive the hop.
pub fn body_policy(
    headers: &mut HeaderMap,
    bodyless: bool,
    scrubbing: bool,
) -> Result<BodyPolicy, UnknownCoding> {
    if bodyless {
        return Ok(BodyPolicy::Scrub);
    }
    let transfer_coded = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            let c = c.trim();
            !c.is_empty() && !c.eq_ignore_ascii_case("chunked")
        });
    if !scrubbing && !transfer_coded {
        return Ok(BodyPolicy::Scrub);
    }
    let codings = declared_codings(headers)?;
    if codings.is_empty() {
        return Ok(BodyPolicy::Scrub);
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(BodyPolicy::Decode(codings))
}

/// Scrubs the response head in place: every header value, every header name (a header whose
/// name holds a real value in any form, also lowercased, is dropped), and the HTTP/1.1
/// reason phrase (hyper hands a non-canonical one over as the [`hyper::ext::ReasonPhrase`]
/// extension and writes it back out; if it holds a real value the extension is dropped, so
/// the agent gets the canonical phrase). Nothing else hyper puts in a client response reaches
/// the agent: 1xx responses other than 101 are discarded by hyper's client (keyswap registers
/// no `on_informational` callback, and its HTTP/2 client never polls for them), and 101's
/// head passes through here like any other.
///
/// When the body will be scrubbed its length may change, so `Content-Length` goes (except
/// where there is no body to change).
pub fn scrub_headers(
    scrubber: &Replacer,
    head: &mut http::response::Parts,
    policy: BodyPolicy,
    head_request: bool,
) {
    let dropped = scrubber.replace_in_headers(&mut head.headers);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "response headers dropped: their names held a real secret value"
        );
    }
    let reason_leaks = head
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .is_some_and(|reason| scrubber.contains_any(reason.as_bytes()));
    if reason_leaks {
        head.extensions.remove::<hyper::ext::ReasonPhrase>();
        tracing::warn!("response reason phrase replaced: it held a real secret value");
    }
    let status = head.status;
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if policy == BodyPolicy::Scrub && !scrubber.is_empty() && !bodyless {
        head.headers.remove(header::CONTENT_LENGTH);
    }
}

/// Wraps the response body per `policy`. An empty scrubber (no secret loaded) costs nothing
/// on identity bodies: no sniffing, no decoder.
pub fn scrub_body<B>(
    scrubber: &Arc<Replacer>,
    policy: BodyPolicy,
    body: B,
) -> Result<ProxyBody, BoxError>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Ok(match policy {
        BodyPolicy::Scrub if scrubber.is_empty() => boxed(body),
        BodyPolicy::Scrub => boxed(SniffingBody::new(boxed(body), scrubber.clone())),
        BodyPolicy::Decode(codings) => {
            let decoded = DecodingBody::new(boxed(body), codings)?;
            if scrubber.is_empty() {
                boxed(decoded)
            } else {
                boxed(ReplacingBody::new(decoded, scrubber.clone()))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Coding;
    use http::HeaderValue;

    fn policy(
        headers: &[(&'static str, &'static str)],
    ) -> (Result<BodyPolicy, UnknownCoding>, HeaderMap) {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, HeaderValue::from_static(v));
        }
        (body_policy(&mut h, false, true), h)
    }

    #[test]
    fn policy_follows_content_and_transfer_encoding() {
        assert_eq!(policy(&[]).0, Ok(BodyPolicy::Scrub));
        assert_eq!(
            policy(&[("content-encoding", "identity")]).0,
            Ok(BodyPolicy::Scrub)
        );
        assert_eq!(
            policy(&[("transfer-encoding", "chunked")]).0,
            Ok(BodyPolicy::Scrub)
        );
        let (p, h) = policy(&[("content-encoding", "gzip"), ("content-length", "10")]);
        assert!(matches!(p, Ok(BodyPolicy::Decode(c)) if c.as_slice() == [Coding::Gzip]));
        assert!(h.get("content-encoding").is_none() && h.get("content-length").is_none());
        let (p, _) = policy(&[
            ("content-encoding", "gzip, br"),
            ("transfer-encoding", "zstd, chunked"),
        ]);
        assert!(
            matches!(p, Ok(BodyPolicy::Decode(c)) if c.as_slice() == [Coding::Gzip, Coding::Brotli, Coding::Zstd])
        );
        assert!(policy(&[("content-encoding", "compress")]).0.is_err());
        assert!(policy(&[("transfer-encoding", "gzip, chunked")]).0.is_ok());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(body_policy(&mut h, true, true), Ok(BodyPolicy::Scrub));
        assert_eq!(body_policy(&mut h, false, false), Ok(BodyPolicy::Scrub));
        assert!(h.get("content-encoding").is_some());
    }
}
