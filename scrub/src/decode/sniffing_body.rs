//! An identity-declared body, sniffed for a compression magic: scrubbed as text when it has
//! none, passed byte-exact behind a scan of its decoded copy when it has one.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::pipeline::Pipeline;
use super::scan::Scan;
use super::{invalid, sniff, SNIFF_LEN};
use crate::body::{BoxError, ProxyBody};
use crate::replace::{Replacer, ReplacingBody};

fn cut(message: &'static str) -> BoxError {
    Box::new(invalid(message))
}

/// A body with some frames already read from it in front.
struct Prefixed {
    front: VecDeque<Frame<Bytes>>,
    inner: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.front.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.inner.is_end_stream()
    }
}

enum Sniffing {
    /// Reading the first [`SNIFF_LEN`] bytes.
    Start {
        front: VecDeque<Frame<Bytes>>,
        prefix: Vec<u8>,
        inner: ProxyBody,
    },
    Plain(ReplacingBody<Prefixed>),
    Scan {
        inner: ProxyBody,
        scan: Box<Scan>,
        done: bool,
    },
    /// A real value (or a bomb) was found: the next poll ends the body in an error.
    Cut(&'static str),
    Finished,
}

/// An identity-declared body: scrubbed as text unless it begins with a compression magic,
/// in which case its original bytes pass only once their decoded copy has been scanned.
pub struct SniffingBody {
    state: Sniffing,
    scrubber: Arc<Replacer>,
    trailers: Option<HeaderMap>,
}

impl SniffingBody {
    pub fn new(inner: ProxyBody, scrubber: Arc<Replacer>) -> SniffingBody {
        SniffingBody {
            state: Sniffing::Start {
                front: VecDeque::new(),
                prefix: Vec::new(),
                inner,
            },
            scrubber,
            trailers: None,
        }
    }

    /// Leaves the `Start` state once `prefix` is long enough or the body has ended.
    fn decide(
        &mut self,
        front: VecDeque<Frame<Bytes>>,
        prefix: &[u8],
        inner: ProxyBody,
        ended: bool,
    ) -> Sniffing {
        let Some(Ok(pipeline)) = sniff(prefix).map(|c| Pipeline::new(&[c])) else {
            return Sniffing::Plain(ReplacingBody::new(
                Prefixed { front, inner },
                self.scrubber.clone(),
            ));
        };
        let mut scan = Box::new(Scan::new(pipeline));
        let mut done = ended;
        for frame in front {
            match frame.into_data() {
                Ok(data) => {
                    if let Err(why) = scan.feed(&self.scrubber, &data) {
                        return Sniffing::Cut(why);
                    }
                }
                Err(frame) => {
                    self.keep_trailers(frame);
                    done = true;
                }
            }
        }
        Sniffing::Scan { inner, scan, done }
    }

    fn keep_trailers(&mut self, frame: Frame<Bytes>) {
        if let Ok(mut trailers) = frame.into_trailers() {
            self.scrubber.replace_in_headers(&mut trailers);
            self.trailers = Some(trailers);
        }
    }
}

/// What polling one state leads to: an answer for the caller, or another turn of the loop.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl SniffingBody {
    /// `Start`: reads frames until [`SNIFF_LEN`] bytes (or the end) decide how to scan.
    fn poll_start(
        &mut self,
        cx: &mut Context<'_>,
        mut front: VecDeque<Frame<Bytes>>,
        mut prefix: Vec<u8>,
        mut inner: ProxyBody,
    ) -> ControlFlow<Polled> {
        let ended = match Pin::new(&mut inner).poll_frame(cx) {
            Poll::Pending => {
                self.state = Sniffing::Start {
                    front,
                    prefix,
                    inner,
                };
                return ControlFlow::Break(Poll::Pending);
            }
            Poll::Ready(Some(Err(e))) => return ControlFlow::Break(Poll::Ready(Some(Err(e)))),
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                let is_data = match frame.data_ref() {
                    Some(data) => {
                        let want = SNIFF_LEN.saturating_sub(prefix.len()).min(data.len());
                        prefix.extend_from_slice(&data[..want]);
                        true
                    }
                    None => false,
                };
                front.push_back(frame);
                !is_data
            }
        };
        self.state = if ended || prefix.len() >= SNIFF_LEN {
            self.decide(front, &prefix, inner, ended)
        } else {
            Sniffing::Start {
                front,
                prefix,
                inner,
            }
        };
        ControlFlow::Continue(())
    }

    /// `Scan`: releases what is scanned clean, else reads and scans the next frame.
    fn poll_scan(
        &mut self,
        cx: &mut Context<'_>,
        mut inner: ProxyBody,
        mut scan: Box<Scan>,
        mut done: bool,
    ) -> ControlFlow<Polled> {
        let ready = scan.releasable();
        if !ready.is_empty() {
            self.state = Sniffing::Scan { inner, scan, done };
            return ControlFlow::Break(Poll::Ready(Some(Ok(Frame::data(ready)))));
        }
        if done {
            let rest = scan.rest();
            if !rest.is_empty() {
                self.state = Sniffing::Scan { inner, scan, done };
                return ControlFlow::Break(Poll::Ready(Some(Ok(Frame::data(rest)))));
            }
            let trailers = self.trailers.take().map(|t| Ok(Frame::trailers(t)));
            return ControlFlow::Break(Poll::Ready(trailers));
        }
        match Pin::new(&mut inner).poll_frame(cx) {
            Poll::Pending => {
                self.state = Sniffing::Scan { inner, scan, done };
                return ControlFlow::Break(Poll::Pending);
            }
            Poll::Ready(Some(Err(e))) => return ControlFlow::Break(Poll::Ready(Some(Err(e)))),
            Poll::Ready(None) => done = true,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if let Err(why) = scan.feed(&self.scrubber, &data) {
                        self.state = Sniffing::Cut(why);
                        return ControlFlow::Continue(());
                    }
                }
                Err(frame) => {
                    self.keep_trailers(frame);
                    done = true;
                }
            },
        }
        self.state = Sniffing::Scan { inner, scan, done };
        ControlFlow::Continue(())
    }
}

impl Body for SniffingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        loop {
            let flow = match std::mem::replace(&mut this.state, Sniffing::Finished) {
                Sniffing::Plain(mut body) => {
                    let polled = Pin::new(&mut body).poll_frame(cx);
                    this.state = Sniffing::Plain(body);
                    ControlFlow::Break(polled)
                }
                Sniffing::Finished => ControlFlow::Break(Poll::Ready(None)),
                Sniffing::Cut(why) => {
                    tracing::warn!(reason = why, "response body cut");
                    ControlFlow::Break(Poll::Ready(Some(Err(cut(
                        "keyswap cut the body: once decompressed it carried a real secret value",
                    )))))
                }
                Sniffing::Start {
                    front,
                    prefix,
                    inner,
                } => this.poll_start(cx, front, prefix, inner),
                Sniffing::Scan { inner, scan, done } => this.poll_scan(cx, inner, scan, done),
            };
            if let ControlFlow::Break(polled) = flow {
                return polled;
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
