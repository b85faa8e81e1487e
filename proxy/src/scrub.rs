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

/// Scrubs the response head in place: every header value, every header name (a header whose
/// name holds a real value in any form, in any ASCII case, is dropped), and the HTTP/1.1
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
