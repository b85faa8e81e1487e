//! The CLI's client of the admin API (`keyswap exec`, `keyswap task …`, `keyswap approvals`): one HTTP/1.1
//! request per connection, over the unix socket or over TCP with the bearer token.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::api::{
    AnswerRequest, Answered, ApiError, ApprovalInfo, ApprovalList, IssueRequest, IssuedTask,
    Reloaded, Revoked, TaskInfo, TaskList,
};

/// Where the admin API is.
#[derive(Clone)]
pub enum AdminTarget {
    Socket(PathBuf),
    /// `admin.listen`, with the bearer token.
    Tcp {
        addr: SocketAddr,
        token: SecretString,
    },
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTarget::Socket(path) => write!(f, "{}", path.display()),
            AdminTarget::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} ({}): {}", .error.message, .error.reason, .status)]
    Api { status: StatusCode, error: ApiError },
    #[error("the admin API answered something unexpected: {0}")]
    Protocol(String),
}

pub struct AdminClient {
    pub target: AdminTarget,
}

/// Keeps a lifeline issue's connection open; dropping it closes the connection, and the
/// proxy then revokes the task.
pub struct LifelineHandle {
    reader: JoinHandle<()>,
    connection: JoinHandle<()>,
}

impl Drop for LifelineHandle {
    fn drop(&mut self) {
        self.reader.abort();
        self.connection.abort();
    }
}

impl AdminClient {
    pub fn new(target: AdminTarget) -> AdminClient {
        AdminClient { target }
    }

    /// Sends one request on a new connection; returns the response and the task driving the
    /// connection.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::Response<Incoming>, JoinHandle<()>), ClientError> {
        let connect_error = |source| ClientError::Connect {
            target: self.target.to_string(),
            source,
        };
        let protocol = |e: hyper::Error| ClientError::Protocol(e.to_string());
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "keyswap-admin");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let (mut sender, connection) = match &self.target {
            AdminTarget::Socket(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(connect_error)?;
                handshake(stream).await?
            }
            AdminTarget::Tcp { addr, token } => {
                request = request.header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", token.expose_secret()),
                );
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_error)?;
                handshake(stream).await?
            }
        };
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(protocol)?;
        Ok((response, connection))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (response, connection) = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        connection.abort();
        parse(status, &bytes)
    }

    pub async fn issue(&self, request: &IssueRequest) -> Result<IssuedTask, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call(Method::POST, "/v1/tasks", Some(body)).await
    }

    /// Issues a task whose life is tied to the returned handle.
    pub async fn issue_with_lifeline(
        &self,
        request: &IssueRequest,
    ) -> Result<(IssuedTask, LifelineHandle), ClientError> {
        let mut request = request.clone();
        request.lifeline = true;
        let body =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (response, connection) = self.send(Method::POST, "/v1/tasks", Some(body)).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut line = BytesMut::new();
        // The first line is the issued task; an error response is one JSON document.
        while !line.contains(&b'\n') {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        line.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
                None => break,
            }
            if line.len() > 1 << 20 {
                return Err(ClientError::Protocol("the first line is too long".into()));
            }
        }
        let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
        let issued: IssuedTask = parse(status, &line[..end])?;
        let reader = tokio::spawn(async move {
            // Heartbeats until the proxy ends the response (task revoked, proxy stopping).
            while let Some(Ok(_)) = body.frame().await {}
        });
        Ok((issued, LifelineHandle { reader, connection }))
    }

    pub async fn list(&self) -> Result<Vec<TaskInfo>, ClientError> {
        let list: TaskList = self.call(Method::GET, "/v1/tasks", None).await?;
        Ok(list.tasks)
    }

    pub async fn show(&self, id: &str) -> Result<TaskInfo, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/tasks/{}", path_segment(id)),
            None,
        )
        .await
    }

    pub async fn revoke(&self, id: &str, why: &str) -> Result<Revoked, ClientError> {
        let path = format!("/v1/tasks/{}?why={why}", path_segment(id));
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn reload(&self) -> Result<Reloaded, ClientError> {
        self.call(Method::POST, "/v1/reload", None).await
    }

    /// The requests waiting for a human (only `task`'s when given).
    pub async fn approvals(&self, task: Option<&str>) -> Result<Vec<ApprovalInfo>, ClientError> {
        let path = match task {
            Some(task) => format!("/v1/approvals?task={}", path_segment(task)),
            None => "/v1/approvals".to_string(),
        };
        let list: ApprovalList = self.call(Method::GET, &path, None).await?;
        Ok(list.approvals)
    }

    /// Approves or denies one waiting request.
    pub async fn answer(&self, id: &str, answer: &AnswerRequest) -> Result<Answered, ClientError> {
        let body = serde_json::to_vec(answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let path = format!("/v1/approvals/{}", path_segment(id));
        self.call(Method::POST, &path, Some(body)).await
    }
}

/// HTTP/1.1 over `stream`, with the connection driven by a spawned task.
async fn handshake<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        JoinHandle<()>,
    ),
    ClientError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

/// Task ids are `[A-Za-z0-9._-]`; anything else is percent-encoded so it stays one segment.
fn path_segment(id: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn parse<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    } else {
        match serde_json::from_slice::<ApiError>(bytes) {
            Ok(error) => Err(ClientError::Api { status, error }),
            Err(_) => Err(ClientError::Protocol(format!("status {status}"))),
        }
    }
}
