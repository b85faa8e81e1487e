//! Step 7: real secret values never reach the agent. Every response header value and every
//! identity-encoded body byte passes the scrubber, which turns a real value back into its
//! placeholder — streaming, including values split across frames.
//!
//! Seam for encoded bodies: [`body_policy`] decides per `Content-Encoding`. Today only
//! identity bodies can be scrubbed; a compressed body is refused when the request carried a
//! secret (keyswap asked the upstream for `Accept-Encoding: identity` on such requests) and
//! passed as is otherwise. Decompressing scrubbers plug in here.

use std::sync::Arc;

use http::{header, HeaderMap, StatusCode};
use http_body::Body;

use crate::body::{boxed, BoxError, ProxyBody};
use crate::replace::{Replacer, ReplacingBody};

/// What to do with a response body, decided from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Identity encoding: scrub it.
    Scrub,
    /// Compressed, and the request carried no secret: pass it unchanged.
    PassEncoded,
    /// Compressed, and the request carried a secret: refuse the response.
    Refuse,
}

pub fn body_policy(headers: &HeaderMap, request_carried_secret: bool) -> BodyPolicy {
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("identity") && !coding.trim().is_empty());
    match (encoded, request_carried_secret) {
        (false, _) => BodyPolicy::Scrub,
        (true, false) => BodyPolicy::PassEncoded,
        (true, true) => BodyPolicy::Refuse,
    }
}

/// Scrubs the response headers in place. When the body will be scrubbed its length may
/// change, so `Content-Length` goes (except where there is no body to change).
pub fn scrub_headers(
    scrubber: &Replacer,
    status: StatusCode,
    headers: &mut HeaderMap,
    policy: BodyPolicy,
    head_request: bool,
) {
    scrubber.replace_in_headers(headers);
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if policy == BodyPolicy::Scrub && !scrubber.is_empty() && !bodyless {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Wraps the response body per `policy` (never called with [`BodyPolicy::Refuse`]).
pub fn scrub_body<B>(scrubber: &Arc<Replacer>, policy: BodyPolicy, body: B) -> ProxyBody
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if policy == BodyPolicy::Scrub && !scrubber.is_empty() {
        boxed(ReplacingBody::new(body, scrubber.clone()))
    } else {
        boxed(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn policy_follows_content_encoding() {
        let mut h = HeaderMap::new();
        assert_eq!(body_policy(&h, true), BodyPolicy::Scrub);
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(body_policy(&h, true), BodyPolicy::Scrub);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(body_policy(&h, true), BodyPolicy::Refuse);
        assert_eq!(body_policy(&h, false), BodyPolicy::PassEncoded);
    }
}
