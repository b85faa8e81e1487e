//! keyswap started inside `keyswap exec` when no running proxy answers: the config loaded
//! while noting every variable it reads (each a credential the command must not inherit),
//! the command's working directory searched for plaintext real values, and the proxy on an
//! ephemeral loopback port. Holds real values only inside the config it hands to the proxy;
//! never prints one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use keyswap_certs::CertificateAuthority;

use crate::server::{ProxyHandle, ProxyOptions};

/// The process environment, noting the name of every variable read: a config load reads
/// only `from_env`, `token_env` and `admin.token_env`, each a credential.
#[derive(Default)]
struct ReadVars(Mutex<BTreeSet<String>>);

impl keyswap_config::EnvSource for ReadVars {
    fn var(&self, name: &str) -> Option<String> {
        if let Ok(mut read) = self.0.lock() {
            read.insert(name.to_string());
        }
        std::env::var(name).ok()
    }
}

/// keyswap started inside exec, and what exec learnt from its config.
pub(super) struct Embedded {
    pub(super) handle: ProxyHandle,
    /// Variables the config read credentials from, and any variable whose value holds a real
    /// secret value (whatever its name).
    pub(super) withheld: BTreeSet<String>,
}

/// keyswap in this process: the config's rules and secrets, an ephemeral loopback port, no
/// admin socket (nothing outside this process needs one).
pub(super) async fn start_embedded(
    config_path: &Path,
    allow_plaintext: bool,
) -> anyhow::Result<Embedded> {
    let path = config_path.to_path_buf();
    let (config, read) = tokio::task::spawn_blocking(move || {
        let read = ReadVars::default();
        let config = keyswap_config::load_with(&path, &read);
        (config, read.0.into_inner().unwrap_or_default())
    })
    .await?;
    let config = config.map_err(|e| {
        anyhow::anyhow!(
            "no running keyswap answered, and {} is not valid to start one:\n{e}",
            config_path.display()
        )
    })?;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config");
    }
    let config = refuse_plaintext_in_reach(config, allow_plaintext).await?;
    let mut withheld = read;
    withheld.extend(variables_holding_secrets(&config));
    let ca = CertificateAuthority::load_or_create(&config.ca_dir)?;
    let options = ProxyOptions {
        listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        // Not served (no admin API): named so a sandboxed command's plan keeps it read-only.
        config_path: Some(config_path.to_path_buf()),
        ..ProxyOptions::default()
    };
    Ok(Embedded {
        handle: ProxyHandle::start(config, ca, options).await?,
        withheld,
    })
}

/// Searches the command's working directory for the config's real values (in every form the
/// scrubber knows) and refuses to go on when one is there, unless `allow_plaintext`: the agent
/// would read it without keyswap. Only where exec holds the values (keyswap embedded).
async fn refuse_plaintext_in_reach(
    config: keyswap_config::Config,
    allow_plaintext: bool,
) -> anyhow::Result<keyswap_config::Config> {
    use crate::host::plaintext::{self, ScanBudget, ScanSet};
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let (config, report) = tokio::task::spawn_blocking(move || {
        let report = ScanSet::from_config(&config)
            .map(|set| plaintext::check_working_tree(&set, &cwd, ScanBudget::EXEC));
        (config, report)
    })
    .await?;
    let report = report.context("building the search for plaintext secrets")?;
    if let Some(note) = plaintext::incomplete_note(&report, ScanBudget::EXEC) {
        eprintln!("keyswap exec: {}", note.trim_end());
    }
    if report.is_clean() {
        return Ok(config);
    }
    if allow_plaintext {
        eprintln!("{}", plaintext::allow_plaintext_warning(&report));
        return Ok(config);
    }
    let refusal = plaintext::exec_refusal(&report);
    anyhow::bail!("{}", refusal.trim_start_matches("keyswap exec: "))
}

/// Names of this process's variables whose value contains a real secret value.
fn variables_holding_secrets(config: &keyswap_config::Config) -> Vec<String> {
    use secrecy::ExposeSecret;
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let value = value.to_string_lossy();
            let holds = config.secrets.iter().any(|secret| {
                let real = secret.value.expose_secret();
                !real.is_empty() && value.contains(real)
            });
            holds.then(|| name.to_string_lossy().into_owned())
        })
        .collect()
}
