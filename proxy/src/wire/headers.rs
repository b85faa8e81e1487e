//! Header hygiene between the two legs: hop-by-hop headers (RFC 9110 §7.6.1) and every
//! `Proxy-*` header stop at keyswap; request framing is checked for smuggling signs. Trailers
//! are header fields too (RFC 9110 §6.5): the same stripping and the same size bound apply to
//! them.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded. `HTTP2-Settings` belongs to the
/// h2c upgrade (RFC 7540 §3.2.1), which keyswap never lets through.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Removes hop-by-hop headers, the headers that `Connection` names, and every `Proxy-*` and
/// `keep-alive` header. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for
/// a protocol switch (WebSocket).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-") || name.as_str() == "keep-alive")
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// Whether the request asks to switch to WebSocket (HTTP/1.1 `Connection: upgrade` and
/// `Upgrade: websocket`, that one protocol alone). Any other upgrade — `h2c`, or a list that
/// offers more than WebSocket — is not one: its `Upgrade` header is stripped and the request
/// is forwarded as an ordinary request, because a spliced connection would carry requests
/// that keyswap never decides or audits.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let only_websocket = match (upgrades.next(), upgrades.next()) {
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    };
    only_websocket
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Largest request head accepted: request line plus header fields, counted as written
/// (name, value and the `: ` and CRLF around them). hyper's read buffer bounds what it
/// reads at once, not the head it parses from a single large read, so the limit is checked
/// again on the parsed head.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Whether the head of a request (method, URI and header fields) exceeds [`MAX_HEAD_BYTES`].
pub fn head_too_large(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> bool {
    let line = method.as_str().len() + uri.to_string().len() + " HTTP/1.1\r\n ".len();
    line + fields_len(headers) > MAX_HEAD_BYTES
}

/// Whether a request's trailer fields exceed [`MAX_HEAD_BYTES`], counted as a head's are.
pub fn trailers_too_large(trailers: &HeaderMap) -> bool {
    fields_len(trailers) > MAX_HEAD_BYTES
}

/// Header fields' size as written: name, value, and the `: ` and CRLF around them.
fn fields_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Method-override headers: some frameworks serve the method they name instead of the
/// request's own, so a rule that restricts methods must decide on them too.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Framing that two parsers could read differently (RFC 9112 §6.3): both
/// `Transfer-Encoding` and `Content-Length`, or several `Content-Length` values.
pub fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    (lengths > 0 && headers.contains_key(header::TRANSFER_ENCODING)) || lengths > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_limit_counts_the_whole_head() {
        let mut h = HeaderMap::new();
        h.insert("x-small", "a".repeat(1000).parse().unwrap());
        let get = http::Method::GET;
        let uri: http::Uri = "/x".parse().unwrap();
        assert!(!head_too_large(&get, &uri, &h));
        for i in 0..70 {
            h.insert(
                HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
                "b".repeat(1000).parse().unwrap(),
            );
        }
        assert!(head_too_large(&get, &uri, &h));
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let with = |upgrade: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
            for u in upgrade {
                h.append(header::UPGRADE, u.parse().unwrap());
            }
            is_websocket_upgrade(&h)
        };
        assert!(with(&["websocket"]));
        assert!(with(&["WebSocket"]));
        assert!(!with(&["h2c"]));
        assert!(!with(&["websocket, h2c"]));
        assert!(!with(&["websocket", "h2c"]));
        assert!(!with(&["TLS/1.2"]));
        assert!(!with(&[]));
    }
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_proxy_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
