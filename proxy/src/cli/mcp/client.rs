//! The client side of `https://keyswap.internal` for `keyswap mcp`: reached through the
//! proxy variables `keyswap exec` sets — a CONNECT to `keyswap.internal:443` on `HTTPS_PROXY`
//! with the task's credentials, TLS trusting the CA file exec provides (`SSL_CERT_FILE`, else
//! `NODE_EXTRA_CA_CERTS`). The same path every other request of the agent takes: inside the
//! sandbox there is no other.
//!
//! The proxy URL's userinfo is the task token: it is sent in `Proxy-Authorization` and never
//! printed (errors name the proxy's address only).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pipeline::agent_api::INTERNAL_HOST;

/// Variables holding the proxy URL, in the order they are looked at.
const PROXY_VARS: [&str; 3] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"];
/// Variables holding a PEM file that trusts keyswap's CA, in the order they are looked at.
const CA_VARS: [&str; 3] = ["KEYSWAP_CA_FILE", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"];

/// Where the proxy is and who the task is.
pub struct Internal {
    proxy: String,
    /// `Basic base64(task:token)`; never printed.
    authorization: Option<String>,
    tls: tokio_rustls::TlsConnector,
}

impl Internal {
    /// From the environment `keyswap exec` set.
    pub fn from_env() -> anyhow::Result<Internal> {
        let url = PROXY_VARS
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .context("no HTTPS_PROXY in the environment: run the agent (and keyswap mcp) under keyswap exec")?;
        let rest = url
            .strip_prefix("http://")
            .context("HTTPS_PROXY must be an http:// proxy URL (as keyswap exec sets it)")?;
        let rest = rest.split('/').next().unwrap_or(rest);
        let (userinfo, proxy) = match rest.rsplit_once('@') {
            Some((userinfo, proxy)) => (Some(userinfo), proxy.to_string()),
            None => (None, rest.to_string()),
        };
        let authorization = userinfo.map(|u| {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let user = percent_decode_str(user).decode_utf8_lossy();
            let password = percent_decode_str(password).decode_utf8_lossy();
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {basic}")
        });
        let ca = CA_VARS
            .iter()
            .find_map(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
            .map(PathBuf::from)
            .context(
                "no CA file in the environment (SSL_CERT_FILE): run the agent under keyswap exec",
            )?;
        Ok(Internal {
            proxy,
            authorization,
            tls: connector(&ca)?,
        })
    }

    /// `GET path`, the JSON answer and its status.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(Method::POST, path, Some(body.to_string())).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let stream = self.tunnel().await?;
        let name = ServerName::try_from(INTERNAL_HOST)?;
        let tls = self
            .tls
            .connect(name, stream)
            .await
            .context("TLS with keyswap.internal failed (is the CA file keyswap's?)")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, INTERNAL_HOST);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&bytes).with_context(|| {
            format!("keyswap.internal answered {status} with a body that is not JSON")
        })?;
        Ok((status, json))
    }

    /// A CONNECT tunnel to keyswap.internal:443 through the proxy.
    async fn tunnel(&self) -> anyhow::Result<TcpStream> {
        let mut stream = TcpStream::connect(&self.proxy)
            .await
            .with_context(|| format!("cannot reach the proxy at {}", self.proxy))?;
        let mut head =
            format!("CONNECT {INTERNAL_HOST}:443 HTTP/1.1\r\nHost: {INTERNAL_HOST}:443\r\n");
        if let Some(authorization) = &self.authorization {
            head.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        // The answer's head, read byte by byte so nothing of the tunnel is consumed.
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 16 * 1024 {
                bail!("the proxy's answer to CONNECT is too long");
            }
            let byte = stream
                .read_u8()
                .await
                .context("the proxy closed the connection")?;
            answer.push(byte);
        }
        let status_line = String::from_utf8_lossy(&answer);
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        match status {
            "200" => Ok(stream),
            "407" => bail!("the proxy at {} refused this task's credentials (407): is HTTPS_PROXY the one keyswap exec set?", self.proxy),
            other => bail!("the proxy at {} refused the CONNECT to {INTERNAL_HOST} ({other})", self.proxy),
        }
    }
}

/// A TLS client that trusts the certificates in `ca` (a PEM file).
fn connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem =
        std::fs::read(ca).with_context(|| format!("cannot read the CA file {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        // A bundle may hold certificates rustls does not take; keyswap's CA is what matters.
        let _ = roots.add(cert?);
    }
    if roots.is_empty() {
        bail!("the CA file {} holds no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
