//! The parent (corporate) proxy: a tunnel to an upstream through HTTP `CONNECT` (over TCP, or
//! over TLS to an `https://` parent) or SOCKS5 (RFC 1928, with RFC 1929 user/password), and
//! the parent connection plain-HTTP requests are sent to in absolute form.
//!
//! The parent's credentials are written only into the handshake with the parent (and the
//! `Proxy-Authorization` of an absolute-form request, which only the parent receives); they
//! are never formatted into an error or a log line. A refusal by the parent keeps only its
//! status (or SOCKS reply code): never its headers or body.

use std::io;
use std::net::SocketAddr;

use base64::Engine;
use http::HeaderValue;
use keyswap_config::{ParentKind, ParentProxy};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::upstream::transport::{connect_tcp, Transport};
use crate::upstream::{ConnectError, CONNECT_TIMEOUT};

/// Most bytes of a `CONNECT` response's head keyswap reads.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// What the parent is asked to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A name (and port) the parent resolves.
    Name(String, u16),
    /// An address keyswap chose (a `resolve` entry, an IP literal, or `socks5://`).
    Addr(SocketAddr),
}

impl Hop {
    /// `host:port` as a `CONNECT` request names it.
    fn authority(&self) -> String {
        match self {
            Hop::Name(host, port) => format!("{host}:{port}"),
            Hop::Addr(addr) => addr.to_string(),
        }
    }
}

/// The configured parent proxy, ready to dial.
pub struct Parent {
    config: ParentProxy,
    /// TLS toward an `https://` parent (verified like any upstream: the parent's name).
    tls: Option<TlsConnector>,
}

impl Parent {
    pub(crate) fn new(config: ParentProxy, tls: Option<TlsConnector>) -> Parent {
        Parent { config, tls }
    }

    /// `scheme://host:port`, never with credentials.
    pub fn display(&self) -> String {
        self.config.display()
    }

    pub(crate) fn bypasses(&self, host: &str) -> bool {
        self.config.bypasses(host)
    }

    /// Whether the parent resolves names (`CONNECT`, `socks5h`), rather than keyswap.
    pub(crate) fn resolves_names(&self) -> bool {
        self.config.kind != ParentKind::Socks5
    }

    /// Whether plain-HTTP requests go to this parent in absolute form (an HTTP proxy).
    pub(crate) fn takes_absolute_form(&self) -> bool {
        self.config.kind.is_http()
    }

    /// `Proxy-Authorization: Basic …` for the parent, when it has credentials; marked
    /// sensitive so no HTTP library logs it.
    pub(crate) fn authorization(&self) -> Option<HeaderValue> {
        let auth = self.config.auth.as_ref()?;
        let (user, password) = auth.expose_user_password();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// A tunnel to `hop` through the parent.
    pub(crate) async fn tunnel(&self, hop: &Hop) -> Result<Transport, ConnectError> {
        let handshake = async {
            match self.config.kind {
                ParentKind::Http | ParentKind::Https => {
                    let mut stream = self.open().await?;
                    self.http_connect(&mut stream, hop).await?;
                    Ok(stream)
                }
                ParentKind::Socks5 | ParentKind::Socks5h => {
                    let mut stream = self.open().await?;
                    self.socks5_connect(&mut stream, hop).await?;
                    Ok(stream)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| ConnectError::ParentTimeout {
                proxy: self.display(),
            })?
    }

    /// A connection to the parent itself (TCP, then TLS for `https://`). The parent's
    /// address is the operator's choice: the private-address rule does not apply to it.
    pub(crate) async fn open(&self) -> Result<Transport, ConnectError> {
        let unreachable = |source| ConnectError::ParentUnreachable {
            proxy: self.display(),
            source,
        };
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((self.config.host.as_str(), self.config.port))
                .await
                .map_err(unreachable)?
                .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for addr in addrs {
            match connect_tcp(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(Some(e)) => last = e,
                Err(None) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        let tcp = tcp.ok_or_else(|| unreachable(last))?;
        let Some(tls) = &self.tls else {
            return Ok(Transport::ParentTcp(tcp));
        };
        self.wrap_tls(tls, tcp).await
    }

    async fn wrap_tls(
        &self,
        tls: &TlsConnector,
        tcp: TcpStream,
    ) -> Result<Transport, ConnectError> {
        let name = ServerName::try_from(self.config.host.clone()).map_err(|_| {
            ConnectError::ParentProtocol {
                proxy: self.display(),
                problem: "the proxy's host is not a valid TLS name",
            }
        })?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::ParentTls {
                proxy: self.display(),
                source,
            })?;
        Ok(Transport::ParentTls(Box::new(stream)))
    }

    /// `CONNECT hop` and its answer: a 2xx opens the tunnel; anything else is the parent's
    /// refusal, kept as its status only.
    async fn http_connect<S>(&self, stream: &mut S, hop: &Hop) -> Result<(), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let authority = hop.authority();
        let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(value) = self.authorization() {
            head.push_str("Proxy-Authorization: ");
            head.push_str(value.to_str().unwrap_or_default());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| self.io_error(e))?;
        drop(head);
        let status = self.read_connect_status(stream).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ConnectError::ParentRefused {
                proxy: self.display(),
                status,
            })
        }
    }

    /// Reads the head of the parent's answer to `CONNECT` (not a byte past it: after a 2xx
    /// the next bytes are the upstream's) and returns its status.
    async fn read_connect_status<S>(&self, stream: &mut S) -> Result<u16, ConnectError>
    where
        S: AsyncRead + Unpin,
    {
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        // Byte by byte: the head is short, and a buffered read could swallow the start of
        // the upstream's bytes.
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_CONNECT_HEAD {
                return Err(self.protocol("the proxy's answer to CONNECT is too long"));
            }
            match stream.read(&mut byte).await {
                Ok(0) => {
                    return Err(self.protocol("the proxy closed the connection during CONNECT"))
                }
                Ok(_) => head.push(byte[0]),
                Err(e) => return Err(self.io_error(e)),
            }
        }
        parse_status(&head)
            .ok_or_else(|| self.protocol("the proxy's answer to CONNECT is not HTTP"))
    }

    /// The SOCKS5 greeting, optional user/password sub-negotiation, and `CONNECT hop`.
    async fn socks5_connect<S>(&self, stream: &mut S, hop: &Hop) -> Result<(), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let auth = self.config.auth.as_ref();
        let greeting: &[u8] = if auth.is_some() {
            &[5, 2, 0, 2]
        } else {
            &[5, 1, 0]
        };
        self.write(stream, greeting).await?;
        let mut chosen = [0u8; 2];
        self.read(stream, &mut chosen).await?;
        match (chosen, auth) {
            ([5, 0], _) => {}
            ([5, 2], Some(auth)) => {
                let (user, password) = auth.expose_user_password();
                let (user, password) = (user.as_bytes(), password.as_bytes());
                if user.len() > 255 || password.len() > 255 {
                    return Err(
                        self.protocol("the SOCKS5 user or password is longer than 255 bytes")
                    );
                }
                let mut message = Vec::with_capacity(3 + user.len() + password.len());
                message.extend([1, user.len() as u8]);
                message.extend_from_slice(user);
                message.push(password.len() as u8);
                message.extend_from_slice(password);
                self.write(stream, &message).await?;
                drop(message);
                let mut status = [0u8; 2];
                self.read(stream, &mut status).await?;
                if status[1] != 0 {
                    return Err(self.protocol("the SOCKS5 proxy refused the user and password"));
                }
            }
            ([5, 0xff], _) => {
                return Err(self
                    .protocol("the SOCKS5 proxy accepts none of keyswap's authentication methods"))
            }
            _ => return Err(self.protocol("the SOCKS5 proxy's greeting is not SOCKS5")),
        }
        self.write(stream, &socks5_request(hop)?).await?;
        let mut reply = [0u8; 4];
        self.read(stream, &mut reply).await?;
        if reply[0] != 5 {
            return Err(self.protocol("the SOCKS5 proxy's reply is not SOCKS5"));
        }
        if reply[1] != 0 {
            return Err(ConnectError::SocksRefused {
                proxy: self.display(),
                reply: reply[1],
            });
        }
        // The bound address, unused: IPv4, a name, or IPv6, then the port.
        let rest = match reply[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut len = [0u8; 1];
                self.read(stream, &mut len).await?;
                usize::from(len[0]) + 2
            }
            _ => return Err(self.protocol("the SOCKS5 reply has an unknown address type")),
        };
        let mut bound = vec![0u8; rest];
        self.read(stream, &mut bound).await
    }

    async fn write<S: AsyncWrite + Unpin>(&self, s: &mut S, b: &[u8]) -> Result<(), ConnectError> {
        s.write_all(b).await.map_err(|e| self.io_error(e))
    }

    async fn read<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        b: &mut [u8],
    ) -> Result<(), ConnectError> {
        s.read_exact(b)
            .await
            .map(|_| ())
            .map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: io::Error) -> ConnectError {
        ConnectError::ParentUnreachable {
            proxy: self.display(),
            source,
        }
    }

    fn protocol(&self, problem: &'static str) -> ConnectError {
        ConnectError::ParentProtocol {
            proxy: self.display(),
            problem,
        }
    }
}

/// A SOCKS5 `CONNECT` request for `hop`.
fn socks5_request(hop: &Hop) -> Result<Vec<u8>, ConnectError> {
    let mut request = vec![5, 1, 0];
    let port = match hop {
        Hop::Addr(SocketAddr::V4(v4)) => {
            request.push(1);
            request.extend(v4.ip().octets());
            v4.port()
        }
        Hop::Addr(SocketAddr::V6(v6)) => {
            request.push(4);
            request.extend(v6.ip().octets());
            v6.port()
        }
        Hop::Name(host, port) => {
            let len = u8::try_from(host.len()).map_err(|_| ConnectError::BadUri)?;
            request.extend([3, len]);
            request.extend_from_slice(host.as_bytes());
            *port
        }
    };
    request.extend(port.to_be_bytes());
    Ok(request)
}

/// The status of an HTTP/1 response head (`HTTP/1.1 407 ...`).
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?;
    (status.len() == 3).then_some(())?;
    status.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_statuses_are_read_from_the_status_line() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"),
            Some(407)
        );
        assert_eq!(parse_status(b"HTTP/1.1 502\r\n\r\n"), Some(502));
        assert_eq!(parse_status(b"SSH-2.0-x\r\n\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 x\r\n\r\n"), None);
    }

    #[test]
    fn socks5_requests_name_the_hop() {
        let by_name = socks5_request(&Hop::Name("api.test".into(), 443)).unwrap();
        assert_eq!(&by_name[..5], &[5, 1, 0, 3, 8]);
        assert_eq!(&by_name[5..13], b"api.test");
        assert_eq!(&by_name[13..], &443u16.to_be_bytes());
        let by_addr = socks5_request(&Hop::Addr("10.1.2.3:8443".parse().unwrap())).unwrap();
        assert_eq!(by_addr, vec![5, 1, 0, 1, 10, 1, 2, 3, 0x20, 0xfb]);
    }
}
