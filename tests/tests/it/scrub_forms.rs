//! An allowed upstream reflects the real value in a form the agent could decode: base64 (whole,
//! unpadded, URL-safe, embedded at each byte alignment in a longer blob, a `Basic`
//! credential), percent-encoding (each common encoder's escape set, either hex case, `+` for
//! space), JSON escapes (serde, PHP `\/`, Go's HTML-safe, `ensure_ascii`, everything as
//! `\uXXXX`) — in the body (split across frames), a header value, a header name, the reason
//! phrase and trailers. The agent must receive none of them.

use base64::Engine;
use http_body_util::BodyExt;
use keyswap_tests::client::{self, Alpn};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, TestEnv, API_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::upstream::{encode_form, FORMS};

/// A value with every kind of byte an encoder treats specially: URL reserved characters,
/// space, JSON specials, HTML specials, non-ASCII in and outside the BMP.
const FORMS_REAL: &str = "KSREAL-forms/é+ü x=&<>\"~*'!(y)\\😀:";
const FORMS_PLACEHOLDER: &str = "ks-forms-placeholder-0001";
const FORMS_ENV: &str = "KS_TEST_FORMS";

fn config() -> String {
    ConfigBuilder::new()
        .secret("github", Secret::github())
        .secret("openai", Secret::openai())
        .secret("forms", Secret::env(FORMS_ENV, FORMS_PLACEHOLDER))
        .task(
            "agent",
            Entry::with_token().rule(
                Rule::api()
                    .paths(&["/reflect-form", "/echo/**"])
                    .secrets(&["github", "forms"])
                    .field("swap_in", "[headers, query]"),
            ),
        )
        .yaml()
}

async fn start(alpn: Alpn) -> TestEnv {
    TestEnv::start_with_env(
        &config(),
        alpn,
        keyswap::ProxyOptions::default(),
        &[(FORMS_ENV, FORMS_REAL)],
    )
    .await
}

/// What the agent received: status, header lines, the reason phrase (if not the canonical
/// one), body and trailers, all kept for [`TestEnv::assert_no_leaks`].
struct Received {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    everything: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn receive(env: &TestEnv, resp: http::Response<hyper::body::Incoming>) -> Received {
    let status = resp.status().as_u16();
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), lossy(v.as_bytes())))
        .collect();
    if let Some(reason) = resp.extensions().get::<hyper::ext::ReasonPhrase>() {
        headers.push(("(reason phrase)".into(), lossy(reason.as_bytes())));
    }
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("response body");
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        } else if let Some(trailers) = frame.trailers_ref() {
            for (n, v) in trailers {
                headers.push((format!("(trailer) {}", n.as_str()), lossy(v.as_bytes())));
            }
        }
    }
    let body = lossy(&data);
    env.keep(&headers, &body);
    let mut everything = Vec::new();
    for (n, v) in &headers {
        everything.extend_from_slice(format!("{n}: {v}\n").as_bytes());
    }
    everything.extend_from_slice(body.as_bytes());
    Received {
        status,
        headers,
        body: data,
        everything,
    }
}

/// The base64 characters fixed by `value` alone at each byte alignment, in both alphabets:
/// what any base64 holding the value contains.
fn base64_fragments(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for shift in 0..3usize {
        let data = [&vec![0u8; shift][..], value].concat();
        let (skip, end) = ((8 * shift).div_ceil(6), 8 * data.len() / 6);
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            out.push(engine.encode(&data)[skip..end].to_string());
        }
    }
    out
}

/// Fails (naming the case, never the value) if `received` holds `real` raw, in `form`, or in
/// any base64 alignment — compared ignoring ASCII case, since a lowercased value leaks too.
fn assert_not_received(case: &str, received: &[u8], real: &str, form: &str) {
    let haystack = received.to_ascii_lowercase();
    let found = |needle: &str| {
        let needle = needle.to_ascii_lowercase();
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(!found(real), "{case}: the raw value reached the agent");
    assert!(
        !found(form),
        "{case}: the value in that form reached the agent"
    );
    for (i, fragment) in base64_fragments(real.as_bytes()).iter().enumerate() {
        assert!(
            !found(fragment),
            "{case}: base64 alignment #{i} reached the agent"
        );
    }
}

/// (request header carrying the placeholder, placeholder, real value)
fn secrets() -> [(&'static str, &'static str, &'static str); 2] {
    [
        ("x-token", GITHUB_PLACEHOLDER, GITHUB_REAL),
        ("x-token", FORMS_PLACEHOLDER, FORMS_REAL),
    ]
}

async fn reflect(
    env: &TestEnv,
    conn: &mut client::ProxyConnection,
    placeholder: &str,
    form: &str,
    place: &str,
) -> Received {
    let h2 = conn.negotiated_h2();
    let path = format!("/reflect-form?name=x-token&form={form}&in={place}");
    let req = client::request("GET", API_HOST, &path, h2)
        .header("x-token", placeholder)
        .body(client::empty())
        .expect("request");
    receive(env, conn.send(req).await.expect("response")).await
}

#[tokio::test]
async fn every_encoded_form_reflected_in_body_header_or_reason_is_scrubbed() {
    let env = start(Alpn::Http1Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    for place in ["body", "header", "reason"] {
        for (_, placeholder, real) in secrets() {
            for form in FORMS {
                let case = format!("{form} in {place} (secret {placeholder})");
                let got = reflect(&env, &mut conn, placeholder, form, place).await;
                assert_eq!(got.status, 200, "{case}: upstream could not reflect it");
                let encoded = encode_form(form, real.as_bytes()).expect("known form");
                assert_not_received(&case, &got.everything, real, &encoded);
            }
        }
    }
    // Each reflection reached the upstream with the real value: the scrubber, not a failed
    // swap, is why the agent saw none of it.
    let swapped = env
        .upstream
        .seen()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/reflect-form"))
        .filter(|r| matches!(r.header("x-token"), Some(v) if v == GITHUB_REAL || v == FORMS_REAL))
        .count();
    assert_eq!(swapped, 3 * 2 * FORMS.len());
    env.assert_no_leaks();
}

#[tokio::test]
async fn value_in_a_response_header_name_drops_that_header() {
    let env = start(Alpn::Http1Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    // Header names are tokens: the forms of the GitHub value that are valid names.
    for form in [
        "raw",
        "base64url-nopad",
        "base64url-blob-1",
        "percent-all",
        "percent-all-lower",
    ] {
        let case = format!("{form} in a header name");
        let got = reflect(&env, &mut conn, GITHUB_PLACEHOLDER, form, "name").await;
        assert_eq!(got.status, 200, "{case}: the response was not passed on");
        assert_eq!(
            got.header("x-kept"),
            Some("yes"),
            "{case}: other headers lost"
        );
        let encoded = encode_form(form, GITHUB_REAL.as_bytes()).expect("known form");
        assert_not_received(&case, &got.everything, GITHUB_REAL, &encoded);
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn value_in_trailer_names_and_values_is_scrubbed() {
    let env = start(Alpn::Http2Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http2Only);
    let mut conn = env.open(&opts).await;
    assert!(conn.negotiated_h2(), "trailers need h2 on both legs");
    for form in ["raw", "base64url-nopad", "percent-all-lower"] {
        let case = format!("{form} in trailers");
        let got = reflect(&env, &mut conn, GITHUB_PLACEHOLDER, form, "trailer").await;
        assert_eq!(got.status, 200, "{case}");
        let scrubbed = got
            .headers
            .iter()
            .find(|(n, _)| n == "(trailer) x-trailer")
            .map(|(_, v)| v.as_str());
        let placeholder_form = encode_form(form, GITHUB_PLACEHOLDER.as_bytes());
        assert_eq!(
            scrubbed,
            placeholder_form.as_deref(),
            "{case}: trailer value not scrubbed to the placeholder's same form"
        );
        let encoded = encode_form(form, GITHUB_REAL.as_bytes()).expect("known form");
        assert_not_received(&case, &got.everything, GITHUB_REAL, &encoded);
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn exact_forms_come_back_as_the_same_form_of_the_placeholder() {
    let env = start(Alpn::Http1Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut conn = env.open(&opts).await;
    for form in [
        "raw",
        "base64",
        "base64url-nopad",
        "percent-plus",
        "percent-all-lower",
        "json-ascii",
        "json-all-upper",
    ] {
        let got = reflect(&env, &mut conn, FORMS_PLACEHOLDER, form, "header").await;
        let want = encode_form(form, FORMS_PLACEHOLDER.as_bytes()).expect("known form");
        assert_eq!(
            got.header("x-reflected"),
            Some(format!("v={want}").as_str()),
            "{form}: not mapped to the placeholder's {form}"
        );
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn echoed_basic_credential_does_not_decode_to_the_real_value() {
    let env = start(Alpn::Both).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let b64 = base64::engine::general_purpose::STANDARD;
    for user in ["", "u", "us", "x-access-token"] {
        let credential = format!(
            "Basic {}",
            b64.encode(format!("{user}:{GITHUB_PLACEHOLDER}"))
        );
        let reply = env
            .request(
                &opts,
                "GET",
                "/echo/basic",
                &[("authorization", &credential)],
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let echoed: serde_json::Value = serde_json::from_str(&reply.body).expect("echo json");
        let echoed = echoed["headers"]["authorization"]
            .as_str()
            .unwrap_or_default();
        let decoded = echoed
            .strip_prefix("Basic ")
            .and_then(|e| b64.decode(e).ok())
            .unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&decoded).contains(GITHUB_REAL),
            "user {user:?}: the echoed credential decodes to the real value"
        );
        let real_b64 = b64.encode(format!("{user}:{GITHUB_REAL}"));
        assert_not_received("basic echo", reply.body.as_bytes(), GITHUB_REAL, &real_b64);
    }
    let swapped = env
        .upstream
        .authorization_for("/echo/basic")
        .unwrap_or_default();
    assert!(
        swapped.starts_with("Basic ") && swapped != "Basic ",
        "the upstream did not get a Basic credential"
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn query_value_keyswap_percent_encoded_is_scrubbed_from_the_echo() {
    let env = start(Alpn::Both).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let path = format!("/echo/q?token={FORMS_PLACEHOLDER}&x=1");
    let reply = env
        .request(
            &opts,
            "GET",
            &path,
            &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = env
        .upstream
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query.starts_with("/echo/q"))
        .map(|r| r.path_and_query)
        .unwrap_or_default();
    let keyswap_wrote = encode_form("percent-rfc3986", FORMS_REAL.as_bytes()).expect("form");
    assert!(
        seen.contains(&keyswap_wrote),
        "the upstream did not get the value percent-encoded by keyswap"
    );
    let echoed: serde_json::Value = serde_json::from_str(&reply.body).expect("echo json");
    assert_eq!(
        echoed["query"].as_str(),
        Some(
            format!(
                "token={}&x=1",
                encode_form("percent-rfc3986", FORMS_PLACEHOLDER.as_bytes()).expect("form")
            )
            .as_str()
        ),
        "the echoed query does not hold the placeholder in keyswap's encoding"
    );
    assert_not_received(
        "query echo",
        reply.body.as_bytes(),
        FORMS_REAL,
        &keyswap_wrote,
    );
    env.assert_no_leaks();
}

#[tokio::test]
async fn value_split_across_response_frames_in_every_form_is_scrubbed_over_h2() {
    let env = start(Alpn::Http2Only).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http2Only);
    let mut conn = env.open(&opts).await;
    for (_, placeholder, real) in secrets() {
        for form in FORMS {
            let case = format!("{form} split over h2 DATA frames");
            let got = reflect(&env, &mut conn, placeholder, form, "body").await;
            assert_eq!(got.status, 200, "{case}");
            let encoded = encode_form(form, real.as_bytes()).expect("known form");
            assert_not_received(&case, &got.everything, real, &encoded);
            // The whole body arrived, scrubbed rather than cut: the upstream's JSON around
            // the value came through on both sides of it.
            assert!(
                got.body.starts_with(b"{\"v\":\"") && got.body.ends_with(b"\"}\n"),
                "{case}: the body did not arrive whole"
            );
        }
    }
    env.assert_no_leaks();
}
