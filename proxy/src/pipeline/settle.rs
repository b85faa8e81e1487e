//! The request body is decided before the response is relayed.
//!
//! An upstream may answer before it has read the request body (an early 401, a server that
//! ignores `Expect: 100-continue`, an h2 stream ended early). The body's verdict (an
//! ungranted placeholder, the task's token, a refused trailer) is only known once the body
//! has been read, and the audit must record what happened to it, so keyswap waits for the
//! body before it relays the answer:
//!
//! - while the upstream still reads the body, it streams on as usual until it ends;
//! - once the upstream has let go of it, keyswap reads the rest from the agent itself,
//!   through the same scanners (counted, and sent nowhere), up to [`UNREAD_BODY_LIMIT`];
//! - then a refused body refuses the request (403 with its reason; the early answer is
//!   dropped) and a clean body lets the answer through, recorded with the bytes read; a body
//!   longer than the bound is refused as `bad_request`, because keyswap cannot say what it
//!   carried.
//!
//! The cost is that a response is never relayed before its request body has ended: an
//! exchange in which the agent waits for response bytes before it finishes its body (full
//! duplex over h2) waits for the body. Requests without a body never wait.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use keyswap_scrub::body::{BoxError, ProxyBody};
use tokio::sync::oneshot;

/// The most request-body bytes keyswap reads to decide a body the upstream stopped reading.
pub const UNREAD_BODY_LIMIT: u64 = 1024 * 1024;

/// How the request body's stream ended, as [`Watched`] reports it.
enum BodyEnd {
    /// Read to its end (by the upstream leg).
    Ended,
    /// Failed: refused by a scanner, or the agent's stream broke.
    Failed,
    /// Let go of before its end: the rest is still to be read.
    Dropped(ProxyBody),
}

/// What the wait for the request body found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The body ended or failed; a refusal, if any, is in the body's refusal.
    Decided,
    /// The body went on past [`UNREAD_BODY_LIMIT`] after the upstream stopped reading it.
    TooLong,
}

/// The request body as the upstream leg reads it, reporting how it ended.
pub struct Watched {
    inner: Option<ProxyBody>,
    report: Option<oneshot::Sender<BodyEnd>>,
}

/// The other end of a [`Watched`] body.
pub struct BodyWatch(oneshot::Receiver<BodyEnd>);

/// Wraps the outgoing request body.
pub fn watch(body: ProxyBody) -> (Watched, BodyWatch) {
    let (tx, rx) = oneshot::channel();
    let watched = Watched {
        inner: Some(body),
        report: Some(tx),
    };
    (watched, BodyWatch(rx))
}

impl Watched {
    fn report(&mut self, end: BodyEnd) {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(end);
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.report(BodyEnd::Ended),
            Poll::Ready(Some(Err(_))) => this.report(BodyEnd::Failed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.report.is_none() {
            return;
        }
        match self.inner.take() {
            Some(body) if !body.is_end_stream() => self.report(BodyEnd::Dropped(body)),
            _ => self.report(BodyEnd::Ended),
        }
    }
}

/// Waits until the request body is decided: read to its end or failed by the upstream leg,
/// or, when the upstream let go of it, read here (and discarded) up to the bound.
pub async fn settle(watch: BodyWatch) -> Settled {
    let rest = match watch.0.await {
        Ok(BodyEnd::Dropped(rest)) => rest,
        // A sender dropped without a report cannot happen (Drop reports); nothing to wait for.
        Ok(BodyEnd::Ended | BodyEnd::Failed) | Err(_) => return Settled::Decided,
    };
    drain(rest).await
}

async fn drain(mut rest: ProxyBody) -> Settled {
    let mut read = 0u64;
    while let Some(frame) = rest.frame().await {
        let Ok(frame) = frame else {
            return Settled::Decided;
        };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > UNREAD_BODY_LIMIT {
                return Settled::TooLong;
            }
        }
    }
    Settled::Decided
}
