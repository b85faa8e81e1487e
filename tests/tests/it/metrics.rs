//! `/metrics` and `/healthz` on the real proxy: the exposition parses, the counters and
//! gauges move with requests, connections and tasks, and no label value is a task id or a
//! token.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::IssueRequest;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn, Tunnel};
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::GITHUB_PLACEHOLDER;
use prometheus_parse::{Sample, Scrape, Value};

const TASK_ID: &str = "metrics-task-7";

fn config() -> String {
    ConfigBuilder::new()
        .admin_socket()
        .metrics()
        .secret("github", Secret::github())
        .policy(
            "github-ro",
            Entry::new().rule(
                Rule::api()
                    .methods(&["GET"])
                    .paths(&["/echo/**"])
                    .secrets(&["github"]),
            ),
        )
        .task(
            "agent",
            Entry::with_token().rule(Rule::api().secrets(&["github"])),
        )
        .yaml()
}

/// One GET on a new connection: status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let connection = tokio::spawn(async move { drop(conn.await) });
    let request = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    connection.abort();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

struct Scraped {
    text: String,
    scrape: Scrape,
}

async fn scrape(env: &TestEnv) -> Scraped {
    let addr = env.proxy.metrics_addr().expect("metrics served");
    let (status, content_type, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    env.keep(&[], &text);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parseable");
    Scraped { text, scrape }
}

impl Scraped {
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect()
    }

    /// A counter or gauge (0 when the series does not exist yet). OpenMetrics names a
    /// counter family without `_total`, so prometheus-parse reads counters as untyped.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.samples(name, labels).as_slice() {
            [] => 0.0,
            [one] => match one.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("{name} is not a single value: {other:?}"),
            },
            many => panic!("{} series of {name}{labels:?}", many.len()),
        }
    }
}

/// Scrapes until `cond` holds (metrics of a response are recorded once its body has been
/// sent, and a closed connection is noticed a moment later).
async fn scrape_until(env: &TestEnv, what: &str, cond: impl Fn(&Scraped) -> bool) -> Scraped {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scraped = scrape(env).await;
        if cond(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}\n{}",
            scraped.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const REQUESTS: &str = "keyswap_requests_total";
const OPEN: &str = "keyswap_open_connections";
const ISSUED: &str = "keyswap_tasks_issued_total";
const REVOKED: &str = "keyswap_tasks_revoked_total";
const ACTIVE: &str = "keyswap_active_tasks";

#[tokio::test]
async fn metrics_move_with_requests_connections_and_tasks() {
    let options = ProxyOptions {
        admin: true,
        metrics: true,
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&config(), Alpn::Both, options).await;
    let metrics_addr = env.proxy.metrics_addr().expect("metrics served");
    let (status, _, body) = get(metrics_addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let start = scrape(&env).await;
    assert_eq!(start.value(ISSUED, &[("by", "config")]), 1.0);
    assert_eq!(start.value(ISSUED, &[("by", "api")]), 0.0);
    assert_eq!(start.value(REVOKED, &[("why", "api")]), 0.0);
    assert_eq!(start.value(ACTIVE, &[]), 1.0);
    assert_eq!(start.value(OPEN, &[]), 0.0);

    let admin = AdminClient::new(AdminTarget::Socket(
        env.proxy.admin_socket().expect("socket").to_path_buf(),
    ));
    let issued = admin
        .issue(&IssueRequest {
            policy: "github-ro".into(),
            id: Some(TASK_ID.into()),
            ..IssueRequest::default()
        })
        .await
        .expect("issue");
    env.remember_token(&issued.token);

    // Two allowed requests and one refused, on one connection that stays open.
    let opts = env.client(
        Some((TASK_ID, &issued.token)),
        &format!("{API_HOST}:443"),
        Alpn::Http2Only,
    );
    let mut conn = env.open(&opts).await;
    for path in ["/echo/a", "/echo/b", "/elsewhere"] {
        let req = client::request("GET", API_HOST, path, conn.negotiated_h2())
            .header("authorization", bearer(GITHUB_PLACEHOLDER))
            .body(client::empty())
            .expect("request");
        env.reply(conn.send(req).await.expect("response")).await;
    }
    // The static task (policy "static") and a refused CONNECT (no task: policy "none").
    let reply = env
        .request(
            &env.agent(&format!("{API_HOST}:443"), Alpn::Both),
            "GET",
            "/echo/static",
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let bad = env.client(
        Some((TASK_ID, "wrong")),
        &format!("{API_HOST}:443"),
        Alpn::Both,
    );
    match client::connect_tunnel(&bad).await.expect("tunnel io") {
        Tunnel::Refused { status, reason, .. } => {
            assert_eq!((status, reason.as_deref()), (407, Some("bad_token")))
        }
        Tunnel::Open(_) => panic!("a wrong token opened a tunnel"),
    }

    let busy = scrape_until(&env, "counters after the requests", |s| {
        s.value(REQUESTS, &[("reason", "allowed"), ("policy", "github-ro")]) == 2.0
            && s.value(
                REQUESTS,
                &[("reason", "route_not_allowed"), ("policy", "github-ro")],
            ) == 1.0
            && s.value(REQUESTS, &[("reason", "allowed"), ("policy", "static")]) == 1.0
            && s.value(REQUESTS, &[("reason", "bad_token"), ("policy", "none")]) == 1.0
            && s.value(OPEN, &[]) == 1.0
    })
    .await;
    assert_eq!(busy.value(ISSUED, &[("by", "api")]), 1.0);
    assert_eq!(busy.value(ACTIVE, &[]), 2.0);
    assert_eq!(
        busy.value(
            "keyswap_request_duration_seconds_count",
            &[("policy", "github-ro")]
        ),
        3.0
    );
    assert!(busy.value("keyswap_leaf_certificates_minted_total", &[]) >= 1.0);

    admin.revoke(TASK_ID, "api").await.expect("revoke");
    let after = scrape_until(&env, "revocation counted, connection closed", |s| {
        s.value(REVOKED, &[("why", "api")]) == 1.0 && s.value(OPEN, &[]) == 0.0
    })
    .await;
    assert_eq!(after.value(ACTIVE, &[]), 1.0);
    assert_eq!(after.value(REVOKED, &[("why", "exit")]), 0.0);

    // No label value (nor anything else in the text) is a task id or a token.
    for scraped in [&start, &busy, &after] {
        for sample in &scraped.scrape.samples {
            for (name, value) in sample.labels.iter() {
                assert!(
                    ![TASK_ID, "agent", issued.token.as_str(), AGENT_TOKEN]
                        .contains(&value.as_str()),
                    "{}{{{name}=...}} carries a task id or token",
                    sample.metric
                );
            }
        }
        for needle in [TASK_ID, issued.token.as_str(), AGENT_TOKEN] {
            assert!(
                !scraped.text.contains(needle),
                "the exposition carries a task id or token"
            );
        }
    }
    let (status, _, _) = get(metrics_addr, "/nothing").await;
    assert_eq!(status, 404);
    env.assert_no_leaks();
}
