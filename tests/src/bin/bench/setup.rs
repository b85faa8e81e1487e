//! The bench's world: two CAs on disk (the upstream's, and the one proxies mint from), the
//! in-process upstream, the real `keyswap` binary started from a generated config, and a
//! plain rustls server in its own process as the limit for new connections.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Stdio};

use anyhow::Context;
use http::HeaderValue;
use keyswap_certs::CertificateAuthority;
use keyswap_tests::upstream::{Alpn, Upstream, UpstreamOptions};
use rustls::pki_types::CertificateDer;

use crate::peer::{pinned_command, spawn_bench_child, PeerSetup, Spawned};

/// Environment variable that carries the real value to the proxies.
pub const SECRET_ENV: &str = "KEYSWAP_BENCH_SECRET";
/// Environment variable that carries keyswap's task token.
pub const TOKEN_ENV: &str = "KEYSWAP_BENCH_TOKEN";
pub const TASK: &str = "bench";
/// The policy runtime tasks are issued from; its rules are [`TASK`]'s.
pub const POLICY: &str = "bench";
pub const PLACEHOLDER: &str = "ksph_bench_placeholder_000000000000000000";
/// How many distinct host names resolve to the upstream (first connection to a new host).
pub const NEW_HOSTS: usize = 64;
/// The names the upstream certificate covers besides `localhost`.
pub const NEW_HOST_DOMAIN: &str = "bench.test";

/// A random value in a fixed recognisable shape, generated per run.
pub fn random_token(prefix: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// Paths of the files every proxy starts from.
pub struct World {
    pub dir: tempfile::TempDir,
    pub upstream_ca_dir: PathBuf,
    pub proxy_ca_dir: PathBuf,
    /// The upstream CA and the proxy CA: what every client trusts.
    pub trust: Vec<CertificateDer<'static>>,
    pub upstream: Upstream,
}

impl World {
    /// `secret`: the real value; the upstream answers 401 to any request without it.
    pub async fn create(secret: &str) -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let upstream_ca_dir = dir.path().join("upstream-ca");
        let proxy_ca_dir = dir.path().join("proxy-ca");
        let upstream_ca = CertificateAuthority::load_or_create(&upstream_ca_dir)?;
        let proxy_ca = CertificateAuthority::load_or_create(&proxy_ca_dir)?;
        let upstream = Upstream::start(&upstream_ca, upstream_options(secret)?).await;
        Ok(World {
            trust: vec![upstream_ca.cert_der().clone(), proxy_ca.cert_der().clone()],
            dir,
            upstream_ca_dir,
            proxy_ca_dir,
            upstream,
        })
    }

    pub fn peer_setup(&self, name: &str, cpu: Option<usize>) -> anyhow::Result<PeerSetupOwned> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(PeerSetupOwned {
            dir,
            proxy_ca_cert: self.proxy_ca_dir.join("ca.pem"),
            proxy_ca_key: self.proxy_ca_dir.join("ca-key.pem"),
            upstream_roots: self.upstream_ca_dir.join("ca.pem"),
            cpu,
        })
    }
}

/// The bench upstream: `localhost`, `127.0.0.1` and `*.bench.test`, both protocols, no
/// request log, and proof of the swap on every request.
fn upstream_options(secret: &str) -> anyhow::Result<UpstreamOptions> {
    Ok(UpstreamOptions {
        names: vec![
            "localhost".into(),
            "127.0.0.1".into(),
            format!("*.{NEW_HOST_DOMAIN}"),
        ],
        alpn: Alpn::Both,
        tls: true,
        record: false,
        require_authorization: Some(HeaderValue::from_str(&format!("Bearer {secret}"))?),
    })
}

/// [`PeerSetup`] with owned paths.
pub struct PeerSetupOwned {
    pub dir: PathBuf,
    pub proxy_ca_cert: PathBuf,
    pub proxy_ca_key: PathBuf,
    pub upstream_roots: PathBuf,
    pub cpu: Option<usize>,
}

impl PeerSetupOwned {
    pub fn borrow(&self) -> PeerSetup<'_> {
        PeerSetup {
            dir: &self.dir,
            proxy_ca_cert: &self.proxy_ca_cert,
            proxy_ca_key: &self.proxy_ca_key,
            upstream_roots: &self.upstream_roots,
            placeholder: PLACEHOLDER,
            real_env: SECRET_ENV,
            cpu: self.cpu,
        }
    }
}

/// The keyswap config for the bench: one task with a token, the placeholder granted on the
/// upstream's port for `localhost` and every `*.bench.test` name, each resolved to the
/// upstream; a policy with the same rules for tasks issued at runtime; the admin socket in
/// the proxy's scratch directory (never the default, relative to the working directory).
pub fn keyswap_config(setup: &PeerSetup<'_>, proxy_ca_dir: &Path, upstream: SocketAddr) -> String {
    let port = upstream.port();
    let mut resolve = format!("    \"localhost:{port}\": \"{upstream}\"\n");
    for i in 0..NEW_HOSTS {
        resolve.push_str(&format!(
            "    \"h{i}.{NEW_HOST_DOMAIN}:{port}\": \"{upstream}\"\n"
        ));
    }
    let allow = format!(
        r#"      - host: localhost
        port: {port}
        secrets: [api]
      - host: "*.{NEW_HOST_DOMAIN}"
        port: {port}
        secrets: [api]"#
    );
    format!(
        r#"version: 1
listen: 127.0.0.1:0
ca_dir: {ca_dir}
audit_log: {audit}
upstream:
  extra_roots: {roots}
  resolve:
{resolve}
secrets:
  api:
    from_env: {SECRET_ENV}
    placeholder: {placeholder}
admin:
  socket: {admin}
tasks:
  {TASK}:
    token_env: {TOKEN_ENV}
    allow:
{allow}
policies:
  {POLICY}:
    ttl: 1h
    max_ttl: 8h
    allow:
{allow}
"#,
        ca_dir = proxy_ca_dir.display(),
        audit = setup.dir.join("audit.jsonl").display(),
        admin = admin_socket(setup.dir).display(),
        roots = setup.upstream_roots.display(),
        placeholder = setup.placeholder,
    )
}

/// Where keyswap, started with `setup.dir` as its scratch directory, serves its admin API.
pub fn admin_socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// The `keyswap` binary beside this one (`target/<profile>/keyswap`). When run by cargo,
/// builds it first so the bench never measures a stale binary.
fn keyswap_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "-p", "keyswap", "--bin", "keyswap"]);
        if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            build.arg("--release");
        }
        let status = build.status().context("building keyswap")?;
        anyhow::ensure!(status.success(), "building keyswap failed");
    }
    let binary = dir.join("keyswap");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: run `cargo build --release -p keyswap` first",
        binary.display()
    );
    Ok(binary)
}

/// Starts the real `keyswap` binary on a generated config; returns once it is listening.
pub fn spawn_keyswap(
    setup: &PeerSetup<'_>,
    proxy_ca_dir: &Path,
    upstream: SocketAddr,
    token: &str,
    binary: Option<&Path>,
) -> anyhow::Result<Spawned> {
    let config = keyswap_config(setup, proxy_ca_dir, upstream);
    spawn_keyswap_with(setup, &config, token, binary)
}

/// Starts the real `keyswap` binary on the config `text`; returns once it is listening.
pub fn spawn_keyswap_with(
    setup: &PeerSetup<'_>,
    text: &str,
    token: &str,
    binary: Option<&Path>,
) -> anyhow::Result<Spawned> {
    let config = setup.dir.join("keyswap.yaml");
    std::fs::write(&config, text)?;
    let binary = match binary {
        Some(binary) => binary.to_path_buf(),
        None => keyswap_binary()?,
    };
    let mut command = pinned_command(&binary, setup.cpu);
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env(TOKEN_ENV, token)
        .env("KEYSWAP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting keyswap")?;
    let stderr = child.stderr.take().context("keyswap stderr")?;
    let log = setup.dir.join("keyswap.log");
    match listening_address(stderr, &log) {
        Ok(addr) => Ok(Spawned { child, addr }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!("keyswap did not start; see {}", log.display())))
        }
    }
}

/// Reads keyswap's JSON log until the `keyswap listening` line, then keeps copying the log to
/// `log` on a thread (so the pipe never fills).
fn listening_address(stderr: ChildStderr, log: &Path) -> anyhow::Result<SocketAddr> {
    let mut file = std::fs::File::create(log)?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("keyswap exited before listening")??;
        writeln!(file, "{line}")?;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["fields"]["message"] == "keyswap listening" {
            let addr = event["fields"]["addr"]
                .as_str()
                .context("listening line without addr")?;
            break addr.parse()?;
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
        }
    });
    Ok(addr)
}

/// Child side of `bench serve-upstream`: the bench upstream, alone in its process, printing
/// `listening <addr>`. Pinned like the proxies, it is the plain rustls TLS-terminating server
/// that bounds how fast any TLS-intercepting proxy can accept new connections.
pub fn serve_upstream(ca_dir: &Path) -> anyhow::Result<()> {
    let secret = std::env::var(SECRET_ENV).context("the real value's variable is not set")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ca = CertificateAuthority::load_or_create(ca_dir)?;
        let upstream = Upstream::start(&ca, upstream_options(&secret)?).await;
        println!("listening {}", upstream.addr);
        std::io::stdout().flush()?;
        std::future::pending::<()>().await;
        drop(upstream);
        Ok(())
    })
}

/// Parent side of `bench serve-upstream`.
pub fn spawn_upstream(ca_dir: &Path, cpu: Option<usize>) -> anyhow::Result<Spawned> {
    spawn_bench_child(
        &[
            "serve-upstream".as_ref(),
            "--ca-dir".as_ref(),
            ca_dir.as_os_str(),
        ],
        cpu,
    )
}
