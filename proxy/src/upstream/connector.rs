//! The hyper-util connector of the upstream clients: [`Dialer::dial`] (directly or through
//! the parent proxy), then keyswap's own rustls session with the upstream, verified against
//! the upstream's name: through a parent's tunnel too, so the certificate checked is the
//! upstream's, never the parent's. A plain-HTTP request routed to an HTTP parent is sent to
//! the parent itself, in absolute form. Under both, [`AnswerFirst`]: an answer the upstream
//! sent before it closed the connection under keyswap's write is relayed, not lost to the
//! write's error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use crate::upstream::answer_first::AnswerFirst;
use crate::upstream::dial::Dialer;
use crate::upstream::transport::Transport;
use crate::upstream::{ConnectError, CONNECT_TIMEOUT};
use crate::wire::target::Target;

/// hyper-util connector: `Dialer` + optional rustls.
#[derive(Clone)]
pub struct Connector {
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamIo>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let authority = uri.authority().ok_or(ConnectError::BadUri)?;
            let target = Target::from_authority(authority, if https { 443 } else { 80 })
                .map_err(|_| ConnectError::BadUri)?;
            if !https {
                return this.plain(&target).await.map(TokioIo::new);
            }
            let transport = this.dialer.dial(&target).await?;
            let name =
                ServerName::try_from(target.host.clone()).map_err(|_| ConnectError::BadUri)?;
            let transport = AnswerFirst::new(transport);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, this.tls.connect(name, transport))
                .await
                .map_err(|_| ConnectError::Timeout {
                    host: target.host.clone(),
                })?
                .map_err(|source| ConnectError::Tls {
                    host: target.host.clone(),
                    source,
                })?;
            Ok(TokioIo::new(UpstreamIo::Tls(Box::new(tls))))
        })
    }
}

impl Connector {
    /// A plain-HTTP connection: to the HTTP parent (absolute form) when the target is routed
    /// through one, else dialled like any target.
    async fn plain(&self, target: &Target) -> Result<UpstreamIo, ConnectError> {
        match self.dialer.parent_for(&target.host) {
            Some(parent) if parent.takes_absolute_form() => {
                // The parent resolves the name; keyswap's address rules are applied first.
                self.dialer.check(target).await?;
                Ok(UpstreamIo::Plain {
                    io: AnswerFirst::new(parent.open().await?),
                    absolute_form: true,
                })
            }
            _ => Ok(UpstreamIo::Plain {
                io: AnswerFirst::new(self.dialer.dial(target).await?),
                absolute_form: false,
            }),
        }
    }
}

/// A connection to an upstream (or, for absolute-form plain HTTP, to the parent proxy).
pub enum UpstreamIo {
    Plain {
        io: AnswerFirst<Transport>,
        /// Requests on it go in absolute form, to an HTTP parent proxy.
        absolute_form: bool,
    },
    Tls(Box<tokio_rustls::client::TlsStream<AnswerFirst<Transport>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain { absolute_form, .. } => Connected::new().proxy(*absolute_form),
            UpstreamIo::Tls(tls) => {
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain { io, .. } => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain { io, .. } => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain { io, .. } => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain { io, .. } => io.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain { io, .. } => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain { io, .. } => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
