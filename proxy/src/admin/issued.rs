//! What an issued task's answer holds: id, token, proxy URL, expiry, the agent's
//! environment, and for a sandboxed `keyswap exec` the paths to hide and the variables to
//! withhold. The token goes in this answer only; nothing here logs.

use std::collections::BTreeSet;
use std::path::Path;

use keyswap_config::{Config, SecretSource};
use secrecy::ExposeSecret;

use crate::api::{IssueRequest, IssuedTask};
use crate::host::child_env::{task_env, ProxyEndpoint, TrustFiles};
use crate::lifecycle::tasks::Issued;
use crate::state::shared::Shared;

/// The answer to an issue: id, token, proxy URL, expiry and the agent's environment, which
/// points at `request.agent_addr` (where the agent reaches the proxy) or at the proxy's own
/// listener; for a sandboxed exec, the paths to hide, from the config read from `config_file`.
pub fn issued_task(
    shared: &Shared,
    trust: &TrustFiles,
    issued: &Issued,
    request: &IssueRequest,
    config_file: Option<&Path>,
) -> IssuedTask {
    let task = &issued.task;
    let snapshot = shared.snapshot();
    let placeholders: Vec<(String, String)> = snapshot
        .rules_of(task)
        .map(keyswap_config::granted_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|id| snapshot.config.secret(id))
        .flat_map(|s| s.agent_env())
        .collect();
    let env = task_env(
        ProxyEndpoint {
            task: &task.id,
            token: Some(issued.token.expose_secret()),
            addr: request.agent_addr.unwrap_or(shared.listen),
        },
        trust,
        &placeholders,
    );
    IssuedTask {
        id: task.id.clone(),
        policy: task.policy.clone().unwrap_or_default(),
        token: issued.token.expose_secret().to_string(),
        proxy_url: env.get("HTTPS_PROXY").cloned().unwrap_or_default(),
        expires: task
            .expires()
            .map(crate::audit::record::timestamp)
            .unwrap_or_default(),
        env,
        listen: Some(shared.listen),
        sandbox: request.sandbox.as_ref().map(|agent| {
            keyswap_config::sandbox_plan_paths(
                &snapshot.config,
                config_file,
                &agent.home,
                agent.runtime_dir.as_deref(),
            )
        }),
        withheld_env: credential_variables(&snapshot.config),
    }
}

/// The variables `config` reads a credential from: secrets' `from_env`, tasks' `token_env`
/// and `admin.token_env` (sorted, once each). Names are not secret; `keyswap exec` keeps
/// them out of its command's environment.
pub fn credential_variables(config: &Config) -> Vec<String> {
    let secrets = config.secrets.iter().flat_map(|s| {
        let leased = s.lease.iter().flat_map(|l| l.env_vars().to_vec());
        s.sources()
            .filter_map(|source| match source {
                SecretSource::Env(name) => Some(name.clone()),
                SecretSource::File(_) | SecretSource::Command(_) | SecretSource::Lease => None,
            })
            .chain(leased)
            .collect::<Vec<_>>()
    });
    let tasks = config.tasks.values().filter_map(|t| t.token_env.clone());
    let names: BTreeSet<String> = secrets
        .chain(tasks)
        .chain(config.admin.token_env.clone())
        .collect();
    names.into_iter().collect()
}
