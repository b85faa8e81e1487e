//! The task's own proxy token, refused wherever a request carries it: in its head before any
//! rule is looked at ([`guard_head`]), and in its body as it streams ([`TokenGuard`]):
//! found, the body fails and the request is refused like one carrying an ungranted
//! placeholder, so no upstream ever learns a proxy credential.
//!
//! The search is the task's [`TokenFinder`] (built once when the task is issued; a
//! `memchr::memmem` search per frame, no automaton per request). Like
//! [`crate::pipeline::swap_body::ScanBody`], only a tail of a frame that could begin the
//! token is held back until the next frame decides it, so not even part of the token goes
//! out before it is decided; a frame that ends in no such tail passes as the same buffer.
//! Trailers pass through to the header rules ([`crate::pipeline::trailers`]), which look
//! for the token there.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use keyswap_scrub::body::BoxError;

use crate::audit::decision::{Denial, Reason};
use crate::pipeline::context::ConnContext;
use crate::pipeline::swap::{token_in_headers, Misplaced};
use crate::pipeline::swap_body::{BodyRefusal, BodyRefused, RefusedBody};
use crate::state::tasks::LiveTask;
use crate::wire::headers::strip_hop_by_hop;
use crate::wire::token::TokenFinder;

/// Before any rule is looked at: hop-by-hop and `Proxy-*` headers are removed (they never go
/// upstream, so what they carry is not checked: `Proxy-Authorization` carries the task's
/// token), and the task's token anywhere in the URI or the headers refuses the request, before
/// any refusal could quote the part that carries it. `uri_token`: the part of the URI that
/// carries the token ([`crate::pipeline::swap::token_in_uri`], looked for by the caller).
pub fn guard_head(
    ctx: &ConnContext,
    parts: &mut Parts,
    uri_token: Option<&'static str>,
    upgrade: bool,
) -> Result<(), Denial> {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let Some(token) = ctx.task.token_finder() else {
        return Ok(());
    };
    let part = uri_token.or_else(|| token_in_headers(token, &parts.headers).then_some("headers"));
    match part {
        Some(part) => Err(token_denial(ctx, part)),
        None => Ok(()),
    }
}

/// The refusal of a request that carries the task's own proxy token in `part`.
pub(crate) fn token_denial(ctx: &ConnContext, part: &str) -> Denial {
    Denial::new(
        Reason::PlaceholderNotAllowed,
        format!(
            "the request carries task {}'s proxy token in its {part}; the token is for keyswap \
             only and is never sent to {}: remove it from the request",
            ctx.task.id, ctx.target.host,
        ),
    )
}

/// A request body in which the task's token fails the body (and sets the [`BodyRefusal`]).
pub struct TokenGuard<B> {
    inner: B,
    /// Holds the task's [`TokenFinder`].
    task: Arc<LiveTask>,
    refused: BodyRefusal,
    /// A tail that could begin the token, not yet sent.
    carry: BytesMut,
    ready: VecDeque<Frame<Bytes>>,
    done: bool,
    failed: bool,
}

impl<B> TokenGuard<B> {
    /// A task without a token has nothing to look for: its body passes as it is.
    pub fn new(inner: B, task: Arc<LiveTask>, refused: BodyRefusal) -> Self {
        TokenGuard {
            inner,
            task,
            refused,
            carry: BytesMut::new(),
            ready: VecDeque::new(),
            done: false,
            failed: false,
        }
    }

    /// Queues what of `data` may go on; `Err` when the token is in the bytes seen so far.
    fn feed(&mut self, data: Bytes) -> Result<(), ()> {
        let Some(token) = self.task.token_finder() else {
            self.ready.push_back(Frame::data(data));
            return Ok(());
        };
        let keep = token.len() - 1;
        if data.len() < keep {
            // A short frame: decide it joined to the (short) carry.
            self.carry.extend_from_slice(&data);
            let joined = self.carry.split().freeze();
            return split_off_tail(token, joined, &mut self.carry, &mut self.ready);
        }
        if !self.carry.is_empty() {
            // A token that starts in the carry ends within the frame's first `keep` bytes.
            let carried = self.carry.split().freeze();
            let mut junction = BytesMut::with_capacity(carried.len() + keep);
            junction.extend_from_slice(&carried);
            junction.extend_from_slice(&data[..keep]);
            if token.found_in(&junction) {
                return Err(());
            }
            self.ready.push_back(Frame::data(carried));
        }
        split_off_tail(token, data, &mut self.carry, &mut self.ready)
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self
            .refused
            .set(BodyRefused::Misplaced(Misplaced::TaskToken {
                part: "body",
            }));
        self.failed = true;
        self.ready.clear();
        self.carry.clear();
        Poll::Ready(Some(Err(Box::new(RefusedBody))))
    }
}

impl<B> Body for TokenGuard<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.task.token_finder().is_none() {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if this.feed(data).is_err() {
                            return this.fail();
                        }
                    }
                    Err(trailers) => {
                        // The held tail did not become the token: it goes before the trailers.
                        this.end_data();
                        this.ready.push_back(trailers);
                        this.done = true;
                    }
                },
                Poll::Ready(None) => {
                    this.end_data();
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
            || (self.ready.is_empty()
                && self.carry.is_empty()
                && (self.done || self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        // The bytes are unchanged: the length the agent declared still holds.
        let buffered: u64 = self
            .ready
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum::<u64>()
            + self.carry.len() as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// Refuses `buf` if it holds the token; else queues it but for a tail that could begin it.
fn split_off_tail(
    token: &TokenFinder,
    buf: Bytes,
    carry: &mut BytesMut,
    ready: &mut VecDeque<Frame<Bytes>>,
) -> Result<(), ()> {
    if token.found_in(&buf) {
        return Err(());
    }
    let send = buf.len() - token.held_tail(&buf);
    carry.extend_from_slice(&buf[send..]);
    if send > 0 {
        ready.push_back(Frame::data(buf.slice(..send)));
    }
    Ok(())
}

impl<B> TokenGuard<B> {
    /// At the end of the data, the held tail is not the token: it is sent.
    fn end_data(&mut self) {
        if !self.carry.is_empty() {
            let rest = self.carry.split().freeze();
            self.ready.push_back(Frame::data(rest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tasks::{IssuedBy, TaskSource};
    use http_body_util::BodyExt;
    use secrecy::SecretString;

    const TOKEN: &str = "tok-0123456789";

    /// A body that yields the given frames one per poll.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn task() -> Arc<LiveTask> {
        Arc::new(LiveTask::new(
            "t".into(),
            TaskSource::Config,
            None,
            IssuedBy::Config,
            Some(SecretString::from(TOKEN.to_string())),
            None,
        ))
    }

    /// What the guard let through before it ended or failed, and whether it refused.
    async fn run(parts: &[&[u8]]) -> (Vec<u8>, bool) {
        let frames = Frames(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect());
        let refused = BodyRefusal::default();
        let mut body = TokenGuard::new(frames, task(), refused.clone());
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(f.data_ref().expect("data")),
                Err(_) => break,
            }
        }
        (out, refused.get().is_some())
    }

    #[tokio::test]
    async fn every_split_point_refuses_and_no_token_byte_goes_out_early() {
        let with = format!("a={TOKEN}&b=1");
        let without = format!("a={}&b=1 tok-01 t", &TOKEN[..8]);
        for text in [&with, &without] {
            let b = text.as_bytes();
            for i in 0..b.len() {
                for j in i..b.len() {
                    let (out, refused) = run(&[&b[..i], &b[i..j], &b[j..]]).await;
                    if text == &with {
                        assert!(refused, "split {i},{j} not refused");
                        assert!(out.len() <= 2, "split {i},{j}: bytes of the token went out");
                    } else {
                        assert!(!refused, "split {i},{j} refused a body without the token");
                        assert_eq!(out, b, "split {i},{j} changed the body");
                    }
                }
            }
        }
    }
}
