//! keyswap's CA as an agent running under another user meets it: the certificate and the
//! directories keyswap creates for it are readable by everyone (whatever the umask), the key
//! by keyswap's user only; and `keyswap ca export` works with none of the secrets' variables
//! set, because it reads only `ca_dir` from the config.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `keyswap ca export ARGS` under `umask 077`, with an empty environment.
fn export_with_umask_077(args: &[&str], cwd: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$0\" ca export \"$@\"")
        .arg(KEYSWAP)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("sh runs")
}

/// Root and setpriv, to read the files as another user; under CI=true their absence fails.
fn can_switch_users() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && setpriv {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("reading the CA as another user needs root and setpriv in CI");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** NOTICE: not root or no setpriv: the CA was NOT read as another user ***\n"
    );
    false
}

fn cat_as_nobody(path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setpriv runs")
        .success()
}

#[test]
fn ca_certificate_is_readable_by_another_user_and_the_key_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The temporary directory stands for a home or /var/lib: other users may traverse it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ca_dir = dir.path().join("state/keyswap/ca");
    let out = export_with_umask_077(&["--ca-dir", ca_dir.to_str().expect("utf-8")], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN CERTIFICATE-----"));

    let cert = ca_dir.join("ca.pem");
    let key = ca_dir.join("ca-key.pem");
    assert_eq!(mode(&key), 0o600, "the key is keyswap's alone");
    assert_eq!(
        mode(&cert),
        0o644,
        "the certificate is public despite umask 077"
    );
    for created in [
        dir.path().join("state"),
        dir.path().join("state/keyswap"),
        ca_dir.clone(),
    ] {
        assert_eq!(
            mode(&created),
            0o755,
            "{} despite umask 077",
            created.display()
        );
    }
    if can_switch_users() {
        assert!(cat_as_nobody(&cert), "another user cannot read ca.pem");
        assert!(!cat_as_nobody(&key), "another user can read ca-key.pem");
    }
}

#[test]
fn an_existing_ca_directory_hidden_from_other_users_is_left_alone_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let out = export_with_umask_077(&["--ca-dir", ca_dir.to_str().expect("utf-8")], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    // An operator (or an older keyswap) made it private: keyswap keeps the mode and says why
    // agents under another user will fail.
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = export_with_umask_077(&["--ca-dir", ca_dir.to_str().expect("utf-8")], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&ca_dir), 0o700);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the CA directory is not readable by other users"),
        "{}",
        text(&out)
    );
}

/// A config whose secrets and task token come from variables that are not set, and one
/// whose `from_command` would fail: `ca export` reads `ca_dir` and nothing else.
const CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: ./exported-ca
audit_log: ./audit.jsonl
secrets:
  github:
    from_env: KS_CA_TEST_UNSET_SECRET
    placeholder: ghp_keyswap_github_0000000000000000000000
  other:
    from_command: ["/nonexistent/secret-helper"]
    placeholder: sk-keyswap-other-placeholder
tasks:
  agent:
    token_env: KS_CA_TEST_UNSET_TOKEN
    allow:
      - host: api.example.test
        secrets: [github, other]
"#;

#[test]
fn ca_export_needs_no_secret_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keyswap.yaml"), CONFIG).expect("config");
    // The same config does not load for `run` or `check` here: the secrets are missing.
    let check = Command::new(KEYSWAP)
        .args(["check", "--config", "keyswap.yaml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("check");
    assert!(!check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stderr).contains("KS_CA_TEST_UNSET_SECRET"));

    let out = Command::new(KEYSWAP)
        .args([
            "ca",
            "export",
            "--config",
            "keyswap.yaml",
            "--out",
            "ca-copy.pem",
        ])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("ca export");
    assert!(out.status.success(), "{}", text(&out));
    let exported = std::fs::read_to_string(dir.path().join("ca-copy.pem")).expect("exported");
    let on_disk = std::fs::read_to_string(dir.path().join("exported-ca/ca.pem")).expect("ca_dir");
    assert_eq!(
        exported, on_disk,
        "the CA was created in the config's ca_dir"
    );

    // A missing config is still an error that names the file and the way out.
    let out = Command::new(KEYSWAP)
        .args(["ca", "export", "--config", "missing.yaml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("ca export");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.yaml") && stderr.contains("--ca-dir"),
        "{stderr}"
    );
    // And a ca_dir that is not a path is located.
    std::fs::write(dir.path().join("bad.yaml"), "version: 1\nca_dir: [a, b]\n").expect("bad");
    let out = Command::new(KEYSWAP)
        .args(["ca", "export", "--config", "bad.yaml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("ca export");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:2:9 ca_dir"), "{stderr}");
}
