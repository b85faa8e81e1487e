//! mitmproxy as a peer for comparison (not part of keyswap): `mitmdump` with a small addon
//! (`tests/bench/mitmproxy_swap.py`) that does keyswap's header swap.
//!
//! Settings, and why:
//! - the MITM CA is the bench's proxy CA (`confdir/mitmproxy-ca.pem`, key then certificate;
//!   mitmproxy signs its leaves with the CA key, which may be ECDSA P-256);
//! - the upstream is verified against the bench's upstream CA only
//!   (`ssl_verify_upstream_trusted_ca`);
//! - `connection_strategy=lazy`: the upstream is dialled on the first request, not on
//!   `CONNECT`, as keyswap does; the ALPN offered upstream is still the agent's, so HTTP/2 stays
//!   HTTP/2 on both legs (`http2` is on by default);
//! - `stream_large_bodies`: bodies above it are streamed instead of buffered whole, as any
//!   deployment carrying large transfers would set (the addon swaps in `requestheaders`, which
//!   comes before the head goes upstream, streamed or not);
//! - no per-flow or per-connection output (`flow_detail=0`, `termlog_verbosity=error`).
//!
//! Readiness: the addon prints one `mitmproxy_swap: listening at HOST:PORT` line once the
//! listener is up (mitmdump listens on port 0); everything mitmdump writes goes to
//! `mitmdump.log` in the setup directory.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::peer::{pinned_command, PeerSetup, Spawned};

/// The addon, written into the setup directory.
const ADDON: &str = include_str!("../../../bench/mitmproxy_swap.py");
/// What the addon prints once mitmdump is accepting connections.
const READY_PREFIX: &str = "mitmproxy_swap: listening at ";
/// Bodies larger than this are streamed through instead of buffered.
const STREAM_LARGE_BODIES: &str = "1m";
/// Python start-up and mitmproxy's imports take a few seconds on a pinned, busy CPU.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `mitmdump` on PATH, if any.
pub fn find_mitmdump() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("mitmdump"))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Starts mitmdump with the swap addon, listening on `127.0.0.1` on a free port, and returns
/// once it accepts connections.
pub fn spawn(mitmdump: &Path, setup: &PeerSetup) -> anyhow::Result<Spawned> {
    // mitmdump reads it only on its first upstream connection; fail here instead.
    std::fs::File::open(setup.upstream_roots)
        .with_context(|| format!("reading {}", setup.upstream_roots.display()))?;
    let confdir = setup.dir.join("mitmproxy-conf");
    std::fs::create_dir_all(&confdir).with_context(|| format!("creating {}", confdir.display()))?;
    write_ca(&confdir, setup)?;
    let addon = setup.dir.join("mitmproxy_swap.py");
    std::fs::write(&addon, ADDON).with_context(|| format!("writing {}", addon.display()))?;
    let log_path = setup.dir.join("mitmdump.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut command = pinned_command(mitmdump, setup.cpu);
    command
        .args(["--listen-host", "127.0.0.1", "--listen-port", "0"])
        .arg("--set")
        .arg(option("confdir", &confdir))
        .arg("-s")
        .arg(&addon)
        .arg("--set")
        .arg(format!("swap_placeholder={}", setup.placeholder))
        // The name of the variable; the value reaches mitmdump only through its environment.
        .arg("--set")
        .arg(format!("swap_real_env={}", setup.real_env))
        .arg("--set")
        .arg(option(
            "ssl_verify_upstream_trusted_ca",
            setup.upstream_roots,
        ))
        .args(["--set", "connection_strategy=lazy"])
        .arg("--set")
        .arg(format!("stream_large_bodies={STREAM_LARGE_BODIES}"))
        .args(["--set", "flow_detail=0", "--set", "termlog_verbosity=error"])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", mitmdump.display()))?;
    let stdout = child.stdout.take().context("mitmdump's stdout")?;
    // Killed and reaped on drop if it never becomes ready.
    let mut spawned = Spawned {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };

    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("mitmdump-stdout".into())
        .spawn(move || copy_stdout(stdout, log, ready_tx))?;
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(addr) => {
            spawned.addr = addr;
            Ok(spawned)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // stdout closed before the ready line: mitmdump exited (or is exiting).
            let status = spawned.child.wait()?;
            bail!(
                "mitmdump exited ({status}) before listening; its output:\n{}",
                tail(&log_path)
            )
        }
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "mitmdump was not listening after {READY_TIMEOUT:?}; its output:\n{}",
            tail(&log_path)
        ),
    }
}

/// `confdir/mitmproxy-ca.pem`: the CA's private key, then its certificate.
fn write_ca(confdir: &Path, setup: &PeerSetup) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = std::fs::read(setup.proxy_ca_key)
        .with_context(|| format!("reading {}", setup.proxy_ca_key.display()))?;
    let cert = std::fs::read(setup.proxy_ca_cert)
        .with_context(|| format!("reading {}", setup.proxy_ca_cert.display()))?;
    let path = confdir.join("mitmproxy-ca.pem");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&key)?;
    if !key.ends_with(b"\n") {
        file.write_all(b"\n")?;
    }
    file.write_all(&cert)?;
    Ok(())
}

fn option(name: &str, path: &Path) -> std::ffi::OsString {
    let mut arg = std::ffi::OsString::from(format!("{name}="));
    arg.push(path);
    arg
}

/// Copies mitmdump's stdout into its log until it closes, sending the listening address
/// once. Keeps the pipe drained so mitmdump never blocks on it.
fn copy_stdout(stdout: ChildStdout, mut log: File, ready: mpsc::Sender<SocketAddr>) {
    let mut ready = Some(ready);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if let Some(addr) = line
            .strip_prefix(READY_PREFIX)
            .and_then(|addr| addr.trim().parse::<SocketAddr>().ok())
        {
            if let Some(ready) = ready.take() {
                let _ = ready.send(addr);
            }
        }
    }
}

/// The last lines of mitmdump's log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
