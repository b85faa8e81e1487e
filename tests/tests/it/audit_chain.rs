//! The tamper-evident audit log against the real proxy: a real run's file verifies; an
//! edited byte, a deleted line, two swapped lines, an inserted line are each found and
//! located, and a line cut short is a truncated tail, not tampering; a rotation (rename,
//! then `POST /v1/reload`, or SIGHUP to a `keyswap run` process) continues the chain into a
//! new file so the set verifies as one; a restart after a torn write links past it; with
//! `audit.key_file`, a chain recomputed without the key fails.
//!
//! `keyswap audit verify` is run as the real command line (this test binary re-executed as
//! `keyswap`, see [`crate::child`]) for its exit code and output, and as a library call for
//! the exact location of each break.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::child::keyswap_command;
use std::sync::mpsc;

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::audit::chain::{hex, Chain, LineHasher};
use keyswap::audit::verify::{self as audit_verify, Break, Summary};
use keyswap::ProxyOptions;
use keyswap_tests::client::Alpn;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, TestEnv, API_HOST, DEFAULT_CONFIG, OTHER_HOST};
use keyswap_tests::secrets::{GITHUB_PLACEHOLDER, GITHUB_REAL};

/// `keyswap audit verify ARGS...`: exit code and the command's own output line.
fn verify_cli(args: &[&str]) -> (i32, String) {
    let mut full = vec!["audit", "verify"];
    full.extend_from_slice(args);
    let out = keyswap_command(&full)
        .output()
        .expect("run keyswap audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ok: ") || l.starts_with("broken chain: "))
        .unwrap_or_else(|| {
            panic!(
                "no verify output:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    (out.status.code().expect("exit code"), line)
}

fn verify(files: &[&Path]) -> Result<Summary, Break> {
    let files: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    audit_verify::verify(&files, &[])
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("audit file")
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

/// A few requests of every kind: allowed, refused inside the tunnel, refused at CONNECT.
async fn traffic(env: &TestEnv, rounds: usize) {
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    for i in 0..rounds {
        let reply = env
            .request(
                &opts,
                "GET",
                &format!("/echo/{i}"),
                &[("authorization", &bearer(GITHUB_PLACEHOLDER))],
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let refused = env.client(
        Some(("agent", "wrong-token-0000000")),
        &format!("{OTHER_HOST}:443"),
        Alpn::Http1Only,
    );
    let _ = keyswap_tests::client::connect_tunnel(&refused).await;
}

#[tokio::test]
async fn a_real_run_verifies_and_each_tampering_is_found_where_it_is() {
    let env = TestEnv::start().await;
    traffic(&env, 4).await;
    env.proxy.flush_audit();
    let file = env.audit_path();
    let original = lines_of(&file);
    assert!(original.len() >= 6, "{original:?}");
    let first: serde_json::Value = serde_json::from_str(&original[0]).unwrap();
    assert_eq!(first["event"], "audit_start");
    assert_eq!(first["seq"], 0);
    assert_eq!(first["prev"], serde_json::Value::Null);
    assert_eq!(first["chain"], "sha256");
    for (i, line) in original.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["seq"], i as u64, "{line}");
        if i > 0 {
            let expected = hex(&LineHasher::unkeyed().hash(original[i - 1].as_bytes()));
            assert_eq!(record["prev"], expected.as_str(), "{line}");
        }
    }

    let summary = verify(&[&file]).expect("a real run verifies");
    assert_eq!(summary.records as usize, original.len() - 1);
    let (code, line) = verify_cli(&[file.to_str().unwrap()]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("ok: 1 file(s), "), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("audit.jsonl");
    let check = |lines: Vec<String>, line: u64, says: &str| {
        write_lines(&tampered, &lines);
        let broken = verify(&[&tampered]).expect_err("tampering must be found");
        assert_eq!(broken.at.line, line, "{broken}");
        assert!(broken.message.contains(says), "{broken}");
        let (code, out) = verify_cli(&[tampered.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("{}:{line}: ", tampered.display())),
            "{out}"
        );
    };

    // A byte flipped inside line 3 (1-based): a digit of its time, the JSON still valid.
    let mut flipped = original.clone();
    let at = flipped[2].find("\"ts\":\"").unwrap() + 8;
    let mut bytes = flipped[2].clone().into_bytes();
    bytes[at] ^= 0x01;
    flipped[2] = String::from_utf8(bytes).unwrap();
    check(flipped, 3, "edited");
    // A byte flipped so the line is no JSON any more.
    let mut broken_json = original.clone();
    broken_json[3] = broken_json[3].replacen('{', "[", 1);
    check(broken_json, 4, "not a JSON audit record");
    // Line 3 deleted: line 3 is now the old line 4, one record missing before it.
    let mut deleted = original.clone();
    deleted.remove(2);
    check(deleted, 3, "1 record(s) missing");
    // Lines 3 and 4 swapped.
    let mut swapped = original.clone();
    swapped.swap(2, 3);
    check(swapped, 3, "seq is 3 where 2 was expected");
    // A copy of line 2 inserted after line 3.
    let mut inserted = original.clone();
    inserted.insert(3, original[1].clone());
    check(inserted, 4, "inserted");
    // A fabricated record that links correctly to line 3 (the chain is unkeyed) but takes
    // line 4's place in the numbering.
    let mut forged = original.clone();
    let prev = hex(&LineHasher::unkeyed().hash(original[2].as_bytes()));
    forged.insert(
        3,
        format!(r#"{{"seq":3,"prev":"{prev}","event":"request","task":"nobody"}}"#),
    );
    check(forged, 5, "where 4 was expected");

    // Cut in the middle of the last line: a truncated tail, the rest verifies, exit 0.
    let mut cut = original.join("\n").into_bytes();
    cut.truncate(cut.len() - 5);
    std::fs::write(&tampered, &cut).unwrap();
    let summary = verify(&[&tampered]).expect("a torn tail is not tampering");
    assert_eq!(summary.records as usize, original.len() - 2);
    let (code, out) = verify_cli(&[tampered.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "truncated tail at {}:{}",
            tampered.display(),
            original.len()
        )),
        "{out}"
    );
    env.assert_no_leaks();
}

/// A config the API reload can read from disk: the secret comes from a command, the one
/// task's token from `KS_TEST_TOKEN`, which the process has from the start
/// ([`keyswap_tests::harness::assert_reload_env`]); the admin API on a socket.
fn reload_config() -> String {
    ConfigBuilder::new()
        .admin_socket()
        .secret(
            "github",
            Secret::command(&["printf", "%s", GITHUB_REAL], GITHUB_PLACEHOLDER),
        )
        .task(
            "agent",
            Entry::with_token().rule(Rule::api().secrets(&["github"])),
        )
        .yaml()
}

#[tokio::test]
async fn rotation_by_rename_and_api_reload_continues_the_chain_in_a_new_file() {
    // A reload reads the proxy's own environment: the task's token must be in it (the same
    // value the harness hands the first load), so that a wrong token is refused at CONNECT.
    keyswap_tests::harness::assert_reload_env();
    let files = tempfile::tempdir().unwrap();
    let config_path = files.path().join("keyswap.yaml");
    let options = ProxyOptions {
        admin: true,
        config_path: Some(config_path.clone()),
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&reload_config(), Alpn::Both, options).await;
    std::fs::write(&config_path, &env.config_yaml).unwrap();
    let admin = AdminClient::new(AdminTarget::Socket(
        env.proxy.admin_socket().unwrap().to_path_buf(),
    ));
    traffic(&env, 2).await;
    env.proxy.flush_audit();

    // logrotate: rename, then ask for a reload.
    let current = env.audit_path();
    let rotated = env.dir.path().join("audit.jsonl.1");
    std::fs::rename(&current, &rotated).unwrap();
    admin.reload().await.expect("reload");
    traffic(&env, 3).await;
    env.proxy.flush_audit();

    let old = lines_of(&rotated);
    let new = lines_of(&current);
    let header: serde_json::Value = serde_json::from_str(&new[0]).unwrap();
    assert_eq!(header["event"], "audit_start");
    assert_eq!(header["seq"], 0);
    let last_old = hex(&LineHasher::unkeyed().hash(old.last().unwrap().as_bytes()));
    assert_eq!(header["prev"], last_old.as_str());
    assert!(new.len() > 3, "{new:?}");

    let summary = verify(&[&rotated, &current]).expect("the rotated set verifies");
    assert_eq!(summary.segments, 2);
    assert_eq!(summary.records as usize, old.len() + new.len() - 2);
    let (code, out) = verify_cli(&[rotated.to_str().unwrap(), current.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 2 file(s)"), "{out}");

    // Out of order, or the old file's last line deleted: the new file's header says so.
    let broken = verify(&[&current, &rotated]).expect_err("wrong order");
    assert_eq!(
        (broken.at.file.clone(), broken.at.line),
        (rotated.clone(), 1),
        "{broken}"
    );
    let mut shortened = old.clone();
    shortened.pop();
    let copy = files.path().join("audit.jsonl.1");
    write_lines(&copy, &shortened);
    let broken = verify(&[&copy, &current]).expect_err("old tail removed");
    assert_eq!(
        (broken.at.file.clone(), broken.at.line),
        (current.clone(), 1),
        "{broken}"
    );
    assert!(broken.message.contains("file before"), "{broken}");

    // The new file alone verifies, noting that it continues an earlier one.
    let alone = verify(&[&current]).expect("the new file alone");
    assert!(
        alone.notes.iter().any(|n| n.contains("continues a chain")),
        "{alone:?}"
    );

    // A reload with nothing renamed writes nothing new.
    let before = std::fs::read(&current).unwrap();
    admin.reload().await.expect("reload");
    env.proxy.flush_audit();
    assert_eq!(std::fs::read(&current).unwrap(), before);
    env.assert_no_leaks();
}

/// A `keyswap run` process whose stderr is read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = keyswap_command(&["run", "--config", config.to_str().unwrap()])
            .env("KEYSWAP_LOG", "info")
            // The task has a token, so a CONNECT without one is refused at once (407).
            .env("KS_AUDIT_TOKEN", "audit-chain-token-0123")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyswap run");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; ends when the process's stderr closes.
    fn wait_for(&mut self, needle: &str) -> String {
        for line in self.lines.iter() {
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!("keyswap never logged {needle:?}:\n{}", self.seen.join("\n"));
    }

    fn addr(&mut self) -> String {
        let line = self.wait_for("keyswap listening");
        let start = line.find("addr=").expect("addr in the line") + 5;
        line[start..].split_whitespace().next().unwrap().to_string()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One CONNECT the proxy refuses: one audit record, queued before the refusal is sent.
fn refused_connect(addr: &str) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .write_all(b"CONNECT not-allowed.test:443 HTTP/1.1\r\nHost: not-allowed.test:443\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
}

#[test]
fn sighup_reopens_after_rename_and_a_restart_links_past_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyswap.yaml");
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(
        &config,
        format!(
            "version: 1\nlisten: 127.0.0.1:0\nca_dir: {d}/ca\naudit_log: {d}/audit.jsonl\nadmin:\n  socket: {d}/admin.sock\ntasks:\n  agent:\n    token_env: KS_AUDIT_TOKEN\n    allow:\n      - host: api.example.test\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut running = Running::start(&config);
    let addr = running.addr();
    for _ in 0..3 {
        refused_connect(&addr);
    }
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    running.signal("-HUP");
    running.wait_for("audit log reopened");
    running.wait_for("config reloaded");
    for _ in 0..2 {
        refused_connect(&addr);
    }
    // SIGTERM: a clean stop writes everything queued.
    running.signal("-TERM");
    running.wait();

    let summary = verify(&[&rotated, &audit]).expect("the SIGHUP-rotated set verifies");
    // task_issued at start, 5 refusals, task_revoked at the stop.
    assert_eq!(summary.segments, 2, "{summary}");
    assert!(summary.records >= 5, "{summary}");
    let (code, out) = verify_cli(&[rotated.to_str().unwrap(), audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // A torn write (a crash mid-line), then a restart on the same file.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .unwrap();
    file.write_all(br#"{"seq":3,"prev":"00","event":"requ"#)
        .unwrap();
    drop(file);
    let (code, out) = verify_cli(&[rotated.to_str().unwrap(), audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("truncated tail at"), "{out}");

    let mut running = Running::start(&config);
    let addr = running.addr();
    refused_connect(&addr);
    // kill -9: whatever was written is whole.
    running.signal("-KILL");
    running.wait();
    let lines = lines_of(&audit);
    let restart = lines
        .iter()
        .position(|l| l.contains("\"torn_tail\""))
        .expect("the restart's header names the torn line");
    let header: serde_json::Value = serde_json::from_str(&lines[restart]).unwrap();
    assert_eq!(header["event"], "audit_start");
    assert_eq!(header["seq"], 3);
    let summary = verify(&[&rotated, &audit]).expect("the restart links past the torn line");
    assert_eq!(summary.segments, 3, "{summary}");
    assert!(
        summary.notes.iter().any(|n| n.contains("torn line")),
        "{summary}"
    );
}

/// The same bytes with `seq` and `prev` taken off the front: what the request path queued.
fn unchained(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    let prev = match &value["prev"] {
        serde_json::Value::String(s) => format!("\"{s}\""),
        _ => "null".to_string(),
    };
    let prefix = format!("{{\"seq\":{},\"prev\":{prev},", value["seq"]);
    format!("{{{}", line.strip_prefix(&prefix).expect("chained line"))
}

/// Recomputes every link of `lines` with `hasher`, changing the headers with `header`.
fn rechain(lines: &[String], hasher: LineHasher, header: impl Fn(String) -> String) -> Vec<String> {
    let mut chain = Chain::new(hasher);
    let mut out = Vec::new();
    for line in lines {
        let mut body = unchained(line);
        if body.contains("\"event\":\"audit_start\"") {
            body = header(body);
        }
        chain.append(body.as_bytes(), &mut out);
    }
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn a_keyed_chain_recomputed_without_the_key_fails() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("audit.key");
    let key = "a3f9c2e1b5d4f60a8e97c3b1d2e4f6a8b0c2d4e6f8a1b3c5";
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let template = format!(
        "{DEFAULT_CONFIG}audit:\n  key_file: {}\n",
        key_file.display()
    );
    let env = TestEnv::start_with(&template, Alpn::Both).await;
    env.remember_token(key);
    traffic(&env, 3).await;
    env.proxy.flush_audit();
    let file = env.audit_path();
    let original = lines_of(&file);
    let header: serde_json::Value = serde_json::from_str(&original[0]).unwrap();
    let key_id = keyswap::audit::chain::key_id(key.as_bytes());
    assert_eq!(header["chain"], "hmac-sha256");
    assert_eq!(header["key_id"], key_id.as_str());

    let keyed = LineHasher::keyed(key.as_bytes());
    let summary = audit_verify::verify(std::slice::from_ref(&file), std::slice::from_ref(&keyed))
        .expect("verifies with the key");
    assert_eq!(summary.records as usize, original.len() - 1);
    let (code, out) = verify_cli(&[
        file.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&key_id), "{out}");
    // Without the key it cannot be checked at all.
    let (code, out) = verify_cli(&[file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pass that key with --key-file"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let forged = dir.path().join("audit.jsonl");
    let mut edited = original.clone();
    edited[2] = edited[2].replacen("\"GET\"", "\"PUT\"", 1);
    let attempts = [
        // Recomputed with SHA-256, still claiming the key.
        rechain(&edited, LineHasher::unkeyed(), |h| h),
        // Recomputed with SHA-256, header rewritten as an unkeyed chain.
        rechain(&edited, LineHasher::unkeyed(), |h| {
            h.replace(&format!("\"key_id\":\"{key_id}\""), "\"key_id\":null")
                .replace("hmac-sha256", "sha256")
        }),
        // Recomputed under another key, claiming the real key's id.
        rechain(
            &edited,
            LineHasher::keyed(b"attacker-key-0123456789abcdefghijkl"),
            |h| h,
        ),
    ];
    for (i, lines) in attempts.iter().enumerate() {
        assert_ne!(lines, &original);
        write_lines(&forged, lines);
        let broken =
            audit_verify::verify(std::slice::from_ref(&forged), std::slice::from_ref(&keyed))
                .expect_err("a chain recomputed without the key must fail");
        let (code, out) = verify_cli(&[
            forged.to_str().unwrap(),
            "--key-file",
            key_file.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "attempt {i}: {out}");
        assert!(out.contains(&broken.to_string()), "attempt {i}: {out}");
    }
    // The control: recomputed *with* the key, the edit is invisible — that is what the key
    // protects, so it must stay out of the attacker's reach.
    write_lines(&forged, &rechain(&edited, keyed.clone(), |h| h));
    audit_verify::verify(std::slice::from_ref(&forged), &[keyed]).expect("recomputed with the key");

    // The key is nowhere: not in the audit file, the log, or the verify output.
    let audit_bytes = std::fs::read(&file).unwrap();
    assert!(!String::from_utf8_lossy(&audit_bytes).contains(key));
    assert!(!out.contains(key));
    env.assert_no_leaks();
}
