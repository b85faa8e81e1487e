//! Learn mode (`on_unlisted: learn`) and `keyswap learn`: real clients (git over smart HTTP, pip,
//! curl) run against the local upstreams under a learning task; what no rule allows is
//! forwarded with no secret (the upstream gets the placeholder's bytes) and recorded as
//! `learned`; the policy learned from that audit then serves the same run with no refusal
//! and refuses what the run never did.
//!
//! git, curl, npm and python3 with pip must be on PATH; without one a test prints a notice and
//! passes, except under `CI=true`, where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::cli::learn::LearnArgs;
use keyswap::learn::{
    learn_rules, read_audit, render, replay, Filter, Observed, DEFAULT_MAX_CHILDREN,
};
use keyswap::ProxyOptions;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST, OTHER_HOST, TUNNEL_HOST};
use keyswap_tests::secrets::{
    assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_PLACEHOLDER,
};
use keyswap_tests::tools::available;
use keyswap_tests::upstream::Alpn;

/// The resolves, secrets, admin socket and metrics listener both configs share; the task
/// is added by the caller.
fn base() -> ConfigBuilder {
    ConfigBuilder::new()
        .admin_socket()
        .metrics()
        .resolve(&format!("{OTHER_HOST}:443"), "127.0.0.1:{https_port}")
        .resolve(&format!("{TUNNEL_HOST}:443"), "127.0.0.1:{tunnel_port}")
        .secret("github", Secret::github())
        .secret("openai", Secret::openai())
}

/// Task `agent` in learn mode, with a `tunnel: true` rule and one listed route.
fn learning_config() -> String {
    base()
        .task(
            "agent",
            Entry::with_token()
                .field("on_unlisted", "learn")
                .rule(Rule::host(TUNNEL_HOST).field("tunnel", "true"))
                .rule(Rule::api().methods(&["GET"]).paths(&["/echo/listed"])),
        )
        .yaml()
}

fn options() -> ProxyOptions {
    ProxyOptions {
        admin: true,
        metrics: true,
        ..ProxyOptions::default()
    }
}

/// Which placeholder a scripted call carries, and in which header.
#[derive(Clone, Copy)]
enum Carry {
    Nothing,
    GithubBearer,
    OpenaiKey,
    /// The placeholder inside a JSON request body.
    GithubInBody,
}

/// The agent's API calls: ids, UUIDs, digests and dates in their paths.
const SCRIPT: &[(&str, &str, &str, Carry)] = &[
    (
        "GET",
        API_HOST,
        "/echo/repos/acme/widget/issues/42",
        Carry::GithubBearer,
    ),
    (
        "GET",
        API_HOST,
        "/echo/repos/acme/widget/issues/43",
        Carry::GithubBearer,
    ),
    (
        "POST",
        API_HOST,
        "/echo/repos/acme/widget/issues/42/comments",
        Carry::GithubBearer,
    ),
    (
        "GET",
        API_HOST,
        "/echo/users/1f0c5a9e-3b1d-4c2e-9f0a-1234567890ab",
        Carry::Nothing,
    ),
    (
        "GET",
        API_HOST,
        "/echo/commits/9fceb02d0ae598e95dc970b74767f19372d61af8",
        Carry::Nothing,
    ),
    ("GET", API_HOST, "/echo/reports/2026-12-07", Carry::Nothing),
    ("POST", API_HOST, "/sink", Carry::GithubInBody),
    ("GET", API_HOST, "/echo/listed", Carry::Nothing),
    (
        "POST",
        OTHER_HOST,
        "/echo/v1/chat/completions",
        Carry::OpenaiKey,
    ),
    ("GET", TUNNEL_HOST, "/echo/tunnelled", Carry::Nothing),
];

/// keyswap's CA and the upstream CA (a `tunnel: true` host shows its own certificate).
fn ca_bundle(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("ca-bundle.pem");
    let both = format!("{}{}", env.proxy_ca_pem, env.upstream_ca.cert_pem());
    std::fs::write(&path, both).expect("write CA bundle");
    path
}

fn proxy_url(env: &TestEnv) -> String {
    format!("http://agent:{AGENT_TOKEN}@{}", env.proxy.addr())
}

/// A child with only PATH, HOME (a fresh directory) and `vars`.
fn command(env: &TestEnv, program: &str, vars: &BTreeMap<&str, String>) -> tokio::process::Command {
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a client to its end; what it printed is checked for real values and kept.
async fn run(env: &TestEnv, what: &str, mut cmd: tokio::process::Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    assert_no_real_secret(&format!("{what} stdout"), &out.stdout);
    assert_no_real_secret(&format!("{what} stderr"), &out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(AGENT_TOKEN, "<token>");
    env.keep(&[], &stdout);
    env.keep(&[], &stderr);
    assert!(out.status.success(), "{what} failed\n{stdout}\n{stderr}");
    stdout
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// One curl call through keyswap; returns the status the agent got.
async fn curl(env: &TestEnv, method: &str, host: &str, path: &str, carry: Carry) -> u16 {
    let vars = BTreeMap::new();
    let mut cmd = command(env, "curl", &vars);
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg("--proxy")
        .arg(proxy_url(env))
        .arg("--cacert")
        .arg(ca_bundle(env));
    match carry {
        Carry::Nothing => {}
        Carry::GithubBearer => {
            cmd.arg("-H")
                .arg(format!("Authorization: Bearer {GITHUB_PLACEHOLDER}"));
        }
        Carry::OpenaiKey => {
            cmd.arg("-H")
                .arg(format!("x-api-key: {OPENAI_PLACEHOLDER}"));
        }
        Carry::GithubInBody => {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("{{\"token\":\"{GITHUB_PLACEHOLDER}\"}}"));
        }
    }
    cmd.arg(format!("https://{host}{path}"));
    let status = run(env, &format!("curl {method} {host}{path}"), cmd).await;
    status.trim().parse().expect("curl printed a status")
}

/// A bare repository `root/git/demo.git` with one commit.
async fn write_repo(env: &TestEnv, root: &Path) {
    let vars = BTreeMap::from([
        ("GIT_AUTHOR_NAME", "keyswap".to_string()),
        ("GIT_AUTHOR_EMAIL", "tests@keyswap.invalid".to_string()),
        ("GIT_COMMITTER_NAME", "keyswap".to_string()),
        ("GIT_COMMITTER_EMAIL", "tests@keyswap.invalid".to_string()),
    ]);
    let bare = root.join("git/demo.git");
    let work = env.dir.path().join("seed");
    let (bare, work) = (bare.to_str().expect("utf-8"), work.to_str().expect("utf-8"));
    let steps: [&[&str]; 5] = [
        &["init", "-q", "--bare", "-b", "main", bare],
        &["init", "-q", "-b", "main", work],
        &["-C", work, "add", "README"],
        &["-C", work, "commit", "-q", "-m", "first"],
        &["-C", work, "push", "-q", bare, "main"],
    ];
    for (i, args) in steps.iter().enumerate() {
        if i == 2 {
            std::fs::write(Path::new(work).join("README"), "learned\n").expect("file");
        }
        let mut cmd = command(env, "git", &vars);
        cmd.args(*args);
        run(env, "git (seeding the repository)", cmd).await;
    }
}

/// `git clone` over smart HTTP through keyswap, sending a GitHub-style
/// `Basic x-access-token:PLACEHOLDER`.
async fn git_clone(env: &TestEnv, into: &str) {
    let header = format!(
        "http.extraHeader=Authorization: Basic {}",
        basic("x-access-token", GITHUB_PLACEHOLDER)
    );
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(env)),
        ("GIT_SSL_CAINFO", ca_bundle(env).display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
    ]);
    let clone = env.dir.path().join(into);
    let mut cmd = command(env, "git", &vars);
    cmd.args(["-c", &header, "clone", "-q"])
        .arg(format!("https://{API_HOST}/git/demo.git"))
        .arg(&clone);
    run(env, "git clone", cmd).await;
    let readme = std::fs::read_to_string(clone.join("README")).expect("cloned");
    assert_eq!(readme, "learned\n");
}

/// A PEP 503 index with one pure-Python wheel, `ksdemo 0.1`, written by python's zipfile.
async fn write_index(env: &TestEnv, root: &Path) {
    let files = root.join("files");
    std::fs::create_dir_all(files.join("simple/ksdemo")).expect("index dirs");
    let script = keyswap_tests::files::WHEEL_BUILDER;
    let mut cmd = command(env, "python3", &BTreeMap::new());
    cmd.arg("-c").arg(script).arg(&files);
    let printed = run(env, "wheel builder", cmd).await;
    let sha = printed.trim();
    keyswap_tests::files::write_pep503_pages(&files, sha);
}

/// An npm registry with one package, `ksdemo-npm 0.1.0`: its packument and its tarball
/// (written by python's tarfile), under `/files/npm/`.
async fn write_npm_registry(env: &TestEnv, root: &Path) {
    let registry = root.join("files/npm");
    std::fs::create_dir_all(&registry).expect("registry dir");
    let script = r#"
import base64, hashlib, io, json, sys, tarfile
out, host = sys.argv[1], sys.argv[2]
files = {
    "package/package.json": json.dumps({"name": "ksdemo-npm", "version": "0.1.0", "main": "index.js"}).encode(),
    "package/index.js": b"module.exports = 'installed through keyswap';\n",
}
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w:gz") as tar:
    for path, data in files.items():
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
tgz = raw.getvalue()
open(f"{out}/ksdemo-npm-0.1.0.tgz", "wb").write(tgz)
integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
version = {"name": "ksdemo-npm", "version": "0.1.0", "dist": {
    "tarball": f"https://{host}/files/npm/ksdemo-npm-0.1.0.tgz",
    "integrity": integrity, "shasum": hashlib.sha1(tgz).hexdigest()}}
packument = {"name": "ksdemo-npm", "dist-tags": {"latest": "0.1.0"}, "versions": {"0.1.0": version}}
open(f"{out}/ksdemo-npm", "w").write(json.dumps(packument))
"#;
    let mut cmd = command(env, "python3", &BTreeMap::new());
    cmd.arg("-c").arg(script).arg(&registry).arg(API_HOST);
    run(env, "npm registry builder", cmd).await;
}

/// `npm install` from the private registry, its `.npmrc` holding the placeholder as the
/// registry's `_authToken` (npm sends it as `Authorization: Bearer`).
async fn npm_install(env: &TestEnv, into: &str) {
    let registry = format!("https://{API_HOST}/files/npm/");
    let target = env.dir.path().join(into);
    std::fs::create_dir_all(&target).expect("npm prefix");
    let npmrc = target.join(".npmrc");
    std::fs::write(
        &npmrc,
        format!("//{API_HOST}/files/npm/:_authToken={GITHUB_PLACEHOLDER}\n"),
    )
    .expect(".npmrc");
    let proxy = proxy_url(env);
    let mut cmd = command(env, "npm", &BTreeMap::new());
    cmd.args(["install", "--no-audit", "--no-fund", "--no-update-notifier"])
        .args([
            "--registry",
            &registry,
            "--proxy",
            &proxy,
            "--https-proxy",
            &proxy,
        ])
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--cafile")
        .arg(ca_bundle(env))
        .arg("--cache")
        .arg(env.dir.path().join(format!("{into}-npm-cache")))
        .arg("--prefix")
        .arg(&target)
        .arg("ksdemo-npm@0.1.0");
    run(env, "npm install", cmd).await;
    let installed = std::fs::read_to_string(target.join("node_modules/ksdemo-npm/index.js"))
        .expect("installed");
    assert!(installed.contains("installed through keyswap"));
}

/// `pip install` from the private index, its URL holding the placeholder as a password.
async fn pip_install(env: &TestEnv, into: &str) {
    let index = format!("https://__token__:{GITHUB_PLACEHOLDER}@{API_HOST}/files/simple/");
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(env)),
        ("PIP_CERT", ca_bundle(env).display().to_string()),
    ]);
    let target = env.dir.path().join(into);
    let mut cmd = command(env, "python3", &vars);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ])
    .args(["--no-input", "--no-deps", "--index-url", &index, "--target"])
    .arg(&target)
    .arg("ksdemo==0.1");
    run(env, "pip install", cmd).await;
    let installed = std::fs::read_to_string(target.join("ksdemo/__init__.py")).expect("installed");
    assert!(installed.contains("installed through keyswap"));
}

/// The whole run: a git clone, a pip install, then the scripted API calls, each answered 200.
async fn agent_run(env: &TestEnv) {
    let root = env.dir.path().join("www");
    write_repo(env, &root).await;
    env.upstream.serve_files(&root);
    write_index(env, &root).await;
    write_npm_registry(env, &root).await;
    git_clone(env, "clone").await;
    pip_install(env, "site").await;
    npm_install(env, "node").await;
    for (method, host, path, carry) in SCRIPT {
        let status = curl(env, method, host, path, *carry).await;
        assert_eq!(status, 200, "{method} {host}{path}");
    }
    // A record is written when its response (or its tunnel) has ended, which can trail the
    // client: wait for the run's records before anything reads the audit file.
    for (method, host, path, _) in SCRIPT {
        if *host == TUNNEL_HOST {
            env.audit_where(|r| r["host"] == TUNNEL_HOST && r["method"] == "CONNECT")
                .await;
        } else {
            env.audit_where(|r| r["method"] == *method && r["host"] == *host && r["path"] == *path)
                .await;
        }
    }
}

fn tools_present() -> bool {
    available("git", "--version")
        && available("curl", "--version")
        && available("python3", "--version")
        && available("npm", "--version")
}

/// One GET of the metrics listener's `/metrics`.
async fn metrics(env: &TestEnv) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.proxy.metrics_addr().expect("metrics served");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

#[tokio::test]
async fn learning_task_forwards_unlisted_requests_with_placeholders_and_records_them() {
    if !tools_present() {
        return;
    }
    let env = TestEnv::start_with_options(&learning_config(), Alpn::Both, options()).await;
    agent_run(&env).await;

    // The upstream got the placeholder's bytes, never a real value.
    let seen = env.upstream.seen();
    let issue = seen
        .iter()
        .find(|r| r.path_and_query == "/echo/repos/acme/widget/issues/42")
        .expect("the upstream saw the learned request");
    let sent_bearer = format!("Bearer {GITHUB_PLACEHOLDER}");
    assert_eq!(issue.header("authorization"), Some(sent_bearer.as_str()));
    let sent_basic = format!("Basic {}", basic("x-access-token", GITHUB_PLACEHOLDER));
    let git: Vec<_> = seen
        .iter()
        .filter(|r| r.path_and_query.starts_with("/git/demo.git/"))
        .collect();
    assert!(!git.is_empty());
    for r in &git {
        assert_eq!(r.header("authorization"), Some(sent_basic.as_str()));
    }
    let chat = seen
        .iter()
        .find(|r| r.path_and_query == "/echo/v1/chat/completions")
        .expect("the upstream saw the openai call");
    assert_eq!(chat.header("x-api-key"), Some(OPENAI_PLACEHOLDER));
    for r in &seen {
        for (_, value) in &r.headers {
            assert!(
                !value.contains("KSREAL"),
                "a real value reached the upstream"
            );
        }
    }

    // Recorded as learned, with what was carried and what the upstream answered.
    let learned = env
        .audit_where(|r| r["path"] == "/echo/repos/acme/widget/issues/42" && r["method"] == "GET")
        .await;
    assert_eq!(learned["decision"], "learned");
    assert_eq!(learned["reason"], "learned");
    assert_eq!(learned["status"], 200);
    assert_eq!(learned["rule"], serde_json::Value::Null);
    assert_eq!(learned["secrets"], serde_json::json!([]));
    assert_eq!(
        learned["carried"],
        serde_json::json!([{"secret": "github", "headers": ["authorization"]}])
    );
    // A placeholder in a body goes upstream as it is and is recorded as carried there.
    let bodies = env.upstream.bodies();
    let body = String::from_utf8_lossy(&bodies.first().expect("the upstream saw the body").body);
    assert!(body.contains(GITHUB_PLACEHOLDER), "{body}");
    let in_body = env.audit_where(|r| r["path"] == "/sink").await;
    assert_eq!(
        in_body["carried"],
        serde_json::json!([{"secret": "github", "body": true}])
    );
    let npm = env
        .audit_where(|r| r["path"] == "/files/npm/ksdemo-npm-0.1.0.tgz")
        .await;
    assert_eq!(
        npm["carried"],
        serde_json::json!([{"secret": "github", "headers": ["authorization"]}])
    );
    let plain = env
        .audit_where(|r| r["path"] == "/echo/reports/2026-12-07")
        .await;
    assert_eq!(plain["decision"], "learned");
    assert!(plain.get("carried").is_none(), "{plain}");
    // A listed route is decided as usual; the tunnel is a tunnel.
    let listed = env.audit_where(|r| r["path"] == "/echo/listed").await;
    assert_eq!(
        (&listed["decision"], &listed["rule"]),
        (&"allowed".into(), &1.into())
    );
    let tunnel = env
        .audit_where(|r| r["host"] == TUNNEL_HOST && r["method"] == "CONNECT")
        .await;
    assert_eq!(tunnel["tunnel"], true);
    assert_eq!(tunnel["decision"], "allowed");
    let denied: Vec<String> = env
        .audit()
        .iter()
        // git's libcurl asks without proxy credentials first and gets 407 (no_task).
        .filter(|r| r["decision"] == "denied" && r["reason"] != "no_task")
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["reason"], r["method"], r["host"], r["path"]
            )
        })
        .collect();
    assert!(denied.is_empty(), "{denied:?}");

    // The metrics count learned requests; the task list marks the task.
    let text = metrics(&env).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("keyswap_requests_total{") && l.contains("reason=\"learned\"")),
        "{text}"
    );
    let admin = AdminClient::new(AdminTarget::Socket(
        env.proxy.admin_socket().expect("socket").to_path_buf(),
    ));
    let tasks = admin.list().await.expect("task list");
    let agent = tasks
        .iter()
        .find(|t| t.id == "agent")
        .expect("agent listed");
    assert!(agent.learning);
    env.assert_no_leaks();
}

#[tokio::test]
async fn a_rule_that_matches_under_learn_mode_swaps_as_usual() {
    if !available("curl", "--version") {
        return;
    }
    let yaml = base()
        .task(
            "agent",
            Entry::with_token()
                .field("on_unlisted", "learn")
                .rule(Rule::api().paths(&["/echo/granted"]).secrets(&["github"])),
        )
        .yaml();
    let env = TestEnv::start_with_options(&yaml, Alpn::Both, options()).await;
    assert_eq!(
        curl(&env, "GET", API_HOST, "/echo/granted", Carry::GithubBearer).await,
        200
    );
    let real = format!("Bearer {GITHUB_REAL}");
    assert!(env.upstream.authorization_for("/echo/granted").as_deref() == Some(real.as_str()));
    let record = env.audit_where(|r| r["path"] == "/echo/granted").await;
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["secrets"], serde_json::json!(["github"]));
    env.assert_no_leaks();
}

// ---- keyswap learn: from the run's audit to a policy, and back ------------------------------

/// The learned run's audit, read and verified as `keyswap learn --task agent` reads it.
fn learned_records(audit: &Path) -> Vec<Observed> {
    let filter = Filter {
        task: Some("agent".into()),
        ..Filter::default()
    };
    let read = read_audit(&[audit.to_path_buf()], &[], &filter, false).expect("audit verifies");
    assert!(read.broken.is_none());
    read.records
}

/// What `curl` got for a request the learned policy must refuse: status and reason.
async fn refused(env: &TestEnv, method: &str, host: &str, path: &str, carry: Carry) -> String {
    let status = curl(env, method, host, path, carry).await;
    assert_eq!(status, 403, "{method} {host}{path}");
    let record = env
        .audit_where(|r| {
            r["path"] == path
                && r["host"] == host
                && r["method"] == method
                && r["decision"] == "denied"
        })
        .await;
    record["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_learned_policy_serves_the_same_run_and_refuses_what_it_never_did() {
    if !tools_present() {
        return;
    }
    let learning = TestEnv::start_with_options(&learning_config(), Alpn::Both, options()).await;
    agent_run(&learning).await;
    learning.audit(); // flushed
    let records = learned_records(&learning.audit_path());
    let rules = learn_rules(&records, DEFAULT_MAX_CHILDREN);
    let policy = render("learned", &rules, "the test run");
    learning.keep(&[], &policy);
    // Deterministic: the same records in another order give the same text.
    let mut reversed = records.clone();
    reversed.reverse();
    assert_eq!(
        render(
            "learned",
            &learn_rules(&reversed, DEFAULT_MAX_CHILDREN),
            "the test run"
        ),
        policy
    );
    for expected in [
        r#""/echo/repos/acme/widget/issues/*", "/echo/repos/acme/widget/issues/*/comments", "#,
        r#""/files/simple/ksdemo/""#,
        r#""/files/npm/ksdemo-npm", "/files/npm/ksdemo-npm-0.1.0.tgz""#,
        "swap_in: [headers, body]",
        r#""/git/demo.git/git-upload-pack", "/git/demo.git/info/refs", "/sink"]"#,
        r#"paths: ["/echo/commits/*", "/echo/listed", "/echo/reports/*", "/echo/users/*"]"#,
        r#"secrets: ["github"]"#,
        r#"headers: ["authorization"]"#,
        r#"headers: ["x-api-key"]"#,
        "tunnel: true",
    ] {
        assert!(
            policy.contains(expected),
            "{expected} missing from\n{policy}"
        );
    }
    assert_eq!(policy.matches("secrets:").count(), 2, "{policy}");
    assert_eq!(policy.matches("tunnel: true").count(), 1, "{policy}");
    assert!(
        policy.contains("# 4 requests, e.g. GET /echo/commits/9fceb02d"),
        "{policy}"
    );

    // The policy passes the config's validation, and serves the same run without a refusal.
    let yaml = base()
        .task("agent", Entry::with_token().field("policy", "learned"))
        .yaml()
        + &policy;
    let env = TestEnv::start_with_options(&yaml, Alpn::Both, options()).await;
    agent_run(&env).await;
    let refusals: Vec<String> = env
        .audit()
        .iter()
        .filter(|r| r["event"] == "request")
        .filter(|r| r["decision"] != "allowed" && r["reason"] != "no_task")
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["reason"], r["method"], r["host"], r["path"]
            )
        })
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
    let real = format!("Basic {}", basic("x-access-token", GITHUB_REAL));
    assert!(env
        .upstream
        .seen()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/git/demo.git/"))
        .all(|r| r.header("authorization") == Some(real.as_str())));
    let index = format!("Basic {}", basic("__token__", GITHUB_REAL));
    assert!(
        env.upstream
            .authorization_for("/files/simple/ksdemo/")
            .as_deref()
            == Some(index.as_str())
    );

    // What the run never did is refused.
    let never = [
        (
            "GET",
            API_HOST,
            "/echo/repos/acme/widget/pulls/1",
            Carry::GithubBearer,
            "route_not_allowed",
        ),
        (
            "DELETE",
            API_HOST,
            "/echo/repos/acme/widget/issues/42",
            Carry::GithubBearer,
            "route_not_allowed",
        ),
        (
            "GET",
            API_HOST,
            "/echo/users/1f0c5a9e-3b1d-4c2e-9f0a-1234567890ab/keys",
            Carry::Nothing,
            "route_not_allowed",
        ),
        // A secret only where the run used it.
        (
            "GET",
            API_HOST,
            "/echo/users/1f0c5a9e-3b1d-4c2e-9f0a-1234567890ab",
            Carry::GithubBearer,
            "placeholder_not_allowed",
        ),
        (
            "GET",
            API_HOST,
            "/echo/repos/acme/widget/issues/42",
            Carry::OpenaiKey,
            "placeholder_not_allowed",
        ),
    ];
    for (method, host, path, carry, reason) in never {
        assert_eq!(
            refused(&env, method, host, path, carry).await,
            reason,
            "{method} {path}"
        );
    }
    let unknown = "never.upstream.test";
    assert_eq!(
        curl(&env, "GET", unknown, "/echo/x", Carry::Nothing).await,
        403
    );
    let record = env.audit_where(|r| r["host"] == unknown).await;
    assert_eq!(record["reason"], "host_not_allowed");

    // --replay: the learned policy refuses none of the run; one without the git rule does.
    let config = keyswap_config::load_str(
        &env.config_yaml,
        &env.dir.path().join("keyswap.yaml"),
        &keyswap_tests::harness::test_env_values(),
    )
    .expect("config loads");
    assert_eq!(replay(&config, "learned", &records), Ok(Vec::new()));
    learning.assert_no_leaks();
    env.assert_no_leaks();
}

// ---- the command: --merge, --replay, a tampered audit ---------------------------------------

fn args(audit: &Path) -> LearnArgs {
    LearnArgs {
        audit: vec![audit.to_path_buf()],
        task: Some("agent".into()),
        policy: None,
        since: None,
        name: "learned".into(),
        max_children: DEFAULT_MAX_CHILDREN,
        merge: None,
        replay: false,
        config: None,
        force: false,
        key_files: Vec::new(),
    }
}

/// `keyswap learn ARGS`: whether it succeeded and what it printed (or the error).
fn keyswap_learn(env: &TestEnv, args: &LearnArgs) -> (bool, String) {
    let mut out = Vec::new();
    let result = keyswap::cli::learn::run(args, &mut out);
    let text = String::from_utf8(out).expect("utf-8");
    env.keep(&[], &text);
    match result {
        Ok(ok) => (ok, text),
        Err(e) => (false, format!("error: {e:#}")),
    }
}

/// A config file holding `policies` (YAML text), with secrets read from files of its own.
fn config_file(env: &TestEnv, name: &str, policies: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.dir.path();
    let mut yaml = format!(
        "version: 1\nlisten: 127.0.0.1:0\nca_dir: {0}/ca-{name}\naudit_log: {0}/audit-{name}.jsonl\nsecrets:\n",
        dir.display()
    );
    for (secret, placeholder) in [
        ("github", GITHUB_PLACEHOLDER),
        ("openai", OPENAI_PLACEHOLDER),
    ] {
        let file = dir.join(format!("{secret}.secret"));
        std::fs::write(&file, format!("KSREAL-learn-{secret}-value-0123456789")).expect("secret");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("mode");
        yaml.push_str(&format!(
            "  {secret}:\n    from_file: {}\n    placeholder: {placeholder}\n",
            file.display()
        ));
    }
    yaml.push_str(policies);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("config");
    path
}

#[tokio::test]
async fn keyswap_learn_merges_replays_and_reports_a_tampered_audit() {
    if !tools_present() {
        return;
    }
    let env = TestEnv::start_with_options(&learning_config(), Alpn::Both, options()).await;
    agent_run(&env).await;
    env.audit(); // flushed
    let audit = env.audit_path();

    let (ok, policy) = keyswap_learn(&env, &args(&audit));
    assert!(ok, "{policy}");
    let full = config_file(&env, "full", &policy);
    let replay_args = |config: &Path| LearnArgs {
        replay: true,
        task: None,
        config: Some(config.to_path_buf()),
        policy: Some("learned".into()),
        ..args(&audit)
    };
    let (ok, out) = keyswap_learn(&env, &replay_args(&full));
    assert!(ok, "{out}");
    assert!(out.contains("policy learned would refuse 0 of"), "{out}");

    // A policy with only the openai host: replay lists the rest; --merge prints what to add.
    let partial = "policies:\n  learned:\n    allow:\n      - host: other.upstream.test\n        secrets: [openai]\n";
    let partial = config_file(&env, "partial", partial);
    let (ok, out) = keyswap_learn(&env, &replay_args(&partial));
    assert!(!ok, "{out}");
    assert!(
        out.contains("GET https://api.upstream.test:443/echo/listed: host_not_allowed"),
        "{out}"
    );
    assert!(
        out.contains("CONNECT tunnel.upstream.test:443: host_not_allowed"),
        "{out}"
    );
    let merge = LearnArgs {
        merge: Some(partial.clone()),
        ..args(&audit)
    };
    let (ok, add) = keyswap_learn(&env, &merge);
    assert!(ok, "{add}");
    assert!(
        add.contains("Add these lines under policies.learned.allow"),
        "{add}"
    );
    assert!(add.contains("- host: \"api.upstream.test\""), "{add}");
    assert!(add.contains("- host: \"tunnel.upstream.test\""), "{add}");
    assert!(!add.contains("other.upstream.test"), "{add}");
    // The added lines make the policy whole.
    let merged = format!(
        "policies:\n  learned:\n    allow:\n      - host: other.upstream.test\n        secrets: [openai]\n{add}"
    );
    let merged = config_file(&env, "merged", &merged);
    let (ok, out) = keyswap_learn(&env, &replay_args(&merged));
    assert!(ok, "{out}");

    // An edited record breaks the chain: reported, and learned from only with --force.
    let text = std::fs::read_to_string(&audit).expect("audit");
    assert!(text.contains("\"/echo/listed\""));
    let tampered = env.dir.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replace("\"/echo/listed\"", "\"/echo/lister\""),
    )
    .expect("write");
    let (ok, out) = keyswap_learn(&env, &args(&tampered));
    assert!(!ok);
    assert!(out.contains("hash chain is broken"), "{out}");
    assert!(out.contains("--force"), "{out}");
    let forced = LearnArgs {
        force: true,
        ..args(&tampered)
    };
    let (ok, out) = keyswap_learn(&env, &forced);
    assert!(ok, "{out}");
    assert!(out.contains("/echo/lister"), "{out}");
    env.assert_no_leaks();
}
