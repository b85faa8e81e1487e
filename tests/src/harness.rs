//! The proxy under test: the real keyswap started in-process on `127.0.0.1:0` from a config
//! built here, in front of in-process HTTPS and HTTP upstreams signed by a CA generated per
//! test. Everything the proxy writes — its log, its audit file — and every response the
//! agent received is kept, so [`TestEnv::assert_no_leaks`] can prove no real secret escaped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyswap::{ProxyHandle, ProxyOptions};
use keyswap_certs::CertificateAuthority;
use rustls::pki_types::CertificateDer;

use crate::client::{ProxyClientOptions, Tunnel};
use crate::output::LogCapture;
use crate::secrets::{
    assert_no_real_secret, assert_none_of, GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER,
    OPENAI_REAL,
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
    /// Where the process-wide log (lines written off this test's thread) stood when this
    /// proxy started: the leak check reads what came after.
    process_log_start: usize,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Task tokens handed out during the test: like real secrets, they must appear in no
    /// log, audit record, response, or request the upstream received.
    tokens: Mutex<Vec<String>>,
    /// Real values the test's config added beyond the suite's own (a secret of its own, a
    /// refreshed value): looked for like the suite's.
    secrets: Mutex<Vec<String>>,
    /// Writes what this proxy wrote into the run's output directory (at the leak check, or
    /// when the test ends without one).
    kept: Kept,
    _log_guard: tracing::subscriber::DefaultGuard,
}

/// What a [`TestEnv`] leaves in the run's output directory ([`crate::output`]) when it is
/// dropped, passing or failing: its proxy's log, its audit file and what its agent received.
struct Kept {
    log: LogCapture,
    audit: PathBuf,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Set once [`TestEnv::assert_no_leaks`] kept it all, after flushing the audit.
    done: std::sync::atomic::AtomicBool,
}

impl Kept {
    fn keep(&self) {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
            || crate::output::dir().is_none()
        {
            return;
        }
        crate::output::keep("proxy.log", &self.log.contents());
        crate::output::keep(
            "audit.jsonl",
            &std::fs::read(&self.audit).unwrap_or_default(),
        );
        let received = self.received.lock().map(|r| r.concat()).unwrap_or_default();
        crate::output::keep("received.txt", &received);
    }
}

impl Drop for Kept {
    /// A test that ended before its leak check (it failed) leaves what there is (the audit
    /// as far as it was flushed).
    fn drop(&mut self) {
        self.keep();
    }
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
    /// `token_env` than [`test_env_values`] (e.g. an admin API token). Each value is
    /// looked for by [`TestEnv::assert_no_leaks`] like a real secret.
    pub async fn start_with_env(
        template: &str,
        alpn: Alpn,
        options: ProxyOptions,
        extra_env: &[(&str, &str)],
    ) -> TestEnv {
        let log = LogCapture::default();
        // What the proxy logs on this test's thread goes to the test's own capture (tests
        // read it); what it logs on any other thread (multi-thread runtimes, spawn_blocking,
        // the audit writer) to the process-wide one, which the leak check reads too.
        let process_log_start = crate::output::process_log().len();
        let log_guard = tracing::subscriber::set_default(crate::output::subscriber(log.clone()));

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
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = Kept {
            log: log.clone(),
            audit: dir.path().join("audit.jsonl"),
            received: received.clone(),
            done: Default::default(),
        };
        TestEnv {
            kept,
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
            process_log_start,
            received,
            tokens: Mutex::new(vec![AGENT_TOKEN.to_string()]),
            // What the test adds to the environment is a secret or a token of its own.
            secrets: Mutex::new(extra_env.iter().map(|(_, v)| v.to_string()).collect()),
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

    /// Every audit record written so far (waits for the writer to flush). The file must
    /// exist: the proxy opens it before it serves.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.audit_bytes())
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

    /// The audit file's bytes after a flush; a missing file fails the test (an empty or
    /// absent audit would otherwise pass every check of it).
    fn audit_bytes(&self) -> Vec<u8> {
        self.proxy.flush_audit();
        let path = self.audit_path();
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "the audit file {} cannot be read ({e}): the proxy writes it from the start",
                path.display()
            )
        })
    }

    /// Adds a task token to what [`TestEnv::assert_no_leaks`] looks for.
    pub fn remember_token(&self, token: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.push(token.to_string());
        }
    }

    /// Adds a real value (a secret of the test's own config, a refreshed value) to what
    /// [`TestEnv::assert_no_leaks`] looks for, beside the suite's.
    pub fn remember_secret(&self, value: &str) {
        if let Ok(mut secrets) = self.secrets.lock() {
            secrets.push(value.to_string());
        }
    }

    /// No real secret (the suite's, and any [`TestEnv::remember_secret`]) and no task token
    /// (as it is or base64-encoded) in the proxy's log (this test's thread, and every other
    /// thread's since the proxy started), its audit file, or anything the agent received;
    /// and no task token in any request the upstreams received (a forwarded
    /// `Proxy-Authorization` would carry one), nor in any body or trailer `/sink` read. The audit file must exist.
    pub fn assert_no_leaks(&self) {
        let audit = self.audit_bytes();
        // Kept for CI's grep first, so a failing check below leaves its evidence too.
        self.kept.keep();
        let secrets = self.secrets.lock().map(|s| s.clone()).unwrap_or_default();
        let tokens = self.tokens.lock().map(|t| t.clone()).unwrap_or_default();
        let mut outputs = vec![
            ("the proxy log".to_string(), self.log()),
            (
                "the proxy log of other threads".to_string(),
                crate::output::process_log().since(self.process_log_start),
            ),
            ("the audit file".to_string(), audit),
        ];
        if let Ok(received) = self.received.lock() {
            for (i, r) in received.iter().enumerate() {
                outputs.push((format!("response #{i} the agent received"), r.clone()));
            }
        }
        for (what, bytes) in &outputs {
            assert_no_real_secret(what, bytes);
            assert_none_of(what, bytes, "real secret", &secrets);
            assert_none_of(what, bytes, "task token", &tokens);
        }
        for (name, upstream) in [
            ("the upstream", &self.upstream),
            ("the plain upstream", &self.plain),
            ("the tunnel upstream", &self.tunnel),
        ] {
            for (i, seen) in upstream.seen().iter().enumerate() {
                let mut text = format!("{} {}\n", seen.method, seen.path_and_query);
                for (n, v) in &seen.headers {
                    text.push_str(&format!("{n}: {v}\n"));
                }
                let what = format!("request #{i} {name} received");
                assert_none_of(&what, text.as_bytes(), "task token", &tokens);
            }
            for (i, body) in upstream.bodies().iter().enumerate() {
                let what = format!("body #{i} {name} received (with its trailers)");
                assert_none_of(&what, body.text().as_bytes(), "task token", &tokens);
            }
        }
    }
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
