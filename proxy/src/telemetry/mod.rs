//! The metrics listener: `GET /metrics` (the OpenMetrics text of [`Metrics`]) and
//! `GET /healthz`, routed by an axum [`Router`] and served over HTTP/1.1 with the agent
//! listener's header read timeout and head limits ([`http1_server`]). Any other path is 404,
//! any other method (HEAD too) 405 with `Allow: GET`.
//!
//! The accept loop is keyswap's own rather than `axum::serve`: that one serves HTTP/1 and 2
//! with hyper's defaults, without the header read timeout and head limits, and its graceful
//! shutdown has no bound on how long a connection may drain. This module never sees a
//! request body and never formats anything but counters.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pipeline::conn::http1_server;
use crate::state::fleet::StoreState;
use crate::state::metrics::{Metrics, CONTENT_TYPE_OPENMETRICS};

/// How long scrapes in flight may take to finish after the listener stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves [`router`] on `listener` until `stop` resolves: HTTP/1.1 only, with the agent
/// listener's header read timeout and head limits. After `stop`, scrapes in flight get [`DRAIN_TIMEOUT`] to finish.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let app = router(metrics);
    let (drain, draining) = watch::channel(false);
    let mut scrapes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    scrapes.spawn(serve_scraper(stream, app.clone(), draining.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = scrapes.join_next(), if !scrapes.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = drain.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while scrapes.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = scrapes.len(),
            "metrics connections cut after drain timeout"
        );
        scrapes.abort_all();
    }
}

async fn serve_scraper(stream: TcpStream, app: Router, mut draining: watch::Receiver<bool>) {
    let service = TowerToHyperService::new(app);
    let conn = http1_server().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = drained(&mut draining) => {
            // Finishes a response in progress, then closes; an idle keep-alive closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

/// Resolves once `serve` starts draining (or is gone); holds no `watch` guard across awaits.
async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

/// The two routes. A path is matched before a method, so `POST /other` is 404, not 405.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(scrape).head(not_allowed).fallback(not_allowed),
        )
        .route(
            "/healthz",
            get(healthy).head(not_allowed).fallback(not_allowed),
        )
        .fallback(not_found)
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.try_encode() {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            );
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
        }
    }
}

/// `ok`; with a shared store (`store:`), which state it is in, and 503 once the store has
/// been lost for longer than `store.grace` (a load balancer then sends agents elsewhere).
async fn healthy(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.store.state() {
        None => plain(StatusCode::OK, "ok"),
        Some(StoreState::Connected) => plain(StatusCode::OK, "ok store=connected\n"),
        Some(StoreState::Grace) => plain(StatusCode::OK, "ok store=grace\n"),
        Some(StoreState::Down) => {
            plain(StatusCode::SERVICE_UNAVAILABLE, "unavailable store=down\n")
        }
    }
}

/// Every method but GET, on a known path (HEAD too: axum would otherwise answer it as GET).
async fn not_allowed() -> Response {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    response
}

async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "not found; try /metrics or /healthz\n",
    )
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;
    use crate::state::metrics::tests::{parse, value};
    use crate::state::metrics::MetricSources;

    fn metrics() -> Metrics {
        Metrics::new(MetricSources {
            leaves_minted: Box::new(|| 0),
            audit_records_dropped: Box::new(|| 0),
        })
    }

    struct Running {
        addr: std::net::SocketAddr,
        stop: oneshot::Sender<()>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start(metrics: Arc<Metrics>) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, async {
            let _ = stopped.await;
        }));
        Running { addr, stop, server }
    }

    impl Running {
        async fn shut_down(self) {
            let _ = self.stop.send(());
            tokio::time::timeout(Duration::from_secs(2), self.server)
                .await
                .expect("serve returns soon after stop")
                .unwrap();
        }
    }

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One request over a fresh TCP connection, read until the server closes it.
    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (headers, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let status = headers[9..12].parse().unwrap();
        Reply {
            status,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn serves_metrics_health_and_nothing_else() {
        let m = Arc::new(metrics());
        m.request("allowed", "github", 0.01);
        m.task_issued("config");
        let running = start(m).await;

        let reply = get(running.addr, "GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{}",
            reply.headers
        );
        let scrape = parse(&reply.body);
        assert_eq!(
            value(
                &scrape,
                "keyswap_requests_total",
                &[("reason", "allowed"), ("policy", "github")]
            ),
            1.0
        );
        assert_eq!(value(&scrape, "keyswap_active_tasks", &[]), 1.0);

        let reply = get(running.addr, "GET", "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

        for (method, path) in [("GET", "/other"), ("GET", "/metrics/x"), ("POST", "/other")] {
            let reply = get(running.addr, method, path).await;
            assert_eq!(reply.status, 404, "{method} {path}");
            assert_eq!(reply.body, "not found; try /metrics or /healthz\n");
            assert!(reply
                .headers
                .contains("content-type: text/plain; charset=utf-8"));
        }
        for (method, path) in [
            ("POST", "/metrics"),
            ("DELETE", "/healthz"),
            ("HEAD", "/metrics"),
        ] {
            let reply = get(running.addr, method, path).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert!(
                reply.headers.lines().any(|l| l == "allow: get"),
                "{method} {path}: {}",
                reply.headers
            );
            if method != "HEAD" {
                assert_eq!(reply.body, "use GET\n");
            }
        }

        running.shut_down().await;
    }

    #[tokio::test]
    async fn idle_scraper_connection_does_not_hold_shutdown() {
        let running = start(Arc::new(metrics())).await;
        let mut stream = TcpStream::connect(running.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: metrics\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        while !reply.ends_with(b"\r\n\r\nok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "connection closed before the reply");
            reply.extend_from_slice(&buf[..n]);
        }
        assert!(reply.starts_with(b"HTTP/1.1 200"));

        // The keep-alive connection is idle and still open: stop must not wait for it.
        running.shut_down().await;
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
            .await
            .expect("server closed the idle connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
