//! Secret refresh: a `from_file` / `from_command` secret with `refresh:` is read again in the
//! background once its value is older than `refresh`, so short-lived credentials (`gh auth
//! token`, cloud CLIs) keep working across a long task.
//!
//! One read per secret at a time (single-flight). A failed read keeps the last good value
//! for at most one more `refresh` period, then the secret is *stale*: its placeholder is no
//! longer swapped (requests that need it are refused with `secret_unavailable`) until a read
//! succeeds. Failures are logged and audited by secret name; a value is never formatted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keyswap_config::{ProcessEnv, SecretId, SecretSource};
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};

use crate::audit::record::{timestamp, LifecycleRecord};
use crate::state::shared::Shared;

/// How often the refresher looks at the secrets' ages.
const TICK: Duration = Duration::from_millis(250);
/// After a failed read, the next try waits this long (or `refresh`, if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What one background read reports back.
struct ReadDone {
    name: String,
    source: SecretSource,
    result: Result<SecretString, String>,
}

/// Per secret (by name): a read in flight, and when the last one failed.
#[derive(Default)]
struct ReadState {
    in_flight: bool,
    last_failure: Option<Instant>,
}

/// Starts the refresher; it ends when `stop` changes.
pub fn start(shared: &Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ReadDone>();
        let mut states: HashMap<String, ReadState> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = done_rx.recv() => {
                    let Some(shared) = shared.upgrade() else { return };
                    finish_read(&shared, &mut states, done);
                    continue;
                }
                _ = stop.changed() => return,
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            start_due_reads(&shared, &mut states, &done_tx);
        }
    });
}

fn start_due_reads(
    shared: &Arc<Shared>,
    states: &mut HashMap<String, ReadState>,
    done: &mpsc::UnboundedSender<ReadDone>,
) {
    let snapshot = shared.snapshot();
    let now = Instant::now();
    for secret in &snapshot.config.secrets {
        let Some(refresh) = secret.refresh else {
            continue;
        };
        let age = now.saturating_duration_since(snapshot.loaded_at[secret.id.0]);
        let state = states.entry(secret.name.clone()).or_default();
        let retry_wait = refresh.min(RETRY_AFTER);
        let waiting_to_retry = state
            .last_failure
            .is_some_and(|failed| now.saturating_duration_since(failed) < retry_wait);
        if age >= 2 * refresh && !snapshot.stale[secret.id.0] {
            mark_stale(shared, secret.id, &secret.name);
        }
        if age < refresh || state.in_flight || waiting_to_retry {
            continue;
        }
        state.in_flight = true;
        let name = secret.name.clone();
        let source = secret.source.clone();
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let result = keyswap_config::secrets::reread(&source, &ProcessEnv);
            let _ = done.send(ReadDone {
                name,
                source,
                result,
            });
        });
    }
}

fn finish_read(shared: &Arc<Shared>, states: &mut HashMap<String, ReadState>, done: ReadDone) {
    let state = states.entry(done.name.clone()).or_default();
    state.in_flight = false;
    let ok = match done.result {
        Ok(value) => {
            state.last_failure = None;
            store_value(shared, &done.name, &done.source, value)
        }
        Err(problem) => {
            state.last_failure = Some(Instant::now());
            // `problem` names the source and how to fix it; it never holds the value.
            tracing::warn!(secret = %done.name, %problem, "secret refresh failed; keeping the last good value");
            false
        }
    };
    if !ok {
        shared.metrics.secret_refresh_failed(&done.name);
    }
    shared.audit.lifecycle(LifecycleRecord::SecretRefreshed {
        ts: timestamp(SystemTime::now()),
        secret: done.name,
        ok,
    });
}

/// Swaps the new value into a new snapshot. `false` if the secret is no longer configured
/// the same way (a reload happened meanwhile: it read the value itself) or the new snapshot
/// could not be built.
fn store_value(shared: &Shared, name: &str, source: &SecretSource, value: SecretString) -> bool {
    let current = shared.snapshot();
    let Some(id) = current.config.secret_by_name(name) else {
        return false;
    };
    if current.config.secret(id).source != *source {
        return false;
    }
    match current.with_refreshed(id, value) {
        Ok(next) => {
            // Losing the race to a reload is fine: the reload read every value afresh.
            if shared.replace_snapshot(&current, next) {
                tracing::info!(secret = %name, "secret refreshed");
            }
            true
        }
        Err(e) => {
            tracing::error!(secret = %name, error = %e, "refreshed secret could not be used");
            false
        }
    }
}

fn mark_stale(shared: &Shared, id: SecretId, name: &str) {
    let current = shared.snapshot();
    if let Ok(next) = current.with_stale(id, true) {
        if shared.replace_snapshot(&current, next) {
            tracing::error!(secret = %name, "secret is stale: its refresh has failed for a whole period; requests that need it are refused");
        }
    }
}
