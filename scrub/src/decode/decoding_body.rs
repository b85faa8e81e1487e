//! A body whose declared codings are undone, frame by frame, before the scrubber sees it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::pipeline::Pipeline;
use super::Codings;
use crate::body::{BoxError, ProxyBody};

/// A declared-compressed body, decoded (the scrubber wraps it).
pub struct DecodingBody {
    inner: ProxyBody,
    pipeline: Pipeline,
    inner_done: bool,
    trailers: Option<HeaderMap>,
    failed: bool,
}

impl DecodingBody {
    pub fn new(inner: ProxyBody, codings: Codings) -> Result<DecodingBody, BoxError> {
        Ok(DecodingBody {
            inner,
            pipeline: Pipeline::new(codings.as_slice())?,
            inner_done: false,
            trailers: None,
            failed: false,
        })
    }
}

impl Body for DecodingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match this.pipeline.next() {
                Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                Ok(None) => {}
                Err(e) => {
                    this.failed = true;
                    tracing::warn!(error = %e, "compressed response body cut");
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if this.inner_done {
                if let Err(e) = this.pipeline.finish() {
                    this.failed = true;
                    tracing::warn!(error = %e, "compressed response body cut");
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.inner_done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pipeline.push(&data),
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
