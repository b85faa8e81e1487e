//! `keyswap health`: asks a running keyswap's metrics listener for `GET /healthz` and exits 0
//! on `200`, 1 otherwise. It is the container image's health check: the image holds the
//! binary only (no shell, no curl), so the binary probes itself.
//!
//! Plain HTTP/1.1 over a blocking socket with a bounded wait; it sends and prints nothing
//! secret (the metrics listener holds none).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The metrics listener (`metrics.listen` in the config).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub addr: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn health(args: HealthArgs) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = args
        .addr
        .to_socket_addrs()
        .with_context(|| format!("{} is not an address (use HOST:PORT)", args.addr))?
        .collect();
    let addr = addrs
        .first()
        .with_context(|| format!("{} resolves to no address", args.addr))?;
    let mut stream = TcpStream::connect_timeout(addr, args.timeout)
        .with_context(|| format!("connecting to the metrics listener at {addr}"))?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyswap\r\nConnection: close\r\n\r\n")
        .context("sending GET /healthz")?;
    // The status line is all that is needed; the body is two bytes.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream
            .read(&mut head[len..])
            .context("reading the answer")?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let line = line.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => {
            println!("ok");
            Ok(())
        }
        _ => bail!("{addr} answered {line:?} to GET /healthz, not 200"),
    }
}
