//! `keyswap run`: the proxy in the foreground, with its admin API and metrics listener,
//! until SIGINT or SIGTERM; SIGHUP reopens the audit log and reloads the config (a bad config
//! keeps the running one). Hardens the process before any secret is read.

use std::path::Path;

use keyswap_certs::CertificateAuthority;
use keyswap_config::Config;

use super::not_valid;
use crate::server::{ProxyHandle, ProxyOptions};

pub(super) fn run(path: &Path) -> anyhow::Result<()> {
    // Before the config (and so any secret) is read; a refusal stops keyswap (fail closed).
    crate::host::process_guard::harden_self()?;
    let config = keyswap_config::load(path).map_err(|e| not_valid(path, &e))?;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config");
    }
    let ca = CertificateAuthority::load_or_create(&config.ca_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let options = ProxyOptions {
            admin: true,
            metrics: true,
            config_path: Some(path.to_path_buf()),
            ..ProxyOptions::default()
        };
        // Listening for signals before the proxy starts: a SIGHUP sent as soon as it says it
        // is listening must reload, not kill it.
        let signals = Signals::new()?;
        let handle = ProxyHandle::start(config, ca, options).await?;
        wait_for_signals(&handle, path, signals).await?;
        handle.shutdown().await;
        Ok(())
    })
}

struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

/// SIGHUP reopens the audit log (log rotation) and reloads; SIGINT / SIGTERM stop.
async fn wait_for_signals(
    handle: &ProxyHandle,
    path: &Path,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals {
        mut hangup,
        mut terminate,
        mut interrupt,
    } = signals;
    loop {
        tokio::select! {
            _ = hangup.recv() => match reopen_then_load(handle, path).await {
                Ok(config) => match handle.reload(config) {
                    // The reload logs its own one-line summary of what changed.
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "config not reloaded; keeping the running one"),
                },
                Err(errors) => tracing::error!(errors = %errors, "config not reloaded; keeping the running one"),
            },
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

/// Reopens the audit log (whatever the config's fate), then reads the config.
async fn reopen_then_load(
    handle: &ProxyHandle,
    path: &Path,
) -> Result<Config, keyswap_config::ConfigErrors> {
    let shared = handle.shared().clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        shared.audit.reopen_blocking();
        keyswap_config::load(&path)
    })
    .await
    .unwrap_or_else(|_| keyswap_config::load(Path::new("")))
}
