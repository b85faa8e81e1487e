//! The hudsucker peer: a MITM proxy built on the hudsucker crate that does keyswap's job
//! (swap a placeholder for the real value in request header values), so the bench can
//! compare the two. It is a competitor for comparison only, not part of keyswap.
//!
//! It runs as a child of the bench (`bench serve-hudsucker ...`): [`spawn`] starts it and
//! [`serve`] is what the child runs. Both legs use rustls with the `ring` provider; the leaf
//! certificates come from hudsucker's `RcgenAuthority` (cache of 1000 leaves), the upstream
//! client trusts only the given roots and offers h2 and http/1.1 by ALPN, and the agent side
//! offers h2 and http/1.1 by ALPN (hudsucker's `http2` feature).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use http::HeaderValue;
use hudsucker::certificate_authority::RcgenAuthority;
use hudsucker::hyper::Request;
use hudsucker::rcgen::{Issuer, KeyPair};
use hudsucker::{Body, HttpContext, HttpHandler, Proxy, RequestOrResponse};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::peer::{pinned_command, PeerSetup, Spawned};

/// Arguments of the hidden `bench serve-hudsucker` subcommand (the child process).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// PEM certificate of the CA the leaves are minted from.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// PEM (PKCS#8) private key of that CA.
    #[arg(long)]
    pub ca_key: PathBuf,
    /// PEM file of the only roots the upstream client trusts.
    #[arg(long)]
    pub upstream_roots: PathBuf,
    /// What the agent sends in place of the real value.
    #[arg(long)]
    pub placeholder: String,
    /// Name of the environment variable holding the real value.
    #[arg(long)]
    pub real_env: String,
}

/// Replaces the placeholder by the real value in every request header value.
#[derive(Clone)]
struct Swap {
    placeholder: Arc<[u8]>,
    real: Arc<[u8]>,
}

impl Swap {
    /// `value` with every placeholder replaced, or `None` when it holds none.
    fn replace(&self, value: &[u8]) -> Option<HeaderValue> {
        let needle = &*self.placeholder;
        let mut rest = value;
        let mut out: Option<Vec<u8>> = None;
        while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(value.len() + self.real.len()));
            buf.extend_from_slice(&rest[..at]);
            buf.extend_from_slice(&self.real);
            rest = &rest[at + needle.len()..];
        }
        let mut buf = out?;
        buf.extend_from_slice(rest);
        let mut swapped = HeaderValue::from_bytes(&buf).ok()?;
        swapped.set_sensitive(true);
        Some(swapped)
    }
}

impl HttpHandler for Swap {
    async fn handle_request(
        &mut self,
        _ctx: &HttpContext,
        mut req: Request<Body>,
    ) -> RequestOrResponse {
        for value in req.headers_mut().values_mut() {
            if let Some(swapped) = self.replace(value.as_bytes()) {
                *value = swapped;
            }
        }
        req.into()
    }
}

/// Child side: bind 127.0.0.1:0, print `listening <addr>` on stdout, then serve forever.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let real = std::env::var(&args.real_env)
        .with_context(|| format!("environment variable {} is not set", args.real_env))?;
    if args.placeholder.is_empty() {
        bail!("the placeholder is empty");
    }
    // Checked once here so every swapped value is a valid header value.
    if HeaderValue::from_str(&real).is_err() {
        bail!("the real value is not a valid header value");
    }
    let swap = Swap {
        placeholder: Arc::from(args.placeholder.as_bytes()),
        real: Arc::from(real.as_bytes()),
    };

    let provider = rustls::crypto::ring::default_provider();

    let key_pem = std::fs::read_to_string(&args.ca_key)
        .with_context(|| format!("reading {}", args.ca_key.display()))?;
    let cert_pem = std::fs::read_to_string(&args.ca_cert)
        .with_context(|| format!("reading {}", args.ca_cert.display()))?;
    let key = KeyPair::from_pem(&key_pem).context("parsing the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("parsing the CA certificate")?;
    let ca = RcgenAuthority::new(issuer, 1_000, provider.clone());

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.upstream_roots)
        .with_context(|| format!("reading {}", args.upstream_roots.display()))?
    {
        roots
            .add(cert.context("parsing the upstream roots")?)
            .context("adding an upstream root")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // enable_http1 + enable_http2 sets the ALPN list to h2, http/1.1.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    // Accepted sockets inherit TCP_NODELAY from the listener on Linux; hudsucker does not
    // set it on the connections it accepts.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;

    let proxy = Proxy::builder()
        .with_listener(listener)
        .with_ca(ca)
        .with_http_connector(https)
        .with_http_handler(swap)
        .build()
        .context("building the hudsucker proxy")?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {addr}")?;
        stdout.flush()?;
    }

    proxy.start().await.context("hudsucker proxy stopped")
}

/// Kills and reaps the child unless disarmed.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parent side: start `<current exe> serve-hudsucker ...` and wait for its address.
pub fn spawn(setup: &PeerSetup) -> anyhow::Result<Spawned> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let log_path = setup.dir.join("hudsucker.stderr.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut command = pinned_command(&exe, setup.cpu);
    command
        .arg("serve-hudsucker")
        .arg("--ca-cert")
        .arg(setup.proxy_ca_cert)
        .arg("--ca-key")
        .arg(setup.proxy_ca_key)
        .arg("--upstream-roots")
        .arg(setup.upstream_roots)
        .arg("--placeholder")
        .arg(setup.placeholder)
        .arg("--real-env")
        .arg(setup.real_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let child = command
        .spawn()
        .with_context(|| format!("starting {} serve-hudsucker", exe.display()))?;
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().context("child handle")?;
    let stdout = child.stdout.take().context("child stdout was not piped")?;

    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let read = reader
        .read_line(&mut line)
        .context("reading the hudsucker child's stdout")?;
    if read == 0 {
        let status = child.wait().context("waiting for the hudsucker child")?;
        bail!(
            "hudsucker child exited before listening ({status}); its stderr ({}):\n{}",
            log_path.display(),
            log_head(&log_path)
        );
    }
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix("listening ")
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("unexpected first line from the hudsucker child: {line:?}"))?;
    // Keep the pipe open for the child's lifetime.
    child.stdout = Some(reader.into_inner());

    let child = guard.0.take().context("child handle")?;
    Ok(Spawned { child, addr })
}

/// The first few KiB of the child's stderr (where its error is), for an error message.
fn log_head(path: &Path) -> String {
    let mut head = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(4096).read_to_end(&mut head);
    }
    String::from_utf8_lossy(&head).into_owned()
}
