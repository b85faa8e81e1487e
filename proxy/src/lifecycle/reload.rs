//! Reloading the config: a new snapshot is built completely, swapped in, and the tasks are
//! brought in line with it; what changed is logged. A config that cannot be used leaves the
//! running one in place.

use std::net::SocketAddr;
use std::sync::Arc;

use keyswap_config::Config;

use crate::api;
use crate::error::ProxyError;
use crate::lifecycle::config_diff::ConfigDiff;
use crate::lifecycle::tasks;
use crate::state::shared::Shared;
use crate::state::snapshot::Snapshot;

/// Builds a snapshot from `config` and swaps it in, then brings the tasks in line with it
/// (static tasks added or ended, runtime tasks whose policy is gone revoked). On error the
/// old snapshot stays and no task changes.
pub fn reload(shared: &Arc<Shared>, config: Config) -> Result<api::Reloaded, ProxyError> {
    let key_id = config
        .audit
        .key
        .as_ref()
        .map(|k| crate::audit::chain::key_id(secrecy::ExposeSecret::expose_secret(&k.value)));
    if key_id.as_deref() != shared.audit.key_id() {
        tracing::warn!(
            "audit.key_file changed: the audit chain keeps its key until keyswap restarts"
        );
    }
    let next = Snapshot::build(config, shared.provider.clone())?;
    warn_if_restart_needed(shared.transparent_listen, &next.config);
    let next = Arc::new(next);
    let previous = shared.swap_snapshot(next.clone());
    let summary = tasks::sync(shared, &next.config);
    ConfigDiff::between(&previous.config, &next.config, &summary).log();
    Ok(summary)
}

/// Logs what a reload cannot change: the transparent listener is bound once, at start.
fn warn_if_restart_needed(bound: Option<SocketAddr>, next: &keyswap_config::Config) {
    let wanted = next.transparent.as_ref().map(|t| t.listen);
    if wanted != bound {
        let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        tracing::warn!(
            running = %show(bound),
            config = %show(wanted),
            "transparent.listen changed: the listener keeps its address until keyswap restarts (the rest of transparent: applies now)"
        );
    }
}
