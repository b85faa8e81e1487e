//! Compression by other names (DESIGN.md threat model): an upstream that reflects a real value
//! inside a compressed body — declared by Content-Encoding, by a Transfer-Encoding coding,
//! stacked, or not declared at all — must not get it to the agent; a decompression bomb and
//! an unknown coding are refused. Each test decompresses whatever the agent received and
//! checks the value is not in it.

use std::io::Read;
use std::time::Duration;

use http_body_util::BodyExt;
use keyswap_tests::client::{self, Alpn};
use keyswap_tests::harness::{bearer, TestEnv, API_HOST, DEFAULT_CONFIG};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::upstream::{compress, compressed_content};

fn config() -> String {
    DEFAULT_CONFIG.replace("\"/redirect\"]", "\"/redirect\", \"/compressed\"]")
}

async fn env(alpn: Alpn) -> TestEnv {
    TestEnv::start_with(&config(), alpn).await
}

/// What the agent got: status (0 if the exchange was aborted before the head), reason,
/// headers, body bytes, or `None` for the body when the stream was aborted. Everything received (also decompressed) is kept for the leak check.
struct Got {
    status: u16,
    reason: Option<String>,
    content_encoding: Option<String>,
    body: Option<Vec<u8>>,
}

async fn get(env: &TestEnv, alpn: Alpn, query: &str) -> Got {
    let opts = env.agent(&format!("{API_HOST}:443"), alpn);
    let mut conn = env.open(&opts).await;
    let h2 = conn.negotiated_h2();
    let req = client::request("GET", API_HOST, &format!("/compressed?{query}"), h2)
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .unwrap();
    let Ok(resp) = conn.send(req).await else {
        // Cut before the head went out (HTTP/1.1 writes it with the first body bytes).
        return Got {
            status: 0,
            reason: None,
            content_encoding: None,
            body: None,
        };
    };
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (status, reason, ce) = (
        resp.status().as_u16(),
        header("x-keyswap-reason"),
        header("content-encoding"),
    );
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect()).await
    {
        Ok(Ok(b)) => Some(b.to_bytes().to_vec()),
        Ok(Err(_)) => None,
        Err(_) => panic!("body neither ended nor aborted"),
    };
    env.keep(
        &headers,
        &String::from_utf8_lossy(body.as_deref().unwrap_or_default()),
    );
    Got {
        status,
        reason,
        content_encoding: ce,
        body,
    }
}

/// Decompresses as much of `data` as a lenient client would (gzip, zlib, zstd by magic),
/// returning the plain bytes recovered before any error.
fn lenient_decompress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = match data {
        [0x1f, 0x8b, ..] => flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out),
        [0x78, ..] => flate2::read::ZlibDecoder::new(data).read_to_end(&mut out),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            zstd::stream::read::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out))
        }
        _ => Ok(0),
    };
    out
}

fn assert_value_not_in(what: &str, env: &TestEnv, body: &[u8]) {
    assert_no_real_secret(what, body);
    let plain = lenient_decompress(body);
    env.keep(&[], &String::from_utf8_lossy(&plain));
    assert_no_real_secret(&format!("{what}, decompressed"), &plain);
}

#[tokio::test]
async fn declared_compressed_echo_is_decoded_and_scrubbed() {
    // (codings, declared by, ALPN to both sides)
    let cases: &[(&str, &str, Alpn)] = &[
        ("gzip", "ce", Alpn::Both),
        ("x-gzip", "ce", Alpn::Both),
        ("deflate", "ce", Alpn::Both),
        ("raw-deflate", "ce", Alpn::Both),
        ("br", "ce", Alpn::Both),
        ("zstd", "ce", Alpn::Both),
        ("gzip,br", "ce", Alpn::Both),
        ("zstd,gzip,deflate", "ce", Alpn::Http1Only),
        ("gzip", "te", Alpn::Http1Only),
        ("br", "te", Alpn::Http1Only),
    ];
    for alpn in [Alpn::Both, Alpn::Http1Only] {
        let env = env(alpn).await;
        for (codings, declare, case_alpn) in cases {
            if *case_alpn != alpn {
                continue;
            }
            let got = get(
                &env,
                Alpn::Both,
                &format!("codings={codings}&declare={declare}&reflect=authorization"),
            )
            .await;
            let what = format!("{codings} via {declare}");
            assert_eq!((got.status, got.reason.as_deref()), (200, None), "{what}");
            assert_eq!(got.content_encoding, None, "{what}: still declared encoded");
            let body = got.body.unwrap_or_else(|| panic!("{what}: body aborted"));
            let expected = compressed_content(Some(bearer(GITHUB_PLACEHOLDER).as_bytes()));
            assert!(
                body == expected,
                "{what}: decoded body is not the scrubbed content"
            );
            assert_value_not_in(&what, &env, &body);
        }
        env.assert_no_leaks();
    }
}

#[tokio::test]
async fn transfer_encoding_gzip_reaches_upstream_as_http1_and_is_decoded() {
    let env = env(Alpn::Http1Only).await;
    let got = get(
        &env,
        Alpn::Http2Only,
        "codings=gzip&declare=te&reflect=authorization",
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = env.upstream.seen();
    assert_eq!(seen.last().map(|r| r.version.as_str()), Some("HTTP/1.1"));
    let body = got.body.expect("body");
    assert!(
        body.starts_with(b"{\"greeting\""),
        "the agent got undecoded bytes"
    );
    assert_value_not_in("TE gzip", &env, &body);
    env.assert_no_leaks();
}

#[tokio::test]
async fn undeclared_compressed_body_with_secret_is_cut() {
    let env = env(Alpn::Both).await;
    let swapped = format!("Bearer {GITHUB_REAL}");
    for (n, codings) in ["gzip", "deflate", "zstd"].into_iter().enumerate() {
        let query = format!("codings={codings}&declare=none&reflect=authorization");
        let got = get(&env, Alpn::Both, &query).await;
        assert!(matches!(got.status, 0 | 200), "{codings}: {}", got.status);
        assert!(got.body.is_none(), "{codings}: the body was not cut");
        // Cut by the scrubber, not refused or failed for another reason: the upstream got
        // the request with the value swapped in, and keyswap says why it cut the body.
        assert!(
            env.upstream
                .authorization_for(&format!("/compressed?{query}"))
                .is_some_and(|a| a == swapped),
            "{codings}: the upstream never got the swapped request"
        );
        let log = String::from_utf8_lossy(&env.log()).into_owned();
        let cuts = log
            .lines()
            .filter(|l| {
                l.contains("response body cut")
                    && l.contains("real secret value in")
                    && l.contains("undeclared compressed body")
            })
            .count();
        assert_eq!(cuts, n + 1, "{codings}: no log line of the scrubber's cut");
        // Whatever arrived before the cut is checked by get()'s keep + the leak check; the
        // cut must also come before the value: nothing arrived that decodes to it.
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn undeclared_compressed_body_received_before_cut_never_decodes_to_secret() {
    // The value comes after 512 KiB of text, so compressed bytes flow before the cut; every
    // byte that arrived is decompressed and must not yield the value (not even its start).
    let env = env(Alpn::Both).await;
    for (codings, alpn) in [
        ("gzip", Alpn::Http1Only),
        ("deflate", Alpn::Http2Only),
        ("zstd", Alpn::Http1Only),
    ] {
        let opts = env.agent(&format!("{API_HOST}:443"), alpn);
        let mut conn = env.open(&opts).await;
        let h2 = conn.negotiated_h2();
        let req = client::request(
            "GET",
            API_HOST,
            &format!("/compressed?codings={codings}&declare=none&reflect=authorization&pad=524288"),
            h2,
        )
        .header("authorization", bearer(GITHUB_PLACEHOLDER))
        .body(client::empty())
        .unwrap();
        let mut body = conn
            .send(req)
            .await
            .expect("head: bytes flow before the cut")
            .into_body();
        let mut arrived = Vec::new();
        let mut aborted = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    arrived.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or_default())
                }
                Err(_) => {
                    aborted = true;
                    break;
                }
            }
        }
        assert!(aborted, "{codings}: not cut");
        assert!(
            arrived.len() > 1024,
            "{codings}: nothing released before the cut"
        );
        let plain = lenient_decompress(&arrived);
        assert!(
            plain.len() > 64 * 1024,
            "{codings}: released bytes decode to only {} bytes",
            plain.len()
        );
        assert!(
            !plain.windows(6).any(|w| w == b"KSREAL"),
            "{codings}: the compressed bytes released decode to (part of) the value"
        );
        assert_value_not_in(codings, &env, &arrived);
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn undeclared_compressed_download_without_secret_arrives_byte_exact() {
    let env = env(Alpn::Both).await;
    for codings in ["gzip", "deflate", "zstd", "br"] {
        let got = get(&env, Alpn::Both, &format!("codings={codings}&declare=none")).await;
        assert_eq!(got.status, 200);
        let expected = compress(codings, &compressed_content(None)).unwrap();
        assert!(
            got.body.as_deref() == Some(&expected[..]),
            "{codings}: bytes changed"
        );
    }
    env.assert_no_leaks();
}

#[tokio::test]
/// An unbounded decoder would deliver all 256 MiB (a body, not `None`): the bound is what
/// makes the body end in an error instead. No timing is asserted (speed belongs to the bench).
async fn decompression_bomb_is_cut() {
    let env = env(Alpn::Both).await;
    let mut last_conn = None;
    for codings in ["gzip", "zstd", "br"] {
        // 256 MiB of zeros: a few hundred KiB of gzip, a few KiB of zstd/brotli.
        let got = get(
            &env,
            Alpn::Both,
            &format!("codings={codings}&zeros={}", 256 << 20),
        )
        .await;
        assert!(matches!(got.status, 0 | 200), "{codings}: {}", got.status);
        assert!(got.body.is_none(), "{codings}: the bomb was delivered");
        // A body cut after its head was sent is audited as an error, not as allowed.
        let record = env
            .audit_where(|r| r["path"] == "/compressed" && r["conn"].as_u64() > last_conn)
            .await;
        assert_eq!(
            (&record["decision"], &record["reason"]),
            (&"error".into(), &"upstream_error".into()),
            "{codings}"
        );
        last_conn = record["conn"].as_u64();
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn unknown_coding_is_refused() {
    let env = env(Alpn::Both).await;
    for declare in ["ce"] {
        let got = get(
            &env,
            Alpn::Both,
            &format!("codings=compress&declare={declare}&reflect=authorization"),
        )
        .await;
        assert_eq!(
            (got.status, got.reason.as_deref()),
            (502, Some("upstream_error"))
        );
        assert_value_not_in(
            "unknown coding",
            &env,
            got.body.as_deref().unwrap_or_default(),
        );
    }
    let record = env.audit_where(|r| r["reason"] == "upstream_error").await;
    // An upstream failure is an error, not a refusal.
    assert_eq!(record["decision"], "error");
    env.assert_no_leaks();
}

/// The agent offers codings keyswap cannot decode: the upstream is only offered the ones it
/// can (so it never answers in one keyswap would have to refuse), `*` is spelled out, and an
/// offer of nothing decodable becomes `identity`. Requests that carry a secret ask for
/// `identity` whatever the agent offered.
#[tokio::test]
async fn upstream_is_only_offered_codings_keyswap_can_decode() {
    let env = env(Alpn::Both).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let cases = [
        ("compress, gzip;q=0.8, exi", "gzip;q=0.8"),
        ("compress", "identity"),
        ("*", "gzip, deflate, br, zstd"),
        ("gzip, br", "gzip, br"),
    ];
    for (offered, expected) in cases {
        let reply = env
            .request(&opts, "GET", "/echo/user", &[("accept-encoding", offered)])
            .await;
        assert_eq!(reply.status, 200, "{offered}");
        let seen = env.upstream.seen();
        let last = seen.last().expect("the upstream saw the request");
        assert_eq!(last.header("accept-encoding"), Some(expected), "{offered}");
    }
    let reply = env
        .request(
            &opts,
            "GET",
            "/echo/user",
            &[
                ("accept-encoding", "gzip, br"),
                ("authorization", &bearer(GITHUB_PLACEHOLDER)),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = env.upstream.seen();
    assert_eq!(
        seen.last().and_then(|r| r.header("accept-encoding")),
        Some("identity")
    );
    env.assert_no_leaks();
}
