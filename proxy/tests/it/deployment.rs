//! The shipped deployment files (`docker/`), tested as far as a machine without a container
//! engine allows: the compose files and Kubernetes manifests parse and agree with each other
//! and with the Dockerfile, every path the Dockerfile copies exists, every command line they
//! give keyswap is one its CLI accepts, every keyswap config they ship passes the real
//! `keyswap check` (with the container's paths mapped into a temporary directory), the
//! `keyswap health` check the image uses answers for a running keyswap, and — as root — the
//! iptables init script, run in a network namespace of its own, sends a non-keyswap UID's TCP
//! to the transparent port, lets keyswap's UID out, and drops UDP.
//!
//! Nothing here builds or runs an image.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Parser;
use keyswap::cli::{Cli, Command as KsCommand};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_REAL};
use yaml_rust2::{Yaml, YamlLoader};

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");
const KEYSWAP_UID: i64 = 65532;
const TOKEN: &str = "deploy-test-token-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn docker(name: &str) -> PathBuf {
    repo().join("docker").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document in `path` (a parse error fails the test with its position).
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn yaml_one(path: &Path) -> Yaml {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .unwrap_or_else(|| panic!("a list of strings expected, got {node:?}"))
        .iter()
        .map(|s| match s {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("a string expected, got {other:?}"),
        })
        .collect()
}

// ---- the Dockerfile ---------------------------------------------------------------------

/// The Dockerfile's instructions with continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&docker("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// A JSON-array (exec form) argument list.
fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("not exec form ({e}): {rest}"))
}

struct Image {
    stages: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    user: String,
}

fn image() -> Image {
    let mut image = Image {
        stages: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
        user: String::new(),
    };
    for (word, rest) in dockerfile() {
        match word.as_str() {
            "FROM" => {
                let name = rest
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .find(|w| w[0].eq_ignore_ascii_case("AS"))
                    .map(|w| w[1].to_string())
                    .unwrap_or_else(|| panic!("every stage is named: FROM {rest}"));
                image.stages.push(name);
            }
            "ENTRYPOINT" => image.entrypoint = exec_form(&rest),
            "CMD" => image.cmd = exec_form(&rest),
            "USER" => image.user = rest,
            "HEALTHCHECK" => {
                let at = rest.find("CMD ").expect("HEALTHCHECK ... CMD [...]");
                image.healthcheck = exec_form(&rest[at + 4..]);
            }
            _ => {}
        }
    }
    image
}

/// The argv as the keyswap CLI parses it, or the parse error.
fn parse_cli(argv: &[String]) -> Result<Cli, String> {
    let mut args = argv.to_vec();
    assert!(
        args.first()
            .is_some_and(|p| p.ends_with("/keyswap") || p == "keyswap"),
        "not a keyswap command line: {argv:?}"
    );
    args[0] = "keyswap".into();
    Cli::try_parse_from(&args).map_err(|e| e.to_string())
}

fn health_addr(argv: &[String]) -> String {
    match parse_cli(argv) {
        Ok(Cli {
            command: KsCommand::Health(args),
            ..
        }) => args.addr,
        other => panic!("not `keyswap health`: {argv:?} ({:?})", other.err()),
    }
}

fn run_config(argv: &[String]) -> PathBuf {
    match parse_cli(argv) {
        Ok(Cli {
            command: KsCommand::Run { config },
            ..
        }) => config,
        other => panic!("not `keyswap run`: {argv:?} ({:?})", other.err()),
    }
}

#[test]
fn dockerfile_copies_only_what_the_repository_has_and_runs_keyswap_as_65532() {
    let image = image();
    let mut copied = 0;
    for (word, rest) in dockerfile() {
        if word != "COPY" || rest.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = rest
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        assert!(
            parts.len() >= 2,
            "COPY needs a source and a destination: {rest}"
        );
        for source in &parts[..parts.len() - 1] {
            let path = repo().join(source);
            assert!(
                path.exists(),
                "COPY {source}: {} does not exist (the build context is the repository root)",
                path.display()
            );
            copied += 1;
        }
    }
    assert!(copied >= 5, "the Dockerfile copies the workspace");
    // The builder compiles the workspace: every member the root manifest names is copied.
    let members = read(&repo().join("Cargo.toml"));
    for member in ["config", "certs", "proxy", "tests"] {
        assert!(members.contains(&format!("\"{member}\"")));
        assert!(
            dockerfile()
                .iter()
                .any(|(w, r)| w == "COPY" && r.starts_with(&format!("{member} "))),
            "workspace member {member} is not copied"
        );
    }

    assert_eq!(
        image.stages.last().map(String::as_str),
        Some("keyswap"),
        "the default (last) stage is the proxy"
    );
    assert!(image.stages.iter().any(|s| s == "redirect"));
    assert_eq!(image.user, format!("{KEYSWAP_UID}:{KEYSWAP_UID}"));
    let mut argv = image.entrypoint.clone();
    argv.extend(image.cmd.iter().cloned());
    assert_eq!(
        run_config(&argv),
        PathBuf::from("/etc/keyswap/keyswap.yaml")
    );
    assert_eq!(health_addr(&image.healthcheck), "127.0.0.1:9464");
    // The runtime image holds the binary only.
    let runtime_copies: Vec<_> = dockerfile()
        .into_iter()
        .skip_while(|(w, r)| !(w == "FROM" && r.ends_with("AS keyswap")))
        .filter(|(w, _)| w == "COPY" || w == "RUN" || w == "ADD")
        .collect();
    assert!(
        runtime_copies
            .iter()
            .all(|(w, r)| w == "COPY" && r.contains("--from=builder")),
        "the runtime stage only copies the build's output: {runtime_copies:?}"
    );
    // The redirect stage ships the script this repository has.
    assert!(dockerfile()
        .iter()
        .any(|(w, r)| w == "COPY"
            && r == "docker/keyswap-redirect.sh /usr/local/bin/keyswap-redirect"));
}

// ---- compose -----------------------------------------------------------------------------

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "service {name} missing");
    s
}

/// The entrypoint + command of a compose service built from the Dockerfile's proxy stage.
fn keyswap_argv(svc: &Yaml) -> Vec<String> {
    let mut argv = image().entrypoint;
    argv.extend(strings(&svc["command"]));
    argv
}

/// `host path -> container path` of a service's bind mounts (`./x:/y[:ro]`).
fn bind_mounts(svc: &Yaml) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(list) = svc["volumes"].as_vec() {
        for v in list {
            let spec = v.as_str().expect("short volume syntax");
            let parts: Vec<&str> = spec.split(':').collect();
            if parts[0].starts_with("./") {
                out.insert(parts[0].to_string(), parts[1].to_string());
            }
        }
    }
    out
}

fn check_build(svc: &Yaml, stages: &[String]) {
    let build = &svc["build"];
    assert_eq!(build["context"].as_str(), Some(".."));
    let dockerfile = repo().join(build["dockerfile"].as_str().expect("dockerfile"));
    assert_eq!(dockerfile, docker("Dockerfile"));
    let target = build["target"].as_str().expect("target");
    assert!(
        stages.iter().any(|s| s == target),
        "no stage {target} in the Dockerfile"
    );
}

/// Common checks of a compose file; returns the config file its keyswap service mounts.
fn check_compose(file: &str) -> (Yaml, PathBuf) {
    let compose = yaml_one(&docker(file));
    let stages = image().stages;
    let keyswap = service(&compose, "keyswap");
    check_build(keyswap, &stages);
    let config_in_container = run_config(&keyswap_argv(keyswap));
    let mounts = bind_mounts(keyswap);
    let (host, _) = mounts
        .iter()
        .find(|(_, c)| Path::new(c) == config_in_container)
        .unwrap_or_else(|| panic!("{file}: keyswap's --config is not mounted"));
    let config = docker(host.trim_start_matches("./"));
    assert!(config.exists(), "{file}: {} missing", config.display());
    for host in mounts.keys() {
        assert!(
            docker(host.trim_start_matches("./")).exists(),
            "{file} mounts {host}, which the repository does not have"
        );
    }
    // The health check is the image's, against the metrics listener of that config.
    let health = strings(&keyswap["healthcheck"]["test"]);
    assert_eq!(health[0], "CMD");
    let metrics = yaml_one(&config)["metrics"]["listen"]
        .as_str()
        .expect("the config has metrics.listen")
        .to_string();
    assert_eq!(health_addr(&health[1..]), metrics, "{file}");
    // Secrets reach keyswap only; the agent holds the placeholder.
    let secret_target = keyswap["secrets"][0]["target"].as_str().expect("a secret");
    let from_file = yaml_one(&config)["secrets"]["github"]["from_file"]
        .as_str()
        .expect("from_file")
        .to_string();
    assert_eq!(secret_target, from_file, "{file}");
    let agent = service(&compose, "agent");
    assert!(
        agent["secrets"].is_badvalue(),
        "{file}: the agent gets no secret"
    );
    assert_eq!(
        agent["environment"]["GITHUB_TOKEN"].as_str(),
        yaml_one(&config)["secrets"]["github"]["placeholder"].as_str()
    );
    assert_eq!(strings(&agent["cap_drop"]), vec!["ALL"]);
    assert_ne!(
        agent["user"].as_str().and_then(|u| u.split(':').next()),
        Some(KEYSWAP_UID.to_string().as_str()),
        "{file}: the agent must not run as keyswap's UID"
    );
    (compose, config)
}

#[test]
fn compose_transparent_sidecar_shares_keyswaps_network_and_redirects_before_the_agent_starts() {
    let (compose, config) = check_compose("compose.yaml");
    assert_eq!(config, docker("keyswap.yaml"));
    let stages = image().stages;
    let redirect = service(&compose, "keyswap-redirect");
    check_build(redirect, &stages);
    for name in ["keyswap-redirect", "agent"] {
        assert_eq!(
            service(&compose, name)["network_mode"].as_str(),
            Some("service:keyswap"),
            "{name} must share keyswap's network namespace"
        );
    }
    assert!(strings(&redirect["cap_add"]).contains(&"NET_ADMIN".to_string()));
    let agent = service(&compose, "agent");
    assert!(
        agent["cap_add"].is_badvalue(),
        "the agent gets no capability"
    );
    assert_eq!(
        redirect["depends_on"]["keyswap"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        agent["depends_on"]["keyswap-redirect"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    // The rules exempt the UID the image runs keyswap as and redirect to the config's port.
    let env = &redirect["environment"];
    assert_eq!(env["KEYSWAP_UID"].as_str(), Some("65532"));
    let transparent = &yaml_one(&config)["transparent"];
    let port = transparent["listen"]
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .map(|(_, p)| p.to_string());
    assert_eq!(env["TRANSPARENT_PORT"].as_str(), port.as_deref());
    assert_eq!(transparent["task"].as_str(), Some("agent"));
    // The CA reaches the agent through the redirect step's trust volume.
    assert_eq!(env["KEYSWAP_CA"].as_str(), Some("/keyswap-ca/ca.pem"));
    assert!(strings(&redirect["volumes"]).contains(&"keyswap-ca:/keyswap-ca:ro".to_string()));
    assert!(strings(&agent["volumes"]).contains(&"agent-trust:/etc/keyswap-trust:ro".to_string()));
    assert!(strings(&service(&compose, "keyswap")["volumes"])
        .contains(&"keyswap-ca:/var/lib/keyswap/ca".to_string()));
    assert_eq!(
        agent["environment"]["SSL_CERT_FILE"].as_str(),
        Some("/etc/keyswap-trust/bundle.pem")
    );
}

#[test]
fn compose_explicit_variant_has_no_route_but_the_proxy() {
    let (compose, config) = check_compose("compose.explicit.yaml");
    assert_eq!(config, docker("keyswap-explicit.yaml"));
    let agent = service(&compose, "agent");
    assert_eq!(strings(&agent["networks"]), vec!["agents"]);
    assert_eq!(
        compose["networks"]["agents"]["internal"].as_bool(),
        Some(true)
    );
    let keyswap = service(&compose, "keyswap");
    assert!(strings(&keyswap["networks"]).contains(&"agents".to_string()));
    // The proxy URL names the config's task and its token variable, in both cases.
    let config = yaml_one(&config);
    let token_env = config["tasks"]["agent"]["token_env"]
        .as_str()
        .expect("token_env");
    let url = format!("http://agent:${{{token_env}}}@keyswap:8080");
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert_eq!(
            agent["environment"][var].as_str(),
            Some(url.as_str()),
            "{var}"
        );
    }
    assert!(keyswap["environment"][token_env].as_str().is_some());
    assert_eq!(config["listen"].as_str(), Some("0.0.0.0:8080"));
}

// ---- Kubernetes ----------------------------------------------------------------------------

fn kubernetes_docs() -> Vec<(PathBuf, Yaml)> {
    let dir = docker("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docker/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        for doc in yaml_docs(&file) {
            out.push((file.clone(), doc));
        }
    }
    out
}

fn find_kind<'a>(docs: &'a [(PathBuf, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(pod: &'a Yaml, list: &str, name: &str) -> &'a Yaml {
    pod["spec"][list]
        .as_vec()
        .and_then(|l| l.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

fn mount_path<'a>(c: &'a Yaml, volume: &str) -> &'a str {
    c["volumeMounts"]
        .as_vec()
        .and_then(|l| l.iter().find(|m| m["name"].as_str() == Some(volume)))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("{:?} does not mount {volume}", c["name"]))
}

fn env_of<'a>(c: &'a Yaml, name: &str) -> Option<&'a str> {
    c["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
}

#[test]
fn kubernetes_manifests_parse_and_wire_the_sidecar_together() {
    let docs = kubernetes_docs();
    assert!(docs.len() >= 3, "ConfigMap, Pod and the example Secret");
    for (file, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].as_str().is_some(), "{}: {field}", file.display());
        }
        assert!(
            doc["metadata"]["name"].as_str().is_some(),
            "{}",
            file.display()
        );
    }
    let pod = find_kind(&docs, "Pod", "agent");
    let config_map = find_kind(&docs, "ConfigMap", "keyswap-config");
    find_kind(&docs, "Secret", "keyswap-secrets");

    // Every mount names a volume of the pod.
    let volumes: BTreeSet<&str> = pod["spec"]["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_vec().expect(list) {
            for m in c["volumeMounts"].as_vec().into_iter().flatten() {
                let v = m["name"].as_str().expect("name");
                assert!(
                    volumes.contains(v),
                    "{:?} mounts unknown volume {v}",
                    c["name"]
                );
            }
        }
    }

    // 1. the rules, with NET_ADMIN, exempting keyswap's UID.
    let redirect = container(pod, "initContainers", "keyswap-redirect");
    assert_eq!(strings(&redirect["args"]), vec!["rules"]);
    let caps = strings(&redirect["securityContext"]["capabilities"]["add"]);
    assert!(caps.contains(&"NET_ADMIN".to_string()));
    let keyswap = container(pod, "initContainers", "keyswap");
    assert_eq!(
        keyswap["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar"
    );
    let keyswap_uid = keyswap["securityContext"]["runAsUser"].as_i64();
    assert_eq!(keyswap_uid, Some(KEYSWAP_UID));
    assert_eq!(env_of(redirect, "KEYSWAP_UID"), Some("65532"));
    // The init containers run in order: rules before keyswap before the trust copy.
    let order: Vec<&str> = pod["spec"]["initContainers"]
        .as_vec()
        .expect("initContainers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(order, ["keyswap-redirect", "keyswap", "keyswap-trust"]);

    // 2. keyswap: the image's entrypoint with these args; config from the ConfigMap.
    let mut argv = image().entrypoint;
    argv.extend(strings(&keyswap["args"]));
    let config_path = run_config(&argv);
    assert_eq!(
        Path::new(mount_path(keyswap, "keyswap-config")),
        config_path.parent().expect("dir")
    );
    let config_text = config_map["data"][config_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")]
    .as_str()
    .expect("the ConfigMap holds the config");
    let config = YamlLoader::load_from_str(config_text).expect("config YAML")[0].clone();
    assert_eq!(
        config,
        yaml_one(&docker("keyswap.yaml")),
        "the ConfigMap's config drifted from docker/keyswap.yaml"
    );
    for probe in ["startupProbe", "livenessProbe"] {
        let command = strings(&keyswap[probe]["exec"]["command"]);
        assert_eq!(
            Some(health_addr(&command).as_str()),
            config["metrics"]["listen"].as_str(),
            "{probe}"
        );
    }
    // Secrets from the Secret, by from_file, mounted in keyswap only.
    let from_file = config["secrets"]["github"]["from_file"]
        .as_str()
        .expect("from_file");
    let secret_dir = mount_path(keyswap, "keyswap-secrets");
    assert_eq!(Path::new(from_file).parent(), Some(Path::new(secret_dir)));
    let secret_volume = pod["spec"]["volumes"]
        .as_vec()
        .and_then(|l| {
            l.iter()
                .find(|v| v["name"].as_str() == Some("keyswap-secrets"))
        })
        .expect("secret volume");
    assert_eq!(
        secret_volume["secret"]["secretName"].as_str(),
        Some("keyswap-secrets")
    );
    let key = Path::new(from_file).file_name().and_then(|n| n.to_str());
    let example = find_kind(&docs, "Secret", "keyswap-secrets");
    assert!(example["stringData"][key.expect("file name")]
        .as_str()
        .is_some());
    // The CA directory is keyswap's ca_dir.
    assert_eq!(
        Some(mount_path(keyswap, "keyswap-ca")),
        config["ca_dir"].as_str()
    );
    let port = config["transparent"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .map(|(_, p)| p);
    assert_eq!(env_of(redirect, "TRANSPARENT_PORT"), port);

    // 3. the CA reaches the agent: the certificate, not the directory with the key.
    let trust = container(pod, "initContainers", "keyswap-trust");
    assert_eq!(strings(&trust["args"]), vec!["trust"]);
    let ca_mount = mount_path(trust, "keyswap-ca");
    assert_eq!(
        env_of(trust, "KEYSWAP_CA"),
        Some(format!("{ca_mount}/ca.pem").as_str())
    );
    assert_ne!(trust["securityContext"]["runAsUser"].as_i64(), keyswap_uid);
    let agent = container(pod, "containers", "agent");
    let trust_dir = mount_path(agent, "agent-trust");
    assert_eq!(
        env_of(agent, "SSL_CERT_FILE"),
        Some(format!("{trust_dir}/bundle.pem").as_str())
    );
    assert!(
        agent["volumeMounts"]
            .as_vec()
            .expect("mounts")
            .iter()
            .all(|m| !matches!(m["name"].as_str(), Some("keyswap-ca" | "keyswap-secrets"))),
        "the agent mounts neither the CA directory nor the secrets"
    );

    // 4. the agent: another UID, no capability, no privilege escalation.
    let sc = &agent["securityContext"];
    assert_ne!(sc["runAsUser"].as_i64(), keyswap_uid);
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert!(sc["capabilities"]["add"].is_badvalue());
    assert_eq!(
        env_of(agent, "GITHUB_TOKEN"),
        config["secrets"]["github"]["placeholder"].as_str()
    );
}

// ---- the configs pass the real `keyswap check` -------------------------------------------

/// Runs `keyswap check` on `config` with the container's paths mapped into a temporary
/// directory (`/run/secrets/keyswap/github-token` holds a test secret) and `env` set.
fn check_in_container_layout(name: &str, config: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("run/secrets/keyswap")).expect("dirs");
    std::fs::write(
        dir.path().join("run/secrets/keyswap/github-token"),
        GITHUB_REAL,
    )
    .expect("secret");
    let mapped = config
        .replace(
            "/run/secrets/keyswap/",
            &format!("{root}/run/secrets/keyswap/"),
        )
        .replace("/var/lib/keyswap/", &format!("{root}/var/lib/keyswap/"))
        .replace(
            "/tmp/keyswap-admin.sock",
            &format!("{root}/keyswap-admin.sock"),
        );
    assert_ne!(mapped, config, "{name}: no container path was mapped");
    let path = dir.path().join("keyswap.yaml");
    std::fs::write(&path, &mapped).expect("write config");
    let out = Command::new(KEYSWAP)
        .args(["check", "--config"])
        .arg(&path)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("keyswap check runs");
    assert_no_real_secret("keyswap check stdout", &out.stdout);
    assert_no_real_secret("keyswap check stderr", &out.stderr);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(TOKEN, "<token>");
    assert!(
        out.status.success(),
        "{name} does not pass keyswap check:\n{shown}"
    );
    assert!(shown.contains(": ok"), "{shown}");
}

#[test]
fn explicit_proxy_config_passes_keyswap_check() {
    let text = read(&docker("keyswap-explicit.yaml"));
    check_in_container_layout(
        "docker/keyswap-explicit.yaml",
        &text,
        &[("KEYSWAP_TOKEN_AGENT", TOKEN)],
    );
}

/// The transparent sidecar's config (docker/keyswap.yaml and the Kubernetes ConfigMap, which
/// the test above proves equal) uses `transparent:`; it passes once the transparent listener
/// is part of the build.
#[test]
fn transparent_sidecar_configs_pass_keyswap_check() {
    check_in_container_layout("docker/keyswap.yaml", &read(&docker("keyswap.yaml")), &[]);
    let docs = kubernetes_docs();
    let text = find_kind(&docs, "ConfigMap", "keyswap-config")["data"]["keyswap.yaml"]
        .as_str()
        .expect("config");
    check_in_container_layout("the ConfigMap's keyswap.yaml", text, &[]);
}

/// The `name` entry of a list of `{name: ...}` maps (containers' ports, env, volumes).
fn named<'a>(list: &'a Yaml, name: &str) -> &'a Yaml {
    list.as_vec()
        .and_then(|l| l.iter().find(|e| e["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no entry named {name} in {list:?}"))
}

/// The port a `host:port` listen address names.
fn port_of(listen: &Yaml) -> i64 {
    listen
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {listen:?}"))
}

/// The Kubernetes fleet: a Deployment of three replicas of the image's proxy stage, one
/// config from its ConfigMap on a Redis the operator runs (its password, the admin token and
/// the real secrets from Secrets, in keyswap's container only; one CA for every replica), a
/// Service whose ports reach the config's listeners, a readiness probe on /healthz (a replica
/// past its store grace leaves the Service); the config passes `keyswap check`.
#[test]
fn kubernetes_fleet_runs_three_replicas_of_one_config_on_the_operators_redis() {
    let docs: Vec<Yaml> = yaml_docs(&docker("kubernetes/keyswap-fleet.yaml"));
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("keyswap-fleet.yaml has no {kind} {name}"))
    };
    let deployment = find("Deployment", "keyswap-fleet");
    let service = find("Service", "keyswap-fleet");
    let config_map = find("ConfigMap", "keyswap-fleet-config");
    assert_eq!(deployment["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        &spec["selector"]["matchLabels"], labels,
        "the selector picks the pods"
    );
    assert_eq!(
        &service["spec"]["selector"], labels,
        "the Service reaches the pods"
    );
    let pod = &spec["template"];
    let keyswap = container(pod, "containers", "keyswap");
    assert_eq!(
        pod["spec"]["containers"].as_vec().map(Vec::len),
        Some(1),
        "a fleet replica runs keyswap alone"
    );

    // keyswap run with the ConfigMap's config.
    let mut argv = image().entrypoint;
    argv.extend(strings(&keyswap["args"]));
    let config_path = run_config(&argv);
    assert_eq!(
        Path::new(mount_path(keyswap, "keyswap-config")),
        config_path.parent().expect("dir")
    );
    assert_eq!(
        named(&pod["spec"]["volumes"], "keyswap-config")["configMap"]["name"].as_str(),
        Some("keyswap-fleet-config")
    );
    let file = config_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    let text = config_map["data"][file]
        .as_str()
        .expect("the ConfigMap holds the config");
    let config = YamlLoader::load_from_str(text).expect("config YAML")[0].clone();

    // The store: a Redis reached by name, its password from a Secret by password_env.
    let redis = &config["store"]["redis"];
    assert!(redis["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("redis")));
    let password_env = redis["password_env"].as_str().expect("password_env");
    let env = named(&keyswap["env"], password_env);
    assert!(
        env["value"].is_badvalue(),
        "the password is not in the manifest"
    );
    assert!(env["valueFrom"]["secretKeyRef"]["name"].as_str().is_some());
    let token_env = config["admin"]["token_env"]
        .as_str()
        .expect("admin.token_env");
    assert!(
        named(&keyswap["env"], token_env)["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .is_some()
    );

    // Each listener is a named container port, and the Service's ports reach proxy and admin.
    let ports = &keyswap["ports"];
    for (port, listen) in [
        ("proxy", &config["listen"]),
        ("admin", &config["admin"]["listen"]),
        ("metrics", &config["metrics"]["listen"]),
    ] {
        assert_eq!(
            named(ports, port)["containerPort"].as_i64(),
            Some(port_of(listen))
        );
    }
    for port in ["proxy", "admin"] {
        assert_eq!(
            named(&service["spec"]["ports"], port)["targetPort"].as_str(),
            Some(port)
        );
    }
    assert_eq!(
        keyswap["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        keyswap["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("metrics")
    );
    assert!(
        keyswap["livenessProbe"]["httpGet"].is_badvalue(),
        "a store outage (503 on /healthz) must not restart the replicas"
    );

    // Real secrets by from_file from a Secret; one CA for every replica, from a Secret.
    let from_file = config["secrets"]["github"]["from_file"]
        .as_str()
        .expect("from_file");
    let secret_dir = mount_path(keyswap, "keyswap-secrets");
    assert_eq!(Path::new(from_file).parent(), Some(Path::new(secret_dir)));
    assert_eq!(
        mount_path(keyswap, "keyswap-ca"),
        config["ca_dir"].as_str().expect("ca_dir")
    );
    for volume in ["keyswap-secrets", "keyswap-ca"] {
        assert!(
            named(&pod["spec"]["volumes"], volume)["secret"]["secretName"]
                .as_str()
                .is_some()
        );
    }
    let sc = &keyswap["securityContext"];
    assert_eq!(sc["runAsUser"].as_i64(), Some(KEYSWAP_UID));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);

    check_in_container_layout(
        "the fleet ConfigMap's keyswap.yaml",
        text,
        &[(password_env, TOKEN), (token_env, TOKEN)],
    );
}

/// The fleet example: three replicas of one config (built from the image's proxy stage),
/// health-checked on that config's metrics listener, each a server of the TCP load balancer,
/// all on the compose file's Redis; the config passes `keyswap check`.
#[test]
fn compose_fleet_runs_three_replicas_of_one_config_on_one_store_behind_the_balancer() {
    let compose = yaml_one(&docker("compose.fleet.yaml"));
    let stages = image().stages;
    let config = docker("keyswap-fleet.yaml");
    let parsed = yaml_one(&config);
    let metrics = parsed["metrics"]["listen"]
        .as_str()
        .expect("metrics.listen");
    let balancer = read(&docker("haproxy-fleet.cfg"));
    for n in 1..=3 {
        let name = format!("keyswap-{n}");
        let svc = service(&compose, &name);
        check_build(svc, &stages);
        let in_container = run_config(&keyswap_argv(svc));
        let mounts = bind_mounts(svc);
        assert_eq!(
            mounts.get("./keyswap-fleet.yaml").map(PathBuf::from),
            Some(in_container),
            "{name} runs another config"
        );
        let health = strings(&svc["healthcheck"]["test"]);
        assert_eq!(health_addr(&health[1..]), metrics, "{name}");
        assert!(
            balancer.contains(&format!("server {name} {name}:8080 check port 9464")),
            "the balancer does not send agents to {name}"
        );
        assert!(
            !svc["depends_on"]["redis"].is_badvalue(),
            "{name} starts before Redis"
        );
        assert!(svc["environment"]["KEYSWAP_REDIS_PASSWORD"]
            .as_str()
            .is_some());
    }
    assert_eq!(
        parsed["store"]["redis"]["url"].as_str(),
        Some("redis://redis:6379/0")
    );
    service(&compose, "redis");
    assert!(bind_mounts(service(&compose, "lb")).contains_key("./haproxy-fleet.cfg"));
    check_in_container_layout(
        "docker/keyswap-fleet.yaml",
        &read(&config),
        &[("KEYSWAP_REDIS_PASSWORD", TOKEN)],
    );
}

// ---- `keyswap health`, the image's health check ---------------------------------------------

/// `keyswap run` with a metrics listener; returns the child and the metrics address it logged.
fn run_with_metrics(dir: &Path) -> (std::process::Child, String) {
    let config = dir.join("keyswap.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nlisten: 127.0.0.1:0\nca_dir: {d}/ca\naudit_log: {d}/audit.jsonl\n\
             admin:\n  socket: {d}/admin.sock\nmetrics:\n  listen: 127.0.0.1:0\n\
             tasks:\n  agent:\n    allow:\n      - host: example.test\n",
            d = dir.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(KEYSWAP)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir)
        .env_clear()
        .env("KEYSWAP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyswap run");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("keyswap logged that metrics are listening");
        if line.contains("metrics listening") {
            break line
                .split("addr=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .expect("addr=")
                .to_string();
        }
    };
    // Keep draining stderr so keyswap never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[test]
fn keyswap_health_passes_for_a_running_keyswap_and_fails_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, addr) = run_with_metrics(dir.path());
    let health = |addr: &str| {
        Command::new(KEYSWAP)
            .args(["health", "--addr", addr, "--timeout", "20s"])
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .expect("keyswap health")
    };
    let up = health(&addr);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&up.stdout), "ok\n");
    let _ = child.kill();
    let _ = child.wait();
    // Nothing listens: a port bound (so no other test can take it) but not listening.
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let down = health(&closed.local_addr().expect("addr").to_string());
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("metrics listener"), "{err}");
    // A listener that is not keyswap's metrics (no 200 for /healthz) fails too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_addr = other.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = other.accept() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let wrong = health(&other_addr);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not 200"));
}

// ---- the iptables init script, for real, in a network namespace ------------------------------

/// Root, `unshare`, `ip`, `iptables`, `setpriv` and `python3`; under CI=true their absence
/// fails, elsewhere a notice says the test did not run.
fn netns_tools_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let tools = ["unshare", "ip", "iptables", "setpriv", "python3"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if root && tools {
        return true;
    }
    let why = if root {
        "unshare, ip, iptables, setpriv or python3 is missing"
    } else {
        "not root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the iptables init script test needs root and its tools in CI: {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** NOTICE: {why}: docker/keyswap-redirect.sh was NOT run in a network namespace ***\n"
    );
    false
}

/// In a fresh network namespace (loopback plus a veth pair with 10.99.0.1/24, so nothing can
/// leave the machine): the script's rules, a stand-in for keyswap's transparent listener on
/// 127.0.0.1:15001 and one for an upstream on 10.99.0.1:443, and connections from UID 1000
/// (the agent) and 65532 (keyswap). Each probe prints one line.
const NETNS_SCRIPT: &str = r#"
set -e
ip link set lo up
ip link add ks-v0 type veth peer name ks-v1
ip addr add 10.99.0.1/24 dev ks-v0
ip link set ks-v0 up
ip link set ks-v1 up
sh "$REDIRECT" rules >/dev/null
fifo="$(mktemp -d)/ready"
mkfifo "$fifo"
python3 -c '
import socket, sys, threading
def bind(addr):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(addr); l.listen(); return l
def serve(l, name):
    while True:
        c, _ = l.accept(); c.sendall(name.encode()); c.close()
keyswap, upstream = bind(("127.0.0.1", 15001)), bind(("10.99.0.1", 443))
threading.Thread(target=serve, args=(keyswap, "keyswap"), daemon=True).start()
print("ready", flush=True)
serve(upstream, "upstream")
' > "$fifo" &
server=$!
trap 'kill $server' EXIT
read -r ready < "$fifo"
PROBE='
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "tcp":
    s = socket.create_connection((host, port))
    print(s.recv(64).decode() or "closed")
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, port)); print("sent")
    except PermissionError:
        print("dropped")
'
# A python3 that other users can run (a per-user install under /root is not one).
PY=
for p in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3)"; do
  if setpriv --reuid=1000 --regid=1000 --clear-groups "$p" -c pass 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || { echo "no python3 that UID 1000 can run" >&2; exit 1; }
as() { uid=$1; shift; setpriv --reuid="$uid" --regid="$uid" --clear-groups "$PY" -c "$PROBE" "$@"; }
echo "agent tcp 443: $(as 1000 tcp 10.99.0.1 443)"
echo "agent tcp 22: $(as 1000 tcp 10.99.0.1 22)"
echo "keyswap tcp 443: $(as 65532 tcp 10.99.0.1 443)"
echo "agent udp 443: $(as 1000 udp 10.99.0.2 443)"
echo "keyswap udp 443: $(as 65532 udp 10.99.0.2 443)"
echo "agent tcp loopback: $(as 1000 tcp 127.0.0.1 15001)"
"#;

#[test]
fn redirect_script_sends_every_uid_but_keyswaps_to_the_transparent_port_and_drops_udp() {
    if !netns_tools_available() {
        return;
    }
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", NETNS_SCRIPT])
        .env("REDIRECT", docker("keyswap-redirect.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown}");
    let expected = [
        // The agent's TCP, to any port, lands on keyswap's transparent listener...
        "agent tcp 443: keyswap",
        "agent tcp 22: keyswap",
        // ...keyswap's own reaches the real destination...
        "keyswap tcp 443: upstream",
        // ...the agent's UDP (QUIC) is dropped, keyswap's is not...
        "agent udp 443: dropped",
        "keyswap udp 443: sent",
        // ...and loopback stays loopback.
        "agent tcp loopback: keyswap",
    ];
    for line in expected {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?}:\n{shown}"
        );
    }
}
