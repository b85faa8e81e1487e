//! The byte stream toward an upstream ([`Transport`]): a TCP connection to it, or a tunnel
//! to it through the parent proxy; and one TCP connect under the upstream timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::upstream::CONNECT_TIMEOUT;

/// One TCP connect under [`CONNECT_TIMEOUT`]; `Err(None)` is the timeout.
pub(crate) async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, Option<io::Error>> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// A byte stream toward an upstream: a TCP connection to it, or a tunnel to it through the
/// parent proxy (over TCP, or over TLS to an `https://` parent).
pub enum Transport {
    Tcp(TcpStream),
    ParentTcp(TcpStream),
    ParentTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    /// The upstream's address when it was dialled directly; an error through a parent proxy
    /// (the socket's peer is the parent, not the upstream).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Tcp(tcp) => tcp.peer_addr(),
            Transport::ParentTcp(_) | Transport::ParentTls(_) => {
                Err(io::Error::other("tunnelled through a parent proxy"))
            }
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) | Transport::ParentTcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::ParentTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) | Transport::ParentTcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::ParentTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) | Transport::ParentTcp(s) => {
                Pin::new(s).poll_write_vectored(cx, bufs)
            }
            Transport::ParentTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) | Transport::ParentTcp(s) => s.is_write_vectored(),
            Transport::ParentTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) | Transport::ParentTcp(s) => Pin::new(s).poll_flush(cx),
            Transport::ParentTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) | Transport::ParentTcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::ParentTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
