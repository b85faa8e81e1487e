//! Reads a TLS ClientHello off a stream *without terminating TLS*: what a door that passes TLS
//! through (a `tunnel: true` rule, later the transparent listener) needs to check the SNI
//! before it lets any byte reach the upstream.
//!
//! The bytes are parsed by rustls's own [`Acceptor`] (not by hand) and kept, so the caller
//! can write them to the upstream unchanged afterwards. Reading is bounded in size and time:
//! an agent cannot make keyswap buffer more than [`PeekLimits::max_bytes`] or wait longer than
//! [`PeekLimits::timeout`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bounds on reading a ClientHello.
#[derive(Clone, Copy, Debug)]
pub struct PeekLimits {
    /// Most bytes read before giving up. A ClientHello is usually under 2 KiB; post-quantum
    /// key shares and many extensions stay well under 16 KiB.
    pub max_bytes: usize,
    /// Longest time the whole ClientHello may take to arrive.
    pub timeout: Duration,
}

impl Default for PeekLimits {
    fn default() -> Self {
        PeekLimits {
            max_bytes: 16 * 1024,
            timeout: Duration::from_secs(15),
        }
    }
}

/// What the ClientHello asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeekedHello {
    /// The SNI host name as sent (rustls accepts only a DNS name here), if any.
    pub sni: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("the client did not start a TLS handshake")]
    NotTls,
    #[error("the ClientHello is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the ClientHello did not arrive in time")]
    Timeout,
    #[error("the client closed the connection before its ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `stream` until a complete ClientHello has been seen; returns what it asked for
/// and every byte read (to be written to the upstream before splicing).
pub async fn peek_client_hello<S>(
    stream: &mut S,
    limits: PeekLimits,
) -> Result<(PeekedHello, Bytes), PeekError>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(limits.timeout, read_hello(stream, limits.max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(PeekError::Timeout),
    }
}

async fn read_hello<S>(stream: &mut S, max: usize) -> Result<(PeekedHello, Bytes), PeekError>
where
    S: AsyncRead + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut buffered = BytesMut::with_capacity(4096);
    loop {
        if buffered.len() >= max {
            return Err(PeekError::TooLarge(max));
        }
        let start = buffered.len();
        // Never read past the limit, so the buffer stays bounded.
        let mut limited = (&mut *stream).take((max - start) as u64);
        if limited.read_buf(&mut buffered).await? == 0 {
            return Err(PeekError::Closed);
        }
        // The one extra copy on this path: rustls reads from its own buffer.
        let mut fresh = &buffered[start..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let peeked = PeekedHello {
                    sni: hello.server_name().map(str::to_string),
                    alpn: hello
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                };
                return Ok((peeked, buffered.freeze()));
            }
            Err(_) => return Err(PeekError::NotTls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The bytes a rustls client writes first: its ClientHello for `sni` (None = no SNI).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.enable_sni = sni.is_some();
        let name =
            rustls::pki_types::ServerName::try_from(sni.unwrap_or("x.test").to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    async fn peek(input: Vec<u8>, limits: PeekLimits) -> Result<(PeekedHello, Bytes), PeekError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Byte by byte: the hello arrives in many reads.
            for b in input {
                if client.write_all(&[b]).await.is_err() {
                    return;
                }
            }
            // Keep the stream open (a client waiting for the ServerHello).
            std::future::pending::<()>().await;
        });
        peek_client_hello(&mut server, limits).await
    }

    #[tokio::test]
    async fn sni_and_alpn_are_read_and_every_byte_kept() {
        let hello = client_hello(Some("api.example.test"));
        let (peeked, buffered) = peek(hello.clone(), PeekLimits::default()).await.unwrap();
        assert_eq!(peeked.sni.as_deref(), Some("api.example.test"));
        assert_eq!(peeked.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(&buffered[..], &hello[..]);
    }

    #[tokio::test]
    async fn refusals() {
        let short = Duration::from_millis(200);
        let limits = PeekLimits::default();
        let (peeked, _) = peek(client_hello(None), limits).await.unwrap();
        assert_eq!(peeked.sni, None);
        assert!(matches!(
            peek(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), limits).await,
            Err(PeekError::NotTls)
        ));
        let hello = client_hello(Some("a.test"));
        let half = hello[..hello.len() / 2].to_vec();
        let timeout = PeekLimits {
            timeout: short,
            ..limits
        };
        assert!(matches!(peek(half, timeout).await, Err(PeekError::Timeout)));
        let small = PeekLimits {
            max_bytes: 64,
            ..limits
        };
        assert!(matches!(
            peek(hello, small).await,
            Err(PeekError::TooLarge(64))
        ));
    }
}
