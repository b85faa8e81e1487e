//! Lifelines: an issue with `"lifeline": true` keeps its response open — the issued task as
//! one JSON line, then a heartbeat newline — and revokes the task when the response ends, so
//! a killed `keyswap exec` cannot leave its task behind. Also records which pids hold a
//! lifeline, whose descendants the socket guard refuses. Never writes the token anywhere but
//! that first line.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::watch;

use super::failure::failure;
use crate::api::IssuedTask;
use crate::lifecycle::tasks;
use crate::state::shared::Shared;
use crate::state::tasks::{LiveTask, RevokeWhy};

/// How often a lifeline response writes a newline: a write to a peer that has gone fails,
/// which is how a killed `exec` is noticed within a second.
pub const LIFELINE_HEARTBEAT: Duration = Duration::from_millis(250);

/// The pids of the processes that hold a lifeline issued on the socket (a `keyswap exec`
/// each), with how many each holds: their descendants are an exec's command.
#[derive(Default)]
pub(super) struct LifelineHolders(Mutex<HashMap<i32, usize>>);

impl LifelineHolders {
    pub(super) fn hold(self: &Arc<Self>, pid: i32) -> HeldLifeline {
        *self.held().entry(pid).or_default() += 1;
        HeldLifeline {
            holders: self.clone(),
            pid,
        }
    }

    /// The nearest of `ancestors` that holds a lifeline.
    pub(super) fn nearest_in(&self, ancestors: &[i32]) -> Option<i32> {
        let held = self.held();
        ancestors.iter().copied().find(|pid| held.contains_key(pid))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i32, usize>> {
        // A panic elsewhere while holding the lock leaves the map whole: keep using it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A lifeline's holder, recorded until the lifeline ends.
pub(super) struct HeldLifeline {
    holders: Arc<LifelineHolders>,
    pid: i32,
}

impl Drop for HeldLifeline {
    fn drop(&mut self) {
        let mut held = self.holders.held();
        if let Some(count) = held.get_mut(&self.pid) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.pid);
            }
        }
    }
}

/// The response to an issue with a lifeline: `answer` as its first line, then heartbeats
/// until the task ends, the proxy stops (`stop`), or the client goes away — which revokes
/// `task`. `holder` is the socket peer that holds it, if known.
pub(super) fn respond(
    shared: Arc<Shared>,
    task: Arc<LiveTask>,
    answer: &IssuedTask,
    stop: watch::Receiver<bool>,
    holder: Option<HeldLifeline>,
) -> Response {
    let Ok(mut first) = serde_json::to_vec(answer) else {
        tasks::end(&shared, &task, RevokeWhy::Exit, true);
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding failed",
        );
    };
    first.push(b'\n');
    let body = LifelineBody {
        first: Some(Bytes::from(first)),
        heartbeat: tokio::time::interval(LIFELINE_HEARTBEAT),
        stop: Box::pin(wait_stop(stop)),
        guard: Lifeline {
            shared,
            task,
            holder,
        },
    };
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::new(body),
    )
        .into_response()
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Revokes its task when dropped: the lifeline response ended (the client went away).
/// Until then its holder's descendants are refused on the socket.
struct Lifeline {
    shared: Arc<Shared>,
    task: Arc<LiveTask>,
    holder: Option<HeldLifeline>,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // The holder first: once the task is seen gone, its holder is no longer anyone's
        // lifeline (only exec's own descendants were ever refused for it).
        self.holder.take();
        tasks::end(&self.shared, &self.task, RevokeWhy::Exit, true);
    }
}

/// The body of a lifeline response: the issued task as one JSON line, then a newline every
/// [`LIFELINE_HEARTBEAT`] until the task ends, the proxy stops, or the client goes away.
struct LifelineBody {
    first: Option<Bytes>,
    heartbeat: tokio::time::Interval,
    stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    guard: Lifeline,
}

impl http_body::Body for LifelineBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.guard.task.is_cancelled() || self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match self.heartbeat.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\n"))))),
            Poll::Pending => Poll::Pending,
        }
    }
}
