//! What the connection handlers share: the HTTP server settings toward agents, [`Rewind`],
//! and serving a connection for as long as its task lives.
//!
//! Serving a connection for as long as its task lives. When the task is revoked or expires,
//! an HTTP connection is asked to shut down (HTTP/2: GOAWAY; HTTP/1.1: close after the
//! response in flight) and is dropped after [`REVOKE_GRACE`] whatever it is doing, so a
//! body still streaming is cut rather than allowed to finish.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyswap_scrub::body::ProxyBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::audit::decision::{Denial, Reason};
use crate::wire::headers::head_too_large;

/// How long a revoked connection may take to finish its GOAWAY / close before it is dropped.
pub const REVOKE_GRACE: Duration = Duration::from_millis(100);

/// `serve_until!(connection, ended)`: drives a hyper server connection to its end, or — if
/// `ended` resolves first — begins its graceful shutdown and drops it after
/// [`REVOKE_GRACE`]. Evaluates to `Some(result)` when the connection ended by itself, `None`
/// when it was closed.
///
/// A macro rather than a generic function: hyper's connection types carry higher-ranked
/// bounds that a generic `async fn` over them cannot state for `tokio::spawn`.
macro_rules! serve_until {
    ($connection:expr, $ended:expr) => {{
        let connection = $connection;
        let ended = $ended;
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => Some(result),
            _ = ended => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(
                    $crate::pipeline::conn::REVOKE_GRACE,
                    connection,
                )
                .await;
                None
            }
        }
    }};
}

pub(crate) use serve_until;

/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (and read buffer) accepted on an HTTP/1 connection.
use crate::wire::headers::MAX_HEAD_BYTES;
/// Most header fields accepted in one HTTP/1 request.
pub const MAX_HEADERS: usize = 128;

/// The HTTP/1 server settings used toward agents.
pub fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// The HTTP/2 server settings used toward agents (inside intercepted TLS), with at most
/// `max_streams` streams open per connection (`limits.per_connection.h2_streams`; a stream
/// past it is refused with `REFUSED_STREAM`, which clients retry).
pub fn http2_server(max_streams: u32) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        // Rapid reset (CVE-2023-44487): bound streams reset before they are served.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// The 400 for a request whose head exceeds 64 KiB (hyper's own limit is on the raw bytes;
/// this is the same bound on the parsed head), on either front door.
pub(crate) fn refuse_oversized_head<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    head_too_large(req.method(), req.uri(), req.headers()).then(|| {
        Denial::new(
            Reason::BadRequest,
            "the request head is larger than 64 KiB; send fewer or smaller headers",
        )
        .closing()
        .response()
    })
}

/// The bytes already read off a stream (the peeked ClientHello), then the stream itself.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut rewind = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        rewind.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
