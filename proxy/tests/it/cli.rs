//! The `keyswap` binary as a user runs it: `check` on every bad-config fixture, `ca export`,
//! and `run` with the real `curl` binary as the agent — including a SIGHUP reload with a bad
//! config that must keep the running one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyswap_tests::harness::{render, test_env_values, ConfigVars, DEFAULT_CONFIG};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER};
use keyswap_tests::upstream::{Upstream, UpstreamOptions};

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures/invalid")
}

/// The environment of `config/tests/fixtures.rs`.
fn fixture_env(cmd: &mut Command) -> &mut Command {
    cmd.env("KEYSWAP_FIXTURE_SECRET", "fixture-real-value-0123456789")
        .env("KEYSWAP_FIXTURE_TOKEN", "fixture-token-0123456789")
        .env("KEYSWAP_FIXTURE_SHORT_TOKEN", "fixture-token-1")
}

#[test]
fn check_reports_every_fixture_error_with_location_and_fix() {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected file", path.display()));
        // Fixture paths (tasks_dir) are relative to the config crate, like its own tests.
        let output = fixture_env(&mut Command::new(KEYSWAP))
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run keyswap check");
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: exit code",
            path.display()
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            let line = line.replace("FILE", &path.display().to_string());
            if let Some(unwanted) = line.strip_prefix("! ") {
                assert!(
                    !stderr.contains(unwanted),
                    "{}: unwanted\n  {unwanted}\nin\n{stderr}",
                    path.display()
                );
                continue;
            }
            assert!(
                stderr.contains(&line),
                "{}: expected\n  {line}\nin\n{stderr}",
                path.display()
            );
        }
        for value in [
            "fixture-real-value-0123456789",
            "fixture-token-0123456789",
            "fixture-token-1",
        ] {
            assert!(
                !stderr.contains(value),
                "{}: a secret value or a token in check output",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} fixtures");
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let output = Command::new(KEYSWAP)
        .arg("schema")
        .output()
        .expect("run keyswap schema");
    assert!(output.status.success(), "{output:?}");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/keyswap.schema.json");
    let committed = std::fs::read_to_string(&committed).expect("config/keyswap.schema.json");
    assert!(
        String::from_utf8_lossy(&output.stdout) == committed,
        "config/keyswap.schema.json is not what `keyswap schema` prints: run\n  \
         cargo run -p keyswap -- schema > config/keyswap.schema.json"
    );
}

#[test]
fn check_of_a_missing_file_says_cannot_read_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("keyswap.yaml");
    let os_error = std::fs::read(&missing).unwrap_err().to_string();
    for command in ["check", "run"] {
        let output = Command::new(KEYSWAP)
            .args([command, "--config"])
            .arg(&missing)
            .output()
            .expect("run keyswap");
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with(&format!(
                "keyswap: cannot read {}: {os_error}; ",
                missing.display()
            )),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(":0:0"), "{command}: {stderr}");
        assert_eq!(stderr.matches(&os_error).count(), 1, "{command}: {stderr}");
    }
}

#[test]
fn run_on_a_port_in_use_prints_the_os_error_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = dir.path().join("keyswap.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nlisten: {addr}\nca_dir: {}\naudit_log: {}\n",
            dir.path().join("ca").display(),
            dir.path().join("audit.jsonl").display()
        ),
    )
    .expect("config");
    let output = Command::new(KEYSWAP)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run keyswap");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("keyswap: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(line.contains(&addr.to_string()), "{line}");
    assert_eq!(line.matches("os error").count(), 1, "{line}");
    drop(taken);
}

#[test]
fn check_accepts_the_shipped_example_and_prints_a_summary() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/keyswap.yaml");
    let output = Command::new(KEYSWAP)
        .args(["check", "--config"])
        .arg(&example)
        .env("GITHUB_TOKEN_REAL", "KSREAL-example-github-value")
        .env("KEYSWAP_TOKEN_FIX42", "example-task-token")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run keyswap check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example config rejected:\n{stderr}"
    );
    assert!(
        stdout.contains("fix-issue-42"),
        "summary lists tasks:\n{stdout}"
    );
    assert!(stdout.contains("github"), "summary lists secrets by name");
    // It says which variables it read, as `run` will: names, never values.
    assert!(
        stdout.contains("  GITHUB_TOKEN_REAL    secret github (from_env)\n")
            && stdout.contains("  KEYSWAP_TOKEN_FIX42  token_env of a task or of admin\n"),
        "check names the variables it read:\n{stdout}"
    );
    assert!(
        !stdout.contains("example-task-token"),
        "a token in check output"
    );
    assert_no_real_secret("check summary", stdout.as_bytes());
}

#[test]
fn check_prints_warnings_fixtures_warnings_and_exits_0() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures/warnings");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("warnings fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 4, "only {} fixtures", entries.len());
    for path in entries {
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let output = fixture_env(&mut Command::new(KEYSWAP))
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run keyswap check");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: exit code", path.display());
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            let line = format!(
                "warning: {}",
                line.replace("FILE", &path.display().to_string())
            );
            assert!(
                stdout.contains(&line),
                "{}: expected\n  {line}\nin\n{stdout}",
                path.display()
            );
        }
        assert!(
            !stdout.contains("fixture-token-0123456789")
                && !stdout.contains("fixture-real-value-0123456789"),
            "{}: a token or a secret value in check output",
            path.display()
        );
    }
}

/// `check` lists what `keyswap exec`'s sandbox will hide: a from_file secret's file and the CA
/// key by path and why, the credential stores of HOME, absent paths marked; never a value.
#[test]
fn check_lists_what_the_sandbox_hides_and_never_a_value() {
    use keyswap_tests::secrets::{GITHUB_REAL, OPENAI_PLACEHOLDER, OPENAI_REAL};
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let home = cwd.join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(cwd.join("github.txt"), GITHUB_REAL).unwrap();
    let config = cwd.join("keyswap.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nca_dir: ./ca\nsecrets:\n  github:\n    from_file: github.txt\n    placeholder: {GITHUB_PLACEHOLDER}\n  openai:\n    from_env: KS_CLI_OPENAI_REAL\n    placeholder: {OPENAI_PLACEHOLDER}\nsandbox:\n  hide: [./private]\n  expose: [~/.npmrc]\n"
        ),
    )
    .unwrap();
    let output = Command::new(KEYSWAP)
        .args(["check", "--config"])
        .arg(&config)
        .current_dir(&cwd)
        .env("HOME", &home)
        .env("KS_CLI_OPENAI_REAL", OPENAI_REAL)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run keyswap check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let line = |path: &Path, why: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("{}  ", path.display())) && l.contains(why))
            .unwrap_or_else(|| panic!("no line for {} ({why}) in\n{stdout}", path.display()))
            .to_string()
    };
    let secret = line(&cwd.join("github.txt"), "secret github (from_file)");
    assert!(
        secret.starts_with("  hide ") && !secret.contains("(absent)"),
        "{secret}"
    );
    let ca_key = line(&cwd.join("ca/ca-key.pem"), "CA private key");
    assert!(ca_key.ends_with("(absent)"), "{ca_key}");
    assert!(line(&cwd.join("keyswap.yaml"), "config file").starts_with("  read-only "));
    assert!(line(&cwd.join("private"), "sandbox.hide").ends_with("(absent)"));
    assert!(!line(&home.join(".aws"), "AWS credentials").contains("(absent)"));
    assert!(line(&home.join(".npmrc"), "sandbox.expose").starts_with("  expose "));
    assert!(
        !stdout.contains("npm token"),
        "an exposed store is still listed:\n{stdout}"
    );
    assert_no_real_secret("check stdout", stdout.as_bytes());
    assert_no_real_secret("check stderr", stderr.as_bytes());
}

/// A config where a client naming a tokenless task would get in as that task: `run` refuses
/// to start on it, with the same message as `check`.
#[test]
fn run_refuses_a_tokenless_task_beside_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), "").unwrap();
    let vars = ConfigVars {
        dir: dir.path(),
        https_port: 9,
        plain_port: 9,
        tunnel_port: 9,
    };
    let tokenless = render(DEFAULT_CONFIG, &vars).replacen("    token_env: KS_TEST_TOKEN\n", "", 1);
    let config_path = dir.path().join("keyswap.yaml");
    std::fs::write(&config_path, &tokenless).unwrap();
    let mut cmd = Command::new(KEYSWAP);
    cmd.args(["run", "--config"])
        .arg(&config_path)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (k, v) in test_env_values() {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run keyswap run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tasks.agent: task agent has no token_env, and with 2 tasks, anyone who can reach the proxy could use it by naming it"),
        "{stderr}"
    );
    assert!(!stderr.contains("keyswap listening"), "{stderr}");
    assert_no_real_secret("keyswap stderr", stderr.as_bytes());
}

#[test]
fn ca_export_creates_the_ca_with_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("exported.pem");
    let status = Command::new(KEYSWAP)
        .args(["ca", "export", "--ca-dir"])
        .arg(&ca_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let pem = std::fs::read_to_string(&out).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second export prints the same CA.
    let again = Command::new(KEYSWAP)
        .args(["ca", "export", "--ca-dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), pem);
}

/// A `keyswap run` child process whose stderr is collected line by line.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &Path, cwd: &Path) -> Running {
        let mut cmd = Command::new(KEYSWAP);
        cmd.args(["run", "--config"])
            .arg(config)
            .current_dir(cwd)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in test_env_values() {
            cmd.env(k, v);
        }
        cmd.env("KEYSWAP_LOG", "debug");
        let mut child = cmd.spawn().expect("spawn keyswap run");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            new_line,
        }
    }

    /// Waits for a stderr line containing `needle` (the proxy says when it is ready).
    fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.new_line.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("keyswap never logged {needle:?}; log:\n{}", self.log()),
            }
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl off the async runtime's threads.
async fn curl_async(args: &[&str]) -> (String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .expect("curl task")
}

fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_binary_swaps_and_reload_keeps_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca =
        keyswap_certs::CertificateAuthority::generate("cli test upstream CA").unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca.cert_pem()).unwrap();
    let names = vec![
        "api.upstream.test".to_string(),
        "other.upstream.test".to_string(),
    ];
    let upstream = Upstream::start(
        &upstream_ca,
        UpstreamOptions {
            names,
            ..UpstreamOptions::default()
        },
    )
    .await;
    let plain = Upstream::plain_http().await;
    let vars = ConfigVars {
        dir: dir.path(),
        https_port: upstream.port(),
        plain_port: plain.port(),
        tunnel_port: upstream.port(),
    };
    let config_path = dir.path().join("keyswap.yaml");
    let good = render(DEFAULT_CONFIG, &vars);
    std::fs::write(&config_path, &good).unwrap();

    let proxy = tokio::task::spawn_blocking({
        let config_path = config_path.clone();
        let cwd = dir.path().to_path_buf();
        move || {
            let running = Running::start(&config_path, &cwd);
            let line = running.wait_for("keyswap listening");
            (running, line)
        }
    })
    .await
    .unwrap();
    let (running, line) = proxy;
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address in log")
        .to_string();
    let proxy_url = format!(
        "http://agent:{}@{addr}",
        keyswap_tests::harness::AGENT_TOKEN
    );
    let ca = dir.path().join("ca/ca.pem");
    let ca = ca.to_str().unwrap();
    let auth = format!("Authorization: Bearer {GITHUB_PLACEHOLDER}");
    let mut outputs = String::new();

    for http in ["--http1.1", "--http2"] {
        let (out, err) = curl_async(&[
            http,
            "--proxy",
            &proxy_url,
            "--cacert",
            ca,
            "-H",
            &auth,
            "https://api.upstream.test/echo/curl",
        ])
        .await;
        assert!(
            out.contains(GITHUB_PLACEHOLDER),
            "curl {http} got no scrubbed echo: {err}"
        );
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    let seen = upstream.seen();
    let swapped = seen
        .iter()
        .filter(|r| r.path_and_query == "/echo/curl")
        .count();
    assert_eq!(swapped, 2);
    assert!(
        seen.iter().all(|r| r
            .headers
            .iter()
            .any(|(n, v)| n == "authorization" && v.starts_with("Bearer KSREAL-"))),
        "upstream did not get the real token"
    );

    // Plain HTTP through HTTP_PROXY semantics.
    let (out, err) = curl_async(&[
        "--proxy",
        &proxy_url,
        "-H",
        &auth,
        "http://plain.upstream.test/echo/plain",
    ])
    .await;
    assert!(out.contains(GITHUB_PLACEHOLDER), "plain curl: {err}");
    outputs.push_str(&out);

    // A refusal as curl shows it.
    let (out, err) = curl_async(&[
        "-i",
        "--proxy",
        &proxy_url,
        "--cacert",
        ca,
        "https://api.upstream.test/admin",
    ])
    .await;
    assert!(
        out.contains("x-keyswap-reason: route_not_allowed"),
        "refusal: {out} {err}"
    );
    outputs.push_str(&out);

    // SIGHUP with a broken config: the running config stays.
    std::fs::write(
        &config_path,
        good.replace("version: 1", "version: 1\nbogus_field: 1"),
    )
    .unwrap();
    running.hangup();
    running.wait_for("config not reloaded");
    let (out, _) = curl_async(&[
        "--proxy",
        &proxy_url,
        "--cacert",
        ca,
        "-H",
        &auth,
        "https://api.upstream.test/echo/after-bad-reload",
    ])
    .await;
    assert!(
        out.contains(GITHUB_PLACEHOLDER),
        "old config lost after a bad reload"
    );
    outputs.push_str(&out);

    // SIGHUP with a config whose task agent lost its token beside task expired: refused,
    // so naming agent with another password still gets nobody in.
    std::fs::write(
        &config_path,
        good.replacen("    token_env: KS_TEST_TOKEN\n", "", 1),
    )
    .unwrap();
    running.hangup();
    let refused = running.wait_for("config not reloaded");
    assert!(
        refused.contains("task agent has no token_env"),
        "reload refused for another reason: {refused}"
    );
    let (out, err) = curl_async(&[
        "-v",
        "--proxy",
        &format!("http://agent:not-the-token@{addr}"),
        "--cacert",
        ca,
        "https://api.upstream.test/echo/named-without-token",
    ])
    .await;
    assert!(
        err.contains("< HTTP/1.1 407") && err.contains("< x-keyswap-reason: bad_token"),
        "a wrong password for agent after a refused reload: {out}{err}"
    );
    assert!(upstream
        .seen()
        .iter()
        .all(|r| r.path_and_query != "/echo/named-without-token"));
    outputs.push_str(&out);
    outputs.push_str(&err);

    // SIGHUP with a good config that drops the rule: applied.
    std::fs::write(&config_path, good.replace("\"/echo\", \"/echo/**\", ", "")).unwrap();
    running.hangup();
    running.wait_for("config reloaded");
    let (out, _) = curl_async(&[
        "-i",
        "--proxy",
        &proxy_url,
        "--cacert",
        ca,
        "-H",
        &auth,
        "https://api.upstream.test/echo/after-good-reload",
    ])
    .await;
    assert!(
        out.contains("x-keyswap-reason: route_not_allowed"),
        "reloaded rule not applied: {out}"
    );
    outputs.push_str(&out);

    running_log_check(&running, dir.path(), &outputs);
}

fn running_log_check(running: &Running, dir: &Path, outputs: &str) {
    assert_no_real_secret("keyswap stderr", running.log().as_bytes());
    assert_no_real_secret("curl output", outputs.as_bytes());
    // The audit log is flushed after every batch; give the writer its turn by waiting for
    // the last request's record.
    let audit_path = dir.join("audit.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
        if audit.contains("after-good-reload") {
            assert_no_real_secret("audit log", audit.as_bytes());
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&audit_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "audit log mode");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log never got the last record"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
