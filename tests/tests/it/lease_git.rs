//! git over HTTPS with a leased GitHub App token: the agent clones and pushes with
//! `https://x-access-token:<placeholder>@github.test/acme/widget.git` through keyswap, against
//! a strict fake (git's smart HTTP behind a check that accepts only a live minted
//! installation token for that repository, and a push only with `contents: write`). When the
//! task ends the fake sees the revocation, and a clone with the old token fails there.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use keyswap::state::tasks::RevokeWhy;
use keyswap_tests::fake_github::PLACEHOLDER;
use keyswap_tests::tools::available;

use crate::leases::{self, command, run, Lab};

fn git_available() -> bool {
    if available("git", "--version") {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "git must be installed in CI"
    );
    eprintln!("\n*** NOTICE: no git: the lease git test did NOT run ***\n");
    false
}

/// `git ARGS` with only PATH, HOME, `vars` and no system or global config.
async fn git(lab: &Lab, vars: &BTreeMap<&str, String>, args: &[&str], what: &str) -> String {
    let mut vars = vars.clone();
    vars.insert("GIT_CONFIG_NOSYSTEM", "1".into());
    vars.insert("GIT_TERMINAL_PROMPT", "0".into());
    let mut cmd = command(lab, "git", &vars);
    cmd.args([
        "-c",
        "user.name=agent",
        "-c",
        "user.email=agent@example.test",
    ])
    .args(args);
    run(lab, what, cmd).await
}

/// The bare repository `root/acme/widget.git` with one commit.
async fn bare_repo(lab: &Lab, root: &Path) {
    let none = BTreeMap::new();
    let bare = root.join("acme/widget.git");
    let seed = root.join("seed");
    let (bare, seed) = (bare.to_str().unwrap(), seed.to_str().unwrap());
    git(
        lab,
        &none,
        &["init", "-q", "--bare", "-b", "main", bare],
        "git init --bare",
    )
    .await;
    git(lab, &none, &["init", "-q", "-b", "main", seed], "git init").await;
    std::fs::write(Path::new(seed).join("README"), "widget\n").expect("README");
    git(lab, &none, &["-C", seed, "add", "README"], "git add").await;
    git(
        lab,
        &none,
        &["-C", seed, "commit", "-q", "-m", "first"],
        "git commit",
    )
    .await;
    git(
        lab,
        &none,
        &["-C", seed, "push", "-q", bare, "main"],
        "git push (seed)",
    )
    .await;
}

#[tokio::test]
async fn git_clone_and_push_use_a_minted_token_that_is_revoked_when_the_task_ends() {
    if !git_available() {
        return;
    }
    let lab = leases::start().await;
    let root = lab.files.path().join("git");
    bare_repo(&lab, &root).await;
    lab.github.serve_git(&root);
    let task = lab.issue("widget", "30m");
    let ca = lab.files.path().join("keyswap-ca.pem");
    std::fs::write(&ca, &lab.env.proxy_ca_pem).expect("CA");
    let proxy = format!("http://{}:{}@{}", task.id, task.token, lab.env.proxy.addr());
    let vars = BTreeMap::from([
        ("https_proxy", proxy),
        ("GIT_SSL_CAINFO", ca.display().to_string()),
    ]);
    let url = format!("https://x-access-token:{PLACEHOLDER}@github.test/acme/widget.git");
    let work = lab.files.path().join("work");
    let work = work.to_str().unwrap();
    git(&lab, &vars, &["clone", "-q", &url, work], "git clone").await;
    assert_eq!(lab.github.mints(), 1, "the clone did not mint one token");
    assert!(Path::new(work).join("README").exists());

    std::fs::write(Path::new(work).join("fix.txt"), "fixed\n").expect("fix");
    git(&lab, &vars, &["-C", work, "add", "fix.txt"], "git add").await;
    git(
        &lab,
        &vars,
        &["-C", work, "commit", "-q", "-m", "fix"],
        "git commit",
    )
    .await;
    git(
        &lab,
        &vars,
        &["-C", work, "push", "-q", "origin", "main"],
        "git push",
    )
    .await;
    let none = BTreeMap::new();
    let bare = root.join("acme/widget.git");
    let pushed = git(
        &lab,
        &none,
        &[
            "--git-dir",
            bare.to_str().unwrap(),
            "log",
            "--format=%s",
            "main",
        ],
        "git log",
    )
    .await;
    assert!(pushed.starts_with("fix"), "the push did not land: {pushed}");
    assert_eq!(lab.github.mints(), 1, "the push minted again");
    let token = lab.github.tokens()[0].token.clone();
    let used = lab.github.tokens_used_for("/acme/widget.git/");
    assert!(!used.is_empty() && used.iter().all(|t| *t == token));

    lab.env
        .proxy
        .revoke(&task.id, RevokeWhy::Api)
        .expect("revoke");
    let revoked = lab
        .env
        .audit_at_least(1, |r| r["event"] == "credential_revoked")
        .await;
    assert_eq!(revoked[0]["why"], "api");
    assert!(lab.github.revocations().iter().any(|(t, _)| *t == token));

    // The old token straight at the fake (not through keyswap): refused.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    let direct = BTreeMap::from([(
        "GIT_SSL_CAINFO",
        lab.files.path().join("roots.pem").display().to_string(),
    )]);
    let port = lab.github.server.port();
    let stale = lab.files.path().join("stale");
    let mut vars = direct.clone();
    vars.insert("GIT_CONFIG_NOSYSTEM", "1".into());
    vars.insert("GIT_TERMINAL_PROMPT", "0".into());
    let mut cmd = command(&lab, "git", &vars);
    cmd.args([
        "-c",
        &format!("http.curloptResolve=github.test:{port}:127.0.0.1"),
        "-c",
        &format!("http.extraHeader=Authorization: Basic {basic}"),
        "clone",
        "-q",
        &format!("https://github.test:{port}/acme/widget.git"),
        stale.to_str().unwrap(),
    ]);
    let out = cmd.output().await.expect("git runs");
    assert!(
        !out.status.success(),
        "a clone with the revoked token worked"
    );
    assert!(!stale.join("README").exists());
    lab.assert_no_leaks();
}
