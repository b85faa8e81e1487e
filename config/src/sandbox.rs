//! What `keyswap exec`'s sandbox hides from the command and makes read-only, computed from a
//! loaded config: the paths that hold or control credentials (always applied, never
//! exposable), the operator's `sandbox:` additions, and the default list of credential stores
//! less `sandbox.expose`.
//!
//! Paths only: nothing here reads a file or formats a secret value. The result is plain data
//! (serde) so that a running proxy can hand it to `exec` over the admin API.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{AuditLog, Config, SandboxPath, SecretSource};

/// The CA private key's file name inside `ca_dir`: keyswap-certs writes and reads it there.
pub use keyswap_certs::KEY_FILE as CA_KEY_FILE;

/// How the sandbox treats a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// The command must not see it: a file reads as empty, a directory is empty.
    Hide,
    /// The command may read it but not change it.
    ReadOnly,
}

/// One path the sandbox protects, and why (a short phrase for `keyswap check` and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protected {
    pub path: PathBuf,
    /// E.g. "secret github (from_file)", "CA private key", "admin socket".
    pub why: String,
    pub mode: Protection,
}

impl Protected {
    fn new(path: PathBuf, why: impl Into<String>, mode: Protection) -> Protected {
        Protected {
            path,
            why: why.into(),
            mode,
        }
    }
}

/// The paths of one sandbox: absolute (when the working directory could be read), in a
/// fixed order (keyswap's own paths, then `sandbox:`'s, then the credential stores), each
/// once. A path both hidden and read-only is only hidden.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPaths {
    pub hide: Vec<Protected>,
    pub read_only: Vec<Protected>,
    /// `sandbox.expose`, less any entry equal to or inside a path keyswap always protects.
    /// Hidden paths inside an exposed directory stay hidden.
    pub expose: Vec<PathBuf>,
}

/// The paths that hold or control credentials, as the config names them (relative paths are
/// relative to the working directory): every `from_file` secret's file, the CA private key,
/// the admin socket, the audit log (a file) and `audit.key_file` are hidden; the config file
/// and `tasks_dir` are read-only. Applied whatever `sandbox.expose` says.
///
/// The operator's `sandbox.hide` and `sandbox.read_only` are not here: a `~/` entry needs the
/// agent user's home; [`sandbox_plan_paths`] adds them.
pub fn protected_paths(config: &Config, config_file: Option<&Path>) -> Vec<Protected> {
    use Protection::{Hide, ReadOnly};
    let mut protected = Vec::new();
    for secret in &config.secrets {
        for source in secret.sources() {
            if let SecretSource::File(path) = source {
                let why = format!("secret {} (from_file)", secret.name);
                protected.push(Protected::new(path.clone(), why, Hide));
            }
        }
        for path in secret.lease.iter().flat_map(|lease| lease.files()) {
            let why = format!(
                "secret {} ({} source)",
                secret.name,
                secret.lease.as_ref().map_or("", |l| l.kind())
            );
            protected.push(Protected::new(path, why, Hide));
        }
    }
    let ca_key = config.ca_dir.join(CA_KEY_FILE);
    protected.push(Protected::new(ca_key, "CA private key", Hide));
    protected.push(Protected::new(
        config.admin.socket.clone(),
        "admin socket",
        Hide,
    ));
    if let AuditLog::File(path) = &config.audit_log {
        protected.push(Protected::new(path.clone(), "audit log", Hide));
    }
    // The whole directory, not the file: the file is replaced by a rename on each update,
    // which would detach a mount over the file itself.
    let why = "state_dir (the lease state file: live credentials to revoke)";
    protected.push(Protected::new(config.state_dir.clone(), why, Hide));
    if let Some(key) = &config.audit.key {
        let why = "audit chain key (audit.key_file)";
        protected.push(Protected::new(key.path.clone(), why, Hide));
    }
    if let Some(file) = config_file {
        protected.push(Protected::new(file.to_path_buf(), "config file", ReadOnly));
    }
    if let Some(dir) = &config.tasks_dir {
        protected.push(Protected::new(dir.clone(), "tasks_dir", ReadOnly));
    }
    protected
}

/// The default credential stores under `home` (relative), each with why it is hidden.
const HOME_STORES: &[(&str, &str)] = &[
    (".ssh", "ssh keys"),
    (".gnupg", "GnuPG keys"),
    (".aws", "AWS credentials"),
    (".azure", "Azure credentials"),
    (".config/gcloud", "Google Cloud credentials"),
    (".kube", "Kubernetes credentials"),
    (".docker", "Docker credentials and socket"),
    (".netrc", "netrc passwords"),
    (".git-credentials", "git credentials"),
    (".config/gh", "GitHub CLI token"),
    (".npmrc", "npm token"),
    (".pypirc", "PyPI token"),
    (".cargo/credentials.toml", "cargo registry token"),
    (".cargo/credentials", "cargo registry token"),
    (".config/op", "1Password CLI"),
    (".password-store", "pass password store"),
    (".local/share/keyrings", "desktop keyrings"),
    (
        ".config/containers/auth.json",
        "container registry credentials",
    ),
    (".vault-token", "Vault token"),
    (
        ".terraform.d/credentials.tfrc.json",
        "Terraform Cloud token",
    ),
    // Where `keyswap import-env` moves values by default (with XDG_STATE_HOME unset).
    (".local/state/keyswap", "keyswap's imported secrets"),
];

/// System sockets that hand out root (a container runtime's API), each with why.
const SYSTEM_SOCKETS: &[(&str, &str)] = &[
    ("/run/docker.sock", "Docker daemon socket (root)"),
    ("/var/run/docker.sock", "Docker daemon socket (root)"),
    (
        "/run/containerd/containerd.sock",
        "containerd socket (root)",
    ),
    ("/run/podman/podman.sock", "Podman socket (root)"),
];

const RUNTIME_DIR_WHY: &str = "session runtime directory (D-Bus, ssh-agent, gpg-agent sockets)";

/// Whether `rest` (relative to a home) is one of the default credential stores or inside one.
pub(crate) fn in_home_store(rest: &Path) -> Option<&'static str> {
    HOME_STORES
        .iter()
        .map(|(store, _)| *store)
        .find(|store| rest.starts_with(store) && rest != Path::new(store))
}

fn stores(home: &Path, runtime_dir: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut stores: Vec<(PathBuf, &'static str)> = HOME_STORES
        .iter()
        .map(|(rest, why)| (home.join(rest), *why))
        .collect();
    stores.extend(runtime_dir.map(|dir| (dir.to_path_buf(), RUNTIME_DIR_WHY)));
    stores.extend(
        SYSTEM_SOCKETS
            .iter()
            .map(|(path, why)| (PathBuf::from(path), *why)),
    );
    stores
}

/// The default hide list: the credential stores of `home` (`~/.ssh`, `~/.aws`, `~/.docker`,
/// `~/.config/gh`, `~/.npmrc`, ...), the session's runtime directory (`$XDG_RUNTIME_DIR`,
/// with its D-Bus, ssh-agent and gpg-agent sockets) when given, and the system sockets of
/// container runtimes (root to whoever can connect).
pub fn credential_stores(home: &Path, runtime_dir: Option<&Path>) -> Vec<PathBuf> {
    stores(home, runtime_dir)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

/// The sandbox's paths for a command run with `home` (the agent user's) and `runtime_dir`:
/// [`protected_paths`], then `sandbox.hide` and `sandbox.read_only`, then
/// [`credential_stores`] less those equal to or inside a `sandbox.expose` entry. `~/` is
/// resolved against `home`; relative paths against the process's working directory.
pub fn sandbox_plan_paths(
    config: &Config,
    config_file: Option<&Path>,
    home: &Path,
    runtime_dir: Option<&Path>,
) -> SandboxPaths {
    let cwd = std::env::current_dir().unwrap_or_default();
    sandbox_plan_paths_in(config, config_file, home, runtime_dir, &cwd)
}

/// [`sandbox_plan_paths`] with relative paths resolved against `cwd`.
pub fn sandbox_plan_paths_in(
    config: &Config,
    config_file: Option<&Path>,
    home: &Path,
    runtime_dir: Option<&Path>,
    cwd: &Path,
) -> SandboxPaths {
    let place = |path: &Path| clean(cwd, path);
    let resolve = |path: &SandboxPath| place(&path.under_home(home));
    let mut plan = SandboxPaths::default();
    let protected: Vec<Protected> = protected_paths(config, config_file)
        .into_iter()
        .map(|p| Protected::new(place(&p.path), p.why, p.mode))
        .collect();
    let user = config
        .sandbox
        .hide
        .iter()
        .map(|p| Protected::new(resolve(p), "sandbox.hide", Protection::Hide))
        .chain(
            config
                .sandbox
                .read_only
                .iter()
                .map(|p| Protected::new(resolve(p), "sandbox.read_only", Protection::ReadOnly)),
        );
    for entry in protected.into_iter().chain(user) {
        push(&mut plan, entry);
    }
    let fixed: Vec<PathBuf> = plan
        .hide
        .iter()
        .chain(&plan.read_only)
        .map(|p| p.path.clone())
        .collect();
    let exposed: Vec<PathBuf> = config.sandbox.expose.iter().map(resolve).collect();
    for (store, why) in stores(&place(home), runtime_dir.map(place).as_deref()) {
        if !exposed.iter().any(|e| store.starts_with(e)) {
            push(&mut plan, Protected::new(store, why, Protection::Hide));
        }
    }
    // Hidden paths stay hidden inside an exposed directory (the sandbox hides after it keeps);
    // an entry naming a protected path itself, or a path inside one, is dropped (validation
    // refuses those it can see; `~/` entries are only comparable here).
    for path in exposed {
        if !fixed.iter().any(|p| path.starts_with(p)) && !plan.expose.contains(&path) {
            plan.expose.push(path);
        }
    }
    plan.read_only
        .retain(|ro| !plan.hide.iter().any(|h| h.path == ro.path));
    plan
}

/// Adds `entry` unless its path is already listed with the same protection.
fn push(plan: &mut SandboxPaths, entry: Protected) {
    let list = match entry.mode {
        Protection::Hide => &mut plan.hide,
        Protection::ReadOnly => &mut plan.read_only,
    };
    if !list.iter().any(|p| p.path == entry.path) {
        list.push(entry);
    }
}

/// `path` made absolute against `cwd`, without `.` components, repeated or trailing slashes
/// (`..` is kept: only the kernel knows where it leads through a symlink).
pub(crate) fn clean(cwd: &Path, path: &Path) -> PathBuf {
    let joined = cwd.join(path);
    joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::EnvSource;
    use std::collections::HashMap;

    const CWD: &str = "/work/project";
    const HOME: &str = "/home/agent";

    fn env() -> HashMap<String, String> {
        HashMap::from([(
            "KS_T_TOKEN".to_string(),
            "KSREAL-token-0123456789".to_string(),
        )])
    }

    fn load(yaml: &str) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "KSREAL-file-value-0123456789").expect("write secret");
        let yaml = yaml.replace("SECRET_FILE", &secret.display().to_string());
        let env: &dyn EnvSource = &env();
        crate::load_str(&yaml, Path::new("keyswap.yaml"), env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plan(config: &Config) -> SandboxPaths {
        sandbox_plan_paths_in(
            config,
            Some(Path::new("./keyswap.yaml")),
            Path::new(HOME),
            Some(Path::new("/run/user/1000")),
            Path::new(CWD),
        )
    }

    fn hidden(plan: &SandboxPaths) -> Vec<String> {
        plan.hide
            .iter()
            .map(|p| p.path.display().to_string())
            .collect()
    }

    const BASE: &str = "version: 1\n";

    #[test]
    fn keyswap_paths_come_first_resolved_against_the_working_directory() {
        let config = load(
            "version: 1\nca_dir: ./state/ca\naudit_log: logs//audit.jsonl\nadmin:\n  socket: ./state/admin.sock\n",
        );
        let plan = plan(&config);
        assert_eq!(
            &hidden(&plan)[..3],
            [
                "/work/project/state/ca/ca-key.pem",
                "/work/project/state/admin.sock",
                "/work/project/logs/audit.jsonl",
            ]
        );
        assert_eq!(plan.hide[0].why, "CA private key");
        assert_eq!(plan.hide[1].why, "admin socket");
        // state_dir defaults to `state` beside ca_dir, and is hidden whole.
        assert_eq!(hidden(&plan)[3], "/work/project/state/state");
        assert!(plan.hide[3].why.starts_with("state_dir"));
        assert_eq!(
            plan.read_only,
            [Protected::new(
                PathBuf::from("/work/project/keyswap.yaml"),
                "config file",
                Protection::ReadOnly
            )]
        );
    }

    #[test]
    fn a_from_file_secret_is_hidden_by_name_never_by_value() {
        let config = load(
            "version: 1\nsecrets:\n  github:\n    from_file: SECRET_FILE\n    placeholder: ghp_keyswap_test_000000000000\n",
        );
        let protected = protected_paths(&config, None);
        assert_eq!(protected[0].why, "secret github (from_file)");
        assert!(protected[0].path.ends_with("secret.txt"));
        assert_eq!(protected[0].mode, Protection::Hide);
        let shown = format!(
            "{:?} {}",
            plan(&config),
            serde_json::to_string(&plan(&config)).unwrap()
        );
        assert!(!shown.contains("KSREAL"), "a value in {shown}");
    }

    #[test]
    fn the_audit_log_on_stdout_is_no_path() {
        let config = load("version: 1\naudit_log: \"-\"\n");
        assert!(!protected_paths(&config, None)
            .iter()
            .any(|p| p.why == "audit log"));
    }

    #[test]
    fn home_paths_resolve_against_the_agent_home_and_relative_ones_against_the_cwd() {
        let config = load(
            "version: 1\nsandbox:\n  hide: [~/work/secrets, ./private, /srv/keys/]\n  read_only: [scripts, \"~\"]\n",
        );
        let plan = plan(&config);
        let hide = hidden(&plan);
        for path in [
            "/home/agent/work/secrets",
            "/work/project/private",
            "/srv/keys",
        ] {
            assert!(hide.contains(&path.to_string()), "{path} not in {hide:?}");
        }
        let ro: Vec<String> = plan
            .read_only
            .iter()
            .map(|p| p.path.display().to_string())
            .collect();
        assert_eq!(
            ro,
            [
                "/work/project/keyswap.yaml",
                "/work/project/scripts",
                "/home/agent"
            ]
        );
        assert_eq!(plan.read_only[1].why, "sandbox.read_only");
    }

    #[test]
    fn every_default_store_is_hidden_when_nothing_is_exposed() {
        let plan = plan(&load(BASE));
        let hide = hidden(&plan);
        for store in credential_stores(Path::new(HOME), Some(Path::new("/run/user/1000"))) {
            assert!(
                hide.contains(&store.display().to_string()),
                "{} not hidden",
                store.display()
            );
        }
        for path in [
            "/home/agent/.ssh",
            "/home/agent/.config/gh",
            "/home/agent/.docker",
            "/run/user/1000",
            "/var/run/docker.sock",
        ] {
            assert!(hide.contains(&path.to_string()), "{path} not hidden");
        }
    }

    #[test]
    fn expose_removes_a_store_equal_to_it_or_inside_it_and_nothing_else() {
        let config = load("version: 1\nsandbox:\n  expose: [~/.npmrc, ~/.config]\n");
        let hide = hidden(&plan(&config));
        for gone in [
            "/home/agent/.npmrc",
            "/home/agent/.config/gh",
            "/home/agent/.config/gcloud",
            "/home/agent/.config/op",
        ] {
            assert!(!hide.contains(&gone.to_string()), "{gone} still hidden");
        }
        for kept in ["/home/agent/.pypirc", "/home/agent/.ssh", "/run/user/1000"] {
            assert!(hide.contains(&kept.to_string()), "{kept} no longer hidden");
        }
        assert_eq!(
            plan(&config).expose,
            [
                PathBuf::from("/home/agent/.npmrc"),
                PathBuf::from("/home/agent/.config")
            ]
        );
    }

    #[test]
    fn expose_never_removes_a_protected_path() {
        // Validation refuses naming a protected path itself; a directory holding some is
        // allowed, and they stay hidden.
        let config = load(
            "version: 1\nca_dir: ./.keyswap/ca\nsandbox:\n  expose: [./.keyswap, /work/project]\n",
        );
        let plan = plan(&config);
        let hide = hidden(&plan);
        assert!(hide.contains(&"/work/project/.keyswap/ca/ca-key.pem".to_string()));
        assert!(hide.contains(&"/work/project/.keyswap/admin.sock".to_string()));
        assert!(plan.read_only.iter().any(|p| p.why == "config file"));
        // A loaded config cannot hold an expose entry naming a protected path; build one.
        let mut config = config;
        config.sandbox.expose = vec![
            SandboxPath::Path(PathBuf::from("./.keyswap/ca/ca-key.pem")),
            SandboxPath::Path(PathBuf::from("keyswap.yaml")),
        ];
        let plan = super::tests::plan(&config);
        assert!(hidden(&plan).contains(&"/work/project/.keyswap/ca/ca-key.pem".to_string()));
        assert!(plan.expose.is_empty(), "{:?}", plan.expose);
    }

    #[test]
    fn order_is_fixed_and_every_path_is_listed_once() {
        let config = load(
            "version: 1\nsandbox:\n  hide: [~/.ssh, ./.keyswap/admin.sock, ./x, x/]\n  read_only: [./keyswap.yaml, x, ./y, y]\n",
        );
        let first = plan(&config);
        assert_eq!(first, plan(&config));
        let hide = hidden(&first);
        let mut unique = hide.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), hide.len(), "{hide:?}");
        // keyswap's own first (with its reason), the operator's next, then the stores.
        assert_eq!(first.hide[1].why, "admin socket");
        let at = |p: &str| hide.iter().position(|h| h == p).unwrap();
        assert!(at("/work/project/x") < at("/home/agent/.gnupg"));
        assert_eq!(first.hide[at("/home/agent/.ssh")].why, "sandbox.hide");
        // Hidden wins over read-only; the config file is read-only once.
        let ro: Vec<String> = first
            .read_only
            .iter()
            .map(|p| p.path.display().to_string())
            .collect();
        assert_eq!(ro, ["/work/project/keyswap.yaml", "/work/project/y"]);
    }

    #[test]
    fn clean_makes_paths_comparable() {
        let cwd = Path::new(CWD);
        assert_eq!(
            clean(cwd, Path::new("./a//b/./c/")),
            PathBuf::from("/work/project/a/b/c")
        );
        assert_eq!(
            clean(cwd, Path::new("/abs/../x")),
            PathBuf::from("/abs/../x")
        );
    }
}
