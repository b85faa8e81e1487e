//! The proxy under test: the real keyswap started in-process on `127.0.0.1:0` from a config
//! built here, in front of in-process HTTPS and HTTP upstreams signed by a CA generated per
//! test. Everything the proxy writes — its log, its audit file — and every response the
//! agent received is kept, so [`TestEnv::assert_no_leaks`] can prove no real secret escaped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyswap::{ProxyHandle, ProxyOptions};
use keyswap_certs::CertificateAuthority;
use rustls::pki_types::CertificateDer;

use crate::client::{ProxyClientOptions, Tunnel};
use crate::secrets::{
    assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER, OPENAI_REAL,
};
use crate::upstream::{Alpn, Upstream, UpstreamOptions};

/// Token of the `agent` task in the default config.
pub const AGENT_TOKEN: &str = "agent-token-1234";
/// The upstream host names the default config maps onto the in-process upstream.
pub const API_HOST: &str = "api.upstream.test";
pub const OTHER_HOST: &str = "other.upstream.test";
pub const TUNNEL_HOST: &str = "tunnel.upstream.test";
pub const PLAIN_HOST: &str = "plain.upstream.test";

/// The environment values the config's `from_env` / `token_env` read.
pub fn test_env_values() -> HashMap<String, String> {
    HashMap::from([
        ("KS_TEST_GITHUB".to_string(), GITHUB_REAL.to_string()),
        ("KS_TEST_OPENAI".to_string(), OPENAI_REAL.to_string()),
        ("KS_TEST_TOKEN".to_string(), AGENT_TOKEN.to_string()),
    ])
}

/// Checks that the process environment holds what a config reloaded from disk reads:
/// `KS_TEST_TOKEN` = [`AGENT_TOKEN`]. Reloads read the process environment, and the tests
/// share one process, so the value is set before it starts (`.cargo/config.toml`'s `[env]`),
/// never by a test: `std::env::set_var` races every other test's threads.
pub fn assert_reload_env() {
    assert!(
        std::env::var("KS_TEST_TOKEN").as_deref() == Ok(AGENT_TOKEN),
        "KS_TEST_TOKEN is not the static task's token: run the tests with cargo, whose \
         .cargo/config.toml sets it"
    );
}

/// Ports and paths a config template is filled with.
pub struct ConfigVars<'a> {
    pub dir: &'a Path,
    pub https_port: u16,
    pub plain_port: u16,
    pub tunnel_port: u16,
}

/// The default config: task `agent` with rules for every behaviour the suite exercises, and
/// task `expired` whose time is up. `{dir}` etc. are filled in by [`render`].
pub const DEFAULT_CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
    "other.upstream.test:443": "127.0.0.1:{https_port}"
    "tunnel.upstream.test:443": "127.0.0.1:{tunnel_port}"
    "plain.upstream.test:80": "127.0.0.1:{plain_port}"
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
  openai:
    from_env: KS_TEST_OPENAI
    placeholder: sk-keyswap-openai-placeholder
tasks:
  agent:
    token_env: KS_TEST_TOKEN
    allow:
      - host: api.upstream.test
        methods: [GET, POST, HEAD]
        paths: ["/echo", "/echo/**", "/reflect-header", "/bytes/*", "/upload", "/ws", "/status/*", "/redirect"]
        secrets: [github]
      - host: api.upstream.test
        methods: [GET]
        paths: ["/public/**"]
      - host: other.upstream.test
        secrets: [openai]
      - host: tunnel.upstream.test
        tunnel: true
      - host: localhost
        port: {https_port}
      - host: plain.upstream.test
        scheme: http
        secrets: [github]
        allow_cleartext: true
  expired:
    token_env: KS_TEST_TOKEN
    expires: 2020-01-01T00:00:00Z
    allow:
      - host: api.upstream.test
"#;

pub fn render(template: &str, vars: &ConfigVars<'_>) -> String {
    template
        .replace("{dir}", &vars.dir.display().to_string())
        .replace("{https_port}", &vars.https_port.to_string())
        .replace("{plain_port}", &vars.plain_port.to_string())
        .replace("{tunnel_port}", &vars.tunnel_port.to_string())
}

/// Log lines written by the code under test, captured for the leak check.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub upstream_ca: CertificateAuthority,
    /// HTTPS upstream offering h2 and http/1.1.
    pub upstream: Upstream,
    /// Plain-HTTP upstream.
    pub plain: Upstream,
    /// HTTPS upstream reached only through the `tunnel: true` rule.
    pub tunnel: Upstream,
    pub proxy: ProxyHandle,
    pub proxy_ca: CertificateDer<'static>,
    /// The same certificate as PEM, as `keyswap ca export` writes it.
    pub proxy_ca_pem: String,
    pub config_yaml: String,
    log: LogCapture,
    received: Mutex<Vec<Vec<u8>>>,
    /// Task tokens handed out during the test: like real secrets, they must appear in no
    /// log, audit record or response.
    tokens: Mutex<Vec<String>>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

impl TestEnv {
    /// The default config with upstreams that offer both h2 and http/1.1.
    pub async fn start() -> TestEnv {
        TestEnv::start_with(DEFAULT_CONFIG, Alpn::Both).await
    }

    /// `template` is a config with the `{dir}`, `{https_port}`, `{plain_port}` and
    /// `{tunnel_port}` slots of [`DEFAULT_CONFIG`].
    pub async fn start_with(template: &str, alpn: Alpn) -> TestEnv {
        TestEnv::start_with_options(template, alpn, ProxyOptions::default()).await
    }

    /// [`TestEnv::start_with`] with proxy options (admin API, metrics); `listen` is always
    /// an ephemeral loopback port.
    pub async fn start_with_options(template: &str, alpn: Alpn, options: ProxyOptions) -> TestEnv {
        TestEnv::start_with_env(template, alpn, options, &[]).await
    }

    /// [`TestEnv::start_with_options`] with more environment for the config's `from_env` /
    /// `token_env` than [`test_env_values`] (e.g. an admin API token).
    pub async fn start_with_env(
        template: &str,
        alpn: Alpn,
        options: ProxyOptions,
        extra_env: &[(&str, &str)],
    ) -> TestEnv {
        let log = LogCapture::default();
        // Tests run on a current-thread runtime, so a thread-default subscriber sees every
        // log line the proxy writes for this test. Dependencies are capped as in the binary.
        let mut filter = tracing_subscriber::EnvFilter::new("debug");
        for cap in keyswap::cli::DEPENDENCY_LOG_CAPS {
            filter = filter.add_directive(cap.parse().expect("valid directive"));
        }
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().expect("tempdir");
        let upstream_ca =
            CertificateAuthority::generate("keyswap test upstream CA").expect("upstream CA");
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca.cert_pem())
            .expect("write upstream CA");
        let upstream = Upstream::start(
            &upstream_ca,
            UpstreamOptions {
                names: vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                    API_HOST.into(),
                    OTHER_HOST.into(),
                ],
                alpn,
                ..UpstreamOptions::default()
            },
        )
        .await;
        let tunnel = Upstream::start(
            &upstream_ca,
            UpstreamOptions {
                names: vec![TUNNEL_HOST.into()],
                ..UpstreamOptions::default()
            },
        )
        .await;
        let plain = Upstream::plain_http().await;
        let config_yaml = render(
            template,
            &ConfigVars {
                dir: dir.path(),
                https_port: upstream.port(),
                plain_port: plain.port(),
                tunnel_port: tunnel.port(),
            },
        );
        let mut env_values = test_env_values();
        env_values.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let config =
            keyswap_config::load_str(&config_yaml, &dir.path().join("keyswap.yaml"), &env_values)
                .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let proxy_ca = CertificateAuthority::generate("keyswap test proxy CA").expect("proxy CA");
        let proxy_ca_der = proxy_ca.cert_der().clone();
        let proxy_ca_pem = proxy_ca.cert_pem().to_string();
        let proxy = ProxyHandle::start(
            config,
            proxy_ca,
            ProxyOptions {
                listen: Some("127.0.0.1:0".parse().expect("addr")),
                ..options
            },
        )
        .await
        .expect("proxy starts");
        TestEnv {
            dir,
            upstream_ca,
            upstream,
            plain,
            tunnel,
            proxy,
            proxy_ca: proxy_ca_der,
            proxy_ca_pem,
            config_yaml,
            log,
            received: Mutex::new(Vec::new()),
            tokens: Mutex::new(vec![AGENT_TOKEN.to_string()]),
            _log_guard: log_guard,
        }
    }

    /// Client options for task `agent` tunnelling to `connect_to`.
    pub fn agent(&self, connect_to: &str, alpn: Alpn) -> ProxyClientOptions {
        self.client(Some(("agent", AGENT_TOKEN)), connect_to, alpn)
    }

    pub fn client(
        &self,
        auth: Option<(&str, &str)>,
        connect_to: &str,
        alpn: Alpn,
    ) -> ProxyClientOptions {
        ProxyClientOptions {
            proxy: self.proxy.addr(),
            auth: auth.map(|(t, k)| (t.to_string(), k.to_string())),
            connect_to: connect_to.to_string(),
            sni: None,
            alpn,
            trust: vec![self.proxy_ca.clone()],
        }
    }

    /// Opens a tunnel that must be accepted.
    pub async fn open(&self, opts: &ProxyClientOptions) -> crate::client::ProxyConnection {
        match crate::client::connect_tunnel(opts)
            .await
            .expect("tunnel io")
        {
            Tunnel::Open(conn) => conn,
            Tunnel::Refused { status, reason, .. } => {
                panic!("tunnel to {} refused: {status} {reason:?}", opts.connect_to)
            }
        }
    }

    /// Sends one request inside a new tunnel and returns status, reason header and body;
    /// the response is kept for the leak check.
    pub async fn request(
        &self,
        opts: &ProxyClientOptions,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut conn = self.open(opts).await;
        let h2 = conn.negotiated_h2();
        let authority = opts.connect_to.trim_end_matches(":443").to_string();
        let mut builder = crate::client::request(method, &authority, path, h2);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(crate::client::empty()).expect("request");
        let resp = conn.send(req).await.expect("response");
        self.reply(resp).await
    }

    /// Reads a response fully, keeping it for the leak check.
    pub async fn reply(&self, resp: http::Response<hyper::body::Incoming>) -> Reply {
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = crate::client::body_string(resp).await;
        self.keep(&headers, &body);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Records what the agent received, for [`TestEnv::assert_no_leaks`].
    pub fn keep(&self, headers: &[(String, String)], body: &str) {
        let mut seen = Vec::new();
        for (n, v) in headers {
            seen.extend_from_slice(n.as_bytes());
            seen.extend_from_slice(b": ");
            seen.extend_from_slice(v.as_bytes());
            seen.push(b'\n');
        }
        seen.extend_from_slice(body.as_bytes());
        if let Ok(mut r) = self.received.lock() {
            r.push(seen);
        }
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Every audit record written so far (waits for the writer to flush).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.proxy.flush_audit();
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Waits until an audit record matching `pred` exists (records of a response are
    /// written when its body has been sent, which can trail the client by a moment).
    pub async fn audit_where(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(found) = self.audit().into_iter().find(|r| pred(r)) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching audit record"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits until at least `count` audit records match `pred` (a record of a failed
    /// handshake is written when keyswap sees the failure, which can trail the client's exit),
    /// then returns every matching record.
    pub async fn audit_at_least(
        &self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found: Vec<_> = self.audit().into_iter().filter(|r| pred(r)).collect();
            if found.len() >= count || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn log(&self) -> Vec<u8> {
        self.log.contents()
    }

    /// Adds a task token to what [`TestEnv::assert_no_leaks`] looks for.
    pub fn remember_token(&self, token: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.push(token.to_string());
        }
    }

    /// No real secret and no task token in the proxy log or the audit file, and no real
    /// secret in anything the agent received.
    pub fn assert_no_leaks(&self) {
        self.proxy.flush_audit();
        let log = self.log();
        let audit = std::fs::read(self.audit_path()).unwrap_or_default();
        assert_no_real_secret("proxy log", &log);
        assert_no_real_secret("audit log", &audit);
        if let Ok(received) = self.received.lock() {
            for (i, r) in received.iter().enumerate() {
                assert_no_real_secret(&format!("response #{i} the agent received"), r);
            }
        }
        let tokens = self.tokens.lock().map(|t| t.clone()).unwrap_or_default();
        for (what, text) in [("proxy log", &log), ("audit log", &audit)] {
            for token in &tokens {
                assert!(
                    !contains(text, token.as_bytes()),
                    "a task token appeared in the {what}"
                );
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A response as the agent saw it.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn reason(&self) -> Option<&str> {
        self.header("x-keyswap-reason")
    }
}

impl std::fmt::Debug for Reply {
    /// Status and reason only: bodies can echo header values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("reason", &self.reason())
            .finish()
    }
}

/// The header value the agent sends: a Bearer placeholder.
pub fn bearer(placeholder: &str) -> String {
    format!("Bearer {placeholder}")
}

/// Both placeholders, re-exported for tests.
pub const PLACEHOLDERS: [&str; 2] = [GITHUB_PLACEHOLDER, OPENAI_PLACEHOLDER];
