//! `sandbox:` as loaded from a file, and the plan of paths `keyswap exec`'s sandbox gets from
//! it: keyswap's own credential paths always protected, `~/` kept symbolic until a home is
//! given, `expose` taking only default credential stores out. No secret value in any of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keyswap_config::{
    credential_stores, load_with, protected_paths, sandbox::sandbox_plan_paths_in, Protection,
    SandboxPath, SandboxPaths,
};

const SECRET_VALUE: &str = "fixture-real-value-0123456789";
const TOKEN_VALUE: &str = "fixture-token-0123456789";
const FULL: &str = "tests/fixtures/valid/full.yaml";

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN_VALUE.to_string()),
    ])
}

use crate::in_crate_dir as crate_dir;

fn full_plan(home: &Path) -> SandboxPaths {
    let cwd = crate_dir();
    let config = load_with(Path::new(FULL), &env()).unwrap_or_else(|e| panic!("{e}"));
    sandbox_plan_paths_in(
        &config,
        Some(Path::new(FULL)),
        home,
        Some(Path::new("/run/user/4242")),
        &cwd,
    )
}

#[test]
fn the_section_loads_with_home_paths_kept_symbolic() {
    crate_dir();
    let config = load_with(Path::new(FULL), &env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.sandbox.hide,
        [
            SandboxPath::Home("work/secrets".into()),
            SandboxPath::Path("./private".into())
        ]
    );
    assert_eq!(config.sandbox.expose, [SandboxPath::Home(".npmrc".into())]);
    assert_eq!(
        config.sandbox.read_only,
        [SandboxPath::Path("./scripts".into())]
    );
    assert_eq!(config.sandbox.hide[0].to_string(), "~/work/secrets");
    assert_eq!(
        config.tasks_dir,
        Some(PathBuf::from("tests/fixtures/valid/tasks"))
    );
}

#[test]
fn the_plan_of_the_full_fixture_protects_every_credential_path() {
    let cwd = crate_dir();
    let home = Path::new("/home/agent");
    let plan = full_plan(home);
    let why_of = |path: PathBuf, list: &[keyswap_config::Protected]| {
        list.iter()
            .find(|p| p.path == path)
            .map(|p| p.why.clone())
            .unwrap_or_else(|| panic!("{} not in {list:#?}", path.display()))
    };
    assert_eq!(
        why_of(
            cwd.join("tests/fixtures/valid/openai-secret.txt"),
            &plan.hide
        ),
        "secret openai (from_file)"
    );
    assert_eq!(
        why_of(cwd.join("target/keyswap-fixture-ca/ca-key.pem"), &plan.hide),
        "CA private key"
    );
    assert_eq!(
        why_of(cwd.join("target/keyswap-fixture-audit.jsonl"), &plan.hide),
        "audit log"
    );
    assert_eq!(
        why_of(cwd.join(".keyswap/admin.sock"), &plan.hide),
        "admin socket"
    );
    assert_eq!(
        why_of(home.join("work/secrets"), &plan.hide),
        "sandbox.hide"
    );
    assert_eq!(why_of(cwd.join("private"), &plan.hide), "sandbox.hide");
    assert_eq!(why_of(cwd.join(FULL), &plan.read_only), "config file");
    assert_eq!(
        why_of(cwd.join("tests/fixtures/valid/tasks"), &plan.read_only),
        "tasks_dir"
    );
    assert_eq!(
        why_of(cwd.join("scripts"), &plan.read_only),
        "sandbox.read_only"
    );
    // expose: [~/.npmrc] takes that store out, and only that one.
    assert!(!plan.hide.iter().any(|p| p.path == home.join(".npmrc")));
    for store in credential_stores(home, Some(Path::new("/run/user/4242")))
        .into_iter()
        .filter(|s| *s != home.join(".npmrc"))
    {
        why_of(store, &plan.hide);
    }
    assert_eq!(plan.expose, [home.join(".npmrc")]);
    assert!(plan.hide.iter().all(|p| p.mode == Protection::Hide));
    assert!(plan
        .read_only
        .iter()
        .all(|p| p.mode == Protection::ReadOnly));
    assert!(plan
        .hide
        .iter()
        .chain(&plan.read_only)
        .all(|p| p.path.is_absolute()));
}

#[test]
fn the_plan_travels_as_json_without_a_value() {
    let plan = full_plan(Path::new("/home/agent"));
    let json = serde_json::to_string(&plan).expect("serialize");
    let back: SandboxPaths = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, plan);
    assert!(json.contains("\"mode\":\"read_only\""), "{json}");
    let debug = format!("{plan:?}");
    for shown in [&json, &debug] {
        assert!(!shown.contains(SECRET_VALUE) && !shown.contains(TOKEN_VALUE));
    }
}

#[test]
fn protected_paths_name_keyswaps_own_paths_as_written() {
    crate_dir();
    let config = load_with(Path::new(FULL), &env()).unwrap_or_else(|e| panic!("{e}"));
    let protected = protected_paths(&config, Some(Path::new(FULL)));
    let paths: Vec<(&Path, &str)> = protected
        .iter()
        .map(|p| (p.path.as_path(), p.why.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            (
                Path::new("tests/fixtures/valid/openai-secret.txt"),
                "secret openai (from_file)"
            ),
            (
                Path::new("./target/keyswap-fixture-ca/ca-key.pem"),
                "CA private key"
            ),
            (Path::new("./.keyswap/admin.sock"), "admin socket"),
            (
                Path::new("./target/keyswap-fixture-audit.jsonl"),
                "audit log"
            ),
            (
                Path::new("./target/state"),
                "state_dir (the lease state file: live credentials to revoke)"
            ),
            (Path::new(FULL), "config file"),
            (Path::new("tests/fixtures/valid/tasks"), "tasks_dir"),
        ]
    );
    // Without a config file (a config from text), nothing stands for it.
    assert!(!protected_paths(&config, None)
        .iter()
        .any(|p| p.why == "config file"));
}
