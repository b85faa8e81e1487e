//! Credential leases against fakes that keep the upstreams' documented contracts: a GitHub App
//! installation token is minted per task on its first request, narrowed to its policy's
//! repositories, swapped for that task only, scrubbed from what comes back, and revoked
//! upstream when the task ends (revoke, expiry, a reload that drops its policy); an OAuth2
//! access token is minted from a rotating refresh token, one refresh at a time, the rotated
//! token written back before use, and `invalid_grant` makes the secret unavailable without a
//! retry loop. Real clients (curl, Python `requests`) act as the agent.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyswap::api::{IssueRequest, IssuedTask};
use keyswap::state::tasks::RevokeWhy;
use keyswap::ProxyOptions;
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::Alpn;
use keyswap_tests::fake_github::{AppKey, FakeGithub, PLACEHOLDER};
use keyswap_tests::fake_oauth::FakeOauth;
use keyswap_tests::harness::{test_env_values, Reply, TestEnv};
use keyswap_tests::secrets::assert_no_real_secret;
use keyswap_tests::tools::available;

pub(crate) const APP_ID: u64 = 4242;
pub(crate) const INSTALLATION: u64 = 777;
const CLIENT_ID: &str = "KSREAL_client_id_lease_tests_01";
const CLIENT_SECRET: &str = "KSREAL_client_secret_lease_tests_01";
const INITIAL_REFRESH: &str = "KSREAL_rt_initial_lease_tests_0001";
pub(crate) const LINEAR_PLACEHOLDER: &str = "lin_keyswap_000000000000000000";

/// The fakes, their CA and the files the config reads, outside the proxy's own directory.
pub(crate) struct Lab {
    pub(crate) env: TestEnv,
    pub(crate) github: FakeGithub,
    pub(crate) oauth: FakeOauth,
    /// Kept for the test's life: its PEM lines are looked for in every output.
    _key: AppKey,
    pub(crate) files: tempfile::TempDir,
}

fn rules() -> &'static str {
    r#"    allow:
      - host: api.github.test
        paths: ["/repos/acme/**"]
        secrets: [github]
      - host: oauth.test
        paths: ["/api/**"]
        secrets: [linear]
      - host: github.test
        paths: ["/acme/**"]
        secrets: [github]
      - host: other.upstream.test
        paths: ["/sink"]
        secrets: [github]
      - host: api.upstream.test
        paths: ["/sink"]
        secrets: [github]
        swap_in: [headers, body]
      - host: api.upstream.test
        paths: ["/echo"]
"#
}

/// The config: the GitHub App secret, the OAuth2 secret, and `policies` (name → github scope).
pub(crate) fn template(
    files: &Path,
    gh_port: u16,
    oauth_port: u16,
    policies: &[(&str, &str)],
) -> String {
    let f = files.display();
    let mut yaml = format!(
        r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {{dir}}/ca
audit_log: {{dir}}/audit.jsonl
limits:
  per_task:
    upstream_connections: 128
    in_flight: 128
upstream:
  extra_roots: {f}/roots.pem
  resolve:
    "api.github.test:443": "127.0.0.1:{gh_port}"
    "github.test:443": "127.0.0.1:{gh_port}"
    "oauth.test:443": "127.0.0.1:{oauth_port}"
    "api.upstream.test:443": "127.0.0.1:{{https_port}}"
    "other.upstream.test:443": "127.0.0.1:{{https_port}}"
secrets:
  github:
    github_app:
      app_id: {APP_ID}
      installation_id: {INSTALLATION}
      private_key: {{from_file: {f}/app.pem}}
      api: https://api.github.test
    placeholder: {PLACEHOLDER}
    env: GITHUB_TOKEN
  linear:
    oauth2:
      token_url: https://oauth.test/oauth/token
      client_id: {{from_env: KS_LEASE_CLIENT_ID}}
      client_secret: {{from_env: KS_LEASE_CLIENT_SECRET}}
      refresh_token: {{from_file: {f}/linear.refresh}}
    placeholder: {LINEAR_PLACEHOLDER}
policies:
"#
    );
    for (name, github) in policies {
        yaml.push_str(&format!("  {name}:\n    github: {github}\n{}", rules()));
    }
    yaml
}

pub(crate) const POLICIES: [(&str, &str); 2] = [
    (
        "widget",
        "{repositories: [widget], permissions: {contents: write}}",
    ),
    (
        "gadget",
        "{repositories: [gadget], permissions: {contents: read}}",
    ),
];

pub(crate) const EXTRA_ENV: [(&str, &str); 2] = [
    ("KS_LEASE_CLIENT_ID", CLIENT_ID),
    ("KS_LEASE_CLIENT_SECRET", CLIENT_SECRET),
];

pub(crate) async fn start() -> Lab {
    let files = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate("fake services CA").expect("CA");
    std::fs::write(files.path().join("roots.pem"), ca.cert_pem()).expect("roots");
    let key = AppKey::generate();
    std::fs::write(files.path().join("app.pem"), &key.pem).expect("key");
    std::fs::write(
        files.path().join("linear.refresh"),
        format!("{INITIAL_REFRESH}\n"),
    )
    .expect("refresh");
    let github = FakeGithub::start(
        &ca,
        &key,
        APP_ID,
        INSTALLATION,
        &["widget", "gadget", "plans"],
    )
    .await;
    let oauth = FakeOauth::start(&ca, CLIENT_ID, CLIENT_SECRET, INITIAL_REFRESH).await;
    let yaml = template(
        files.path(),
        github.server.port(),
        oauth.server.port(),
        &POLICIES,
    );
    let env = TestEnv::start_with_env(&yaml, Alpn::Both, ProxyOptions::default(), &EXTRA_ENV).await;
    for line in key.body_lines() {
        env.remember_secret(&line);
    }
    env.remember_secret(INITIAL_REFRESH);
    Lab {
        env,
        github,
        oauth,
        _key: key,
        files,
    }
}

impl Lab {
    pub(crate) fn issue(&self, policy: &str, ttl: &str) -> IssuedTask {
        let issued = self
            .env
            .proxy
            .issue(&IssueRequest {
                policy: policy.into(),
                ttl: Some(ttl.into()),
                ..IssueRequest::default()
            })
            .expect("task issued");
        self.env.remember_token(&issued.token);
        issued
    }

    /// One GET as `task` with `Authorization: Bearer <placeholder>`.
    pub(crate) async fn get(
        &self,
        task: &IssuedTask,
        host: &str,
        path: &str,
        placeholder: &str,
    ) -> Reply {
        let opts = self.env.client(
            Some((&task.id, &task.token)),
            &format!("{host}:443"),
            Alpn::Both,
        );
        let auth = format!("Bearer {placeholder}");
        self.env
            .request(&opts, "GET", path, &[("authorization", &auth)])
            .await
    }

    /// Every value the fakes issued is looked for like a real secret in everything kept.
    pub(crate) fn assert_no_leaks(&self) {
        for token in self.github.tokens() {
            self.env.remember_secret(&token.token);
        }
        for token in self.oauth.access_tokens() {
            self.env.remember_secret(&token);
        }
        if let Some(refresh) = self.oauth.current_refresh_token() {
            self.env.remember_secret(&refresh);
        }
        self.env.assert_no_leaks();
    }

    pub(crate) fn reload(&self, policies: &[(&str, &str)]) {
        let yaml = template(
            self.files.path(),
            self.github.server.port(),
            self.oauth.server.port(),
            policies,
        )
        .replace("{dir}", &self.env.dir.path().display().to_string())
        .replace("{https_port}", &self.env.upstream.port().to_string());
        let mut env: HashMap<String, String> = test_env_values();
        env.extend(
            EXTRA_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let config =
            keyswap_config::load_str(&yaml, &self.env.dir.path().join("keyswap.yaml"), &env)
                .unwrap_or_else(|e| panic!("reload config invalid:\n{e}"));
        self.env.proxy.reload(config).expect("reload");
    }
}

/// The one token the fake issued that reached `repo`'s API for this task's request.
fn token_used(lab: &Lab, path: &str) -> String {
    let used = lab.github.tokens_used_for(path);
    assert_eq!(
        used.len(),
        1,
        "expected one request to {path} at the fake GitHub"
    );
    used[0].clone()
}

#[tokio::test]
async fn two_tasks_get_their_own_tokens_narrowed_to_their_repositories() {
    let lab = start().await;
    let (a, b) = (lab.issue("widget", "30m"), lab.issue("gadget", "30m"));
    assert_eq!(
        lab.github.mints(),
        0,
        "a task that used no lease minted something"
    );

    let ok_a = lab
        .get(&a, "api.github.test", "/repos/acme/widget", PLACEHOLDER)
        .await;
    assert_eq!(ok_a.status, 200, "{}", ok_a.body);
    let ok_b = lab
        .get(&b, "api.github.test", "/repos/acme/gadget", PLACEHOLDER)
        .await;
    assert_eq!(ok_b.status, 200, "{}", ok_b.body);
    let (token_a, token_b) = (
        token_used(&lab, "/repos/acme/widget"),
        token_used(&lab, "/repos/acme/gadget"),
    );
    assert_ne!(
        token_a, token_b,
        "two tasks got the same installation token"
    );
    assert_eq!(lab.github.mints(), 2);

    // keyswap's rule lets both tasks reach every acme repository: GitHub refuses the token.
    let outside = lab
        .get(&a, "api.github.test", "/repos/acme/gadget", PLACEHOLDER)
        .await;
    assert_eq!(outside.status, 403, "task a's token reached gadget");
    let plans = lab
        .get(&b, "api.github.test", "/repos/acme/plans", PLACEHOLDER)
        .await;
    assert_eq!(
        plans.status, 403,
        "task b's token reached a repository outside its policy"
    );
    assert_eq!(
        lab.github.mints(),
        2,
        "a task's second request minted again"
    );

    // The upstream reflects the token: the agent sees the placeholder.
    let echo = lab
        .get(
            &a,
            "api.github.test",
            "/repos/acme/widget/echo",
            PLACEHOLDER,
        )
        .await;
    assert_eq!(echo.status, 200);
    assert!(
        echo.body.contains(PLACEHOLDER),
        "the echoed token was not scrubbed to the placeholder: {}",
        echo.body.replace(&token_a, "<token>")
    );

    let minted = lab
        .env
        .audit_at_least(2, |r| r["event"] == "credential_minted")
        .await;
    assert_eq!(minted.len(), 2);
    for record in &minted {
        assert_eq!(record["secret"], "github");
        assert_eq!(record["kind"], "github_app");
        assert_eq!(record["fingerprint"].as_str().map(str::len), Some(4));
    }
    lab.assert_no_leaks();
}

#[tokio::test]
async fn ended_tasks_tokens_are_revoked_upstream_on_revoke_expiry_and_reload() {
    let lab = start().await;
    let revoked = lab.issue("widget", "30m");
    let expiring = lab.issue("widget", "3s");
    let reloaded = lab.issue("gadget", "30m");
    for (task, repo) in [
        (&revoked, "widget"),
        (&expiring, "widget"),
        (&reloaded, "gadget"),
    ] {
        let reply = lab
            .get(
                task,
                "api.github.test",
                &format!("/repos/acme/{repo}"),
                PLACEHOLDER,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let tokens = lab.github.tokens();
    assert_eq!(tokens.len(), 3);

    lab.env
        .proxy
        .revoke(&revoked.id, RevokeWhy::Api)
        .expect("revoke");
    lab.reload(&POLICIES[..1]);
    for (task, why) in [
        (&revoked, "api"),
        (&expiring, "expired"),
        (&reloaded, "reload"),
    ] {
        let record = lab
            .env
            .audit_where(|r| r["event"] == "credential_revoked" && r["task"] == task.id.as_str())
            .await;
        assert_eq!(record["why"], why);
        assert_eq!(record["status"], 204, "GitHub's answer to the revocation");
    }
    assert_eq!(lab.github.revocations().len(), 3);
    for token in &tokens {
        assert!(lab
            .github
            .revocations()
            .iter()
            .any(|(t, s)| *t == token.token && *s == 204));
        let repo = &token.repositories[0];
        assert_eq!(
            lab.github.status_for(&token.token, repo),
            401,
            "a revoked token still works"
        );
    }
    lab.assert_no_leaks();
}

#[tokio::test]
async fn a_token_is_refreshed_before_expiry_and_a_failed_revocation_is_retried() {
    let lab = start().await;
    // Refreshed a quarter of its lifetime before it expires: about 3 s after the mint.
    lab.github.set_lifetime(Duration::from_secs(4));
    let task = lab.issue("widget", "30m");
    let reply = lab
        .get(&task, "api.github.test", "/repos/acme/widget", PLACEHOLDER)
        .await;
    assert_eq!(reply.status, 200);
    lab.github.set_lifetime(Duration::from_secs(3600));
    let first = lab.github.tokens()[0].token.clone();
    let refreshed = lab
        .env
        .audit_where(|r| r["event"] == "credential_refreshed" && r["task"] == task.id.as_str())
        .await;
    assert_eq!(refreshed["secret"], "github");
    let replaced = lab
        .env
        .audit_where(|r| r["event"] == "credential_revoked" && r["why"] == "replaced")
        .await;
    assert_eq!(replaced["status"], 204);
    assert_eq!(
        lab.github.status_for(&first, "widget"),
        401,
        "the replaced token still works"
    );
    let reply = lab
        .get(&task, "api.github.test", "/repos/acme/widget", PLACEHOLDER)
        .await;
    assert_eq!(reply.status, 200);
    let second = lab.github.tokens()[1].token.clone();
    assert_eq!(
        lab.github.tokens_used_for("/repos/acme/widget").last(),
        Some(&second)
    );

    // GitHub is down when the task ends: the failure is audited and the revocation retried.
    lab.github.set_down(true);
    lab.env
        .proxy
        .revoke(&task.id, RevokeWhy::Api)
        .expect("revoke");
    let failed = lab
        .env
        .audit_where(|r| r["event"] == "credential_revoke_failed" && r["task"] == task.id.as_str())
        .await;
    assert_eq!(failed["retry"], true);
    assert_eq!(failed["attempt"], 1);
    lab.github.set_down(false);
    let revoked = lab
        .env
        .audit_where(|r| r["event"] == "credential_revoked" && r["why"] == "api")
        .await;
    assert_eq!(revoked["status"], 204);
    assert_eq!(lab.github.status_for(&second, "widget"), 401);
    lab.assert_no_leaks();
}

/// The status and reason of every reply that is not 200.
fn failed(replies: &[Reply]) -> Vec<(u16, Option<String>)> {
    replies
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| (r.status, r.reason().map(str::to_string)))
        .collect()
}

#[tokio::test]
async fn fifty_concurrent_first_requests_mint_one_token_and_one_refresh() {
    let lab = start().await;
    let task = lab.issue("widget", "30m");
    let github =
        (0..50).map(|_| lab.get(&task, "api.github.test", "/repos/acme/widget", PLACEHOLDER));
    let oauth = (0..50).map(|_| lab.get(&task, "oauth.test", "/api/me", LINEAR_PLACEHOLDER));
    let (github, oauth) = tokio::join!(
        futures_util::future::join_all(github),
        futures_util::future::join_all(oauth)
    );
    assert!(
        github.iter().all(|r| r.status == 200),
        "a GitHub request failed: {:?}",
        failed(&github)
    );
    assert!(
        oauth.iter().all(|r| r.status == 200),
        "an OAuth request failed: {:?}",
        failed(&oauth)
    );
    assert_eq!(
        lab.github.mints(),
        1,
        "50 concurrent requests minted more than once"
    );
    assert_eq!(
        lab.oauth.refreshes(),
        1,
        "50 concurrent requests refreshed more than once"
    );
    lab.assert_no_leaks();
}

#[tokio::test]
async fn oauth_rotation_is_written_back_and_survives_a_restart() {
    let lab = start().await;
    let tasks: Vec<IssuedTask> = (0..4).map(|_| lab.issue("widget", "30m")).collect();
    let replies = futures_util::future::join_all(
        tasks
            .iter()
            .map(|t| lab.get(t, "oauth.test", "/api/me", LINEAR_PLACEHOLDER)),
    )
    .await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "a task got no access token"
    );
    for reply in &replies {
        assert!(
            reply.body.contains(LINEAR_PLACEHOLDER),
            "the echoed access token was not scrubbed"
        );
    }
    assert_eq!(lab.oauth.refreshes(), 4, "one refresh per task");
    assert_eq!(
        lab.oauth.reuse_detected(),
        0,
        "two refreshes raced with one refresh token"
    );
    let file = lab.files.path().join("linear.refresh");
    let current = lab.oauth.current_refresh_token().expect("grant alive");
    assert_eq!(
        std::fs::read_to_string(&file).expect("refresh file").trim(),
        current,
        "the rotated refresh token was not written back"
    );
    assert_eq!(
        std::fs::metadata(&file)
            .expect("refresh file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let minted = lab
        .env
        .audit_at_least(4, |r| {
            r["event"] == "credential_minted" && r["secret"] == "linear"
        })
        .await;
    assert_eq!(minted.len(), 4);

    // A restarted keyswap reads the rotated token from the file: the grant lives on.
    let yaml = template(
        lab.files.path(),
        lab.github.server.port(),
        lab.oauth.server.port(),
        &POLICIES,
    );
    let restarted =
        TestEnv::start_with_env(&yaml, Alpn::Both, ProxyOptions::default(), &EXTRA_ENV).await;
    let issued = restarted
        .proxy
        .issue(&IssueRequest {
            policy: "widget".into(),
            ..IssueRequest::default()
        })
        .expect("issue");
    restarted.remember_token(&issued.token);
    let opts = restarted.client(
        Some((&issued.id, &issued.token)),
        "oauth.test:443",
        Alpn::Both,
    );
    let auth = format!("Bearer {LINEAR_PLACEHOLDER}");
    let reply = restarted
        .request(&opts, "GET", "/api/me", &[("authorization", &auth)])
        .await;
    assert_eq!(reply.status, 200, "the restarted proxy could not refresh");
    assert_eq!(lab.oauth.reuse_detected(), 0);
    for token in lab.oauth.access_tokens() {
        restarted.remember_secret(&token);
    }
    restarted.remember_secret(&lab.oauth.current_refresh_token().unwrap_or_default());
    restarted.assert_no_leaks();
    lab.assert_no_leaks();
}

#[tokio::test]
async fn invalid_grant_makes_the_secret_unavailable_without_a_retry_loop() {
    let lab = start().await;
    lab.oauth.revoke_grant();
    let task = lab.issue("widget", "30m");
    for _ in 0..3 {
        let reply = lab
            .get(&task, "oauth.test", "/api/me", LINEAR_PLACEHOLDER)
            .await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.reason(), Some("secret_unavailable"));
    }
    // The first request asked once; the others were refused without asking again.
    let attempts = lab
        .env
        .audit()
        .iter()
        .filter(|r| r["reason"] == "secret_unavailable")
        .count();
    assert_eq!(attempts, 3);
    assert_eq!(
        lab.oauth.token_requests(),
        1,
        "keyswap asked the provider again after invalid_grant"
    );
    assert_eq!(lab.oauth.refreshes(), 0);
    let log = String::from_utf8_lossy(&lab.env.log()).into_owned();
    assert!(
        log.contains("invalid_grant"),
        "no clear log line about invalid_grant"
    );
    // GitHub is unaffected.
    let reply = lab
        .get(&task, "api.github.test", "/repos/acme/widget", PLACEHOLDER)
        .await;
    assert_eq!(reply.status, 200);
    lab.assert_no_leaks();
}

/// A child with only PATH, HOME and `vars`.
pub(crate) fn command(
    lab: &Lab,
    program: &str,
    vars: &BTreeMap<&str, String>,
) -> tokio::process::Command {
    let home = lab.files.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub(crate) async fn run(lab: &Lab, what: &str, mut cmd: tokio::process::Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    assert_no_real_secret(&format!("{what} stdout"), &out.stdout);
    assert_no_real_secret(&format!("{what} stderr"), &out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    lab.env.keep(&[], &stdout);
    lab.env.keep(&[], &String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).replace(PLACEHOLDER, "<placeholder>")
    );
    stdout
}

#[tokio::test]
async fn curl_and_python_requests_use_a_minted_token_through_keyswap() {
    let lab = start().await;
    let task = lab.issue("widget", "30m");
    let ca: PathBuf = lab.files.path().join("keyswap-ca.pem");
    std::fs::write(&ca, &lab.env.proxy_ca_pem).expect("CA");
    let proxy = format!("http://{}:{}@{}", task.id, task.token, lab.env.proxy.addr());
    let mut vars = BTreeMap::from([("https_proxy", proxy.clone()), ("HTTPS_PROXY", proxy)]);
    if available("curl", "--version") {
        let mut cmd = command(&lab, "curl", &vars);
        cmd.args(["-sS", "--fail", "--cacert"]).arg(&ca).args([
            "-H",
            &format!("Authorization: Bearer {PLACEHOLDER}"),
            "https://api.github.test/repos/acme/widget/echo",
        ]);
        let out = run(&lab, "curl", cmd).await;
        assert!(
            out.contains(PLACEHOLDER),
            "curl did not get the scrubbed echo"
        );
    }
    if available("python3", "--version") {
        vars.insert("REQUESTS_CA_BUNDLE", ca.display().to_string());
        let script = format!(
            "import requests\nr = requests.get('https://oauth.test/api/me', headers={{'Authorization': 'Bearer {LINEAR_PLACEHOLDER}'}})\nprint(r.status_code, r.text)\nr.raise_for_status()\n"
        );
        let mut cmd = command(&lab, "python3", &vars);
        cmd.args(["-c", &script]);
        let out = run(&lab, "python requests", cmd).await;
        assert!(out.starts_with("200"), "python requests got {out}");
        assert!(out.contains(LINEAR_PLACEHOLDER));
    }
    assert!(lab.github.mints() <= 1 && lab.oauth.refreshes() <= 1);
    lab.assert_no_leaks();
}
