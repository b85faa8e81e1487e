//! The fleet (`store:`): three `keyswap run` processes share their runtime tasks and
//! revocations through a real `redis-server` (on a unix socket in the test's directory). A
//! task issued on one replica is used on the others; a revocation on one closes the task's
//! connections (intercepted HTTP/1.1 and h2, `tunnel: true`) on the others; a replica cut off
//! from the store serves the tasks it knows for `store.grace`, issues none, then refuses
//! everything, and on reconnecting honours a revocation it missed. The store holds neither a
//! real secret nor a task token.
//!
//! A replica is cut off by a relay the test owns between it and Redis (TCP to the unix
//! socket), so only that replica loses the store while the others keep it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use keyswap::admin::client::{AdminClient, AdminTarget, ClientError};
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

/// Set to the arguments (separated by [`ARG_SEP`]) when this binary runs as `keyswap`.
const CHILD_ARGS: &str = "KS_FLEET_KEYSWAP_ARGS";
const ARG_SEP: char = '\u{1f}';

/// How long a test waits for an outcome (a connection closing, a replica giving up on its
/// store): a bound against hanging, not a measurement.
const BOUND: Duration = Duration::from_secs(60);

/// Not a test: the entry point when this test binary is re-executed as `keyswap` (with
/// [`CHILD_ARGS`] set). Each replica is a process of its own.
#[test]
#[ignore = "entry point of the keyswap child process, run by the tests below"]
fn keyswap_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let argv = std::iter::once("keyswap".to_string()).chain(args.split(ARG_SEP).map(String::from));
    let cli = <keyswap::cli::Cli as clap::Parser>::parse_from(argv);
    let code = keyswap::cli::main_with(cli);
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

/// Whether redis-server runs here (fails under `CI=true` if not).
fn redis_available() -> bool {
    keyswap_tests::tools::available("redis-server", "--version")
        && keyswap_tests::tools::available("redis-cli", "--version")
}

/// A `redis-server` on a unix socket only (`--port 0`: no TCP), persisting nothing by itself.
struct Redis {
    socket: PathBuf,
    dir: PathBuf,
    _child: LoggedChild,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
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
            .arg(dir);
        let child = LoggedChild::spawn(cmd);
        // "Ready to accept connections" (7.2) or "ready to accept connections at PATH" (7.0).
        child.wait_for("eady to accept connections");
        Redis {
            socket,
            dir: dir.to_path_buf(),
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// `redis-cli ARGS` against this server; its stdout.
    fn cli(&self, args: &[&str]) -> String {
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
    fn dump(&self) -> Vec<u8> {
        assert!(self.cli(&["SAVE"]).contains("OK"));
        std::fs::read(self.dir.join("dump.rdb")).expect("dump.rdb written")
    }
}

/// A TCP relay to the Redis socket that the test can cut (every relayed connection drops,
/// new ones are closed at once) and restore: one replica loses its store, the others do not.
struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Relay {
    async fn start(socket: PathBuf) -> Relay {
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

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// The replicas' shared config: the default upstreams, one secret, one policy, a store.
fn replica_config(env: &TestEnv, name: &str, store_url: &str, grace: &str) -> String {
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
store:
  redis:
    url: {store_url}
    prefix: "ksfleet:"
  grace: {grace}
"#,
        dir = env.dir.path().display(),
        https = env.upstream.port(),
        tunnel = env.tunnel.port(),
        placeholder = GITHUB_PLACEHOLDER,
    )
}

/// One `keyswap run` replica.
struct Replica {
    child: LoggedChild,
    addr: SocketAddr,
    metrics: SocketAddr,
    admin: AdminClient,
}

impl Replica {
    /// Starts replica `name` and waits until it has reached its store.
    fn start(env: &TestEnv, name: &str, store_url: &str, grace: &str) -> Replica {
        let config = env.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, replica_config(env, name, store_url, grace)).expect("config");
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "fleet::keyswap_child",
            "--include-ignored",
            "--nocapture",
            "--quiet",
        ])
        .env(
            CHILD_ARGS,
            ["run", "--config", config.to_str().expect("utf-8 path")].join(&ARG_SEP.to_string()),
        )
        .env("KEYSWAP_LOG", "info")
        .envs(test_env_values());
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

    async fn issue(&self, env: &TestEnv) -> IssuedTask {
        let issued = self
            .admin
            .issue(&IssueRequest {
                policy: "fleet-agent".into(),
                ttl: Some("30m".into()),
                ..IssueRequest::default()
            })
            .await
            .expect("task issued");
        env.remember_token(&issued.token);
        issued
    }

    /// `GET /healthz`: status and body.
    async fn health(&self) -> (u16, String) {
        http_get(self.metrics, "/healthz").await
    }
}

/// `addr=IP:PORT` in a log line.
fn address_in(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A plain HTTP/1.1 GET with `Connection: close`: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
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
type Auth<'a> = (&'a str, &'a str);

fn auth(task: &IssuedTask) -> Auth<'_> {
    (&task.id, &task.token)
}

/// What the tests ask of a [`Conn`].
trait ConnExt {
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

async fn ends_by<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout_at(Instant::now() + BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not happen within {BOUND:?}"),
    }
}

/// CONNECT to `replica` as `auth`: the status, and the socket if it was accepted.
async fn connect(replica: &Replica, auth: Auth<'_>, authority: &str) -> (u16, Option<TcpStream>) {
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
fn fleet_ca(env: &TestEnv) -> CertificateDer<'static> {
    let ca = CertificateAuthority::load_or_create(&env.dir.path().join("fleet-ca")).expect("CA");
    ca.cert_der().clone()
}

/// An intercepted connection through `replica` to [`API_HOST`], which must be accepted.
async fn intercepted(
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
async fn tunnelled(env: &TestEnv, replica: &Replica, auth: Auth<'_>) -> Conn {
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
fn assert_store_clean(redis: &Redis, tokens: &[&str]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_issued_on_one_replica_works_on_all_and_a_revocation_anywhere_closes_it_everywhere()
{
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let a = Replica::start(&env, "a", &redis.url(), "30s");
    let b = Replica::start(&env, "b", &redis.url(), "30s");
    let c = Replica::start(&env, "c", &redis.url(), "30s");

    // Issued on A, used at once on B and C (each either heard of it or looks it up once).
    let task = a.issue(&env).await;
    let other = b.issue(&env).await;
    for replica in [&a, &b, &c] {
        let mut conn = intercepted(replica, auth(&task), &ca, Alpn::Http1Only).await;
        assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    }
    let wrong = (task.id.as_str(), "not-the-token-0123456789");
    assert_eq!(connect(&c, wrong, &format!("{API_HOST}:443")).await.0, 407);
    // Every replica lists the whole fleet's tasks.
    for replica in [&a, &b, &c] {
        let listed = replica.admin.list().await.expect("task list");
        for id in [&task.id, &other.id] {
            assert!(listed.iter().any(|t| &t.id == id), "{id} not listed");
        }
    }
    assert_store_clean(&redis, &[&task.token, &other.token]);
    let records = redis.cli(&["HKEYS", "ksfleet:tasks"]);
    assert!(
        records.contains(&task.id) && records.contains(&other.id),
        "{records}"
    );

    // Open connections on A and B: HTTP/1.1 and h2 intercepted, and a tunnel.
    let mut open = Vec::new();
    for replica in [&a, &b] {
        for alpn in [Alpn::Http1Only, Alpn::Http2Only] {
            let mut conn = intercepted(replica, auth(&task), &ca, alpn).await;
            assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
            open.push(conn);
        }
        let mut conn = tunnelled(&env, replica, auth(&task)).await;
        assert_eq!(conn.get(&env, TUNNEL_HOST, "/echo/t").await.0, 200);
        open.push(conn);
    }
    let mut kept = intercepted(&b, auth(&other), &ca, Alpn::Http2Only).await;

    // Revoked on C: every connection on A and B closes.
    c.admin.revoke(&task.id, "api").await.expect("revoke on C");
    for (i, conn) in open.iter_mut().enumerate() {
        conn.closes(&format!("closing connection {i} of the revoked task"))
            .await;
    }
    for replica in [&a, &b, &c] {
        let (status, _) = connect(replica, auth(&task), &format!("{API_HOST}:443")).await;
        assert_eq!(status, 407, "the revoked task was let through");
    }
    // The other task carries on.
    assert_eq!(kept.get(&env, API_HOST, "/echo").await.0, 200);
    let records = redis.cli(&["HKEYS", "ksfleet:tasks"]);
    assert!(
        !records.contains(&task.id) && records.contains(&other.id),
        "{records}"
    );
    assert_store_clean(&redis, &[&task.token, &other.token]);
    for replica in [&a, &b, &c] {
        assert!(replica.child.log().contains("the store is connected"));
    }
    env.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_serves_known_tasks_for_the_grace_then_refuses_and_honours_missed_revocations(
) {
    if !redis_available() {
        return;
    }
    let env = TestEnv::start().await;
    let ca = fleet_ca(&env);
    let redis = Redis::start(env.dir.path());
    let relay = Relay::start(redis.socket.clone()).await;
    let a = Replica::start(&env, "a", &redis.url(), "30s");
    let b = Replica::start(&env, "b", &relay.url(), "8s");

    let kept = a.issue(&env).await;
    let revoked = a.issue(&env).await;
    let mut on_b = intercepted(&b, auth(&revoked), &ca, Alpn::Http1Only).await;
    assert_eq!(on_b.get(&env, API_HOST, "/echo").await.0, 200);
    let mut conn = intercepted(&b, auth(&kept), &ca, Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    assert_eq!(b.health().await, (200, "ok store=connected\n".to_string()));

    // B loses the store: within the grace it serves what it knows and issues nothing.
    relay.cut();
    b.child.wait_for("the store is unreachable");
    let (status, body) = b.health().await;
    assert_eq!((status, body.as_str()), (200, "ok store=grace\n"));
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    let mut fresh = intercepted(&b, auth(&kept), &ca, Alpn::Http2Only).await;
    assert_eq!(fresh.get(&env, API_HOST, "/echo").await.0, 200);
    match b
        .admin
        .issue(&IssueRequest {
            policy: "fleet-agent".into(),
            ..IssueRequest::default()
        })
        .await
    {
        Err(ClientError::Api { status, error }) => {
            assert_eq!(
                (status.as_u16(), error.reason.as_str()),
                (503, "store_unavailable")
            );
        }
        Ok(_) => panic!("a task was issued without the store"),
        Err(other) => panic!("unexpected answer: {other}"),
    }

    // Meanwhile A revokes a task B holds a connection of.
    a.admin
        .revoke(&revoked.id, "api")
        .await
        .expect("revoke on A");

    // Past the grace, B refuses every request.
    ends_by("B giving up on its store", async {
        while b.health().await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(b.health().await.1, "unavailable store=down\n");
    let (_, metrics) = http_get(b.metrics, "/metrics").await;
    assert!(
        metrics.contains("keyswap_store_state{state=\"down\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        conn.get(&env, API_HOST, "/echo").await,
        (503, Some("store_unavailable".to_string()))
    );

    // Back: B first catches up with what it missed, then serves again.
    relay.restore();
    b.child.wait_for("the store is connected");
    on_b.closes("B closing the connection of the task revoked while it was cut off")
        .await;
    let (status, _) = connect(&b, auth(&revoked), &format!("{API_HOST}:443")).await;
    assert_eq!(status, 407, "a task revoked while B was cut off was served");
    let mut conn = intercepted(&b, auth(&kept), &ca, Alpn::Http1Only).await;
    assert_eq!(conn.get(&env, API_HOST, "/echo").await.0, 200);
    assert_eq!(b.health().await, (200, "ok store=connected\n".to_string()));
    assert_store_clean(&redis, &[&kept.token, &revoked.token]);
    env.assert_no_leaks();
}
