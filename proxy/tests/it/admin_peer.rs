//! The admin plane refuses the agent, and keyswap's own process is unreadable to its user's
//! other processes — against a real `keyswap run`, with real processes as the attackers:
//!
//! - a command run by `keyswap exec --no-sandbox` (and a grandchild it daemonises with
//!   `setsid`, which exec, a child subreaper, inherits) tries every admin route with `curl
//!   --unix-socket`: issue, list and show tasks, revoke the operator's task, reload, list the
//!   approvals and approve a request that waits; each gets 403 `sandboxed_peer` and nothing
//!   changes;
//! - a child of a process that holds a lifeline is refused while the holder is not, and is
//!   allowed again once the lifeline ends; a child of a process whose command line is
//!   `keyswap exec …` is refused with no lifeline at all; the test's own curl is allowed;
//! - `keyswap run` as an unprivileged user: another process of that user cannot read its
//!   `/proc/PID/environ` or open its `/proc/PID/mem`, while the same reader can read those of a
//!   plain process of that user holding the same variable;
//! - an issued task's JSON names the variables the config reads credentials from.
//!
//! Every output, the proxy's log and the audit file are checked for real secret values.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap_tests::harness::{render, test_env_values, ConfigVars};
use keyswap_tests::logged_child::LoggedChild as Running;
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_REAL, OPENAI_REAL};
use keyswap_tests::tools::available as tool_available;

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");
const ADMIN_TOKEN: &str = "ks-admin-token-0b9e4d7c2a1f5e38";
/// The uid and gid of `nobody`, the unprivileged user of the /proc test.
const NOBODY: u32 = 65534;
/// How long a test waits for something before failing instead of hanging.
const SAFETY: Duration = Duration::from_secs(60);

/// Policy `asks` holds every CONNECT for a human (`on_unlisted: ask`); `broad` is what an
/// agent would like to issue itself; a file secret and the admin TCP listener's token show
/// which variable names an issued task withholds.
const CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
admin:
  socket: {dir}/admin.sock
  listen: 127.0.0.1:0
  token_env: KS_TEST_ADMIN
approval:
  timeout: 10m
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
    env: GITHUB_TOKEN
  openai:
    from_file: {dir}/openai.key
    placeholder: sk-keyswap-openai-placeholder
policies:
  agent-rw:
    ttl: 10m
    allow:
      - host: api.upstream.test
        secrets: [github]
  broad:
    ttl: 10m
    allow:
      - host: "*.upstream.test"
        secrets: [github, openai]
  asks:
    ttl: 10m
    on_unlisted: ask
    allow:
      - host: api.upstream.test
tasks:
  agent:
    token_env: KS_TEST_TOKEN
    allow:
      - host: api.upstream.test
"#;

/// What a command run by `keyswap exec` tries against the operator's admin socket; each
/// attempt leaves NAME.status, NAME.headers and NAME.body in OUT.
const ATTACK: &str = r#"#!/bin/sh
set -u
mode=$1 sock=$2 out=$3
json='content-type: application/json'
try() {
  name=$1 method=$2 path=$3
  shift 3
  curl -sS --max-time 20 --unix-socket "$sock" -X "$method" -D "$out/$name.headers" \
    -o "$out/$name.body" -w '%{http_code}' "$@" "http://x$path" \
    >"$out/$name.status" 2>"$out/$name.err"
}
case $mode in
agent)
  approval=$4 task=$5
  try issue POST /v1/tasks -H "$json" -d '{"policy":"broad"}'
  try list GET /v1/tasks
  try show GET "/v1/tasks/$task"
  try revoke DELETE "/v1/tasks/$task"
  try reload POST /v1/reload
  try approvals GET /v1/approvals
  try answer POST "/v1/approvals/$approval" -H "$json" -d '{"answer":"approve","scope":"rule"}'
  # Daemonise: a new session, and the shell in between exits at once, so the grandchild is
  # an orphan when it calls (exec, a child subreaper, is then its parent).
  mkfifo "$out/go" "$out/done"
  setsid -w sh -c 'sh "$0" grandchild "$1" "$2" </dev/null >/dev/null 2>&1 &' "$0" "$sock" "$out"
  echo go >"$out/go"
  cat "$out/done" >/dev/null
  ;;
grandchild)
  read line <"$out/go"
  awk '/^PPid:/ { print $2 }' "/proc/$$/status" >"$out/grandchild.ppid"
  try grandchild POST /v1/tasks -H "$json" -d '{"policy":"broad"}'
  echo done >"$out/done"
  ;;
esac
"#;

/// Root and setpriv, to run keyswap and its attacker as an unprivileged user; under CI=true
/// their absence fails.
fn can_switch_users() -> bool {
    if nix::unistd::geteuid().is_root() && tool_available("setpriv", "--version") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the /proc test needs root and setpriv in CI");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** NOTICE: not root or no setpriv: keyswap's /proc was NOT read as its user ***\n"
    );
    false
}

/// A temp directory with the config and the file secret.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Everything a process printed, for the leak check.
    seen: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = ConfigVars {
            dir: dir.path(),
            https_port: 0,
            plain_port: 0,
            tunnel_port: 0,
        };
        let config = dir.path().join("keyswap.yaml");
        std::fs::write(&config, render(CONFIG, &vars)).expect("write config");
        std::fs::write(dir.path().join("openai.key"), OPENAI_REAL).expect("write file secret");
        std::fs::write(dir.path().join("attack.sh"), ATTACK).expect("write attack script");
        Setup {
            dir,
            config,
            seen: Mutex::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("admin.sock")
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(AdminTarget::Socket(self.socket()))
    }

    /// `keyswap run` with the variables the config reads, as this user.
    fn start_proxy(&self) -> Running {
        let mut cmd = std::process::Command::new(KEYSWAP);
        cmd.args(["run", "--config"]).arg(&self.config);
        self.start(cmd)
    }

    /// `cmd` (a `keyswap run`, perhaps behind setpriv) with the config's variables set.
    fn start(&self, mut cmd: std::process::Command) -> Running {
        cmd.current_dir(self.dir.path())
            .envs(test_env_values())
            .env("KS_TEST_ADMIN", ADMIN_TOKEN)
            .env("KEYSWAP_LOG", "debug");
        let running = Running::spawn(cmd);
        running.wait_for("keyswap listening");
        running
    }

    fn keep(&self, what: &str, output: &Output) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((format!("{what} stdout"), output.stdout.clone()));
            seen.push((format!("{what} stderr"), output.stderr.clone()));
        }
    }

    /// No real secret value in any output kept, the proxy's log or the audit file.
    fn check_leaks(&self, running: &Running) {
        for (what, bytes) in self.seen.lock().map(|s| s.clone()).unwrap_or_default() {
            assert_no_real_secret(&what, &bytes);
        }
        assert_no_real_secret("keyswap run stderr", running.log().as_bytes());
        let audit = std::fs::read(self.path("audit.jsonl")).unwrap_or_default();
        assert_no_real_secret("audit log", &audit);
    }

    /// `curl --unix-socket` from this test process (a child of it): (status, body).
    async fn curl_admin(&self, method: &str, path: &str, body: Option<&str>) -> (String, String) {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--unix-socket"])
            .arg(self.socket())
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "-d", body]);
        }
        cmd.arg(format!("http://x{path}"));
        let out = run(cmd).await;
        self.keep(&format!("curl {method} {path}"), &out);
        let text = text(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.to_string(), body.to_string())
    }
}

/// Runs a command to its end, with a bound.
async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(SAFETY, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("a command did not finish within {SAFETY:?}"))
        .expect("command runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A 403 `sandboxed_peer` as the admin API writes it: JSON body, and the header when the
/// headers were kept. A failure shows the error's reason and message, never the body (an
/// issued task's body holds its token).
fn assert_sandboxed_peer(what: &str, status: &str, body: &str, headers: Option<&str>) {
    let error: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let shown = format!("reason {} message {}", error["reason"], error["message"]);
    assert_eq!(status.trim(), "403", "{what}: status; {shown}");
    assert_eq!(error["reason"], "sandboxed_peer", "{what}: {shown}");
    if let Some(headers) = headers {
        assert!(
            headers.lines().any(|l| l
                .trim()
                .eq_ignore_ascii_case("x-keyswap-reason: sandboxed_peer")),
            "{what}: no x-keyswap-reason header in:\n{headers}"
        );
    }
}

/// A `keyswap run` child whose stderr is collected line by line; killed when dropped.
fn policy(name: &str) -> IssueRequest {
    IssueRequest {
        policy: name.to_string(),
        ..IssueRequest::default()
    }
}

/// Waits until the approvals list (read by this test, the operator) holds one.
async fn wait_for_approval(admin: &AdminClient) -> String {
    let deadline = Instant::now() + SAFETY;
    loop {
        let approvals = admin.approvals(None).await.expect("list approvals");
        if let Some(first) = approvals.first() {
            return first.id.clone();
        }
        assert!(Instant::now() < deadline, "no request ever waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_command_and_its_daemonised_grandchild_are_refused_on_every_admin_route() {
    if !tool_available("curl", "--version") || !tool_available("setsid", "--version") {
        return;
    }
    let setup = Setup::new();
    let running = setup.start_proxy();
    let admin = setup.admin();

    // The operator's task, with a CONNECT of it waiting for a human.
    let operator = admin
        .issue(&IssueRequest {
            id: Some("operator-task".into()),
            ..policy("asks")
        })
        .await
        .expect("the operator issues a task");
    let mut held = tokio::process::Command::new("curl");
    held.args([
        "-sS",
        "--max-time",
        "50",
        "--noproxy",
        "",
        "-o",
        "/dev/null",
    ])
    .args(["-w", "%{http_connect}", "--proxy"])
    .arg(&operator.proxy_url)
    .arg("https://held.upstream.test/")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let held = held.spawn().expect("curl runs");
    let approval = wait_for_approval(&admin).await;

    // The agent: a command of `keyswap exec` against the running proxy.
    let out_dir = setup.path("out");
    std::fs::create_dir(&out_dir).expect("mkdir out");
    let socket = setup.socket();
    let mut exec = tokio::process::Command::new(KEYSWAP);
    exec.args(["exec", "--no-sandbox", "--config"])
        .arg(&setup.config)
        .args(["--policy", "agent-rw", "--", "sh"])
        .arg(setup.path("attack.sh"))
        .arg("agent")
        .arg(&socket)
        .arg(&out_dir)
        .args([approval.as_str(), operator.id.as_str()])
        .current_dir(setup.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let exec = exec.spawn().expect("keyswap exec runs");
    let exec_pid = exec.id().expect("exec's pid");
    let exec_out = tokio::time::timeout(SAFETY, exec.wait_with_output())
        .await
        .expect("exec finished")
        .expect("exec waited for");
    setup.keep("keyswap exec", &exec_out);
    assert!(
        exec_out.status.success(),
        "exec failed: {}",
        text(&exec_out.stderr)
    );

    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    for attempt in [
        "issue",
        "list",
        "show",
        "revoke",
        "reload",
        "approvals",
        "answer",
        "grandchild",
    ] {
        assert_sandboxed_peer(
            attempt,
            &read(&format!("{attempt}.status")),
            &read(&format!("{attempt}.body")),
            Some(&read(&format!("{attempt}.headers"))),
        );
    }
    // The grandchild was an orphan of the daemonising shell, adopted by exec.
    assert_eq!(
        read("grandchild.ppid").trim(),
        exec_pid.to_string(),
        "the daemonised grandchild's parent was not exec (the subreaper)"
    );

    // Nothing the agent tried happened: no task from `broad`, the operator's task lives, the
    // request still waits.
    let tasks = admin.list().await.expect("list tasks");
    assert!(
        tasks.iter().all(|t| t.policy.as_deref() != Some("broad")),
        "the agent issued itself a task: {tasks:?}"
    );
    assert!(tasks.iter().any(|t| t.id == operator.id));
    let approvals = admin.approvals(None).await.expect("list approvals");
    assert!(
        approvals.iter().any(|a| a.id == approval),
        "the agent answered the waiting request"
    );
    let answered = admin
        .answer(
            &approval,
            &keyswap::api::AnswerRequest {
                answer: "deny".into(),
                ..Default::default()
            },
        )
        .await
        .expect("the operator answers");
    assert_eq!(answered.answer, "denied");
    let held = tokio::time::timeout(SAFETY, held.wait_with_output())
        .await
        .expect("the held curl ended")
        .expect("curl waited for");
    setup.keep("held curl", &held);

    // Each refusal is a WARN line naming the peer.
    let log = running.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sandboxed_peer") && l.contains("WARN"))
        .collect();
    assert_eq!(refusals.len(), 8, "one WARN per refusal:\n{log}");
    assert!(refusals
        .iter()
        .all(|l| l.contains("peer_pid=") && l.contains("peer_uid=")));
    setup.check_leaks(&running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_lifeline_holder_is_refused_and_the_holder_is_not() {
    if !tool_available("curl", "--version") {
        return;
    }
    let setup = Setup::new();
    let running = setup.start_proxy();
    let admin = setup.admin();

    // This test process holds a lifeline, as `keyswap exec` does.
    let (issued, lifeline) = admin
        .issue_with_lifeline(&IssueRequest {
            lifeline: true,
            by: Some("exec".into()),
            ..policy("agent-rw")
        })
        .await
        .expect("issue with a lifeline");
    let (status, body) = setup
        .curl_admin("POST", "/v1/tasks", Some(r#"{"policy":"broad"}"#))
        .await;
    assert_sandboxed_peer("the holder's child issuing", &status, &body, None);
    let (status, body) = setup.curl_admin("GET", "/v1/approvals", None).await;
    assert_sandboxed_peer("the holder's child listing approvals", &status, &body, None);

    // The holder itself is the operator's exec: allowed.
    admin.list().await.expect("the holder lists");
    admin
        .issue(&policy("broad"))
        .await
        .expect("the holder issues");

    // Once the lifeline ends, its holder's children are nobody's agent.
    drop(lifeline);
    let deadline = Instant::now() + SAFETY;
    while admin
        .list()
        .await
        .expect("list tasks")
        .iter()
        .any(|t| t.id == issued.id)
    {
        assert!(Instant::now() < deadline, "the lifeline's task never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = setup
        .curl_admin("POST", "/v1/tasks", Some(r#"{"policy":"broad"}"#))
        .await;
    assert_eq!(status, "201", "after the lifeline: {body}");
    setup.check_leaks(&running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_keyswap_exec_command_line_is_refused_and_a_plain_process_is_not() {
    if !tool_available("curl", "--version") {
        return;
    }
    let setup = Setup::new();
    let running = setup.start_proxy();
    // A process whose command line reads `…/keyswap exec` (a shell under that name running a
    // script named `exec`), holding no lifeline: the command line alone refuses its child.
    let bin = setup.path("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink("/bin/sh", bin.join("keyswap")).expect("symlink");
    std::fs::write(
        setup.path("exec"),
        "curl -sS --max-time 20 --unix-socket \"$1\" -X POST -H 'content-type: application/json' \
         -d '{\"policy\":\"broad\"}' -w '\\n%{http_code}' http://x/v1/tasks\n",
    )
    .expect("write script");
    for (program, refused) in [
        (bin.join("keyswap"), true),
        (PathBuf::from("/bin/sh"), false),
    ] {
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg("exec")
            .arg(setup.socket())
            .current_dir(setup.dir.path());
        let out = run(cmd).await;
        setup.keep("curl under a shell", &out);
        let stdout = text(&out.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        if refused {
            assert_sandboxed_peer("child of `keyswap exec`", status, body, None);
        } else {
            assert_eq!(status, "201", "child of `sh exec`: {body}");
        }
    }
    // And the test's own curl: the operator.
    let (status, body) = setup.curl_admin("GET", "/v1/tasks", None).await;
    assert_eq!(status, "200", "{body}");
    setup.check_leaks(&running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_task_names_the_variables_credentials_are_read_from() {
    if !tool_available("curl", "--version") {
        return;
    }
    let setup = Setup::new();
    let running = setup.start_proxy();
    let (status, body) = setup
        .curl_admin("POST", "/v1/tasks", Some(r#"{"policy":"agent-rw"}"#))
        .await;
    assert_eq!(status, "201", "the operator's curl issues: {body}");
    let issued: IssuedTask = serde_json::from_str(&body).expect("an IssuedTask");
    assert_eq!(
        issued.withheld_env,
        ["KS_TEST_ADMIN", "KS_TEST_GITHUB", "KS_TEST_TOKEN"],
        "from_env, admin.token_env and token_env; not the file secret"
    );
    assert!(!format!("{issued:?}").contains(&issued.token));
    // An answer from a proxy without the field still parses.
    let mut older: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    older
        .as_object_mut()
        .expect("an object")
        .remove("withheld_env");
    let older: IssuedTask = serde_json::from_value(older).expect("an older IssuedTask");
    assert!(older.withheld_env.is_empty());
    setup.check_leaks(&running);
}

/// `setpriv` to nobody, then `args`.
fn as_nobody(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .args(args);
    cmd
}

/// `cat FILE` as nobody: (succeeded, stdout, stderr).
fn cat_as_nobody(path: &str) -> (bool, Vec<u8>, String) {
    let out = as_nobody(&["cat", path])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv runs");
    (out.status.success(), out.stdout, text(&out.stderr))
}

fn refused(stderr: &str) -> bool {
    stderr.contains("Permission denied") || stderr.contains("Operation not permitted")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn keyswap_run_environ_and_mem_are_refused_to_its_users_other_processes() {
    if !can_switch_users() {
        return;
    }
    let setup = Setup::new();
    // nobody owns the directory keyswap writes its CA, audit log and socket in.
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    for entry in std::fs::read_dir(setup.dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    std::os::unix::fs::chown(setup.dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let config = setup.config.to_str().expect("utf-8 path");
    let running = setup.start(as_nobody(&[KEYSWAP, "run", "--config", config]));
    let pid = running.pid();

    // The variable is in keyswap's environment (root may look)...
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("root reads environ");
    assert!(contains(&environ, b"KS_TEST_GITHUB="));
    assert!(
        contains(&environ, GITHUB_REAL.as_bytes()),
        "the real value is not in keyswap's environment: the test proves nothing"
    );
    // ...and no core file can be written.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );

    // keyswap's own user, from another process: refused.
    let (ok, stdout, stderr) = cat_as_nobody(&format!("/proc/{pid}/environ"));
    assert_no_real_secret("cat of keyswap's environ", &stdout);
    assert!(!ok && refused(&stderr), "environ was readable: {stderr}");
    let (ok, stdout, stderr) = cat_as_nobody(&format!("/proc/{pid}/mem"));
    assert_no_real_secret("cat of keyswap's mem", &stdout);
    assert!(!ok && refused(&stderr), "mem could be opened: {stderr}");

    // The same reader against a plain process of that user with the same variable: both
    // open (the read at offset 0 of mem then fails with EIO, which is not a refusal).
    let mut plain = as_nobody(&["sh", "-c", "echo ready; exec sleep 300"]);
    plain
        .env("KS_TEST_GITHUB", GITHUB_REAL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut plain = plain.spawn().expect("spawn the plain process");
    let mut ready = String::new();
    BufReader::new(plain.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ready line");
    let plain_pid = plain.id();
    let (ok, stdout, stderr) = cat_as_nobody(&format!("/proc/{plain_pid}/environ"));
    let environ_readable = ok && contains(&stdout, GITHUB_REAL.as_bytes());
    let (_, _, mem_stderr) = cat_as_nobody(&format!("/proc/{plain_pid}/mem"));
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(
        environ_readable,
        "a plain process's environ was not readable: {stderr}"
    );
    assert!(
        !refused(&mem_stderr) && mem_stderr.contains("Input/output error"),
        "a plain process's mem did not open: {mem_stderr}"
    );
    assert_no_real_secret("keyswap run stderr", running.log().as_bytes());
}
