//! `keyswap exec` as a user runs it, with real clients as the command: curl, Python's urllib
//! and a JVM get the task's environment from exec and reach an in-process upstream through
//! keyswap, which swaps the placeholder they hold for the real value. Exec runs both ways:
//! embedded (no proxy answers on the admin socket) and against a running `keyswap run`, where
//! the task must die with exec — on a normal exit, and within a second of a SIGKILL.
//!
//! `exec` sandboxes the command by default, and as root (CI) it runs it only as `--user NAME`:
//! the client tests and the signal test run sandboxed (as the tests' unprivileged user
//! `ksagent` when they run as root, see `keyswap_tests::agent_user`), which proves the clients
//! work inside the sandbox. Tests about the task's lifecycle on a running proxy use the proxy
//! URL from outside, where the sandbox's own listener is not reachable: they pass
//! `--no-sandbox`.
//!
//! Everything each process printed, the proxy's log and the audit file are checked for real
//! secret values and for the task tokens the test learned; no assertion message shows a token.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::TaskInfo;
use keyswap_tests::agent_user::agent_user;
use keyswap_tests::harness::{render, test_env_values, ConfigVars, AGENT_TOKEN};
use keyswap_tests::logged_child::{wait_for_file, LoggedChild as Running};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::tools::available as tool_available;
use keyswap_tests::upstream::{Upstream, UpstreamOptions};

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");
/// The admin API's bearer token when a test serves it over TCP.
const ADMIN_TOKEN: &str = "ks-admin-token-5e1f0c2a9b7d4e36";
/// `admin:` lines that add the TCP listener.
const ADMIN_TCP: &str = "\n  listen: 127.0.0.1:0\n  token_env: KS_TEST_ADMIN";
const POLICY: &str = "agent-rw";
const API: &str = "https://api.upstream.test";
/// Runs the command outside the sandbox, as exec's own user: for tests whose point is the
/// task's lifecycle, which use the proxy URL from outside the sandbox.
const NO_SANDBOX: &str = "--no-sandbox";

/// The options that run the command sandboxed: as root, `--user` the tests' unprivileged
/// user (exec refuses to run a sandboxed command as root); otherwise none (the command runs
/// sandboxed as the current user).
fn sandboxed() -> Vec<&'static str> {
    let user = agent_user();
    match user.dedicated {
        true => vec!["--user", user.name.as_str()],
        false => Vec::new(),
    }
}

/// A policy runtime tasks are issued from, the github secret with its `env:` variable, a
/// static task `agent` for `keyswap env`, and the admin socket in the test's directory.
const CONFIG: &str = r#"
version: 1
listen: {listen}
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
admin:
  socket: {dir}/admin.sock{admin_tcp}
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
    env: GITHUB_TOKEN
policies:
  agent-rw:
    ttl: 10m
    max_ttl: 1h
    allow:
      - host: api.upstream.test
        methods: [GET, POST]
        paths: ["/echo", "/echo/**"]
        secrets: [github]
tasks:
  agent:
    token_env: KS_TEST_TOKEN
    allow:
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo/**"]
        secrets: [github]
"#;

/// What the test saw, for the leak check at its end.
#[derive(Default)]
struct Leaks {
    /// (what, bytes, may hold a task token: the outputs whose job is to print one).
    seen: Mutex<Vec<(String, Vec<u8>, bool)>>,
    tokens: Mutex<Vec<String>>,
}

impl Leaks {
    fn keep(&self, what: &str, bytes: &[u8]) {
        self.push(what, bytes, false);
    }

    /// `task issue --json` and `env` print a token: that is their job.
    fn keep_token_printer(&self, what: &str, bytes: &[u8]) {
        self.push(what, bytes, true);
    }

    fn push(&self, what: &str, bytes: &[u8], may_hold_token: bool) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((what.to_string(), bytes.to_vec(), may_hold_token));
        }
    }

    fn keep_output(&self, what: &str, output: &Output) {
        self.keep(&format!("{what} stdout"), &output.stdout);
        self.keep(&format!("{what} stderr"), &output.stderr);
    }

    fn token(&self, token: &str) {
        assert!(!token.is_empty(), "an empty task token");
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.push(token.to_string());
        }
    }

    fn check(&self) {
        let tokens = self.tokens.lock().map(|t| t.clone()).unwrap_or_default();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for (what, bytes, may_hold_token) in &seen {
            assert_no_real_secret(what, bytes);
            if *may_hold_token {
                continue;
            }
            for token in &tokens {
                assert!(
                    !contains(bytes, token.as_bytes()),
                    "a task token appeared in {what}"
                );
            }
            // The static task's token and the admin token are credentials too.
            assert!(
                !contains(bytes, AGENT_TOKEN.as_bytes()),
                "the static task's token appeared in {what}"
            );
            assert!(
                !contains(bytes, ADMIN_TOKEN.as_bytes()),
                "the admin token appeared in {what}"
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A temp directory with the config, the upstream and its CA.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    upstream: Upstream,
    leaks: Leaks,
}

impl Setup {
    /// The proxy listens on an ephemeral port.
    async fn new() -> Setup {
        Setup::with_config("127.0.0.1:0", "").await
    }

    /// `listen` is the proxy's listen address; `admin_tcp` is "" or [`ADMIN_TCP`].
    async fn with_config(listen: &str, admin_tcp: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream_ca = keyswap_certs::CertificateAuthority::generate("exec test upstream CA")
            .expect("upstream CA");
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca.cert_pem())
            .expect("write upstream CA");
        let upstream = Upstream::start(
            &upstream_ca,
            UpstreamOptions {
                names: vec!["api.upstream.test".to_string()],
                ..UpstreamOptions::default()
            },
        )
        .await;
        let vars = ConfigVars {
            dir: dir.path(),
            https_port: upstream.port(),
            plain_port: 0,
            tunnel_port: 0,
        };
        let config = dir.path().join("keyswap.yaml");
        let template = CONFIG
            .replace("{listen}", listen)
            .replace("{admin_tcp}", admin_tcp);
        std::fs::write(&config, render(&template, &vars)).expect("write config");
        // A sandboxed command runs as the agent user in this directory (its working
        // directory) and reads keyswap's CA bundle from it.
        agent_user().own(dir.path());
        Setup {
            dir,
            config,
            upstream,
            leaks: Leaks::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `keyswap ARGS` with no secret in its environment (what the agent side runs).
    fn keyswap(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KEYSWAP);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("KEYSWAP_LOG", "debug")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `keyswap ARGS` with the variables the config reads secrets and tokens from (only
    /// those: exec cannot know which other variables of a user's shell are secret): what an
    /// embedded `exec` (it starts keyswap itself) and `keyswap env` need.
    fn keyswap_with_secrets(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.keyswap(args);
        cmd.envs(
            test_env_values()
                .into_iter()
                .filter(|(name, _)| CONFIG.contains(name.as_str())),
        );
        cmd
    }

    /// `keyswap exec --config F --policy agent-rw EXTRA -- COMMAND`.
    fn exec_args<'a>(&'a self, extra: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
        let config = self.config.to_str().expect("utf-8 path");
        let mut args = vec!["exec", "--config", config, "--policy", POLICY];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        args
    }

    /// Runs an embedded `keyswap exec` (no proxy answers on the admin socket).
    async fn exec_embedded(&self, extra: &[&str], command: &[&str]) -> Output {
        let args = self.exec_args(extra, command);
        run(self.keyswap_with_secrets(&args), Duration::from_secs(120)).await
    }

    /// Runs `keyswap exec` against the running proxy; exec itself holds no secret.
    async fn exec_remote(&self, extra: &[&str], command: &[&str]) -> Output {
        let args = self.exec_args(extra, command);
        run(self.keyswap(&args), Duration::from_secs(120)).await
    }

    /// `keyswap task ... --config F`.
    async fn task_cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["task"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", self.config.to_str().expect("utf-8 path")]);
        run(self.keyswap(&all), Duration::from_secs(30)).await
    }

    /// The live tasks, as `keyswap task list --json` prints them.
    async fn task_list(&self) -> Vec<TaskInfo> {
        let out = self.task_cli(&["list", "--json"]).await;
        self.leaks.keep_output("keyswap task list", &out);
        assert!(
            out.status.success(),
            "task list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("task list --json is a task array")
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(AdminTarget::Socket(self.path("admin.sock")))
    }

    fn start_proxy(&self) -> Running {
        let running = start_running(&self.config, self.dir.path());
        running.wait_for("keyswap listening");
        running
    }

    fn audit_path(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    /// Waits for an audit record matching `pred` (the writer batches; a running proxy is
    /// another process, so the file is read until the record is there).
    async fn audit_where(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
            // Only whole lines: the writer may be half-way through one.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let found = complete
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line is JSON"))
                .find(|r| pred(r));
            if let Some(record) = found {
                return record;
            }
            assert!(Instant::now() < deadline, "no audit record: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The leak check over everything kept, the audit file and the running proxy's log.
    fn check_leaks(&self, running: Option<&Running>) {
        let audit = std::fs::read(self.audit_path()).unwrap_or_default();
        self.leaks.keep("audit log", &audit);
        if let Some(running) = running {
            self.leaks
                .keep("keyswap run stderr", running.log().as_bytes());
        }
        self.leaks.check();
    }
}

/// Runs a command to its end, with a bound.
async fn run(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("a command did not finish within {limit:?}"))
        .expect("command runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `http://ID:TOKEN@host:port` → (ID, TOKEN, host:port).
fn split_proxy_url(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// proxy URL");
    let (userinfo, addr) = rest.split_once('@').expect("userinfo in the proxy URL");
    let (id, token) = userinfo.split_once(':').expect("a token in the proxy URL");
    (id.to_string(), token.to_string(), addr.to_string())
}

fn assert_upstream_got_the_real_value(upstream: &Upstream, path: &str) {
    let authorization = upstream
        .authorization_for(path)
        .unwrap_or_else(|| panic!("{path}: no request with Authorization reached the upstream"));
    assert!(
        authorization == format!("Bearer {GITHUB_REAL}"),
        "{path}: the upstream did not receive the real value"
    );
}

/// curl through `proxy_url` to `url`; returns the CONNECT status curl saw (`%{http_connect}`)
/// and its output. The proxy URL is an argument, never printed.
async fn curl_via(setup: &Setup, proxy_url: &str, url: &str) -> (String, Output) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--noproxy",
        "",
        "-o",
        "/dev/null",
    ])
    .args(["-w", "%{http_connect} %{http_code}"])
    .arg("--proxy")
    .arg(proxy_url)
    .arg("--cacert")
    .arg(setup.path("ca/ca.pem"))
    .args(["-H", &format!("Authorization: Bearer {GITHUB_PLACEHOLDER}")])
    .arg(url)
    .kill_on_drop(true);
    let out = run(cmd, Duration::from_secs(30)).await;
    setup.leaks.keep_output("curl", &out);
    (text(&out.stdout), out)
}

/// The 407 that `curl_via` saw for the ended task `task` was `bad_token`: the running proxy
/// audited a CONNECT refused for that reason, with no live task named (the task is gone).
async fn assert_bad_token(setup: &Setup, task: &str) {
    let record = setup
        .audit_where("a CONNECT refused bad_token", |r| {
            r["reason"] == "bad_token"
        })
        .await;
    assert_eq!(record["status"], 407, "{record}");
    assert_eq!(record["task"], serde_json::Value::Null, "{record}");
    assert!(
        !matches!(record.get("claimed_task"), Some(c) if c == task),
        "an ended task is still recognised as a claimed task: {record}"
    );
}

/// A `keyswap run` child whose stderr is collected line by line; killed when dropped.
/// A `keyswap run` of `config`, in `cwd`, with the tests' variables.
fn start_running(config: &Path, cwd: &Path) -> Running {
    let mut cmd = std::process::Command::new(KEYSWAP);
    cmd.args(["run", "--config"])
        .arg(config)
        .current_dir(cwd)
        .envs(test_env_values())
        .env("KS_TEST_ADMIN", ADMIN_TOKEN)
        .env("KEYSWAP_LOG", "debug");
    Running::spawn(cmd)
}

/// Kills a process the test left orphaned (the command of a SIGKILLed exec) when dropped.
struct KillPid(Option<i32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

// ---- embedded: no proxy answers, exec runs keyswap in its own process ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_exec_runs_curl_with_the_placeholder_and_exits_with_its_status() {
    let setup = Setup::new().await;
    // curl reads HTTPS_PROXY and CURL_CA_BUNDLE from the environment exec builds; the proxy
    // resolves the upstream's name, so curl needs no --resolve.
    let script = format!(
        "curl -sS --max-time 20 -H \"Authorization: Bearer $GITHUB_TOKEN\" {API}/echo/exec-curl; exit 7"
    );
    let out = setup
        .exec_embedded(&sandboxed(), &["sh", "-c", &script])
        .await;
    setup.leaks.keep_output("keyswap exec (curl)", &out);
    setup.check_leaks(None);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec must exit with the command's status; stderr:\n{}",
        text(&out.stderr)
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/exec-curl");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(GITHUB_PLACEHOLDER),
        "curl did not get the echo with the placeholder:\n{stdout}\n{}",
        text(&out.stderr)
    );
    // The task lived exactly as long as the command, and the audit says so.
    let issued = setup
        .audit_where("task_issued by exec", |r| {
            r["event"] == "task_issued" && r["by"] == "exec"
        })
        .await;
    assert_eq!(issued["policy"], POLICY);
    let task = issued["task"].as_str().expect("task id").to_string();
    setup
        .audit_where("the request under the exec task", |r| {
            r["task"] == task.as_str() && r["path"] == "/echo/exec-curl"
        })
        .await;
    setup
        .audit_where("task_revoked why exit", |r| {
            r["event"] == "task_revoked" && r["task"] == task.as_str() && r["why"] == "exit"
        })
        .await;
}

/// The command is the agent: it must get placeholders, never the variables keyswap reads real
/// values and tokens from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_child_environment_holds_no_real_secret_or_task_credential() {
    let setup = Setup::new().await;
    let out = setup.exec_embedded(&sandboxed(), &["env"]).await;
    assert!(
        out.status.success(),
        "exec env failed:\n{}",
        text(&out.stderr)
    );
    let env = text(&out.stdout);
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    assert_eq!(var("GITHUB_TOKEN").as_deref(), Some(GITHUB_PLACEHOLDER));
    let proxy = var("HTTPS_PROXY").expect("HTTPS_PROXY set");
    let (id, token, addr) = split_proxy_url(&proxy);
    setup.leaks.token(&token);
    assert!(id.starts_with("agent-rw-"), "task id {id}");
    assert!(addr.starts_with("127.0.0.1:"), "proxy address {addr}");
    for name in ["HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"] {
        assert!(
            var(name) == Some(proxy.clone()),
            "{name} differs from HTTPS_PROXY"
        );
    }
    let bundle = var("CURL_CA_BUNDLE").expect("CURL_CA_BUNDLE set");
    assert!(Path::new(&bundle).starts_with(setup.path("ca")), "{bundle}");
    assert_eq!(var("SSL_CERT_FILE"), Some(bundle.clone()));
    assert_eq!(var("REQUESTS_CA_BUNDLE"), Some(bundle));
    // Which variable held them is not the point: no real value and no other credential may be
    // anywhere in the agent's environment.
    assert_no_real_secret("the command's environment", env.as_bytes());
    assert!(
        var("KS_TEST_GITHUB").is_none(),
        "the command inherited the variable the real secret is read from"
    );
    assert!(
        !env.contains(AGENT_TOKEN),
        "the command inherited the static task's token"
    );
    // Only the env listing may show this task's own token (in its proxy URL).
    setup.leaks.keep("keyswap exec env stderr", &out.stderr);
    setup.check_leaks(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_exec_runs_python_urllib_with_the_placeholder() {
    if !tool_available("python3", "--version") {
        return;
    }
    let setup = Setup::new().await;
    // urllib takes the proxy (and its credentials) from HTTPS_PROXY and the CA from
    // SSL_CERT_FILE, as an unmodified agent script would.
    let script = format!(
        r#"
import os, urllib.request
req = urllib.request.Request(
    "{API}/echo/exec-python",
    headers={{"Authorization": "Bearer " + os.environ["GITHUB_TOKEN"]}},
)
with urllib.request.urlopen(req, timeout=20) as resp:
    print("status", resp.status)
    print(resp.read().decode())
"#
    );
    let out = setup
        .exec_embedded(&sandboxed(), &["python3", "-c", &script])
        .await;
    setup.leaks.keep_output("keyswap exec (python)", &out);
    setup.check_leaks(None);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with("status 200\n"), "{stdout}");
    assert!(
        stdout.contains(GITHUB_PLACEHOLDER),
        "echo not scrubbed back: {stdout}"
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/exec-python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_exec_runs_java_httpclient_with_the_placeholder() {
    if !tool_available("java", "-version") || !tool_available("javac", "-version") {
        return;
    }
    let setup = Setup::new().await;
    let classes = setup.path("classes");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/java/ProxyProbe.java");
    let mut javac = tokio::process::Command::new("javac");
    javac
        .arg("-d")
        .arg(&classes)
        .arg(&source)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let compiled = run(javac, Duration::from_secs(120)).await;
    assert!(
        compiled.status.success(),
        "javac failed:\n{}",
        text(&compiled.stderr)
    );
    // JAVA_TOOL_OPTIONS (proxy host/port, trust store) comes from exec; ProxyProbe takes the
    // proxy credentials from HTTPS_PROXY.
    let classes = classes.to_str().expect("utf-8 path");
    let url = format!("{API}/echo/exec-java");
    let out = setup
        .exec_embedded(
            &sandboxed(),
            &["java", "-cp", classes, "ProxyProbe", &url, "GITHUB_TOKEN"],
        )
        .await;
    setup.leaks.keep_output("keyswap exec (java)", &out);
    setup.check_leaks(None);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "ProxyProbe failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with("status=200\n"), "{stdout}");
    assert!(
        stdout.contains(GITHUB_PLACEHOLDER),
        "echo not scrubbed back: {stdout}"
    );
    assert!(
        text(&out.stderr).contains("Picked up JAVA_TOOL_OPTIONS"),
        "the JVM did not get JAVA_TOOL_OPTIONS from exec"
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/exec-java");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ttl_above_max_ttl_is_refused_before_the_command_runs() {
    let setup = Setup::new().await;
    let marker = setup.path("command-ran");
    let touch = format!("touch {}", marker.display());
    let command = ["sh", "-c", touch.as_str()];

    let check = |how: &str, out: &Output| {
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{how}: exec must fail itself (125); stderr:\n{stderr}"
        );
        assert!(
            stderr.contains("max_ttl 1h") && stderr.contains("5h"),
            "{how}: the message must name the TTL and max_ttl:\n{stderr}"
        );
        assert!(!marker.exists(), "{how}: the command ran");
    };
    let out = setup
        .exec_embedded(&[NO_SANDBOX, "--ttl", "5h"], &command)
        .await;
    setup
        .leaks
        .keep_output("keyswap exec --ttl (embedded)", &out);
    check("embedded", &out);

    let running = setup.start_proxy();
    let out = setup
        .exec_remote(&[NO_SANDBOX, "--ttl", "5h"], &command)
        .await;
    setup
        .leaks
        .keep_output("keyswap exec --ttl (running)", &out);
    check("running proxy", &out);
    assert!(
        text(&out.stderr).contains("admin.sock"),
        "the message says which proxy refused:\n{}",
        text(&out.stderr)
    );
    assert!(
        setup
            .task_list()
            .await
            .iter()
            .all(|t| t.source != "runtime"),
        "a refused issue left a task"
    );
    // Within max_ttl it runs.
    let out = setup
        .exec_remote(&[NO_SANDBOX, "--ttl", "1h"], &command)
        .await;
    setup.leaks.keep_output("keyswap exec --ttl 1h", &out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marker.exists(), "the command did not run with --ttl 1h");
    setup.check_leaks(Some(&running));
}

// ---- against a running `keyswap run` ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_task_on_a_running_proxy_is_revoked_when_the_command_exits() {
    let setup = Setup::new().await;
    let running = setup.start_proxy();
    let url_file = setup.path("proxy-url");
    // The proxy URL goes to a file, not to any output: it holds the token.
    let script = format!(
        "printf '%s\\n' \"$HTTPS_PROXY\" > {}; \
         curl -sS --max-time 20 -H \"Authorization: Bearer $GITHUB_TOKEN\" {API}/echo/exec-remote",
        url_file.display()
    );
    // The test uses the task's proxy URL from outside: no sandbox.
    let out = setup
        .exec_remote(&[NO_SANDBOX], &["sh", "-c", &script])
        .await;
    setup
        .leaks
        .keep_output("keyswap exec (running proxy)", &out);
    assert!(out.status.success(), "exec failed:\n{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(GITHUB_PLACEHOLDER),
        "curl did not get the scrubbed echo:\n{}",
        text(&out.stderr)
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/exec-remote");

    let proxy_url = wait_for_file(&url_file, Duration::from_secs(30)).await;
    let (id, token, addr) = split_proxy_url(&proxy_url);
    setup.leaks.token(&token);
    assert_eq!(
        addr,
        running.listen_addr(),
        "the task was not issued by the running proxy"
    );
    assert!(id.starts_with("agent-rw-"), "task id {id}");

    // The command has exited: the token no longer opens anything on the still-running proxy.
    let (status, _) = curl_via(&setup, &proxy_url, &format!("{API}/echo/after-exit")).await;
    assert!(
        status.starts_with("407"),
        "the ended task's credentials still work: CONNECT answered {status}"
    );
    assert_bad_token(&setup, &id).await;
    assert!(setup
        .upstream
        .authorization_for("/echo/after-exit")
        .is_none());

    let tasks = setup.task_list().await;
    assert!(
        tasks.iter().all(|t| t.source != "runtime"),
        "a runtime task was left behind: {tasks:?}"
    );
    assert!(tasks.iter().any(|t| t.id == "agent"), "{tasks:?}");
    let issued = setup
        .audit_where("task_issued", |r| {
            r["event"] == "task_issued" && r["task"] == id.as_str()
        })
        .await;
    assert_eq!(issued["by"], "exec");
    setup
        .audit_where("task_revoked why exit", |r| {
            r["event"] == "task_revoked" && r["task"] == id.as_str() && r["why"] == "exit"
        })
        .await;
    setup.check_leaks(Some(&running));
}

/// Over the TCP admin API exec reads the admin bearer token from its environment: the
/// command must not get it (with it, the agent could issue itself any policy's task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_the_tcp_admin_api_withholds_the_admin_token() {
    let setup = Setup::with_config("127.0.0.1:0", ADMIN_TCP).await;
    let running = setup.start_proxy();
    // Logged before "keyswap listening", which start_proxy waited for.
    let log = running.log();
    let admin = log
        .lines()
        .find(|l| l.contains("admin API listening on TCP"))
        .expect("the admin API's TCP listener is logged")
        .split("addr=Some(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("admin TCP address in the log")
        .to_string();
    let admin_url = format!("http://{admin}");
    // The test compares the proxy URL with the running proxy's own address: no sandbox.
    let args = setup.exec_args(&[NO_SANDBOX, "--admin", &admin_url], &["env"]);
    let mut exec = setup.keyswap(&args);
    exec.env("KEYSWAP_ADMIN_TOKEN", ADMIN_TOKEN);
    let out = run(exec, Duration::from_secs(60)).await;
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let env = text(&out.stdout);
    let proxy = env
        .lines()
        .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
        .expect("HTTPS_PROXY set");
    let (_, token, addr) = split_proxy_url(proxy);
    setup.leaks.token(&token);
    assert_eq!(
        addr,
        running.listen_addr(),
        "not issued by the running proxy"
    );
    assert!(
        !env.contains(ADMIN_TOKEN),
        "the command inherited the admin API's bearer token"
    );
    setup
        .leaks
        .keep("keyswap exec (tcp admin) stderr", &out.stderr);
    setup.check_leaks(Some(&running));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_exec_loses_its_task_within_a_second() {
    let setup = Setup::new().await;
    let running = setup.start_proxy();
    let pid_file = setup.path("child-pid");
    let url_file = setup.path("proxy-url");
    let script = format!(
        "printf '%s\\n' \"$HTTPS_PROXY\" > {}; echo $$ > {}; exec sleep 30",
        url_file.display(),
        pid_file.display()
    );
    // The test uses the task's proxy URL from outside: no sandbox.
    let args = setup.exec_args(&[NO_SANDBOX], &["sh", "-c", &script]);
    // Files, not pipes: the orphaned command keeps exec's stdout and stderr open.
    let (stdout_file, stderr_file) = (setup.path("exec.stdout"), setup.path("exec.stderr"));
    let mut exec = setup.keyswap(&args);
    exec.stdout(std::fs::File::create(&stdout_file).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"));
    let mut exec = exec.spawn().expect("spawn keyswap exec");

    // The command runs once it has written its pid; it outlives exec, so the test kills it.
    let pid = wait_for_file(&pid_file, Duration::from_secs(30)).await;
    let _orphan = KillPid(Some(pid.parse().expect("a pid")));
    let proxy_url = wait_for_file(&url_file, Duration::from_secs(30)).await;
    let (_, token, _) = split_proxy_url(&proxy_url);
    setup.leaks.token(&token);

    // The running proxy's task list names the exec task.
    let admin = setup.admin();
    let listed = admin.list().await.expect("admin list");
    let task = listed
        .iter()
        .find(|t| t.source == "runtime" && t.issued_by == "exec")
        .unwrap_or_else(|| panic!("no exec task listed: {listed:?}"))
        .id
        .clone();
    let (status, _) = curl_via(&setup, &proxy_url, &format!("{API}/echo/while-alive")).await;
    assert!(
        status.starts_with("200 200"),
        "the live task's credentials were refused: {status}"
    );

    // SIGKILL: exec cannot revoke anything itself; only the lifeline can end the task.
    exec.start_kill().expect("SIGKILL exec");
    let killed = Instant::now();
    let status = exec.wait().await.expect("exec reaped");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // A bound against hanging, not a measurement (the figure is printed below; the bench
    // is where revocation is timed).
    let deadline = killed + Duration::from_secs(30);
    loop {
        let tasks = admin.list().await.expect("admin list");
        if tasks.iter().all(|t| t.id != task) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task of a SIGKILLed exec was never revoked: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoked_after = killed.elapsed();

    let record = setup
        .audit_where("task_revoked why exit", |r| {
            r["event"] == "task_revoked" && r["task"] == task.as_str()
        })
        .await;
    assert_eq!(record["why"], "exit");
    // The command still runs, but its credentials are dead.
    let (status, _) = curl_via(&setup, &proxy_url, &format!("{API}/echo/after-kill")).await;
    assert!(
        status.starts_with("407"),
        "the killed exec's credentials still work: {status}"
    );
    assert_bad_token(&setup, &task).await;
    for (what, file) in [("stdout", &stdout_file), ("stderr", &stderr_file)] {
        let bytes = std::fs::read(file).expect("exec output file");
        setup
            .leaks
            .keep(&format!("keyswap exec (killed) {what}"), &bytes);
    }
    setup.check_leaks(Some(&running));
    eprintln!("task revoked {revoked_after:?} after exec was SIGKILLed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cli_issues_revokes_and_env_prints_the_static_task() {
    // `keyswap env` prints the config's listen address, so this proxy gets a port the OS
    // picked for it rather than :0.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let setup = Setup::with_config(&format!("127.0.0.1:{port}"), "").await;
    let running = setup.start_proxy();
    assert_eq!(running.listen_addr(), format!("127.0.0.1:{port}"));

    // issue --json: the one output that carries the token.
    let out = setup
        .task_cli(&["issue", "--policy", POLICY, "--ttl", "20m", "--json"])
        .await;
    setup
        .leaks
        .keep_token_printer("keyswap task issue --json stdout", &out.stdout);
    setup
        .leaks
        .keep("keyswap task issue --json stderr", &out.stderr);
    assert!(out.status.success(), "issue: {}", text(&out.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("issue JSON");
    let id = issued["id"].as_str().expect("id").to_string();
    let token = issued["token"].as_str().expect("token").to_string();
    setup.leaks.token(&token);
    let proxy_url = issued["proxy_url"].as_str().expect("proxy_url").to_string();
    assert!(id.starts_with("agent-rw-"), "{id}");
    assert_eq!(issued["policy"], POLICY);
    assert!(issued["expires"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(
        proxy_url == format!("http://{id}:{token}@127.0.0.1:{port}"),
        "proxy_url is not http://ID:TOKEN@<the proxy>"
    );
    assert!(
        issued["env"]["HTTPS_PROXY"] == proxy_url.as_str(),
        "env.HTTPS_PROXY is not the proxy URL"
    );
    assert_eq!(issued["env"]["GITHUB_TOKEN"], GITHUB_PLACEHOLDER);
    let bundle = issued["env"]["SSL_CERT_FILE"].as_str().expect("bundle");
    assert!(Path::new(bundle).is_file(), "{bundle}");
    let listed = setup.task_list().await;
    let info = listed.iter().find(|t| t.id == id).expect("listed");
    assert_eq!(info.issued_by, "api");

    // The token works, and an open tunnel of the task is closed by the revoke.
    let (status, _) = curl_via(&setup, &proxy_url, &format!("{API}/echo/issued")).await;
    assert!(
        status.starts_with("200 200"),
        "issued task refused: {status}"
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/issued");
    let mut tunnel = open_tunnel(&running.listen_addr(), &id, &token).await;

    let out = setup.task_cli(&["revoke", &id]).await;
    setup.leaks.keep_output("keyswap task revoke", &out);
    assert!(out.status.success(), "revoke: {}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("revoked {id}: 1 connection(s) closed")),
        "{said}"
    );
    assert_closed(&mut tunnel).await;
    let (status, _) = curl_via(&setup, &proxy_url, &format!("{API}/echo/revoked")).await;
    assert!(status.starts_with("407"), "revoked task: {status}");
    assert_bad_token(&setup, &id).await;
    assert!(setup.task_list().await.iter().all(|t| t.id != id));
    setup
        .audit_where("task_revoked why api", |r| {
            r["event"] == "task_revoked" && r["task"] == id.as_str() && r["why"] == "api"
        })
        .await;

    // env --task: export lines for the static task, usable as they are by a shell.
    let config = setup.config.to_str().expect("utf-8 path");
    let out = run(
        setup.keyswap_with_secrets(&["env", "--task", "agent", "--config", config]),
        Duration::from_secs(30),
    )
    .await;
    setup
        .leaks
        .keep_token_printer("keyswap env stdout", &out.stdout);
    setup.leaks.keep("keyswap env stderr", &out.stderr);
    assert!(out.status.success(), "env: {}", text(&out.stderr));
    let exports = text(&out.stdout);
    assert!(
        exports.contains(&format!(
            "export HTTPS_PROXY='http://agent:{AGENT_TOKEN}@127.0.0.1:{port}'\n"
        )),
        "env does not export the static task's proxy URL"
    );
    assert!(exports.contains(&format!("export GITHUB_TOKEN='{GITHUB_PLACEHOLDER}'\n")));
    let exports_file = setup.path("exports.sh");
    std::fs::write(&exports_file, &exports).expect("write exports");
    let script = format!(
        ". {}; curl -sS --max-time 20 -H \"Authorization: Bearer $GITHUB_TOKEN\" {API}/echo/env",
        exports_file.display()
    );
    let mut sh = tokio::process::Command::new("sh");
    sh.args(["-c", &script]).kill_on_drop(true);
    let out = run(sh, Duration::from_secs(30)).await;
    setup.leaks.keep_output("curl after keyswap env", &out);
    assert!(
        text(&out.stdout).contains(GITHUB_PLACEHOLDER),
        "curl with env's exports failed: {}",
        text(&out.stderr)
    );
    assert_upstream_got_the_real_value(&setup.upstream, "/echo/env");
    setup
        .audit_where("the request of the static task", |r| {
            r["task"] == "agent" && r["path"] == "/echo/env"
        })
        .await;
    setup.check_leaks(Some(&running));
}

/// Opens a CONNECT tunnel to the API host as task `id` and leaves it open (no TLS yet).
async fn open_tunnel(proxy: &str, id: &str, token: &str) -> tokio::net::TcpStream {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{token}"));
    let connect = format!(
        "CONNECT api.upstream.test:443 HTTP/1.1\r\nHost: api.upstream.test:443\r\n\
         Proxy-Authorization: Basic {credentials}\r\n\r\n"
    );
    stream
        .write_all(connect.as_bytes())
        .await
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("CONNECT answered in time")
            .expect("read CONNECT answer");
        assert_eq!(n, 1, "the proxy closed the CONNECT");
        head.push(byte[0]);
    }
    let head = text(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT refused: {head}");
    stream
}

/// The proxy closes `stream` (EOF or reset) within a bound.
async fn assert_closed(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the revoked task's tunnel was not closed within 5 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the revoked task's tunnel sent data instead of closing"
    );
}

/// SIGTERM sent to `exec` reaches the command, whose own exit status `exec` then returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_forwards_sigterm_to_the_command() {
    let setup = Setup::new().await;
    let ready = setup.dir.path().join("ready");
    let script = format!(
        "trap 'exit 42' TERM; echo up > {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let sandboxed = sandboxed();
    let args = setup.exec_args(&sandboxed, &["sh", "-c", &script]);
    let mut cmd = setup.keyswap_with_secrets(&args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("keyswap exec starts");
    let exec_pid = child.id().expect("exec pid") as i32;
    wait_for_file(&ready, Duration::from_secs(30)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal exec");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("exec ends after the command does")
        .expect("exec output");
    setup.leaks.keep_output("keyswap exec (SIGTERM)", &out);
    setup.check_leaks(None);
    assert_eq!(
        out.status.code(),
        Some(42),
        "the command's trap ran and exec passed its status on; stderr:\n{}",
        text(&out.stderr)
    );
}
