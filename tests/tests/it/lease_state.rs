//! What outlives a keyswap process, and where a lease's placeholder may travel:
//!
//! - the lease state file: a `keyswap run` that is killed (SIGKILL) after minting leaves the
//!   installation token in `state_dir/leases.json` (0600); the next start revokes it at the
//!   fake GitHub (`credential_revoked`, why `restart`), after which the token no longer works
//!   there; a `keyswap run` stopped with SIGTERM revokes what it holds before it exits;
//!   `keyswap check` names the file;
//! - a lease's placeholder in a request body (a rule with `swap_in: [body]`) or in a trailer
//!   reaches the upstream as the task's minted token, and only on a rule that grants it.
//!
//! Real processes (this test binary re-executed as `keyswap`), real clients (curl, a raw
//! HTTP/1.1 client over Python's `ssl`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap_tests::fake_github::PLACEHOLDER;
use keyswap_tests::harness::{test_env_values, API_HOST, OTHER_HOST};
use keyswap_tests::logged_child::LoggedChild;
use keyswap_tests::secrets::assert_no_real_secret;
use keyswap_tests::tools::available;
use serde_json::Value;

use crate::leases::{self, command, run, Lab, EXTRA_ENV, POLICIES};

/// `keyswap ARGS` as a child of this test, with the lab's environment.
fn keyswap_command(args: &[&str]) -> Command {
    let mut cmd = crate::child::keyswap_command(args);
    cmd.env("KEYSWAP_LOG", "info")
        .envs(test_env_values())
        .envs(EXTRA_ENV.iter().copied());
    cmd
}

/// The lab's config for a `keyswap run` of its own: the lab's CA (so the agent trusts it),
/// its own audit log, admin socket and `state_dir`.
fn child_config(lab: &Lab) -> PathBuf {
    let dir = lab.env.dir.path();
    let yaml = leases::template(
        lab.files.path(),
        lab.github.server.port(),
        lab.oauth.server.port(),
        &POLICIES,
    )
    .replace("{dir}/audit.jsonl", "{dir}/child-audit.jsonl")
    .replace(
        "ca_dir: {dir}/ca\n",
        "ca_dir: {dir}/ca\nstate_dir: {dir}/child-state\nadmin:\n  socket: {dir}/child-admin.sock\n",
    )
    .replace("{dir}", &dir.display().to_string())
    .replace("{https_port}", &lab.env.upstream.port().to_string());
    let path = dir.join("child.yaml");
    std::fs::write(&path, yaml).expect("child config");
    path
}

/// Waits until `child`'s log holds `needle` at least `count` times (a line may have been
/// read by an earlier wait).
fn wait_count(child: &LoggedChild, needle: &str, count: usize) {
    while child.log().matches(needle).count() < count {
        child.wait_for(needle);
    }
}

fn start_child(config: &Path) -> LoggedChild {
    let child = LoggedChild::spawn(keyswap_command(&[
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]));
    child.wait_for("keyswap listening");
    child
}

async fn issue(lab: &Lab) -> IssuedTask {
    let admin = AdminClient::new(AdminTarget::Socket(
        lab.env.dir.path().join("child-admin.sock"),
    ));
    let issued = admin
        .issue(&IssueRequest {
            policy: "widget".into(),
            ttl: Some("30m".into()),
            ..IssueRequest::default()
        })
        .await
        .expect("task issued");
    lab.env.remember_token(&issued.token);
    issued
}

/// curl as the agent of `task` through the child at `addr`: the HTTP status.
async fn curl_widget(lab: &Lab, addr: &str, task: &IssuedTask) -> String {
    let proxy = format!("http://{}:{}@{addr}", task.id, task.token);
    let vars = [("https_proxy", proxy)].into_iter().collect();
    let mut cmd = command(lab, "curl", &vars);
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(lab.env.dir.path().join("ca/ca.pem"))
        .args([
            "-H",
            &format!("Authorization: Bearer {PLACEHOLDER}"),
            "https://api.github.test/repos/acme/widget",
        ]);
    run(lab, "curl", cmd).await
}

fn audit_events(path: &Path, event: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == event)
        .collect()
}

fn curl_available() -> bool {
    if available("curl", "--version") {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "curl must be installed in CI"
    );
    eprintln!("\n*** NOTICE: no curl: a lease state test did NOT run ***\n");
    false
}

// Multi-threaded: the fakes keep answering while this thread waits for the child's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_keyswaps_token_is_revoked_by_the_next_start_and_a_stopped_one_revokes_its_own() {
    if !curl_available() {
        return;
    }
    let lab = leases::start().await;
    let config = child_config(&lab);
    let dir = lab.env.dir.path().to_path_buf();
    let state = dir.join("child-state/leases.json");

    let first = start_child(&config);
    let addr = first.listen_addr();
    let task = issue(&lab).await;
    assert_eq!(curl_widget(&lab, &addr, &task).await, "200");
    let tokens = lab.github.tokens();
    assert_eq!(tokens.len(), 1, "one token minted");
    let token = tokens[0].token.clone();
    let text = std::fs::read_to_string(&state).expect("the lease state file was written");
    assert!(
        text.contains(&token),
        "the state file does not hold the token its revocation needs"
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o600, "the lease state file is not 0600");
    assert_eq!(
        mode(state.parent().unwrap()),
        0o700,
        "state_dir is not 0700"
    );

    let out = keyswap_command(&["check", "--config", config.to_str().unwrap()])
        .output()
        .expect("keyswap check runs");
    assert_no_real_secret("keyswap check", &out.stdout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "keyswap check failed");
    assert!(
        stdout.contains(&format!("lease state file {}", state.display()))
            && stdout.contains("1 recorded now"),
        "keyswap check does not name the lease state file:\n{stdout}"
    );

    // SIGKILL: no shutdown, no revocation.
    drop(first);
    assert!(lab.github.revocations().is_empty());
    assert_eq!(lab.github.status_for(&token, "widget"), 200);

    let second = start_child(&config);
    wait_count(&second, "credential revoked", 1);
    assert_eq!(
        lab.github.status_for(&token, "widget"),
        401,
        "the token minted before the kill still works at GitHub"
    );
    assert!(
        !std::fs::read_to_string(&state).unwrap().contains(&token),
        "a revoked token stayed in the state file"
    );

    // SIGTERM: the live lease is revoked before the process exits.
    let addr = second.listen_addr();
    let task = issue(&lab).await;
    assert_eq!(curl_widget(&lab, &addr, &task).await, "200");
    let token2 = lab.github.tokens()[1].token.clone();
    let pid = second.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_count(&second, "credential revoked", 2);
    assert_eq!(lab.github.status_for(&token2, "widget"), 401);
    let mut second = second;
    second.wait_exit();
    let log = second.log();
    drop(second);

    let audit = dir.join("child-audit.jsonl");
    let revoked = audit_events(&audit, "credential_revoked");
    let whys: Vec<&str> = revoked.iter().filter_map(|r| r["why"].as_str()).collect();
    assert!(whys.contains(&"restart"), "no restart revocation: {whys:?}");
    assert!(
        whys.contains(&"shutdown"),
        "no shutdown revocation: {whys:?}"
    );
    for token in [&token, &token2] {
        lab.env.remember_secret(token);
        assert!(!log.contains(token.as_str()), "a token is in keyswap's log");
        let audit_text = std::fs::read_to_string(&audit).unwrap_or_default();
        assert!(
            !audit_text.contains(token.as_str()),
            "a token is in the audit"
        );
    }
    assert_no_real_secret("the keyswap child's log", log.as_bytes());
    lab.assert_no_leaks();
}

const AGENT: &str = include_str!("trailers/agent.py");

/// One HTTP/1.1 POST as the trailers test's agent sends it.
struct Post<'a> {
    host: &'a str,
    path: &'a str,
    body: &'a str,
    headers: &'a [(&'a str, &'a str)],
    trailers: &'a [(&'a str, &'a str)],
}

/// Sends `req` as `task` with the trailers test's agent: the status.
async fn post(lab: &Lab, python: &str, task: &IssuedTask, req: Post<'_>) -> u64 {
    let dir = lab.env.dir.path();
    let ca = dir.join("proxy-ca.pem");
    std::fs::write(&ca, &lab.env.proxy_ca_pem).expect("write proxy CA");
    let pairs = |list: &[(&str, &str)]| -> Vec<[String; 2]> {
        list.iter()
            .map(|(n, v)| [n.to_string(), v.to_string()])
            .collect()
    };
    let spec = serde_json::json!({
        "proxy_port": lab.env.proxy.addr().port(),
        "task": task.id, "token": task.token, "ca_file": ca, "host": req.host, "proto": "h1",
        "method": "POST", "path": req.path, "headers": pairs(req.headers),
        "chunks": [req.body], "trailers": pairs(req.trailers), "expect": false,
    });
    let script = dir.join("agent.py");
    std::fs::write(&script, AGENT).expect("write agent.py");
    std::fs::write(dir.join("spec.json"), spec.to_string()).expect("spec");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script)
        .stdin(std::fs::File::open(dir.join("spec.json")).expect("spec"));
    let out = cmd.output().await.expect("python runs");
    assert!(out.status.success(), "the agent failed");
    let reply: Value = serde_json::from_slice(&out.stdout).expect("agent JSON");
    lab.env
        .keep(&[], reply["body"].as_str().unwrap_or_default());
    reply["status"].as_u64().unwrap_or_default()
}

#[tokio::test]
async fn a_lease_placeholder_in_a_body_or_trailer_is_swapped_only_where_granted() {
    let Some(python) = crate::trailers::python_with_h2() else {
        return;
    };
    let lab = leases::start().await;
    // Trust the harness's upstream too (its /sink keeps every body and trailer it read).
    let roots = lab.files.path().join("roots.pem");
    let mut pem = std::fs::read_to_string(&roots).expect("roots");
    pem.push_str(lab.env.upstream_ca.cert_pem());
    std::fs::write(&roots, pem).expect("roots");
    lab.reload(&POLICIES);
    let task = lab.issue("widget", "30m");

    // A JSON body on a rule with swap_in: [body]: minted before the body goes, swapped in it.
    let json = format!("{{\"token\": \"{PLACEHOLDER}\"}}");
    let sink = |host, body, headers, trailers| Post {
        host,
        path: "/sink",
        body,
        headers,
        trailers,
    };
    let status = post(&lab, python, &task, sink(API_HOST, &json, &[], &[])).await;
    assert_eq!(status, 200);
    assert_eq!(lab.github.mints(), 1, "the body's lease was not minted");
    let token = lab.github.tokens()[0].token.clone();
    let bodies = lab.env.upstream.bodies();
    let seen = bodies.last().expect("the upstream read the body").text();
    assert!(
        seen.contains(&format!("{{\"token\": \"{token}\"}}")),
        "the upstream did not get the task's token in the body"
    );

    // A declared trailer on a rule that swaps in headers: the task's token, no second mint.
    let bearer = format!("Bearer {PLACEHOLDER}");
    let declared = [("trailer", "authorization")];
    let trailer = [("authorization", bearer.as_str())];
    let status = post(
        &lab,
        python,
        &task,
        sink(OTHER_HOST, "hello", &declared, &trailer),
    )
    .await;
    assert_eq!(status, 200);
    let bodies = lab.env.upstream.bodies();
    let seen = bodies.last().expect("the upstream read the body").text();
    assert!(
        seen.contains(&token) && !seen.contains(PLACEHOLDER),
        "the upstream did not get the task's token in the trailer"
    );

    // Another task's first request is a trailer only: declared, so minted before it goes.
    let other = lab.issue("gadget", "30m");
    let status = post(
        &lab,
        python,
        &other,
        sink(OTHER_HOST, "hello", &declared, &trailer),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(lab.github.mints(), 2);
    let other_token = lab.github.tokens()[1].token.clone();
    let bodies = lab.env.upstream.bodies();
    let seen = bodies.last().expect("the upstream read the body").text();
    assert!(
        seen.contains(&other_token) && !seen.contains(&token),
        "the second task's trailer did not carry its own token"
    );

    // A rule that does not grant the secret: refused, no token leaves.
    let before = lab.env.upstream.bodies().len();
    let echo = format!("echo {PLACEHOLDER}");
    let req = Post {
        host: API_HOST,
        path: "/echo",
        body: &echo,
        headers: &[],
        trailers: &[],
    };
    let status = post(&lab, python, &task, req).await;
    assert_eq!(status, 403);
    let refused = lab
        .env
        .audit_at_least(1, |r| r["reason"] == "placeholder_not_allowed")
        .await;
    assert!(!refused.is_empty());
    for body in &lab.env.upstream.bodies()[before..] {
        assert!(!body.text().contains(&token));
    }
    assert_eq!(lab.github.mints(), 2);
    lab.assert_no_leaks();
}
