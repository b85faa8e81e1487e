//! Refusals an agent can act on, as real client libraries show them: curl, Python
//! `requests` and Node 20 undici (`EnvHttpProxyAgent`) each request an unlisted host through
//! keyswap, configured only by the environment an agent gets (`HTTPS_PROXY` with the task's
//! credentials, the CA bundle variable of each), and must surface the 403, the
//! `x-keyswap-reason` header and the one-paragraph body to their caller. A refused CONNECT
//! shows none of this in any of them; a refusal delivered inside the tunnel does.
//!
//! Also: an agent that does not trust keyswap's CA is audited as `agent_tls_failed` and
//! warned about once per task and host.
//!
//! `requests` and `undici` are installed into a temporary venv / npm prefix when missing.
//! Without a tool (curl, python3, node/npm) a test prints a notice and passes, except under
//! `CI=true`, where it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use keyswap_tests::harness::{TestEnv, AGENT_TOKEN};

/// An unlisted host: keyswap never resolves or dials it.
const UNLISTED: &str = "unlisted.example.com";
const ALLOWLIST_MESSAGE: &str = "unlisted.example.com:443 is not in task agent's allowlist";

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `false` (with a notice) when `what` is missing; a panic under `CI=true`.
fn require(found: bool, what: &str) -> bool {
    if !found {
        if in_ci() {
            panic!("{what} must be available in CI (.ci/run installs it)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** NOTICE: {what} is not available: this client test did NOT run ***\n"
        );
    }
    found
}

fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The environment an agent gets: the proxy URL with its task credentials, the keyswap CA
/// in every variable the clients read, and no other proxy settings.
fn agent_command(env: &TestEnv, program: &str, ca: &Path) -> tokio::process::Command {
    let proxy = format!("http://agent:{AGENT_TOKEN}@{}", env.proxy.addr());
    let mut cmd = tokio::process::Command::new(program);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "NODE_OPTIONS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "NODE_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    /// For failure messages: the task token is in the environment, never in what is shown.
    fn shown(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
            .replace(AGENT_TOKEN, "<token>")
    }
}

async fn run(env: &TestEnv, mut cmd: tokio::process::Command) -> Output {
    let out = cmd.output().await.expect("the client runs");
    let output = Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    env.keep(&[], &output.stdout);
    env.keep(&[], &output.stderr);
    output
}

fn write_proxy_ca(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("keyswap-ca.pem");
    std::fs::write(&path, &env.proxy_ca_pem).expect("write the proxy CA");
    path
}

/// What each client script prints: the status, the reason header, then the body.
fn assert_surfaced(client: &str, out: &Output) {
    assert!(out.success, "{client} failed:\n{}", out.shown());
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("403"), "{client}:\n{}", out.shown());
    assert_eq!(
        lines.next(),
        Some("host_not_allowed"),
        "{client}:\n{}",
        out.shown()
    );
    let body: Vec<&str> = lines.collect();
    assert!(
        body.join("\n")
            .contains(&format!("keyswap refused this request (host_not_allowed): {ALLOWLIST_MESSAGE}; ask the operator to add a rule")),
        "{client} did not surface the refusal's body:\n{}",
        out.shown()
    );
}

async fn assert_audited(env: &TestEnv) {
    let record = env
        .audit_where(|r| r["reason"] == "host_not_allowed" && r["method"] == "GET")
        .await;
    assert_eq!(record["host"], UNLISTED);
    assert_eq!(record["path"], "/repos/acme/widget");
    assert_eq!(record["status"], 403);
}

#[tokio::test]
async fn curl_shows_the_reason_for_an_unlisted_host() {
    if !require(runs("curl", &["--version"]), "curl") {
        return;
    }
    let env = TestEnv::start().await;
    let ca = write_proxy_ca(&env);
    let headers = env.dir.path().join("curl-headers.txt");
    let mut cmd = agent_command(&env, "curl", &ca);
    cmd.arg("--silent")
        .arg("--show-error")
        .arg("--cacert")
        .arg(&ca)
        .arg("--dump-header")
        .arg(&headers)
        .arg("--write-out")
        .arg("%{http_code}\n")
        .arg("--output")
        .arg(env.dir.path().join("curl-body.txt"))
        .arg(format!("https://{UNLISTED}/repos/acme/widget"));
    let out = run(&env, cmd).await;
    assert!(out.success, "curl failed:\n{}", out.shown());
    let body = std::fs::read_to_string(env.dir.path().join("curl-body.txt")).unwrap();
    let headers = std::fs::read_to_string(&headers).unwrap();
    env.keep(&[], &body);
    env.keep(&[], &headers);
    // What curl shows its caller: the status it reports, the headers it dumps, the body.
    let shown = Output {
        success: true,
        stdout: format!(
            "{}\n{}\n{body}",
            out.stdout.trim(),
            headers
                .lines()
                .find_map(|l| l.strip_prefix("x-keyswap-reason: "))
                .unwrap_or("<no x-keyswap-reason header>")
                .trim()
        ),
        stderr: out.stderr.clone(),
    };
    assert_surfaced("curl", &shown);
    assert_audited(&env).await;
    env.assert_no_leaks();
}

const REQUESTS_SCRIPT: &str = r#"
import requests
r = requests.get("https://unlisted.example.com/repos/acme/widget")
print(r.status_code)
print(r.headers.get("x-keyswap-reason"))
print(r.text)
"#;

/// A python3 that can import `requests`: the system's, or a venv made for this test.
fn python_with_requests(scratch: &Path) -> Option<PathBuf> {
    if runs("python3", &["-c", "import requests"]) {
        return Some(PathBuf::from("python3"));
    }
    let venv = scratch.join("venv");
    let venv_str = venv.to_str()?;
    if !runs("python3", &["-m", "venv", venv_str]) {
        return None;
    }
    let pip = venv.join("bin/pip");
    let installed = std::process::Command::new(&pip)
        .args(["install", "--quiet", "requests"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    installed.then(|| venv.join("bin/python"))
}

#[tokio::test]
async fn python_requests_shows_the_reason_for_an_unlisted_host() {
    let scratch = tempfile::tempdir().unwrap();
    let python = python_with_requests(scratch.path());
    if !require(
        python.is_some(),
        "python3 with requests (or pip to install it)",
    ) {
        return;
    }
    let python = python.unwrap();
    let env = TestEnv::start().await;
    let ca = write_proxy_ca(&env);
    let mut cmd = agent_command(&env, python.to_str().unwrap(), &ca);
    cmd.arg("-c").arg(REQUESTS_SCRIPT);
    let out = run(&env, cmd).await;
    assert_surfaced("python requests", &out);
    assert_audited(&env).await;
    env.assert_no_leaks();
}

const UNDICI_SCRIPT: &str = r#"
const { EnvHttpProxyAgent, fetch, setGlobalDispatcher } = require("undici");
setGlobalDispatcher(new EnvHttpProxyAgent());
(async () => {
  const r = await fetch("https://unlisted.example.com/repos/acme/widget");
  console.log(r.status);
  console.log(r.headers.get("x-keyswap-reason"));
  console.log(await r.text());
})().catch((e) => {
  console.error(String(e), e.cause ? String(e.cause) : "");
  process.exit(1);
});
"#;

/// A `node_modules` directory holding undici: `KEYSWAP_TEST_NODE_PATH`, or npm installs it
/// into `scratch` (undici 6 supports every Node 20).
fn undici_node_path(scratch: &Path) -> Option<PathBuf> {
    let resolves = |node_path: &Path| {
        std::process::Command::new("node")
            .env("NODE_PATH", node_path)
            .args(["-e", "require.resolve('undici')"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Some(given) = std::env::var_os("KEYSWAP_TEST_NODE_PATH").map(PathBuf::from) {
        if resolves(&given) {
            return Some(given);
        }
    }
    let prefix = scratch.join("npm");
    let installed = std::process::Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg("undici@6")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let node_modules = prefix.join("node_modules");
    (installed && resolves(&node_modules)).then_some(node_modules)
}

#[tokio::test]
async fn node_undici_shows_the_reason_for_an_unlisted_host() {
    if !require(runs("node", &["--version"]), "node") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let node_path = undici_node_path(scratch.path());
    if !require(node_path.is_some(), "undici (npm to install it)") {
        return;
    }
    let env = TestEnv::start().await;
    let ca = write_proxy_ca(&env);
    let mut cmd = agent_command(&env, "node", &ca);
    cmd.env("NODE_PATH", node_path.unwrap())
        .arg("-e")
        .arg(UNDICI_SCRIPT);
    let out = run(&env, cmd).await;
    assert_surfaced("node undici", &out);
    assert_audited(&env).await;
    env.assert_no_leaks();
}

#[tokio::test]
async fn an_agent_that_does_not_trust_the_ca_is_audited_and_warned_about_once() {
    if !require(runs("curl", &["--version"]), "curl") {
        return;
    }
    let env = TestEnv::start().await;
    // A CA bundle that does not hold keyswap's CA (the upstream's, as a misconfigured agent
    // would have the system's).
    let wrong_ca = env.dir.path().join("upstream-ca.pem");
    for _ in 0..2 {
        let mut cmd = agent_command(&env, "curl", &wrong_ca);
        cmd.arg("--silent")
            .arg("--show-error")
            .arg("--cacert")
            .arg(&wrong_ca)
            .arg("--output")
            .arg("/dev/null")
            .arg(format!(
                "https://{}/public/page",
                keyswap_tests::harness::API_HOST
            ));
        let out = run(&env, cmd).await;
        assert!(!out.success, "curl trusted a CA it was not given");
    }
    let records = env
        .audit_at_least(2, |r| r["reason"] == "agent_tls_failed")
        .await;
    assert_eq!(records.len(), 2, "one record per failed handshake");
    for record in &records {
        assert_eq!(record["task"], "agent");
        assert_eq!(record["host"], keyswap_tests::harness::API_HOST);
        assert_eq!(record["port"], 443);
        assert_eq!(record["decision"], "error");
        assert_eq!(record["status"], 0);
    }
    let log = String::from_utf8_lossy(&env.log()).into_owned();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("agent_tls_failed"))
        .count();
    assert_eq!(warnings, 1, "warned once per task and host");
    assert_eq!(env.upstream.seen_count(), 0);
    env.assert_no_leaks();
}
