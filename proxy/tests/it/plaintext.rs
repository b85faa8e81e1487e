//! Real secret values in plain text in the agent's working tree: `keyswap scan` finds them in
//! every form (raw in a `.env`, base64 in a YAML file, a git remote URL's userinfo in
//! `.git/config`), the check `keyswap exec` runs names each place and no value, and
//! `keyswap import-env` moves a `.env`'s credentials into 0600 files outside the tree, leaving
//! same-prefix placeholders whose config entries `keyswap check` accepts.
//!
//! End to end, `keyswap exec` (embedded, sandboxed, as the agent user) refuses such a tree
//! with exit 125, starts it with `--allow-plaintext` and a warning, and once the other places
//! are cleaned and the `.env` imported, starts the command, which sends the `.env`'s new
//! placeholder with curl and the upstream receives the real value, while the imported secret
//! files read as empty inside the sandbox.
//!
//! Real processes of the built binary, of git and curl; the suite's test secrets (`KSREAL…`),
//! so every output is checked for them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use keyswap_tests::agent_user::agent_user;
use keyswap_tests::harness::{render, test_env_values, ConfigVars};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use keyswap_tests::tools::available;
use keyswap_tests::upstream::{Upstream, UpstreamOptions};

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");

/// A value of the shape of an OpenAI key, covered by the suite's `KSREAL` leak check.
const SHAPED_REAL: &str = "sk-KSREALshapedOpenaiKey0123456789abcdefXYZ";

const BASE_CONFIG: &str = "\
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
admin:
  socket: {dir}/admin.sock
";

const SECRETS: &str = "\
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
  openai:
    from_env: KS_TEST_OPENAI
    placeholder: sk-keyswap-openai-placeholder
";

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run git");
    assert!(status.success(), "git {}", args[0]);
}

/// A scratch directory: `tree/` is the agent's working tree, the rest is outside it.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(root.join("tree")).expect("tree");
        Scratch { _dir: dir, root }
    }

    fn tree(&self) -> PathBuf {
        self.root.join("tree")
    }

    /// Writes the config (`secrets` appended to the base) and returns its path.
    fn config(&self, name: &str, secrets: &str) -> PathBuf {
        let path = self.root.join(name);
        let text = BASE_CONFIG.replace("{dir}", &self.root.display().to_string()) + secrets;
        std::fs::write(&path, text).expect("config");
        path
    }
}

/// Runs keyswap in `cwd` with the suite's secret variables; checks every output for a value.
fn keyswap(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(KEYSWAP)
        .current_dir(cwd)
        .args(args)
        .envs(test_env_values())
        .env("HOME", cwd)
        .env_remove("XDG_STATE_HOME")
        .output()
        .expect("run keyswap");
    let what = format!("keyswap {}", args.first().copied().unwrap_or(""));
    assert_no_real_secret(&format!("{what} stdout"), &out.stdout);
    assert_no_real_secret(&format!("{what} stderr"), &out.stderr);
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The 1-based line of `file` that contains `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    let contents = std::fs::read_to_string(file).expect("read");
    contents
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{} has no line with the expected text", file.display()))
}

/// A working tree holding the github value three ways: raw in `.env` (line 3), base64 in
/// `config/app.yaml` (line 4) and in `.git/config` as a remote URL's userinfo.
fn planted_tree(s: &Scratch) {
    let tree = s.tree();
    git(&tree, &["init", "-q"]);
    let remote = format!("https://x-access-token:{GITHUB_REAL}@github.com/acme/widget.git");
    git(&tree, &["remote", "add", "origin", &remote]);
    std::fs::write(
        tree.join(".env"),
        format!("# local settings\nPORT=8080\nGITHUB_TOKEN={GITHUB_REAL}\n"),
    )
    .expect(".env");
    std::fs::create_dir(tree.join("config")).expect("config dir");
    let b64 = base64::engine::general_purpose::STANDARD.encode(GITHUB_REAL);
    std::fs::write(
        tree.join("config/app.yaml"),
        format!("app:\n  name: widget\n  github:\n    token_b64: {b64}\n"),
    )
    .expect("app.yaml");
    std::fs::write(tree.join("README.md"), "# widget\nNothing secret here.\n").expect("readme");
}

#[test]
fn scan_finds_a_value_raw_in_dotenv_base64_in_yaml_and_in_a_git_remote_url() {
    if !available("git", "--version") {
        return;
    }
    let s = Scratch::new();
    planted_tree(&s);
    let config = s.config("keyswap.yaml", SECRETS);
    let remote_line = line_of(&s.tree().join(".git/config"), "url = ");

    let out = keyswap(
        &s.root,
        &["scan", "tree", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let expected = [
        "tree/.env:3: secret github (raw)".to_string(),
        format!("tree/.git/config:{remote_line}: secret github (raw)"),
        "tree/config/app.yaml:4: secret github (encoded)".to_string(),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    assert!(text(&out.stderr).contains("keyswap import-env"));

    let out = keyswap(
        &s.tree(),
        &["scan", "--json", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let hits: Vec<(String, u64, String, String)> = hits
        .as_array()
        .expect("array")
        .iter()
        .map(|h| {
            (
                h["file"].as_str().unwrap_or_default().to_string(),
                h["line"].as_u64().unwrap_or_default(),
                h["secret"].as_str().unwrap_or_default().to_string(),
                h["form"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want =
        |f: &str, l: u64, form: &str| (f.to_string(), l, "github".to_string(), form.to_string());
    assert_eq!(
        hits,
        [
            want(".env", 3, "raw"),
            want(".git/config", remote_line as u64, "raw"),
            want("config/app.yaml", 4, "encoded"),
        ]
    );
}

#[test]
fn the_exec_check_names_every_location_and_no_value() {
    if !available("git", "--version") {
        return;
    }
    let s = Scratch::new();
    planted_tree(&s);
    let config = s.config("keyswap.yaml", SECRETS);
    let loaded = keyswap_config::load_with(&config, &test_env_values()).expect("config loads");
    let set = keyswap::host::plaintext::ScanSet::from_config(&loaded).expect("matcher");
    let report = keyswap::host::plaintext::check_working_tree(
        &set,
        &s.tree(),
        keyswap::host::plaintext::ScanBudget::EXEC,
    );
    assert!(!report.cut_short);
    let refusal = keyswap::host::plaintext::exec_refusal(&report);
    assert_no_real_secret("exec refusal", refusal.as_bytes());
    let tree = s.tree().display().to_string();
    for place in [".env:3:", ".git/config:", "config/app.yaml:4:"] {
        assert!(
            refusal.contains(&format!("{tree}/{place}")),
            "{place} missing from:\n{refusal}"
        );
    }
    assert!(refusal.contains("secret github"));
    assert!(refusal.contains("keyswap import-env") && refusal.contains("--allow-plaintext"));
    let warning = keyswap::host::plaintext::allow_plaintext_warning(&report);
    assert_no_real_secret("allow-plaintext warning", warning.as_bytes());
    assert!(warning.contains("WARNING") && warning.contains(".env:3:"));
}

#[test]
fn scan_is_silent_and_exits_0_on_a_clean_tree() {
    let s = Scratch::new();
    std::fs::write(
        s.tree().join(".env"),
        "PORT=8080\nGITHUB_TOKEN=ghp_keyswap_github_0000000000000000000000\n",
    )
    .expect(".env");
    std::fs::create_dir(s.tree().join("src")).expect("src");
    std::fs::write(s.tree().join("src/main.rs"), "fn main() {}\n").expect("main");
    let config = s.config("keyswap.yaml", SECRETS);
    let out = keyswap(
        &s.root,
        &["scan", "tree", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn scan_exits_2_on_a_config_that_does_not_load() {
    let s = Scratch::new();
    let config = s.config("keyswap.yaml", "secrets:\n  github:\n    from_env: KS_UNSET_VARIABLE\n    placeholder: ghp_keyswap_github_0000000000000000000000\n");
    let out = keyswap(
        &s.root,
        &["scan", "tree", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("KS_UNSET_VARIABLE"));
}

/// The value each `.env` line holds, by variable.
fn dotenv_value(file: &Path, var: &str) -> String {
    let contents = std::fs::read_to_string(file).expect("read .env");
    contents
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("{var} is not in {}", file.display()))
        .to_string()
}

#[test]
fn import_env_moves_values_out_of_the_tree_behind_same_prefix_placeholders() {
    if !available("git", "--version") {
        return;
    }
    let s = Scratch::new();
    let tree = s.tree();
    let env_file = tree.join(".env");
    std::fs::write(
        &env_file,
        format!("# local settings\nPORT=8080\nGITHUB_TOKEN={GITHUB_REAL}\nOPENAI_API_KEY={SHAPED_REAL}\n"),
    )
    .expect(".env");
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    git(&tree, &["init", "-q"]);
    git(&tree, &["add", ".env"]);
    let secrets_dir = s.root.join("state/secrets");

    let out = keyswap(
        &tree,
        &[
            "import-env",
            ".env",
            "--secrets-dir",
            secrets_dir.to_str().unwrap(),
            "--host",
            "GITHUB_TOKEN=api.github.com",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("tracked by git"), "{stderr}");

    // The .env: same lines, placeholders of the same shape, same mode.
    let rewritten = std::fs::read_to_string(&env_file).expect("read");
    assert_no_real_secret(".env after import-env", rewritten.as_bytes());
    assert!(rewritten.starts_with("# local settings\nPORT=8080\nGITHUB_TOKEN="));
    let github = dotenv_value(&env_file, "GITHUB_TOKEN");
    let openai = dotenv_value(&env_file, "OPENAI_API_KEY");
    assert_eq!(github.len(), GITHUB_REAL.len());
    assert!(openai.starts_with("sk-") && openai.len() == SHAPED_REAL.len());
    let mode = std::fs::metadata(&env_file)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(&tree)
        .expect("tree")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".env" && n != ".git")
        .collect();
    assert!(leftovers.is_empty(), "left in the tree: {leftovers:?}");

    // The values: one 0600 file each, outside the tree.
    for (name, value) in [
        ("github_token", GITHUB_REAL),
        ("openai_api_key", SHAPED_REAL),
    ] {
        let path = secrets_dir.join(name);
        let meta = std::fs::metadata(&path).expect("secret file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        let stored = std::fs::read(&path).expect("read secret");
        assert!(stored == value.as_bytes(), "{name} holds another value");
    }

    // The printed entries make a config that keyswap check accepts.
    let entries = text(&out.stdout);
    assert!(entries.contains("#   - host: api.github.com\n#     secrets: [github_token]"));
    assert!(entries.contains("#   - host: api.openai.com\n#     secrets: [openai_api_key]"));
    assert!(entries.contains(&format!("placeholder: \"{github}\"")));
    assert!(entries.contains("env: OPENAI_API_KEY"));
    let config = s.config("imported.yaml", &entries);
    let check = keyswap(&s.root, &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));

    // The values are nowhere in the tree: a scan for them (in every form) is clean.
    let scan = keyswap(
        &s.root,
        &["scan", "tree", "--config", config.to_str().unwrap()],
    );
    assert_eq!(
        scan.status.code(),
        Some(0),
        "{}{}",
        text(&scan.stdout),
        text(&scan.stderr)
    );
    assert!(scan.stdout.is_empty());
}

#[test]
fn import_env_write_merges_into_the_config_keeping_the_users_text() {
    let s = Scratch::new();
    let env_file = s.tree().join(".env");
    std::fs::write(
        &env_file,
        format!("OPENAI_API_KEY='{SHAPED_REAL}' # from the dashboard\n"),
    )
    .expect(".env");
    let user_secrets = format!("{SECRETS}# my own comment, kept\n");
    let config = s.config("keyswap.yaml", &user_secrets);
    let before = std::fs::read_to_string(&config).expect("read");

    let out = keyswap(
        &s.tree(),
        &[
            "import-env",
            ".env",
            "--config",
            config.to_str().unwrap(),
            "--secrets-dir",
            s.root.join("secrets").to_str().unwrap(),
            "--write",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let after = std::fs::read_to_string(&config).expect("read");
    // Every line of the user's text is still there, in order.
    let mut rest = after.lines();
    for line in before.lines() {
        assert!(rest.any(|l| l == line), "lost or moved: {line}\n{after}");
    }
    assert!(after.contains("  openai_api_key:\n    from_file: "));
    assert!(after.contains("#     secrets: [openai_api_key]"));
    let rewritten = std::fs::read_to_string(&env_file).expect("read");
    assert!(
        rewritten.starts_with("OPENAI_API_KEY='sk-")
            && rewritten.ends_with("' # from the dashboard\n")
    );

    let check = keyswap(&s.root, &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("openai_api_key"));

    // A second run finds only placeholders: nothing left to import.
    let again = keyswap(
        &s.tree(),
        &[
            "import-env",
            ".env",
            "--config",
            config.to_str().unwrap(),
            "--secrets-dir",
            s.root.join("secrets").to_str().unwrap(),
            "--write",
        ],
    );
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again.stderr).contains("no credential-looking variable"));
    assert_eq!(std::fs::read_to_string(&env_file).expect("read"), rewritten);
}

#[test]
fn import_env_refuses_a_secrets_dir_inside_the_working_tree() {
    let s = Scratch::new();
    let env_file = s.tree().join(".env");
    let original = format!("GITHUB_TOKEN={GITHUB_REAL}\n");
    std::fs::write(&env_file, &original).expect(".env");
    let out = keyswap(
        &s.tree(),
        &["import-env", ".env", "--secrets-dir", "secrets"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("inside the working tree"));
    let unchanged = std::fs::read_to_string(&env_file).expect("read");
    assert!(unchanged == original, "the .env was changed");
    let moved = s.tree().join("secrets/github_token").exists();
    assert!(!moved, "a secret file was written inside the tree");
}

// ---- end to end: exec refuses the tree, then runs after import-env ----

/// An embedded exec's config: `github` read from the environment and granted to the
/// in-process upstream by the policy exec issues its task from.
const EXEC_CONFIG: &str = r#"version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
admin:
  socket: {dir}/admin.sock
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
policies:
  agent-rw:
    ttl: 10m
    allow:
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo/**"]
        secrets: [github]
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
"#;

/// What an end-to-end test saw: every output, for the leak check at its end.
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>)>);

impl Seen {
    fn keep(&mut self, what: &str, out: &Output) {
        self.0.push((format!("{what} stdout"), out.stdout.clone()));
        self.0.push((format!("{what} stderr"), out.stderr.clone()));
    }

    /// No real value (in any form [`assert_no_real_secret`] knows) and no `token` anywhere.
    fn check(&self, tokens: &[&str]) {
        for (what, bytes) in &self.0 {
            assert_no_real_secret(what, bytes);
            for token in tokens {
                let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
                assert!(!found, "the task token appeared in {what}");
            }
        }
    }
}

/// `keyswap exec --config CONFIG --policy agent-rw EXTRA -- COMMAND` in `cwd`, embedded (no
/// proxy answers on the admin socket), sandboxed: as root `--user` the tests' unprivileged
/// user. Only the variable the config reads the value from is passed on.
async fn exec_embedded(cwd: &Path, config: &Path, extra: &[&str], command: &[&str]) -> Output {
    let user = agent_user();
    let mut cmd = tokio::process::Command::new(KEYSWAP);
    cmd.arg("exec")
        .arg("--config")
        .arg(config)
        .args(["--policy", "agent-rw"]);
    if user.dedicated {
        cmd.args(["--user", user.name.as_str()]);
    }
    cmd.args(extra)
        .arg("--")
        .args(command)
        .current_dir(cwd)
        .env("KS_TEST_GITHUB", GITHUB_REAL)
        .env("KEYSWAP_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("keyswap exec did not finish within {limit:?}"))
        .expect("run keyswap exec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refuses_a_tree_with_plaintext_secrets_and_runs_after_import_env() {
    if !available("git", "--version") || !available("curl", "--version") {
        return;
    }
    let s = Scratch::new();
    let upstream_ca = keyswap_certs::CertificateAuthority::generate("plaintext test upstream CA")
        .expect("upstream CA");
    std::fs::write(s.root.join("upstream-ca.pem"), upstream_ca.cert_pem()).expect("upstream CA");
    let upstream = Upstream::start(
        &upstream_ca,
        UpstreamOptions {
            names: vec!["api.upstream.test".to_string()],
            ..UpstreamOptions::default()
        },
    )
    .await;
    let vars = ConfigVars {
        dir: &s.root,
        https_port: upstream.port(),
        plain_port: 0,
        tunnel_port: 0,
    };
    let config = s.root.join("keyswap.yaml");
    std::fs::write(&config, render(EXEC_CONFIG, &vars)).expect("config");
    planted_tree(&s);
    let tree = s.tree();
    let shown = tree.display().to_string();
    let remote_line = line_of(&tree.join(".git/config"), "url = ");
    // The sandboxed command runs as the agent user in the tree and reads keyswap's CA from here.
    agent_user().own(&s.root);
    let mut seen = Seen::default();

    // 1. Refused: exit 125, every place named, no value; the command never ran.
    let started = tree.join("started");
    let out = exec_embedded(&tree, &config, &[], &["sh", "-c", "echo yes > started"]).await;
    seen.keep("keyswap exec (refused)", &out);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(!started.exists(), "the command ran although exec refused");
    for place in [
        format!("{shown}/.env:3: secret github"),
        format!("{shown}/.git/config:{remote_line}: secret github"),
        format!("{shown}/config/app.yaml:4: secret github"),
    ] {
        assert!(
            stderr.contains(&place),
            "{place} missing from:
{stderr}"
        );
    }
    assert!(stderr.contains("keyswap import-env") && stderr.contains("--allow-plaintext"));

    // 2. --allow-plaintext: the command runs (its status is exec's), after a warning.
    let out = exec_embedded(
        &tree,
        &config,
        &["--allow-plaintext"],
        &["sh", "-c", "exit 3"],
    )
    .await;
    seen.keep("keyswap exec --allow-plaintext", &out);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("WARNING: --allow-plaintext"), "{stderr}");
    for place in [".env:3:", ".git/config:", "config/app.yaml:4:"] {
        assert!(
            stderr.contains(&format!("{shown}/{place}")),
            "{place} missing from the warning:\n{stderr}"
        );
    }

    // 3. The YAML file and the remote URL cleaned by hand, the .env imported with --write.
    std::fs::remove_file(tree.join("config/app.yaml")).expect("remove app.yaml");
    // `--file` reads no repository, so git's ownership check does not apply (as root the tree
    // now belongs to the agent user).
    let status = Command::new("git")
        .arg("config")
        .arg("--file")
        .arg(tree.join(".git/config"))
        .args(["--remove-section", "remote.origin"])
        .status()
        .expect("run git config");
    assert!(status.success(), "git config --remove-section");
    // Outside the tree, where the agent could reach it but for the sandbox: in its home, like
    // keyswap's default state directory (the sandbox's /tmp is private, so the scratch
    // directory would prove nothing).
    let home_dir = tempfile::Builder::new()
        .prefix(".keyswap-test-secrets-")
        .tempdir_in(&agent_user().home)
        .expect("a directory in the agent user's home");
    let secrets_dir = home_dir.path().join("secrets");
    let out = keyswap(
        &tree,
        &[
            "import-env",
            ".env",
            "--secrets-dir",
            secrets_dir.to_str().unwrap(),
            "--write",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    seen.keep("keyswap import-env", &out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let placeholder = dotenv_value(&tree.join(".env"), "GITHUB_TOKEN");
    assert_eq!(placeholder.len(), GITHUB_REAL.len());
    assert!(placeholder != GITHUB_PLACEHOLDER);
    let secret_file = secrets_dir.join("github_token");
    let outside = std::fs::metadata(&secret_file).expect("the imported secret's file");
    assert!(outside.len() > 0, "the imported secret's file is empty");
    // The operator grants the imported secret, as the printed rule skeleton suggests.
    let merged = std::fs::read_to_string(&config).expect("read config");
    assert!(
        merged.contains("  github_token:\n    from_file: "),
        "{merged}"
    );
    let granted = merged.replace("secrets: [github]\n", "secrets: [github, github_token]\n");
    assert!(granted != merged, "the policy's rule was not found");
    std::fs::write(&config, granted).expect("write config");
    // Written by root: the agent could read them but for the sandbox.
    agent_user().own(&s.root);
    agent_user().own(home_dir.path());

    // 4. exec starts; the command reads the placeholder from the .env itself and sends it.
    let script = format!(
        "unset GITHUB_TOKEN; . ./.env; printf '%s\\n' \"$HTTPS_PROXY\" > .task-proxy; \
         curl -sS --max-time 20 -w '\\nstatus=%{{http_code}}\\n' \
         -H \"Authorization: Bearer $GITHUB_TOKEN\" https://api.upstream.test/echo/imported; \
         test -e {file} && printf 'secret-file-bytes=%s\\n' \"$(cat {file} | wc -c)\"",
        file = secret_file.display()
    );
    let out = exec_embedded(&tree, &config, &[], &["sh", "-c", &script]).await;
    seen.keep("keyswap exec (after import-env)", &out);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("status=200"), "{stdout}");
    let authorization = upstream
        .authorization_for("/echo/imported")
        .expect("no request with Authorization reached the upstream");
    assert!(
        authorization == format!("Bearer {GITHUB_REAL}"),
        "the upstream did not receive the real value"
    );
    // Hidden by the sandbox: the agent owns the file, yet reads nothing.
    assert!(
        stdout.lines().any(|l| l.trim() == "secret-file-bytes=0"),
        "the command read the imported secret's file:\n{stdout}"
    );

    // No value and no task token in any output, log or audit line.
    let proxy_url =
        std::fs::read_to_string(tree.join(".task-proxy")).expect("the command wrote its proxy URL");
    let token = proxy_url
        .trim()
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, token)| token.to_string())
        .expect("a token in the command's HTTPS_PROXY");
    assert!(!token.is_empty(), "an empty task token");
    let audit = std::fs::read(s.root.join("audit.jsonl")).expect("audit log");
    assert!(
        text(&audit).contains("/echo/imported"),
        "the request is not in the audit log"
    );
    seen.0.push(("audit log".to_string(), audit));
    seen.check(&[token.as_str()]);
}
