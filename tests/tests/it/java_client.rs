//! A real JVM through keyswap: `tests/java/ProxyProbe.java` (JDK `java.net.http.HttpClient`)
//! run with exactly the environment `keyswap exec` builds ([`keyswap::host::child_env`]). The agent
//! holds a placeholder; the upstream must receive the real value, and nothing the JVM prints
//! may hold it.
//!
//! The other tests pin down what the JDK does, which the module docs of `child_env` rely on.
//!
//! Needs `java`, `javac` and `keytool` on PATH. Without them the tests print a notice and pass,
//! except under `CI=true`, where they fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyswap::host::child_env::{self, ProxyEndpoint, TrustFiles};
use keyswap_tests::harness::{TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};

const TOKEN_VAR: &str = "GITHUB_TOKEN";

/// Whether the JDK tools are here; under `CI=true` their absence fails the test.
fn jdk_available() -> bool {
    let found = ["java", "javac", "keytool"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg(if *tool == "keytool" {
                "-help"
            } else {
                "-version"
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("java, javac and keytool must be on PATH in CI (install a JDK 17+)");
        }
        // Straight to stderr: libtest captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** NOTICE: java/javac/keytool not on PATH: the Java client tests did NOT run ***\n"
        );
    }
    found
}

/// The JDK tools see only what a child of `keyswap exec` would, plus PATH to find themselves.
fn jdk_command(program: &str, env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .envs(env)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
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

async fn run(mut cmd: tokio::process::Command) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("JDK tool finished within 120 s")
        .expect("JDK tool runs");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Compiles ProxyProbe into a fresh directory.
async fn compile_probe() -> tempfile::TempDir {
    let classes = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/ProxyProbe.java");
    let mut cmd = jdk_command("javac", &BTreeMap::new());
    cmd.arg("-d").arg(classes.path()).arg(&source);
    let out = run(cmd).await;
    assert!(out.success, "javac failed\n{}", out.shown());
    classes
}

/// The child environment for task `agent`, with the placeholder in `GITHUB_TOKEN`.
fn agent_env(env: &TestEnv, trust: &TrustFiles) -> BTreeMap<String, String> {
    child_env::task_env(
        ProxyEndpoint {
            task: "agent",
            token: Some(AGENT_TOKEN),
            addr: env.proxy.addr(),
        },
        trust,
        &[(TOKEN_VAR.to_string(), GITHUB_PLACEHOLDER.to_string())],
    )
}

fn trust_files(env: &TestEnv) -> TrustFiles {
    child_env::write_trust_files(&env.dir.path().join("trust"), &env.proxy_ca_pem)
        .expect("trust files")
}

/// Runs ProxyProbe against `path` on the API host; what the JVM printed is checked for leaks
/// and kept for [`TestEnv::assert_no_leaks`].
async fn probe(
    env: &TestEnv,
    classes: &Path,
    child: &BTreeMap<String, String>,
    path: &str,
    mode: &str,
) -> Output {
    let mut cmd = jdk_command("java", child);
    cmd.arg("-cp")
        .arg(classes)
        .arg("ProxyProbe")
        .arg(format!("https://{API_HOST}{path}"))
        .arg(TOKEN_VAR)
        .arg(mode);
    let out = run(cmd).await;
    assert_no_real_secret("java stdout", out.stdout.as_bytes());
    assert_no_real_secret("java stderr", out.stderr.as_bytes());
    env.keep(&[], &out.stdout);
    env.keep(&[], &out.stderr);
    out
}

#[tokio::test]
async fn java_httpclient_holds_only_the_placeholder() {
    if !jdk_available() {
        return;
    }
    let classes = compile_probe().await;
    let env = TestEnv::start().await;
    let trust = trust_files(&env);
    let child = agent_env(&env, &trust);
    // "header": proxy credentials preemptively on the CONNECT; "implicit-proxy": the same from
    // a client built without .proxy(...), as most Java programs are.
    for (mode, path) in [
        ("header", "/echo/java"),
        ("implicit-proxy", "/echo/java-implicit"),
    ] {
        let out = probe(&env, classes.path(), &child, path, mode).await;
        assert!(out.success, "ProxyProbe {mode} failed\n{}", out.shown());
        assert!(
            out.stdout.starts_with("status=200\n"),
            "{mode}\n{}",
            out.shown()
        );
        let seen = env
            .upstream
            .seen()
            .into_iter()
            .find(|r| r.path_and_query == path)
            .unwrap_or_else(|| panic!("{mode}: request did not reach the upstream"));
        assert!(
            seen.header("authorization") == Some(&format!("Bearer {GITHUB_REAL}")),
            "{mode}: upstream did not receive the real token"
        );
        assert!(
            seen.header("proxy-authorization").is_none(),
            "{mode}: proxy credentials reached the upstream"
        );
        // The echo quotes the real value back; the JVM must see the placeholder instead.
        assert!(
            out.stdout.contains(GITHUB_PLACEHOLDER),
            "{mode}: echo not scrubbed back to the placeholder"
        );
        let record = env.audit_where(|r| r["path"] == path).await;
        assert_eq!(record["task"], "agent");
        assert_eq!(record["secrets"], serde_json::json!(["github"]));
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn keytool_lists_the_keyswap_ca_as_a_trusted_cert_entry() {
    if !jdk_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = keyswap_certs::CertificateAuthority::generate("keyswap keytool test CA").expect("CA");
    let trust = child_env::write_trust_files(dir.path(), ca.cert_pem()).expect("trust files");
    let mut cmd = jdk_command("keytool", &BTreeMap::new());
    cmd.args(["-list", "-keystore"])
        .arg(&trust.java_truststore)
        .args(["-storetype", "PKCS12", "-storepass"])
        .arg(&trust.java_truststore_password);
    let out = run(cmd).await;
    assert!(out.success, "keytool -list failed\n{}", out.shown());
    let entry = out
        .stdout
        .lines()
        .map(str::trim_end)
        .find(|l| l.starts_with("keyswap-ca,"))
        .unwrap_or_else(|| panic!("keyswap-ca not listed\n{}", out.shown()));
    assert!(entry.ends_with("trustedCertEntry,"), "{entry}");
    // Every certificate in the bundle is a trusted entry in the store.
    let bundle = std::fs::read(&trust.bundle_pem).expect("bundle");
    let in_bundle = certificate_count(&bundle);
    let trusted = out
        .stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("trustedCertEntry,"))
        .count();
    assert_eq!(trusted, in_bundle, "{}", out.shown());
}

fn certificate_count(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

#[tokio::test]
async fn java_tool_options_carry_a_trust_store_path_with_spaces_and_quotes() {
    if !jdk_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let trust_dir: PathBuf = dir.path().join("it's a \"trust\" dir");
    let ca = keyswap_certs::CertificateAuthority::generate("keyswap quoting test CA").expect("CA");
    let trust = child_env::write_trust_files(&trust_dir, ca.cert_pem()).expect("trust files");
    let child = child_env::task_env(
        ProxyEndpoint {
            task: "t",
            token: None,
            addr: "127.0.0.1:9".parse().expect("addr"),
        },
        &trust,
        &[],
    );
    let mut cmd = jdk_command("java", &child);
    cmd.args(["-XshowSettings:properties", "-version"]);
    let out = run(cmd).await;
    assert!(
        out.success,
        "the JVM rejected JAVA_TOOL_OPTIONS\n{}",
        out.shown()
    );
    let expected = format!(
        "javax.net.ssl.trustStore = {}",
        trust.java_truststore.display()
    );
    assert!(
        out.stderr.lines().any(|l| l.trim() == expected),
        "trust store path mangled\n{}",
        out.shown()
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim_end() == "    jdk.http.auth.tunneling.disabledSchemes =".trim_end()),
        "{}",
        out.shown()
    );
}

// ---- What the JDK does without each piece ProxyProbe and keyswap's environment provide ----
// These pin down OpenJDK 17's behaviour, which `keyswap::host::child_env`'s docs record. Other
// versions may differ (see the notices they print); the assertions apply to 17 only.

/// The running JDK's feature version (`17` for `17.0.15`), from `java -version`.
async fn jdk_feature_version() -> Option<u32> {
    let mut cmd = jdk_command("java", &BTreeMap::new());
    cmd.arg("-version");
    let out = run(cmd).await;
    let quoted = out.stderr.split('"').nth(1)?;
    let feature = quoted.split(['.', '-', '+']).next()?;
    feature.parse().ok()
}

#[tokio::test]
async fn java_authenticator_drops_the_application_authorization_header() {
    if !jdk_available() {
        return;
    }
    let classes = compile_probe().await;
    let version = jdk_feature_version().await;
    let env = TestEnv::start().await;
    let trust = trust_files(&env);
    let child = agent_env(&env, &trust);
    let path = "/echo/authenticator";
    let out = probe(&env, classes.path(), &child, path, "authenticator").await;
    assert!(out.success, "ProxyProbe failed\n{}", out.shown());
    // The Authenticator does get the tunnel open (answering keyswap's 407)...
    assert!(out.stdout.starts_with("status=200\n"), "{}", out.shown());
    let authorization = env.upstream.authorization_for(path);
    if version == Some(17) {
        // ...but with an Authenticator set, JDK 17 drops user-set Authorization headers.
        assert!(
            authorization.is_none(),
            "JDK 17 sent the application's Authorization header despite the Authenticator"
        );
    } else {
        eprintln!(
            "NOTICE: JDK {version:?} with an Authenticator: application Authorization header {}",
            if authorization.is_some() {
                "sent"
            } else {
                "dropped"
            }
        );
    }
    env.assert_no_leaks();
}

#[tokio::test]
async fn java_basic_for_tunnels_needs_the_disabled_schemes_override() {
    if !jdk_available() {
        return;
    }
    let classes = compile_probe().await;
    let version = jdk_feature_version().await;
    let env = TestEnv::start().await;
    let trust = trust_files(&env);
    let mut child = agent_env(&env, &trust);
    let opts = child.get_mut("JAVA_TOOL_OPTIONS").expect("set");
    *opts = opts
        .split(' ')
        .filter(|o| !o.starts_with("-Djdk.http.auth."))
        .collect::<Vec<_>>()
        .join(" ");
    let path = "/echo/default-schemes";
    let out = probe(&env, classes.path(), &child, path, "header").await;
    let refused = out.stdout.starts_with("status=407\n");
    if version == Some(17) {
        // The JDK's default disabledSchemes=Basic strips the Basic Proxy-Authorization from
        // the CONNECT, so keyswap never learns the task.
        assert!(refused, "expected keyswap's 407\n{}", out.shown());
        assert!(env.upstream.authorization_for(path).is_none());
    } else {
        eprintln!("NOTICE: JDK {version:?} without the override: refused={refused}");
    }
    // Without any proxy credentials the agent gets keyswap's 407 as the response.
    let child = agent_env(&env, &trust);
    let out = probe(&env, classes.path(), &child, "/echo/none", "none").await;
    assert!(out.stdout.starts_with("status=407\n"), "{}", out.shown());
    assert_eq!(
        env.upstream.seen_count(),
        0,
        "a request reached the upstream"
    );
    env.assert_no_leaks();
}
