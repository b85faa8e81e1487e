//! Transparent mode in real network namespaces. Each test builds its own "agent" namespace
//! joined to this host by a veth pair, and a PREROUTING REDIRECT for that veth interface
//! that sends the agent's TCP 443, 80 and one port keyswap does not list to keyswap's
//! transparent listener. keyswap and the in-process upstreams listen on this side; the agent
//! (curl, run with `ip netns exec`, no proxy settings at all) only ever dials the host-side
//! veth address, so no byte can leave this machine even if a rule were missing.
//!
//! Needs root, `ip`, `iptables`, `curl` and `python3`. Without them each test says so loudly and fails
//! when `CI=true`, and is skipped otherwise.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyswap::ProxyOptions;
use keyswap_tests::harness::{
    TestEnv, API_HOST, DEFAULT_CONFIG, OTHER_HOST, PLAIN_HOST, TUNNEL_HOST,
};
use keyswap_tests::netns::{missing_requirements, AgentNet};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::upstream::Alpn;
use tokio::net::TcpListener;

/// A port the REDIRECT sends to keyswap but `transparent.ports` does not list.
const UNLISTED_PORT: u16 = 8443;

/// Whether this machine can build the namespaces; says why not, loudly.
fn netns_available() -> bool {
    let missing = missing_requirements(&[("curl", "--version"), ("python3", "--version")]);
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "TRANSPARENT-MODE TESTS CANNOT RUN: missing {} (they build network namespaces and iptables rules)",
        missing.join(", ")
    );
    eprintln!("\n!!!!!!!!!!\n!!! {message}\n!!!!!!!!!!\n");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("!!! skipped (set CI=true to make this a failure)");
    false
}

/// The default config, plus the transparent listener on the host-side veth address with
/// the agent's address mapped to task `agent`.
fn config(net: &AgentNet) -> String {
    format!(
        "{DEFAULT_CONFIG}\ntransparent:\n  listen: {}:0\n  sources:\n    \"{}/32\": agent\n  ports:\n    443: tls\n    80: http\n",
        net.host_ip, net.agent_ip
    )
}

struct Setup {
    env: TestEnv,
    net: AgentNet,
    proxy_ca: String,
    upstream_ca: String,
}

async fn setup() -> Option<Setup> {
    if !netns_available() {
        return None;
    }
    let mut net = AgentNet::create();
    let env = TestEnv::start_with_options(&config(&net), Alpn::Both, ProxyOptions::default()).await;
    let port = env
        .proxy
        .transparent_addr()
        .expect("the transparent listener runs")
        .port();
    net.redirect(&[443, 80, UNLISTED_PORT], port);
    let proxy_ca = env.dir.path().join("proxy-ca.pem");
    std::fs::write(&proxy_ca, &env.proxy_ca_pem).expect("write proxy CA");
    let upstream_ca = env.dir.path().join("upstream-ca.pem");
    Some(Setup {
        proxy_ca: proxy_ca.display().to_string(),
        upstream_ca: upstream_ca.display().to_string(),
        env,
        net,
    })
}

/// What curl in the agent namespace got: exit code and `-i` output (head and body).
struct Curl {
    code: i32,
    output: String,
}

impl Curl {
    fn status(&self) -> Option<u16> {
        let line = self.output.lines().find(|l| l.starts_with("HTTP/"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.output.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl std::fmt::Debug for Curl {
    /// Exit code and status only: the body echoes header values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Curl")
            .field("code", &self.code)
            .field("status", &self.status())
            .finish()
    }
}

impl Setup {
    /// Runs curl in the agent namespace with no proxy settings; what it received is kept for
    /// the leak check.
    async fn curl(&self, args: &[&str]) -> Curl {
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.net.ns, "curl", "-sS", "-i"])
            .args(["--noproxy", "*", "--max-time", "60"])
            .args(args);
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            command.env_remove(var);
        }
        let out = command.output().await.expect("curl runs");
        let output = String::from_utf8_lossy(&out.stdout).into_owned();
        self.env.keep(&[], &output);
        self.env.keep(&[], &String::from_utf8_lossy(&out.stderr));
        Curl {
            code: out.status.code().unwrap_or(-1),
            output,
        }
    }

    fn resolve(&self, host: &str, port: u16) -> String {
        format!("{host}:{port}:{}", self.net.host_ip)
    }

    /// The first audit record for `host` whose reason is `reason`.
    async fn audited(&self, host: &str, reason: &str) -> serde_json::Value {
        let record = self
            .env
            .audit_where(|r| r["host"] == host && r["reason"] == reason)
            .await;
        assert_eq!(record["via"], "transparent", "{record}");
        record
    }
}

fn bearer() -> String {
    format!("Authorization: Bearer {GITHUB_PLACEHOLDER}")
}

#[tokio::test]
async fn tls_without_proxy_settings_is_swapped_and_scrubbed() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{API_HOST}/echo");
    let reply = s
        .curl(&[
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, 443),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let sent = s
        .env
        .upstream
        .authorization_for("/echo")
        .expect("upstream saw the request");
    assert!(
        sent == format!("Bearer {GITHUB_REAL}"),
        "the upstream did not get the real value"
    );
    assert!(
        reply.output.contains(GITHUB_PLACEHOLDER),
        "the echo was not scrubbed back"
    );
    let record = s.audited(API_HOST, "allowed").await;
    assert_eq!(record["task"], "agent");
    assert_eq!(record["scheme"], "https");
    assert_eq!(record["port"], 443);
    assert_eq!(record["secrets"], serde_json::json!(["github"]));
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn plain_http_on_port_80_is_swapped_and_scrubbed() {
    let Some(s) = setup().await else { return };
    let url = format!("http://{PLAIN_HOST}/echo");
    let reply = s
        .curl(&[
            "--resolve",
            &s.resolve(PLAIN_HOST, 80),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let sent = s
        .env
        .plain
        .authorization_for("/echo")
        .expect("upstream saw the request");
    assert!(
        sent == format!("Bearer {GITHUB_REAL}"),
        "the upstream did not get the real value"
    );
    assert!(
        reply.output.contains(GITHUB_PLACEHOLDER),
        "the echo was not scrubbed back"
    );
    let record = s.audited(PLAIN_HOST, "allowed").await;
    assert_eq!(record["scheme"], "http");
    assert_eq!(record["port"], 80);
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn unlisted_sni_is_refused_before_any_certificate() {
    let Some(s) = setup().await else { return };
    let host = "unlisted.upstream.test";
    let url = format!("https://{host}/echo");
    let reply = s
        .curl(&[
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(host, 443),
            &url,
        ])
        .await;
    assert_ne!(reply.code, 0, "{reply:?}");
    assert_eq!(reply.status(), None, "{reply:?}");
    let record = s.audited(host, "host_not_allowed").await;
    assert_eq!(record["task"], "agent");
    assert_eq!(s.env.proxy.leaves_minted(), 0, "a certificate was minted");
    assert_eq!(s.env.upstream.connections(), (0, 0));
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn host_header_other_than_sni_is_authority_mismatch() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{API_HOST}/echo");
    let reply = s
        .curl(&[
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, 443),
            "--http1.1",
            "-H",
            &format!("Host: {OTHER_HOST}"),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(403), "{reply:?}");
    assert_eq!(reply.header("x-keyswap-reason"), Some("authority_mismatch"));
    s.audited(API_HOST, "authority_mismatch").await;
    assert_eq!(s.env.upstream.seen_count(), 0);
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn tls_without_sni_is_refused() {
    let Some(s) = setup().await else { return };
    // An IP literal in the URL: curl sends no SNI (RFC 6066 allows only DNS names).
    let url = format!("https://{}/echo", s.net.host_ip);
    let reply = s.curl(&["--cacert", &s.proxy_ca, &url]).await;
    assert_ne!(reply.code, 0, "{reply:?}");
    assert_eq!(reply.status(), None, "{reply:?}");
    let record = s
        .audited(&s.net.host_ip.to_string(), "host_not_allowed")
        .await;
    assert_eq!(record["port"], 443);
    assert_eq!(s.env.proxy.leaves_minted(), 0, "a certificate was minted");
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn port_not_configured_is_refused_and_audited() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{API_HOST}:{UNLISTED_PORT}/echo");
    let reply = s
        .curl(&[
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, UNLISTED_PORT),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_ne!(reply.code, 0, "{reply:?}");
    assert_eq!(reply.status(), None, "{reply:?}");
    let record = s
        .audited(&s.net.host_ip.to_string(), "port_not_allowed")
        .await;
    assert_eq!(record["port"], UNLISTED_PORT);
    assert_eq!(record["task"], "agent");
    assert_eq!(s.env.upstream.connections(), (0, 0));
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn tunnel_host_gets_the_upstreams_own_certificate() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{TUNNEL_HOST}/echo/through");
    // Only the upstream's CA is trusted: a certificate minted by keyswap would fail.
    let reply = s
        .curl(&[
            "--cacert",
            &s.upstream_ca,
            "--resolve",
            &s.resolve(TUNNEL_HOST, 443),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    assert_eq!(s.env.tunnel.seen_count(), 1);
    assert_eq!(s.env.proxy.leaves_minted(), 0, "a certificate was minted");
    let record = s.audited(TUNNEL_HOST, "allowed").await;
    assert_eq!(record["method"], "CONNECT");
    assert!(record["req_bytes"].as_u64().unwrap_or(0) > 0, "{record}");
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn source_mapped_to_no_task_is_refused() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{API_HOST}/echo");
    let stranger = s.net.stranger_ip.to_string();
    let reply = s
        .curl(&[
            "--interface",
            &stranger,
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, 443),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_ne!(reply.code, 0, "{reply:?}");
    assert_eq!(reply.status(), None, "{reply:?}");
    let record = s.audited(&s.net.host_ip.to_string(), "no_task").await;
    assert!(record["task"].is_null(), "{record}");
    assert_eq!(s.env.upstream.seen_count(), 0);
    // The mapped address, same request: served (the refusal was about the source).
    let agent = s.net.agent_ip.to_string();
    let reply = s
        .curl(&[
            "--interface",
            &agent,
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, 443),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn keyswap_dials_its_own_resolution_not_the_agents() {
    let Some(s) = setup().await else { return };
    // A decoy on the address and port the agent dialled. keyswap's own connections do not
    // pass PREROUTING, so if it dialled the agent's address, the decoy would get them.
    let decoy = TcpListener::bind((s.net.host_ip, 443))
        .await
        .expect("bind the decoy");
    let decoy_accepts = Arc::new(AtomicU32::new(0));
    let counted = decoy_accepts.clone();
    let decoy_task = tokio::spawn(async move {
        while decoy.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let url = format!("https://{API_HOST}/echo");
    let reply = s
        .curl(&[
            "--cacert",
            &s.proxy_ca,
            "--resolve",
            &s.resolve(API_HOST, 443),
            "-H",
            &bearer(),
            &url,
        ])
        .await;
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    // upstream.resolve sends the name to the upstream on 127.0.0.1; the agent dialled the
    // veth address.
    assert_eq!(s.env.upstream.seen_count(), 1);
    assert_eq!(
        decoy_accepts.load(Ordering::SeqCst),
        0,
        "keyswap dialled the agent's address"
    );
    let upstream = format!("127.0.0.1:{}", s.env.upstream.port());
    let agent_dialled = format!("{}:443", s.net.host_ip);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = String::from_utf8_lossy(&s.env.log()).into_owned();
        let logged = log.lines().any(|l| {
            l.contains("differs from keyswap's resolution")
                && l.contains(&format!("agent_dialled={agent_dialled}"))
                && l.contains(&format!("keyswap_dials={upstream}"))
        });
        if logged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resolution mismatch was not logged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    decoy_task.abort();
    s.env.assert_no_leaks();
}

/// Holds one keep-alive HTTP connection to port 80 open after a first response; prints the
/// status line, then "closed" when keyswap closes the connection.
const HOLD_OPEN: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 80))
s.sendall(b"GET /status/204 HTTP/1.1\r\nHost: plain.upstream.test\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    data = s.recv(4096)
    if not data:
        break
    buf += data
print(buf.split(b"\r\n")[0].decode(), flush=True)
while s.recv(4096):
    pass
print("closed", flush=True)
"#;

#[tokio::test]
async fn revoking_the_task_closes_its_transparent_connections() {
    use tokio::io::AsyncBufReadExt;
    let Some(s) = setup().await else { return };
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &s.net.ns, "python3", "-c", HOLD_OPEN])
        .arg(s.net.host_ip.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs in the agent namespace");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines
        .next_line()
        .await
        .expect("read")
        .expect("a status line");
    assert!(first.ends_with("204 No Content"), "{first}");
    // A reload that removes task `agent` (the source now maps to another task) revokes it.
    let next = s
        .env
        .config_yaml
        .replace("  agent:\n", "  agent-next:\n")
        .replace(": agent\n", ": agent-next\n");
    let config = keyswap_config::load_str(
        &next,
        &s.env.dir.path().join("keyswap.yaml"),
        &keyswap_tests::harness::test_env_values(),
    )
    .unwrap_or_else(|e| panic!("next config invalid:\n{e}"));
    let reloaded = s.env.proxy.reload(config).expect("reload");
    assert_eq!(reloaded.tasks_removed, vec!["agent".to_string()]);
    let second = lines
        .next_line()
        .await
        .expect("read")
        .expect("a second line");
    assert_eq!(
        second, "closed",
        "the connection stayed open after revocation"
    );
    let revoked = s
        .env
        .audit_where(|r| r["event"] == "task_revoked" && r["task"] == "agent")
        .await;
    assert_eq!(revoked["why"], "reload");
    assert_eq!(revoked["connections_closed"], 1, "{revoked}");
    let _ = child.wait().await;
    s.env.assert_no_leaks();
}

/// The default config with task `agent` asking a human about hosts it does not list
/// (`on_unlisted: ask`), and `other.upstream.test` no longer listed.
fn asking_config(net: &AgentNet) -> String {
    let listed_other = "      - host: other.upstream.test\n        secrets: [openai]\n";
    let asks = "  agent:\n    token_env: KS_TEST_TOKEN\n    on_unlisted: ask\n    allow:";
    let base = DEFAULT_CONFIG
        .replace(listed_other, "")
        .replace("  agent:\n    token_env: KS_TEST_TOKEN\n    allow:", asks);
    assert!(base.contains("on_unlisted: ask") && !base.contains(listed_other));
    config(net).replacen(DEFAULT_CONFIG, &base, 1)
}

/// Approves, one at a time, what task `agent` waits for, until `done` resolves; returns the
/// methods approved, in order.
async fn approve_while(
    env: &TestEnv,
    done: impl std::future::Future<Output = Curl>,
) -> (Curl, Vec<(String, String)>) {
    use keyswap::state::approvals::{Answer, Scope};
    let shared = env.proxy.shared().clone();
    let mut approved = Vec::new();
    tokio::pin!(done);
    loop {
        tokio::select! {
            reply = &mut done => return (reply, approved),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        for waiting in shared.approvals.list(Some("agent")) {
            let answer = Answer::Approve {
                scope: Scope::Once,
                by: "test".into(),
            };
            if shared
                .approvals
                .answer(&shared.audit, &waiting.id, answer)
                .is_ok()
            {
                approved.push((waiting.method.clone(), waiting.host.clone()));
            }
        }
    }
}

#[tokio::test]
async fn unlisted_tls_host_waits_for_a_human_exactly_as_a_connect_does() {
    if !netns_available() {
        return;
    }
    let mut net = AgentNet::create();
    let env =
        TestEnv::start_with_options(&asking_config(&net), Alpn::Both, ProxyOptions::default())
            .await;
    let port = env.proxy.transparent_addr().expect("transparent").port();
    net.redirect(&[443], port);
    let s = Setup {
        proxy_ca: {
            let path = env.dir.path().join("proxy-ca.pem");
            std::fs::write(&path, &env.proxy_ca_pem).expect("write proxy CA");
            path.display().to_string()
        },
        upstream_ca: String::new(),
        env,
        net,
    };
    let url = format!("https://{OTHER_HOST}/echo/asked");
    let resolve = s.resolve(OTHER_HOST, 443);
    let args = ["--cacert", &s.proxy_ca, "--resolve", &resolve, &url];
    let curl = s.curl(&args);
    let (reply, approved) = approve_while(&s.env, curl).await;
    // The connection waited for a human (as a CONNECT to an unlisted host does), then the
    // request inside it, unlisted too, waited again.
    assert_eq!(
        approved,
        vec![
            ("CONNECT".to_string(), OTHER_HOST.to_string()),
            ("GET".to_string(), OTHER_HOST.to_string())
        ],
        "{reply:?}"
    );
    assert_eq!(reply.status(), Some(200), "{reply:?}");
    let record = s.audited(OTHER_HOST, "allowed").await;
    assert_eq!(record["path"], "/echo/asked");
    assert_eq!(
        record["rule"],
        serde_json::Value::Null,
        "an approval names no rule"
    );
    s.env.assert_no_leaks();
}

#[tokio::test]
async fn an_agent_refusing_the_certificate_is_recorded_as_transparent() {
    let Some(s) = setup().await else { return };
    let url = format!("https://{API_HOST}/echo");
    // No --cacert: curl does not trust keyswap's CA and aborts the handshake.
    let reply = s
        .curl(&["--resolve", &s.resolve(API_HOST, 443), &url])
        .await;
    assert_ne!(reply.code, 0, "{reply:?}");
    // `audited` asserts the record's via.
    let record = s.audited(API_HOST, "agent_tls_failed").await;
    assert_eq!(record["task"], "agent");
    s.env.assert_no_leaks();
}
