//! The second fleet worker of a replica, beside [`super::sync`]'s: every
//! [`LIFELINE_BEAT`] it sweeps the lifelines whose holder is gone ([`lifeline::sweep`]) and
//! writes this replica's presence ([`presence::write`], also whenever a request starts or
//! stops waiting for a human); and it answers here the held requests other replicas were
//! asked to answer ([`approvals::answered_elsewhere`]). It uses the store connection the sync
//! worker keeps (nothing is done while the store is lost) and its own pub/sub connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use keyswap_config::RedisStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lifeline::{self, LIFELINE_BEAT};
use super::{approvals, connect, presence, timed, FleetError};
use crate::state::fleet::{FleetLink, StoreState};
use crate::state::shared::Shared;

/// The wait before a lost pub/sub connection is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// Starts the worker; it runs until `stop` changes.
pub fn start(
    shared: &Arc<Shared>,
    store: &RedisStore,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, FleetError> {
    let Some(link) = shared.fleet.clone() else {
        return Ok(None);
    };
    let client = connect::client(store)?;
    let shared = shared.clone();
    Ok(Some(tokio::spawn(async move {
        loop {
            match session(&shared, &link, &client, &mut stop).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "the fleet's answers channel was lost"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => return,
            }
        }
    })))
}

/// One subscription to this replica's answers channel; `Ok` when the proxy stops.
async fn session(
    shared: &Arc<Shared>,
    link: &FleetLink,
    client: &redis::Client,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let mut pubsub = timed(client.get_async_pubsub()).await?;
    timed(pubsub.subscribe(approvals::channel(link, &link.replica))).await?;
    let mut messages = pubsub.on_message();
    let mut beat = tokio::time::interval(LIFELINE_BEAT);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    approvals::answered_elsewhere(shared, link, message.get_payload_bytes()).await;
                }
                None => return Err(FleetError::Closed),
            },
            _ = beat.tick() => {
                if link.health.state() == StoreState::Connected {
                    // A failure here is the sync worker's to notice (it pings); the next beat
                    // tries again.
                    if let Err(e) = lifeline::sweep(shared, link).await {
                        tracing::debug!(error = %e, "sweeping the fleet's lifelines failed");
                    }
                    write_presence(shared, link).await;
                }
            }
            () = shared.approvals.changes.notified() => write_presence(shared, link).await,
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn write_presence(shared: &Arc<Shared>, link: &FleetLink) {
    if let Err(e) = presence::write(shared, link).await {
        tracing::debug!(error = %e, "writing this replica's presence failed");
    }
}
