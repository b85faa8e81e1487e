//! What the fleet tests share: a real `redis-server` on a unix socket ([`Redis`]), a relay the
//! test can cut between one replica and it ([`Relay`]), `keyswap run` replicas as processes of
//! their own ([`Replica`], re-executing this test binary through [`crate::child`]), and the
//! connections and checks the tests drive through them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::{self, Alpn, DrivenConn as Conn, RawProxyStream};
use keyswap_tests::harness::{test_env_values, TestEnv, API_HOST, TUNNEL_HOST};
use keyswap_tests::logged_child::LoggedChild;
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_REAL};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use crate::child::keyswap_command;

/// How long a test waits for an outcome (a connection closing, a replica giving up on its
/// store): a bound against hanging, not a measurement.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// Whether redis-server runs here (fails under `CI=true` if not).
pub(crate) fn redis_available() -> bool {
    keyswap_tests::tools::available("redis-server", "--version")
        && keyswap_tests::tools::available("redis-cli", "--version")
}

/// A `redis-server` on a unix socket only (`--port 0`: no TCP), persisting nothing by itself.
pub(crate) struct Redis {
    pub(crate) socket: PathBuf,
    pub(crate) dir: PathBuf,
    _child: LoggedChild,
}

impl Redis {
    pub(crate) fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, &[])
    }

    /// [`Redis::start`] with more of redis-server's options (e.g. a TLS port).
    pub(crate) fn start_with(dir: &Path, options: &[&str]) -> Redis {
        let socket = dir.join("redis.sock");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--logfile", "/dev/stderr", "--dir"])
            .arg(dir)
            .args(options);
        let child = LoggedChild::spawn(cmd);
        // "Ready to accept connections" (7.2) or "ready to accept connections at PATH" (7.0).
        child.wait_for("eady to accept connections");
        Redis {
            socket,
            dir: dir.to_path_buf(),
            _child: child,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// `redis-cli ARGS` against this server; its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the server holds: `SAVE`, then the RDB file's bytes.
    pub(crate) fn dump(&self) -> Vec<u8> {
        assert!(self.cli(&["SAVE"]).contains("OK"));
        std::fs::read(self.dir.join("dump.rdb")).expect("dump.rdb written")
    }
}

/// A TCP relay to the Redis socket that the test can cut (every relayed connection drops,
/// new ones are closed at once) and restore: one replica loses its store, the others do not.
pub(crate) struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Relay {
    pub(crate) async fn start(socket: PathBuf) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (open, watching) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                if !*watching.borrow() {
                    continue;
                }
                let (socket, mut watching) = (socket.clone(), watching.clone());
                tokio::spawn(async move {
                    let Ok(mut unix) = UnixStream::connect(&socket).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix) => {}
                        _ = watching.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay { addr, open }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub(crate) fn cut(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// What a test adds to [`replica_config`]: more policies (entries of `policies:`, indented
/// two spaces), more top-level sections, and more lines of `store.redis` (indented four).
#[derive(Default, Clone, Copy)]
pub(crate) struct Extra<'a> {
    pub(crate) policies: &'a str,
    pub(crate) top: &'a str,
    pub(crate) redis: &'a str,
}

/// The replicas' shared config: the default upstreams, one secret, two policies (the second
/// asks a human for each request), a store, and what `extra` adds.
pub(crate) fn replica_config(
    env: &TestEnv,
    name: &str,
    store_url: &str,
    grace: &str,
    extra: Extra<'_>,
) -> String {
    format!(
        r#"version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/fleet-ca
audit_log: {dir}/{name}-audit.jsonl
admin:
  socket: {dir}/{name}-admin.sock
metrics:
  listen: 127.0.0.1:0
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https}"
    "tunnel.upstream.test:443": "127.0.0.1:{tunnel}"
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: {placeholder}
policies:
  fleet-agent:
    allow:
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo", "/echo/**", "/bytes/*"]
        secrets: [github]
      - host: tunnel.upstream.test
        tunnel: true
  fleet-asks:
    allow:
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo/asks/**"]
        secrets: [github]
        approve: each
{policies}{top}store:
  redis:
    url: {store_url}
    prefix: "ksfleet:"
{redis}  grace: {grace}
"#,
        policies = extra.policies,
        top = extra.top,
        redis = extra.redis,
        dir = env.dir.path().display(),
        https = env.upstream.port(),
        tunnel = env.tunnel.port(),
        placeholder = GITHUB_PLACEHOLDER,
    )
}

/// One `keyswap run` replica.
pub(crate) struct Replica {
    pub(crate) child: LoggedChild,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) admin: AdminClient,
}

impl Replica {
    /// Replicas a, b and c on `redis`, each with a grace of 30 s.
    pub(crate) fn three(env: &TestEnv, redis: &Redis) -> [Replica; 3] {
        ["a", "b", "c"].map(|name| Replica::start(env, name, &redis.url(), "30s"))
    }

    /// Starts replica `name` and waits until it has reached its store.
    pub(crate) fn start(env: &TestEnv, name: &str, store_url: &str, grace: &str) -> Replica {
        Replica::start_with(env, name, store_url, grace, Extra::default())
    }

    /// [`Replica::start`] with `extra` in its config.
    pub(crate) fn start_with(
        env: &TestEnv,
        name: &str,
        store_url: &str,
        grace: &str,
        extra: Extra<'_>,
    ) -> Replica {
        let config = env.dir.path().join(format!("{name}.yaml"));
        let text = replica_config(env, name, store_url, grace, extra);
        std::fs::write(&config, text).expect("config");
        let mut cmd = keyswap_command(&["run", "--config", config.to_str().expect("utf-8 path")]);
        cmd.env("KEYSWAP_LOG", "info").envs(test_env_values());
        let child = LoggedChild::spawn(cmd);
        let metrics = address_in(&child.wait_for("metrics listening"));
        let addr = address_in(&child.wait_for("keyswap listening"));
        child.wait_for("the store is connected");
        Replica {
            child,
            addr,
            metrics,
            admin: AdminClient::new(AdminTarget::Socket(
                env.dir.path().join(format!("{name}-admin.sock")),
            )),
        }
    }

    pub(crate) async fn issue(&self, env: &TestEnv) -> IssuedTask {
        self.issue_from(env, "fleet-agent").await
    }

    /// A task of `policy`, issued here for 30 minutes.
    pub(crate) async fn issue_from(&self, env: &TestEnv, policy: &str) -> IssuedTask {
        let issued = self
            .admin
            .issue(&IssueRequest {
                policy: policy.into(),
                ttl: Some("30m".into()),
                ..IssueRequest::default()
            })
            .await
            .expect("task issued");
        env.remember_token(&issued.token);
        issued
    }

    /// `GET /healthz`: status and body.
    pub(crate) async fn health(&self) -> (u16, String) {
        http_get(self.metrics, "/healthz").await
    }
}

/// `addr=IP:PORT` in a log line.
pub(crate) fn address_in(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A plain HTTP/1.1 GET with `Connection: close`: status and body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// A task's credentials: (id, token).
pub(crate) type Auth<'a> = (&'a str, &'a str);

pub(crate) fn auth(task: &IssuedTask) -> Auth<'_> {
    (&task.id, &task.token)
}

/// What the tests ask of a [`Conn`].
pub(crate) trait ConnExt {
    async fn get(&mut self, env: &TestEnv, authority: &str, path: &str) -> (u16, Option<String>);
    async fn closes(&mut self, what: &str);
}

impl ConnExt for Conn {
    /// `GET path` to `authority`: status and `x-keyswap-reason`, the reply kept for the leak check.
    async fn get(&mut self, env: &TestEnv, authority: &str, path: &str) -> (u16, Option<String>) {
        let req = client::request("GET", authority, path, self.h2())
            .header("authorization", format!("Bearer {GITHUB_PLACEHOLDER}"))
            .body(client::empty())
            .expect("request");
        let resp = self.send(req).await.expect("response");
        let reply = env.reply(resp).await;
        (reply.status, reply.reason().map(str::to_string))
    }

    /// Waits for the connection to end, failing past [`BOUND`].
    async fn closes(&mut self, what: &str) {
        ends_by(what, &mut self.driver).await.ok();
    }
}

pub(crate) async fn ends_by<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout_at(Instant::now() + BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not happen within {BOUND:?}"),
    }
}

/// CONNECT to `replica` as `auth`: the status, and the socket if it was accepted.
pub(crate) async fn connect(
    replica: &Replica,
    auth: Auth<'_>,
    authority: &str,
) -> (u16, Option<TcpStream>) {
    let mut raw = RawProxyStream::connect(replica.addr)
        .await
        .expect("connect to the replica");
    let credentials = client::proxy_authorization(auth.0, auth.1);
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        credentials.to_str().expect("ASCII")
    );
    raw.send_raw(head.as_bytes()).await.expect("send CONNECT");
    let response = raw.read_response_head().await.expect("CONNECT answer");
    let status = response.status;
    (status, (status == 200).then(|| raw.into_inner()))
}

/// The fleet's CA, written before any replica starts so that they all mint with it.
pub(crate) fn fleet_ca(env: &TestEnv) -> CertificateDer<'static> {
    let ca = CertificateAuthority::load_or_create(&env.dir.path().join("fleet-ca")).expect("CA");
    ca.cert_der().clone()
}

/// An intercepted connection through `replica` to [`API_HOST`], which must be accepted.
pub(crate) async fn intercepted(
    replica: &Replica,
    auth: Auth<'_>,
    ca: &CertificateDer<'static>,
    alpn: Alpn,
) -> Conn {
    let (status, tcp) = connect(replica, auth, &format!("{API_HOST}:443")).await;
    assert_eq!(status, 200, "CONNECT as {} refused", auth.0);
    Conn::over_tls(tcp.expect("socket"), API_HOST, ca, alpn).await
}

/// A `tunnel: true` connection through `replica` to [`TUNNEL_HOST`].
pub(crate) async fn tunnelled(env: &TestEnv, replica: &Replica, auth: Auth<'_>) -> Conn {
    let (status, tcp) = connect(replica, auth, &format!("{TUNNEL_HOST}:443")).await;
    assert_eq!(status, 200, "CONNECT as {} refused", auth.0);
    Conn::over_tls(
        tcp.expect("socket"),
        TUNNEL_HOST,
        env.upstream_ca.cert_der(),
        Alpn::Http1Only,
    )
    .await
}

/// The store holds no real secret and no token: the RDB after `SAVE`, and every task record.
pub(crate) fn assert_store_clean(redis: &Redis, tokens: &[&str]) {
    let dump = redis.dump();
    let records = redis.cli(&["HGETALL", "ksfleet:tasks"]);
    for value in [GITHUB_REAL, OPENAI_REAL].iter().chain(tokens) {
        let needle = value.as_bytes();
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle),
            "the store's dump holds a secret or a token"
        );
        assert!(
            !records.contains(value),
            "a task record holds a secret or a token"
        );
    }
}
