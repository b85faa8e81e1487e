//! An upstream's answer outranks the failure of the write that followed it.
//!
//! An HTTP server may answer before it has read the request body (a 401, 402 or 413 to an
//! upload) and then close the connection with the body unread, which resets it. keyswap may
//! still be writing that body: its next write fails with "broken pipe" or "connection reset",
//! and the HTTP client would report that failure even though the answer is already in the
//! socket's receive queue. Whether the read or the write comes first is a race.
//!
//! [`AnswerFirst`] settles the race for the answer: once the upstream has closed the
//! connection under a write, later writes report success and discard their bytes, so the
//! client goes on to read. What the upstream sent before it closed is read as usual; after
//! that, the read side ends (end of stream or the reset), and a request that got no answer
//! still fails. Memory does not grow: discarded bytes are not kept.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream toward an upstream whose writes, once the upstream has closed the connection,
/// are discarded rather than failed (see the module documentation).
pub struct AnswerFirst<T> {
    inner: T,
    /// The upstream closed the connection under a write: writes are discarded from now on.
    closed_under_write: bool,
}

impl<T> AnswerFirst<T> {
    pub fn new(inner: T) -> Self {
        AnswerFirst {
            inner,
            closed_under_write: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether a write found the connection closed by the upstream.
    pub fn closed_under_write(&self) -> bool {
        self.closed_under_write
    }

    /// `result` of a write, with the upstream's close turned into `written` bytes written.
    fn settle<R>(&mut self, result: Poll<io::Result<R>>, written: R) -> Poll<io::Result<R>> {
        match result {
            Poll::Ready(Err(e)) if closed_by_peer(&e) => {
                tracing::debug!(error = %e, "the upstream closed the connection under a write; reading its answer");
                self.closed_under_write = true;
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }
}

/// The errors a write gets when the other end has closed or reset the connection.
fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for AnswerFirst<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AnswerFirst<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed_under_write {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.settle(result, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let all = bufs.iter().map(|b| b.len()).sum();
        if this.closed_under_write {
            return Poll::Ready(Ok(all));
        }
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.settle(result, all)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_under_write {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.settle(result, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_under_write {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.settle(result, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connection whose server end has written `answer` (if any) and then reset the
    /// connection with the client's bytes unread; returned once the client has seen the reset.
    async fn reset_after(answer: &[u8]) -> AnswerFirst<TcpStream> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut client = AnswerFirst::new(client);
        client
            .write_all(b"POST /upload HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut server = server;
        server.write_all(answer).await.unwrap();
        // Unread bytes and a zero linger: closing sends a reset, as a server that answered
        // without reading the body does. (A zero linger never blocks the drop.)
        #[allow(deprecated)]
        server.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(server);
        // Keep writing until a write meets the reset; each must report success.
        while !client.closed_under_write() {
            client.write_all(&[b'x'; 1024]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_reset_is_read_after_the_failed_write() {
        let answer = b"HTTP/1.1 402 Payment Required\r\ncontent-length: 0\r\n\r\n";
        let mut client = reset_after(answer).await;
        // Writes after the reset are discarded, not failed.
        client.write_all(b"more body").await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; answer.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        // After the answer, the read side ends: the connection is not mistaken for a live one.
        let mut rest = [0u8; 16];
        let end = client.read(&mut rest).await;
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    }

    #[tokio::test]
    async fn without_an_answer_the_read_side_still_fails() {
        let mut client = reset_after(b"").await;
        let mut rest = [0u8; 16];
        let end = client.read(&mut rest).await;
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    }

    #[test]
    fn other_write_errors_are_not_hidden() {
        let e = io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        assert!(!closed_by_peer(&e));
        let e = io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(closed_by_peer(&e));
    }
}
