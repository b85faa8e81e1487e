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
//! A *success* answer while the upstream is still reading the body is full duplex (gRPC's
//! bidirectional streams, streaming APIs: the agent may wait for response bytes before it
//! sends more), so it is not held: it is relayed at once, and only its end waits for the
//! body ([`EndsAfterRequestBody`]). A body refused after that cuts the response instead of
//! ending it, and the record says refused. Any other answer (an early 401, 413, 417…) waits
//! as above. Requests without a body never wait. If the upstream neither reads the body nor
//! closes the stream after a non-success answer, the exchange waits for the agent's body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use keyswap_scrub::body::{BoxError, ProxyBody};
use tokio::sync::oneshot;

use crate::pipeline::swap_body::{BodyRefusal, BodyRefused};

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

impl BodyWatch {
    /// Whether the request body is still streaming toward the upstream: neither ended, nor
    /// failed, nor let go of.
    pub fn still_streaming(&self) -> bool {
        self.0.is_empty() && !self.0.is_terminated()
    }
}

/// A response relayed while its request body still streams (a success answer while the
/// upstream reads on: full duplex), whose *end* waits for the request body's verdict. Its
/// frames go to the agent as they come; its last (trailers, or the end) is held until the
/// request body has ended, and a refused body, or an unread rest past
/// [`UNREAD_BODY_LIMIT`], cuts the response instead of ending it, so the agent never sees the
/// exchange complete, and the record says why (the shared [`BodyRefusal`]).
pub struct EndsAfterRequestBody {
    inner: ProxyBody,
    verdict: Option<Pin<Box<dyn Future<Output = Settled> + Send>>>,
    refused: BodyRefusal,
    /// The frame that ends the response, held while the verdict is awaited.
    last: Option<Option<Frame<Bytes>>>,
}

impl EndsAfterRequestBody {
    pub fn new(inner: ProxyBody, watch: BodyWatch, refused: BodyRefusal) -> Self {
        EndsAfterRequestBody {
            inner,
            verdict: Some(Box::pin(settle(watch))),
            refused,
            last: None,
        }
    }
}

/// The error that cuts a response whose request body was refused after it began.
#[derive(Debug, thiserror::Error)]
#[error("the request body was refused while its response streamed")]
pub struct RequestBodyRefused;

impl Body for EndsAfterRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(verdict) = this.verdict.as_mut().filter(|_| this.last.is_some()) {
                let settled = std::task::ready!(verdict.as_mut().poll(cx));
                this.verdict = None;
                if settled == Settled::TooLong {
                    let _ = this.refused.set(BodyRefused::UnreadTooLong);
                }
                if this.refused.get().is_some() {
                    this.last = None;
                    return Poll::Ready(Some(Err(Box::new(RequestBodyRefused))));
                }
            }
            if this.verdict.is_none() {
                if let Some(last) = this.last.take() {
                    return Poll::Ready(last.map(Ok));
                }
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_data() => return Poll::Ready(Some(Ok(frame))),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(trailers)) if this.verdict.is_some() => this.last = Some(Some(trailers)),
                None if this.verdict.is_some() => this.last = Some(None),
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.verdict.is_none() && self.last.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
