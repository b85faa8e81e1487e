//! The README's client table, run: each real client reaches the in-process upstream through
//! keyswap with only a placeholder, configured the way the table says, and the upstream
//! receives the real value. Where the table warns about a pitfall (curl ignores upper-case
//! `HTTP_PROXY`, wget reads only lower-case `https_proxy`, pip's `--cert` loses to
//! `REQUESTS_CA_BUNDLE`) a test shows the pitfall too.
//!
//! curl, wget, python3 (urllib, pip) and git must be on PATH; without one its test prints a
//! notice and passes, except under `CI=true`, where it fails. Java is covered by
//! `java_client.rs` (and `proxy/tests/it/exec.rs` under `keyswap exec`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST, DEFAULT_CONFIG};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::upstream::Alpn;

/// The default config with `/files/**` (a package index) and `/git/**` (smart HTTP) added to
/// the API host's rule that grants the github secret.
fn config() -> String {
    let from = r#""/status/*", "/redirect"]"#;
    assert!(DEFAULT_CONFIG.contains(from));
    DEFAULT_CONFIG.replace(from, r#""/status/*", "/redirect", "/files/**", "/git/**"]"#)
}

async fn start() -> TestEnv {
    TestEnv::start_with(&config(), Alpn::Both).await
}

/// Whether `tool` runs; under `CI=true` its absence fails the test.
fn available(tool: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} must be installed in CI (.ci/run installs it)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** NOTICE: {tool} is not usable here: its client test did NOT run ***\n"
        );
    }
    found
}

fn proxy_url(env: &TestEnv) -> String {
    format!("http://agent:{AGENT_TOKEN}@{}", env.proxy.addr())
}

/// keyswap's CA certificate in a file, as `keyswap ca export --out` writes it.
fn ca_file(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("keyswap-ca.pem");
    std::fs::write(&path, &env.proxy_ca_pem).expect("write CA");
    path
}

/// A child with only PATH, HOME (a fresh directory) and `vars`: nothing of the test
/// runner's own proxy or CA settings leaks in.
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

struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn shown(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
            .replace(AGENT_TOKEN, "<token>")
    }
}

/// Runs the client; what it printed is checked for real values and kept for the leak check.
async fn run(env: &TestEnv, what: &str, mut cmd: tokio::process::Command) -> Ran {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    assert_no_real_secret(&format!("{what} stdout"), &out.stdout);
    assert_no_real_secret(&format!("{what} stderr"), &out.stderr);
    let ran = Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    env.keep(&[], &ran.stdout);
    env.keep(&[], &ran.stderr);
    ran
}

/// The upstream received the real value in `Authorization` for `path`, and keyswap audited
/// the request as task `agent` with the github secret.
async fn assert_swapped(env: &TestEnv, path: &str, expected: &str) {
    let got = env.upstream.authorization_for(path);
    assert!(
        got.as_deref() == Some(expected),
        "the upstream did not receive the real value for {path} (got {})",
        if got.is_some() {
            "another value"
        } else {
            "nothing"
        }
    );
    let record = env.audit_where(|r| r["path"] == path).await;
    assert_eq!(record["task"], "agent");
    assert_eq!(record["secrets"], serde_json::json!(["github"]));
}

fn bearer() -> String {
    format!("Authorization: Bearer {GITHUB_PLACEHOLDER}")
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

// ---- curl ----------------------------------------------------------------------------------

#[tokio::test]
async fn curl_with_https_proxy_and_curl_ca_bundle() {
    if !available("curl", &["--version"]) {
        return;
    }
    let env = start().await;
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(&env)),
        ("CURL_CA_BUNDLE", ca_file(&env).display().to_string()),
    ]);
    let path = "/echo/clients-curl";
    let mut cmd = command(&env, "curl", &vars);
    cmd.args(["-sS", "--fail", "-H", &bearer()])
        .arg(format!("https://{API_HOST}{path}"));
    let ran = run(&env, "curl", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    assert!(ran.stdout.contains(GITHUB_PLACEHOLDER), "echo not scrubbed");
    assert_swapped(&env, path, &format!("Bearer {GITHUB_REAL}")).await;
    env.assert_no_leaks();
}

/// curl reads `http_proxy` only in lower case (an upper-case `HTTP_PROXY` could be set by a
/// web server's `Proxy:` request header in CGI): with `HTTP_PROXY` alone it goes direct.
#[tokio::test]
async fn curl_ignores_upper_case_http_proxy() {
    if !available("curl", &["--version"]) {
        return;
    }
    let env = start().await;
    let path = "/echo/clients-curl-upper";
    let vars = BTreeMap::from([("HTTP_PROXY", proxy_url(&env))]);
    let mut cmd = command(&env, "curl", &vars);
    cmd.args(["-sS", "--fail", "-H", &bearer()])
        .arg(format!("http://127.0.0.1:{}{path}", env.plain.port()));
    let ran = run(&env, "curl", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    // It reached the plain upstream directly: keyswap never saw it, nothing was swapped.
    let seen = env.plain.authorization_for(path);
    assert_eq!(
        seen.as_deref(),
        Some(format!("Bearer {GITHUB_PLACEHOLDER}").as_str())
    );
    assert!(env.audit().iter().all(|r| r["path"] != path));
    env.assert_no_leaks();
}

// ---- wget ----------------------------------------------------------------------------------

#[tokio::test]
async fn wget_with_lower_case_https_proxy() {
    if !available("wget", &["--version"]) {
        return;
    }
    let env = start().await;
    let path = "/echo/clients-wget";
    let vars = BTreeMap::from([("https_proxy", proxy_url(&env))]);
    let mut cmd = command(&env, "wget", &vars);
    cmd.args(["-q", "-O", "-", "--header", &bearer()])
        .arg(format!("--ca-certificate={}", ca_file(&env).display()))
        .arg(format!("https://{API_HOST}{path}"));
    let ran = run(&env, "wget", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    assert!(ran.stdout.contains(GITHUB_PLACEHOLDER), "echo not scrubbed");
    assert_swapped(&env, path, &format!("Bearer {GITHUB_REAL}")).await;
    env.assert_no_leaks();
}

/// wget reads only `https_proxy`: with upper-case `HTTPS_PROXY` alone it goes direct.
#[tokio::test]
async fn wget_ignores_upper_case_https_proxy() {
    if !available("wget", &["--version"]) {
        return;
    }
    let env = start().await;
    let path = "/echo/clients-wget-upper";
    let upstream_ca = env.dir.path().join("upstream-ca.pem");
    let vars = BTreeMap::from([("HTTPS_PROXY", proxy_url(&env))]);
    let mut cmd = command(&env, "wget", &vars);
    cmd.args(["-q", "-O", "-", "--header", &bearer()])
        .arg(format!("--ca-certificate={}", upstream_ca.display()))
        .arg(format!("https://127.0.0.1:{}{path}", env.upstream.port()));
    let ran = run(&env, "wget", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    let seen = env.upstream.authorization_for(path);
    assert_eq!(
        seen.as_deref(),
        Some(format!("Bearer {GITHUB_PLACEHOLDER}").as_str())
    );
    assert!(env.audit().iter().all(|r| r["path"] != path));
    env.assert_no_leaks();
}

// ---- Python: urllib ------------------------------------------------------------------------

/// urllib's default opener takes the proxy (and its userinfo, as `Proxy-Authorization:
/// Basic`) from `https_proxy`/`HTTPS_PROXY`; `SSL_CERT_FILE` is OpenSSL's trust file.
#[tokio::test]
async fn python_urllib_with_https_proxy_and_ssl_cert_file() {
    if !available("python3", &["--version"]) {
        return;
    }
    let env = start().await;
    let path = "/echo/clients-urllib";
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(&env)),
        ("SSL_CERT_FILE", ca_file(&env).display().to_string()),
        ("GITHUB_TOKEN", GITHUB_PLACEHOLDER.to_string()),
    ]);
    let script = format!(
        "import os, urllib.request\n\
         req = urllib.request.Request('https://{API_HOST}{path}', \
         headers={{'Authorization': 'Bearer ' + os.environ['GITHUB_TOKEN']}})\n\
         print(urllib.request.urlopen(req, timeout=60).read().decode())\n"
    );
    let mut cmd = command(&env, "python3", &vars);
    cmd.args(["-c", &script]);
    let ran = run(&env, "python3 urllib", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    assert!(ran.stdout.contains(GITHUB_PLACEHOLDER), "echo not scrubbed");
    assert_swapped(&env, path, &format!("Bearer {GITHUB_REAL}")).await;
    env.assert_no_leaks();
}

// ---- pip against a private index -------------------------------------------------------------

/// A PEP 503 index with one pure-Python wheel, `ksdemo 0.1`, written by python's zipfile.
async fn write_index(env: &TestEnv, root: &Path) {
    let files = root.join("files");
    std::fs::create_dir_all(files.join("simple/ksdemo")).expect("index dirs");
    let script = keyswap_tests::files::WHEEL_BUILDER;
    let mut cmd = command(env, "python3", &BTreeMap::new());
    cmd.arg("-c").arg(script).arg(&files);
    let ran = run(env, "wheel builder", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    let sha = ran.stdout.trim();
    keyswap_tests::files::write_pep503_pages(&files, sha);
}

fn pip_usable() -> bool {
    available("python3", &["-m", "pip", "--version"])
}

fn pip_command(
    env: &TestEnv,
    vars: &BTreeMap<&str, String>,
    target: &Path,
) -> tokio::process::Command {
    // A private index that wants a token: the agent's index URL holds the placeholder.
    let index = format!("https://__token__:{GITHUB_PLACEHOLDER}@{API_HOST}/files/simple/");
    let mut cmd = command(env, "python3", vars);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--no-deps",
        "--index-url",
        &index,
        "--target",
    ])
    .arg(target)
    .arg("ksdemo==0.1");
    cmd
}

#[tokio::test]
async fn pip_installs_from_a_private_index_through_keyswap() {
    if !pip_usable() {
        return;
    }
    let env = start().await;
    let root = env.dir.path().join("www");
    write_index(&env, &root).await;
    env.upstream.serve_files(&root);
    let target = env.dir.path().join("site");
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(&env)),
        ("PIP_CERT", ca_file(&env).display().to_string()),
    ]);
    let ran = run(&env, "pip", pip_command(&env, &vars, &target)).await;
    assert!(ran.success, "{}", ran.shown());
    let installed = std::fs::read_to_string(target.join("ksdemo/__init__.py")).expect("installed");
    assert!(installed.contains("installed through keyswap"));
    // pip sent the index URL's userinfo as Basic; keyswap swapped the placeholder inside it.
    let expected = format!("Basic {}", basic("__token__", GITHUB_REAL));
    assert_swapped(&env, "/files/simple/ksdemo/", &expected).await;
    env.assert_no_leaks();
}

/// `REQUESTS_CA_BUNDLE` (and `CURL_CA_BUNDLE`) win over pip's own `--cert`/`PIP_CERT`: a
/// bundle without keyswap's CA there breaks pip even though `PIP_CERT` is right.
#[tokio::test]
async fn requests_ca_bundle_overrides_pips_cert() {
    if !pip_usable() {
        return;
    }
    let env = start().await;
    let root = env.dir.path().join("www");
    write_index(&env, &root).await;
    env.upstream.serve_files(&root);
    let unrelated = env.dir.path().join("upstream-ca.pem");
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(&env)),
        ("PIP_CERT", ca_file(&env).display().to_string()),
        ("REQUESTS_CA_BUNDLE", unrelated.display().to_string()),
    ]);
    let mut cmd = pip_command(&env, &vars, &env.dir.path().join("site"));
    cmd.args(["--retries", "0"]);
    let ran = run(&env, "pip", cmd).await;
    assert!(
        !ran.success,
        "pip trusted keyswap despite REQUESTS_CA_BUNDLE\n{}",
        ran.shown()
    );
    assert!(
        ran.stdout.contains("CERTIFICATE_VERIFY_FAILED")
            || ran.stderr.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        ran.shown()
    );
    assert_eq!(
        env.upstream.authorization_for("/files/simple/ksdemo/"),
        None
    );
    env.assert_no_leaks();
}

// ---- git over smart HTTP ---------------------------------------------------------------------

async fn git(env: &TestEnv, vars: &BTreeMap<&str, String>, args: &[&str], what: &str) -> Ran {
    let mut cmd = command(env, "git", vars);
    cmd.args(args);
    let ran = run(env, what, cmd).await;
    assert!(ran.success, "{what} failed\n{}", ran.shown());
    ran
}

/// A bare repository `root/git/demo.git` with one commit, made with plain git commands.
async fn write_repo(env: &TestEnv, root: &Path) {
    let none = BTreeMap::from([
        ("GIT_AUTHOR_NAME", "keyswap".to_string()),
        ("GIT_AUTHOR_EMAIL", "tests@keyswap.invalid".to_string()),
        ("GIT_COMMITTER_NAME", "keyswap".to_string()),
        ("GIT_COMMITTER_EMAIL", "tests@keyswap.invalid".to_string()),
    ]);
    let bare = root.join("git/demo.git");
    let work = env.dir.path().join("seed");
    let (bare, work) = (bare.to_str().expect("utf-8"), work.to_str().expect("utf-8"));
    git(
        env,
        &none,
        &["init", "-q", "--bare", "-b", "main", bare],
        "git init --bare",
    )
    .await;
    git(env, &none, &["init", "-q", "-b", "main", work], "git init").await;
    std::fs::write(Path::new(work).join("README"), "cloned through keyswap\n").expect("file");
    git(env, &none, &["-C", work, "add", "README"], "git add").await;
    git(
        env,
        &none,
        &["-C", work, "commit", "-q", "-m", "first"],
        "git commit",
    )
    .await;
    git(
        env,
        &none,
        &["-C", work, "push", "-q", bare, "main"],
        "git push",
    )
    .await;
}

/// git (libcurl) takes the proxy from `https_proxy`/`HTTPS_PROXY` with its userinfo, trusts
/// `GIT_SSL_CAINFO`, and sends a GitHub-style `Basic x-access-token:TOKEN` from
/// `http.extraHeader`: clone and fetch over smart HTTP (`git http-backend`) through keyswap.
#[tokio::test]
async fn git_clone_and_fetch_over_smart_http_through_keyswap() {
    if !available("git", &["--version"]) {
        return;
    }
    let env = start().await;
    let root = env.dir.path().join("www");
    write_repo(&env, &root).await;
    env.upstream.serve_files(&root);
    let header = format!(
        "http.extraHeader=Authorization: Basic {}",
        basic("x-access-token", GITHUB_PLACEHOLDER)
    );
    let vars = BTreeMap::from([
        ("HTTPS_PROXY", proxy_url(&env)),
        ("GIT_SSL_CAINFO", ca_file(&env).display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0".to_string()),
    ]);
    let clone = env.dir.path().join("clone");
    let clone = clone.to_str().expect("utf-8");
    let url = format!("https://{API_HOST}/git/demo.git");
    git(
        &env,
        &vars,
        &["-c", &header, "clone", "-q", &url, clone],
        "git clone",
    )
    .await;
    let readme = std::fs::read_to_string(Path::new(clone).join("README")).expect("cloned");
    assert_eq!(readme, "cloned through keyswap\n");
    git(
        &env,
        &vars,
        &["-c", &header, "-C", clone, "fetch", "-q", "origin"],
        "git fetch",
    )
    .await;

    let expected = format!("Basic {}", basic("x-access-token", GITHUB_REAL));
    let smart: Vec<_> = env
        .upstream
        .seen()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/git/demo.git/"))
        .collect();
    // Smart HTTP: the ref advertisement, then POSTs to git-upload-pack (clone and fetch).
    assert!(smart
        .iter()
        .any(|r| r.path_and_query == "/git/demo.git/info/refs?service=git-upload-pack"));
    assert!(
        smart
            .iter()
            .filter(|r| r.method == "POST" && r.path_and_query == "/git/demo.git/git-upload-pack")
            .count()
            >= 1
    );
    for r in &smart {
        assert!(
            r.header("authorization") == Some(expected.as_str()),
            "{} {} did not carry the real credential",
            r.method,
            r.path_and_query
        );
    }
    let record = env
        .audit_where(|r| r["path"] == "/git/demo.git/git-upload-pack")
        .await;
    assert_eq!(record["method"], "POST");
    assert_eq!(record["secrets"], serde_json::json!(["github"]));
    env.assert_no_leaks();
}
