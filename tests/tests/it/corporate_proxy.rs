//! Behind a corporate proxy (`upstream.proxy`): keyswap's upstream leg goes through a real
//! parent proxy — `tinyproxy` for HTTP `CONNECT` and absolute-form, `danted` for `socks5h` —
//! started here on an ephemeral port. The parent's own log proves it carried the connection;
//! a `no_proxy` host never appears there. The parent's credentials (a `KSREAL` password, so
//! CI's grep of everything kept looks for it too) appear in no output of keyswap.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Alpn};
use keyswap_tests::harness::{bearer, TestEnv, API_HOST, DEFAULT_CONFIG, OTHER_HOST, TUNNEL_HOST};
use keyswap_tests::netns::{missing_requirements, AgentNet};
use keyswap_tests::secrets::GITHUB_PLACEHOLDER;
use keyswap_tests::tools::available;
use tokio_tungstenite::tungstenite::Message;

/// The parent proxy's user and password (the password is looked for like a real secret).
const PROXY_USER: &str = "corp-user";
const PROXY_PASSWORD: &str = "KSREAL-corp-proxy-5e1f0a9b7c";
const AUTH_ENV: &str = "KS_TEST_CORP_PROXY_AUTH";

/// A parent proxy process, killed when dropped.
struct Parent {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Parent {
    /// tinyproxy on `port`, allowing `CONNECT` to `connect_ports` only, with basic auth when
    /// `auth` is given.
    async fn tinyproxy(port: u16, connect_ports: &[u16], auth: Option<(&str, &str)>) -> Parent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 50\nAllow 127.0.0.1\n",
            log.display()
        );
        for p in connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, password)) = auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        Parent::ready(child, port, log, dir).await
    }

    /// danted (SOCKS5, no authentication) on `port`.
    async fn danted(port: u16) -> Parent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("danted.log");
        let conf = format!(
            "logoutput: {}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\nuser.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect error\n}}\n\
             socks pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n  log: connect error\n}}\n",
            log.display()
        );
        let conf_path = dir.path().join("danted.conf");
        std::fs::write(&conf_path, conf).expect("write danted.conf");
        let child = Command::new("danted")
            .arg("-f")
            .arg(&conf_path)
            .arg("-N")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("danted starts");
        Parent::ready(child, port, log, dir).await
    }

    /// Waits until the parent accepts connections (or has exited, which fails the test).
    async fn ready(mut child: Child, port: u16, log: PathBuf, dir: tempfile::TempDir) -> Parent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Parent {
                    child,
                    log,
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the parent proxy exited ({status}): {}",
                    read(&log).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the parent proxy never listened on {port}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log(&self) -> String {
        read(&self.log).unwrap_or_default()
    }

    /// The parent's log lines that mention `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A port nothing listens on right now, for a parent proxy to take.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The default config with `upstream.proxy` (its lines, indented under `proxy:`) and
/// `upstream.allow_private` when asked.
fn config(proxy: &str, allow_private: bool) -> String {
    let mut upstream = String::from("upstream:\n  proxy:\n");
    for line in proxy.lines() {
        upstream.push_str(&format!("    {line}\n"));
    }
    if allow_private {
        upstream.push_str("  allow_private: true\n");
    }
    DEFAULT_CONFIG.replacen("upstream:\n", &upstream, 1)
}

/// keyswap with `proxy` as its `upstream.proxy`, the parent's credentials in [`AUTH_ENV`].
async fn keyswap(proxy: &str, credentials: &str, allow_private: bool) -> TestEnv {
    let env = TestEnv::start_with_env(
        &config(proxy, allow_private),
        Alpn::Both,
        ProxyOptions::default(),
        &[(AUTH_ENV, credentials)],
    )
    .await;
    env.remember_secret(PROXY_PASSWORD);
    env
}

/// keyswap with `upstream.proxy` pointing at a tinyproxy that asks for the right credentials
/// and allows CONNECT to the port `allowed` names.
async fn behind_authed_parent(allowed: impl FnOnce(&TestEnv) -> u16) -> (TestEnv, Parent) {
    let port = free_port();
    let env = keyswap(
        &format!("url: http://127.0.0.1:{port}\nauth_env: {AUTH_ENV}"),
        &format!("{PROXY_USER}:{PROXY_PASSWORD}"),
        false,
    )
    .await;
    let parent =
        Parent::tinyproxy(port, &[allowed(&env)], Some((PROXY_USER, PROXY_PASSWORD))).await;
    (env, parent)
}

fn tools() -> bool {
    available("tinyproxy", "-v")
}

#[tokio::test]
async fn h1_and_h2_agents_reach_https_upstreams_through_connect() {
    if !tools() {
        return;
    }
    let (env, parent) = behind_authed_parent(|env| env.upstream.port()).await;
    for alpn in [Alpn::Http1Only, Alpn::Both] {
        let opts = env.agent(&format!("{API_HOST}:443"), alpn);
        let auth = bearer(GITHUB_PLACEHOLDER);
        let reply = env
            .request(&opts, "GET", "/echo", &[("authorization", &auth)])
            .await;
        assert_eq!(reply.status, 200, "{alpn:?}: {reply:?}");
    }
    // The upstream got the real value: swapped, then carried through the parent's tunnel.
    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.header("authorization").is_some()));
    let upstream = format!("CONNECT 127.0.0.1:{} ", env.upstream.port());
    let connects = parent.lines_with(&upstream);
    assert!(
        !connects.is_empty(),
        "the parent's log shows no CONNECT to the upstream:\n{}",
        parent.log()
    );
    assert!(!parent.log().contains(PROXY_PASSWORD));
    let allowed = env
        .audit_at_least(2, |r| r["path"] == "/echo" && r["decision"] == "allowed")
        .await;
    assert_eq!(allowed.len(), 2);
    assert!(allowed.iter().all(|r| r.get("parent_status").is_none()));
    env.assert_no_leaks();
}

#[tokio::test]
async fn wrong_parent_password_is_upstream_error_with_the_parents_status() {
    if !tools() {
        return;
    }
    let port = free_port();
    let env = keyswap(
        &format!("url: http://127.0.0.1:{port}\nauth_env: {AUTH_ENV}"),
        &format!("{PROXY_USER}:{PROXY_PASSWORD}-wrong"),
        false,
    )
    .await;
    let _parent = Parent::tinyproxy(
        port,
        &[env.upstream.port()],
        Some((PROXY_USER, "the-right-password")),
    )
    .await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&opts, "GET", "/public/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (502, Some("upstream_error"))
    );
    // tinyproxy answers a wrong password with 401 (a missing one with 407).
    assert!(reply.body.contains("401"), "{}", reply.body);
    // Nothing of the parent's answer but its status: not its page, not its realm.
    assert!(!reply.body.contains("Tinyproxy") && !reply.body.contains("html"));
    let record = env
        .audit_where(|r| r["path"] == "/public/x" && r["reason"] == "upstream_error")
        .await;
    assert_eq!(record["parent_status"], 401, "{record}");
    assert_eq!(record["status"], 502);
    let line = record.to_string();
    assert!(
        !line.contains("Tinyproxy") && !line.contains("realm"),
        "{line}"
    );
    assert_eq!(env.upstream.seen_count(), 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn missing_parent_credentials_are_upstream_error_with_407_in_the_audit() {
    if !tools() {
        return;
    }
    let port = free_port();
    // No auth_env: keyswap sends the parent no credentials.
    let env = keyswap(
        &format!("url: http://127.0.0.1:{port}"),
        "unused:unused",
        false,
    )
    .await;
    let _parent = Parent::tinyproxy(
        port,
        &[env.upstream.port()],
        Some((PROXY_USER, PROXY_PASSWORD)),
    )
    .await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&opts, "GET", "/public/x", &[]).await;
    assert_eq!(
        (reply.status, reply.reason()),
        (502, Some("upstream_error"))
    );
    assert!(reply.body.contains("407"), "{}", reply.body);
    assert!(!reply.body.contains("Tinyproxy") && !reply.body.contains("realm"));
    let record = env
        .audit_where(|r| r["path"] == "/public/x" && r["reason"] == "upstream_error")
        .await;
    assert_eq!(record["parent_status"], 407, "{record}");
    assert_eq!(env.upstream.seen_count(), 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn parent_refusing_the_port_is_upstream_error_with_its_status() {
    if !tools() {
        return;
    }
    let port = free_port();
    let env = keyswap(
        &format!("url: http://127.0.0.1:{port}"),
        "unused:unused",
        false,
    )
    .await;
    // CONNECT is allowed to one port only, not the upstream's.
    let _parent = Parent::tinyproxy(port, &[9], None).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let reply = env.request(&opts, "GET", "/public/x", &[]).await;
    assert_eq!(reply.reason(), Some("upstream_error"), "{reply:?}");
    let record = env
        .audit_where(|r| r["path"] == "/public/x" && r["reason"] == "upstream_error")
        .await;
    assert_eq!(record["parent_status"], 403, "{record}");
    env.assert_no_leaks();
}

/// The transparent door's tunnels go through the parent too: one the parent refuses is
/// recorded with the parent's status, as on the explicit door.
#[tokio::test]
async fn transparent_tunnel_refused_by_the_parent_records_its_status() {
    if !tools() {
        return;
    }
    let missing = missing_requirements(&[("curl", "--version")]);
    if !missing.is_empty() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "transparent mode needs {missing:?}; CI=true, so this is a failure"
        );
        eprintln!("skipped: transparent mode needs {missing:?}");
        return;
    }
    let port = free_port();
    let mut net = AgentNet::create();
    let transparent = format!(
        "\ntransparent:\n  listen: {}:0\n  sources:\n    \"{}/32\": agent\n  ports:\n    443: tls\n",
        net.host_ip, net.agent_ip
    );
    let yaml = config(&format!("url: http://127.0.0.1:{port}"), false) + &transparent;
    let env = TestEnv::start_with_options(&yaml, Alpn::Both, ProxyOptions::default()).await;
    let listener = env.proxy.transparent_addr().expect("transparent listener");
    net.redirect(&[443], listener.port());
    // CONNECT is allowed to one port only, not the tunnel upstream's.
    let _parent = Parent::tinyproxy(port, &[9], None).await;
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &net.ns, "curl", "-sS", "--noproxy", "*"])
        .args(["--max-time", "30", "--resolve"])
        .arg(format!("{TUNNEL_HOST}:443:{}", net.host_ip))
        .arg(format!("https://{TUNNEL_HOST}/echo"))
        .output()
        .await
        .expect("curl runs");
    env.keep(&[], &String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success(),
        "the refused tunnel carried a request"
    );
    let record = env
        .audit_where(|r| r["host"] == TUNNEL_HOST && r["reason"] == "upstream_error")
        .await;
    assert_eq!(record["via"], "transparent", "{record}");
    assert_eq!(record["parent_status"], 403, "{record}");
    assert_eq!(env.tunnel.seen_count(), 0);
    env.assert_no_leaks();
}

#[tokio::test]
async fn no_proxy_host_is_dialled_directly() {
    if !tools() {
        return;
    }
    let port = free_port();
    let env = keyswap(
        &format!(
            "url: http://127.0.0.1:{port}\nauth_env: {AUTH_ENV}\n\
             no_proxy: [\"{API_HOST}\", \".internal.example\", \"10.0.0.0/8\"]"
        ),
        &format!("{PROXY_USER}:{PROXY_PASSWORD}"),
        false,
    )
    .await;
    let parent = Parent::tinyproxy(
        port,
        &[env.upstream.port()],
        Some((PROXY_USER, PROXY_PASSWORD)),
    )
    .await;
    let direct = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&direct, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let upstream = format!("CONNECT 127.0.0.1:{} ", env.upstream.port());
    assert!(
        parent.lines_with(&upstream).is_empty(),
        "the no_proxy host went through the parent:\n{}",
        parent.log()
    );
    // The same upstream under a name no_proxy does not list goes through the parent.
    let proxied = env.agent(&format!("{OTHER_HOST}:443"), Alpn::Both);
    let reply = env.request(&proxied, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(parent.lines_with(&upstream).len(), 1, "{}", parent.log());
    env.assert_no_leaks();
}

#[tokio::test]
async fn tunnel_rule_goes_through_the_parent() {
    if !tools() {
        return;
    }
    let (env, parent) = behind_authed_parent(|env| env.tunnel.port()).await;
    let mut opts = env.agent(&format!("{TUNNEL_HOST}:443"), Alpn::Http1Only);
    // Not intercepted: the agent verifies the upstream's own certificate.
    opts.trust = vec![env.upstream_ca.cert_der().clone()];
    let reply = env.request(&opts, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(env.tunnel.seen_count(), 1);
    let tunnel = format!("CONNECT 127.0.0.1:{} ", env.tunnel.port());
    assert_eq!(parent.lines_with(&tunnel).len(), 1, "{}", parent.log());
    let record = env
        .audit_where(|r| r["method"] == "CONNECT" && r["host"] == TUNNEL_HOST)
        .await;
    assert_eq!(record["decision"], "allowed");
    env.assert_no_leaks();
}

#[tokio::test]
async fn websocket_goes_through_the_parent_and_is_scrubbed() {
    if !tools() {
        return;
    }
    let (env, parent) = behind_authed_parent(|env| env.upstream.port()).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let mut ws = client::websocket_through_proxy(
        &opts,
        "/ws?script=text",
        vec![("authorization".into(), bearer(GITHUB_PLACEHOLDER))],
    )
    .await
    .expect("websocket through keyswap and the parent");
    let mut received = String::new();
    let read_all = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                received.push_str(t.as_str());
                received.push('\n');
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the WebSocket ends");
    env.keep(&[], &received);
    assert!(received.contains("end"), "{received}");
    assert!(received.contains(GITHUB_PLACEHOLDER), "{received}");
    let upstream = format!("CONNECT 127.0.0.1:{} ", env.upstream.port());
    assert_eq!(parent.lines_with(&upstream).len(), 1, "{}", parent.log());
    env.assert_no_leaks();
}

#[tokio::test]
async fn plain_http_goes_to_the_parent_in_absolute_form() {
    if !tools() {
        return;
    }
    let port = free_port();
    // `localhost` is a name the parent resolves; private addresses are allowed for it.
    let proxy = format!("url: http://127.0.0.1:{port}\nauth_env: {AUTH_ENV}");
    let template = config(&proxy, true).replacen(
        "      - host: plain.upstream.test\n",
        "      - host: localhost\n        port: {plain_port}\n        scheme: http\n        \
         allow_cleartext: true\n      - host: plain.upstream.test\n",
        1,
    );
    let env = TestEnv::start_with_env(
        &template,
        Alpn::Both,
        ProxyOptions::default(),
        &[(AUTH_ENV, &format!("{PROXY_USER}:{PROXY_PASSWORD}"))],
    )
    .await;
    env.remember_secret(PROXY_PASSWORD);
    let parent = Parent::tinyproxy(port, &[], Some((PROXY_USER, PROXY_PASSWORD))).await;
    let url = format!("http://localhost:{}/echo", env.plain.port());
    let req = http::Request::get(&url)
        .body(client::empty())
        .expect("request");
    let resp = client::plain_proxy_request(
        env.proxy.addr(),
        Some(("agent", keyswap_tests::harness::AGENT_TOKEN)),
        req,
    )
    .await
    .expect("plain response");
    let reply = env.reply(resp).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(env.plain.seen_count(), 1);
    let requests = parent.lines_with(&format!("GET {url} "));
    assert_eq!(requests.len(), 1, "{}", parent.log());
    // The parent's credentials went to the parent only.
    for seen in env.plain.seen() {
        assert!(seen.header("proxy-authorization").is_none());
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn socks5h_parent_resolves_the_name() {
    if !available("danted", "-v") {
        return;
    }
    let port = free_port();
    // keyswap hands `localhost` to the parent by name (socks5h); allow_private lets the
    // loopback answer through.
    let env = keyswap(
        &format!("url: socks5h://127.0.0.1:{port}"),
        "unused:unused",
        true,
    )
    .await;
    let parent = Parent::danted(port).await;
    let opts = env.agent(&format!("localhost:{}", env.upstream.port()), Alpn::Both);
    let reply = env.request(&opts, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(env.upstream.seen_count(), 1);
    let port_line = format!(".{}", env.upstream.port());
    assert!(
        !parent.lines_with(&port_line).is_empty(),
        "the SOCKS proxy's log shows no connection to the upstream:\n{}",
        parent.log()
    );
    // Through a resolve entry, the parent gets the pinned address.
    let pinned = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&pinned, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    env.assert_no_leaks();
}

/// A TLS front for a parent proxy (an `https://` parent): terminates TLS with a certificate
/// for `localhost` from the test's upstream CA and relays to the parent's port. Counts the
/// TLS sessions it accepted.
async fn tls_front(
    listener: tokio::net::TcpListener,
    env: &TestEnv,
    parent_port: u16,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let (chain, key) = env
        .upstream_ca
        .issue_server_cert(&["localhost"])
        .expect("front certificate");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("front certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let sessions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(mut parent) =
                    tokio::net::TcpStream::connect(("127.0.0.1", parent_port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut parent).await;
            });
        }
    });
    sessions
}

#[tokio::test]
async fn https_parent_is_tls_to_the_parent_then_tls_inside_the_tunnel() {
    if !tools() {
        return;
    }
    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS front");
    let front_port = front.local_addr().expect("addr").port();
    let port = free_port();
    // The parent's certificate is verified against its name in the URL (the upstream CA,
    // in extra_roots, signed it).
    let env = keyswap(
        &format!("url: https://localhost:{front_port}\nauth_env: {AUTH_ENV}"),
        &format!("{PROXY_USER}:{PROXY_PASSWORD}"),
        false,
    )
    .await;
    let parent = Parent::tinyproxy(
        port,
        &[env.upstream.port()],
        Some((PROXY_USER, PROXY_PASSWORD)),
    )
    .await;
    let sessions = tls_front(front, &env, port).await;
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Both);
    let reply = env.request(&opts, "GET", "/echo", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(sessions.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let upstream = format!("CONNECT 127.0.0.1:{} ", env.upstream.port());
    assert_eq!(parent.lines_with(&upstream).len(), 1, "{}", parent.log());
    env.assert_no_leaks();
}

#[tokio::test]
async fn private_name_is_refused_before_the_parent_sees_it() {
    if !tools() {
        return;
    }
    let port = free_port();
    // allow_private is off: `localhost` resolves (for keyswap) only to loopback, so it is
    // refused before its name is handed to the parent, which would resolve it itself.
    let env = keyswap(
        &format!("url: http://127.0.0.1:{port}"),
        "unused:unused",
        false,
    )
    .await;
    let parent = Parent::tinyproxy(port, &[env.upstream.port()], None).await;
    let opts = env.agent(&format!("localhost:{}", env.upstream.port()), Alpn::Both);
    let reply = env.request(&opts, "GET", "/echo", &[]).await;
    assert_eq!(reply.reason(), Some("private_address"), "{reply:?}");
    let record = env
        .audit_where(|r| r["host"] == "localhost" && r["reason"] == "private_address")
        .await;
    assert!(record.get("parent_status").is_none(), "{record}");
    assert!(
        parent.lines_with("): CONNECT ").is_empty(),
        "the parent was asked for a private name:\n{}",
        parent.log()
    );
    assert_eq!(env.upstream.seen_count(), 0);
    env.assert_no_leaks();
}
