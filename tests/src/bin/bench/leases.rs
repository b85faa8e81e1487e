//! Scenario 13: credential leases. A keyswap process of its own, with a GitHub App lease secret
//! minted from the in-process fake GitHub ([`keyswap_tests::fake_github`], which verifies each
//! JWT's RS256 signature) and a static secret, both granted on one rule:
//!
//! - 13a: a task's first request that carries the lease's placeholder (the mint — a JWT signed,
//!   the access-token call, the lease state file written — then the request), against the same
//!   task's later requests (the cached lease) and its requests carrying the static secret's
//!   placeholder, p50 and p99, each on the task's open connection;
//! - 13b: 1,000 live tasks (quick: 100), each with a minted lease: keyswap's resident memory
//!   per lease (RSS after the leases less RSS after the tasks were issued, over the count).
//!
//! The fake answers the static secret's requests 401 (it knows only minted tokens): the same
//! work for keyswap. Never prints a value: minted tokens live in the fake and in keyswap, the
//! static value reaches keyswap through its environment.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use http::header;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::ProxyConnection;
use keyswap_tests::client::{connect_tunnel, empty, request, Alpn, ProxyClientOptions, Tunnel};
use keyswap_tests::fake_github::{AppKey, FakeGithub, PLACEHOLDER};

use crate::procfs;
use crate::report::{quantile, sorted, Row, KEYSWAP};
use crate::scenarios::progress;
use crate::setup::random_token;

const APP_ID: u64 = 1313;
const INSTALLATION: u64 = 131313;
const STATIC_ENV: &str = "KS_BENCH_LEASE_STATIC";
const STATIC_PLACEHOLDER: &str = "static_keyswap_bench_placeholder_0000";
const PATH: &str = "/repos/acme/widget";

struct Sizes {
    /// Tasks whose first, cached and static requests are timed.
    timed_tasks: usize,
    /// Requests of each kind after the first, per timed task.
    per_task: usize,
    /// Live tasks with a lease, for the memory figure.
    live: usize,
}

/// The rows of scenario 13; a run that fails gives a "not measured" row saying why.
pub async fn run(quick: bool, binary: Option<&Path>) -> Vec<Row> {
    let sizes = match quick {
        true => Sizes {
            timed_tasks: 20,
            per_task: 5,
            live: 100,
        },
        false => Sizes {
            timed_tasks: 200,
            per_task: 20,
            live: 1000,
        },
    };
    match measure(&sizes, binary).await {
        Ok(rows) => rows,
        Err(why) => {
            let mut row = Row::new("13. credential leases", "ms", false);
            row.notes.push(format!("keyswap: not measured: {why:#}"));
            vec![row]
        }
    }
}

/// A `keyswap run` of a scenario of its own (13, 12); killed when dropped.
pub struct Keyswap {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Keyswap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn measure(sizes: &Sizes, binary: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("keyswap-bench-leases-")
        .tempdir()?;
    let fake_ca = CertificateAuthority::generate("bench fake GitHub CA")?;
    std::fs::write(dir.path().join("roots.pem"), fake_ca.cert_pem())?;
    let key = AppKey::generate();
    std::fs::write(dir.path().join("app.pem"), &key.pem)?;
    let github = FakeGithub::start(&fake_ca, &key, APP_ID, INSTALLATION, &["widget"]).await;
    let proxy_ca = CertificateAuthority::load_or_create(&dir.path().join("ca"))?;
    let config = dir.path().join("keyswap.yaml");
    std::fs::write(&config, config_text(dir.path(), github.server.port()))?;
    let static_value = random_token("KSREAL-bench-static-")?;
    let keyswap = spawn_keyswap_run(binary, &config, &[(STATIC_ENV, static_value)])?;
    let admin = AdminClient::new(AdminTarget::Socket(dir.path().join("admin.sock")));
    let trust = vec![proxy_ca.cert_der().clone()];

    progress(
        "scenario 13",
        "first, cached and static requests of leased tasks",
    );
    let (mut first, mut cached, mut fixed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.timed_tasks {
        let task = issue(&admin).await?;
        let mut conn = open_tunnel(keyswap.addr, &task, "api.github.test", &trust).await?;
        first.push(timed(&mut conn, PLACEHOLDER, 200).await?);
        for _ in 0..sizes.per_task {
            cached.push(timed(&mut conn, PLACEHOLDER, 200).await?);
            fixed.push(timed(&mut conn, STATIC_PLACEHOLDER, 401).await?);
        }
    }
    anyhow::ensure!(
        github.mints() == sizes.timed_tasks,
        "{} mints for {} tasks",
        github.mints(),
        sizes.timed_tasks
    );

    progress(
        "scenario 13",
        &format!("{} live tasks with a lease", sizes.live),
    );
    let pid = keyswap.child.id();
    let mut tasks = Vec::with_capacity(sizes.live);
    for _ in 0..sizes.live {
        tasks.push(issue(&admin).await?);
    }
    let before = procfs::rss(pid).context("keyswap's RSS")?;
    let started = Instant::now();
    for task in &tasks {
        let mut conn = open_tunnel(keyswap.addr, task, "api.github.test", &trust).await?;
        timed(&mut conn, PLACEHOLDER, 200).await?;
    }
    let minting = started.elapsed();
    let after = procfs::rss(pid).context("keyswap's RSS")?;
    drop(keyswap);

    let mut rows = Vec::new();
    for (label, values) in [
        ("first request of a task (mint + request)", first),
        ("a later request (cached lease)", cached),
        ("a request with a static secret", fixed),
    ] {
        let values = sorted(values);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let mut row = Row::new(format!("13a. leases: {label}, {name}"), "ms", false);
            row.set(KEYSWAP, quantile(&values, q));
            row.notes.push(format!(
                "keyswap: {} requests over {} tasks, on each task's open HTTP/1.1 connection",
                values.len(),
                sizes.timed_tasks
            ));
            rows.push(row);
        }
    }
    let mut memory = Row::new(
        format!("13b. leases: memory per live lease, {} tasks", sizes.live),
        "KiB",
        false,
    );
    let grown = after.saturating_sub(before) as f64 / 1024.0;
    memory.set(KEYSWAP, Some(grown / sizes.live as f64));
    memory.notes.push(format!(
        "keyswap: RSS {} KiB after issuing the tasks, {} KiB after each minted its lease (one \
         connection each, closed); {} mints took {:.1} s in all (each rewrites the lease state \
         file and rebuilds the scrubber)",
        before / 1024,
        after / 1024,
        sizes.live,
        minting.as_secs_f64()
    ));
    rows.push(memory);
    Ok(rows)
}

fn config_text(dir: &Path, github_port: u16) -> String {
    format!(
        r#"version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
state_dir: {dir}/state
admin:
  socket: {dir}/admin.sock
upstream:
  extra_roots: {dir}/roots.pem
  resolve:
    "api.github.test:443": "127.0.0.1:{github_port}"
secrets:
  github:
    github_app:
      app_id: {APP_ID}
      installation_id: {INSTALLATION}
      private_key: {{from_file: {dir}/app.pem}}
      api: https://api.github.test
    placeholder: {PLACEHOLDER}
  static:
    from_env: {STATIC_ENV}
    placeholder: {STATIC_PLACEHOLDER}
policies:
  bench-lease:
    github: {{repositories: [widget], permissions: {{contents: read}}}}
    allow:
      - host: api.github.test
        paths: ["/repos/acme/**"]
        secrets: [github, static]
"#,
        dir = dir.display()
    )
}

fn keyswap_binary(binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match binary {
        Some(binary) => binary.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("keyswap"),
    };
    anyhow::ensure!(path.exists(), "{} not found", path.display());
    Ok(path)
}

/// Starts `keyswap run` with `env` added to its environment (the real values it reads) and
/// waits for the line that says where it listens.
pub fn spawn_keyswap_run(
    binary: Option<&Path>,
    config: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Keyswap> {
    let mut child = Command::new(keyswap_binary(binary)?)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("KEYSWAP_LOG", "info")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting keyswap run")?;
    let stderr = child.stderr.take().context("keyswap's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            anyhow::bail!("keyswap run ended before it listened");
        };
        if line.contains("keyswap listening") {
            break line
                .split("addr=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .context("no address in keyswap's listening line")?;
        }
    };
    // Drained so that keyswap never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Keyswap { child, addr })
}

async fn issue(admin: &AdminClient) -> anyhow::Result<IssuedTask> {
    let request = IssueRequest {
        policy: "bench-lease".into(),
        ttl: Some("1h".into()),
        ..IssueRequest::default()
    };
    Ok(admin.issue(&request).await?)
}

/// The task's connection to `host`:443 through keyswap (HTTP/1.1), trusting `trust`.
pub async fn open_tunnel(
    proxy: SocketAddr,
    task: &IssuedTask,
    host: &str,
    trust: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<ProxyConnection> {
    let options = ProxyClientOptions {
        proxy,
        auth: Some((task.id.clone(), task.token.clone())),
        connect_to: format!("{host}:443"),
        sni: None,
        alpn: Alpn::Http1Only,
        trust: trust.to_vec(),
    };
    match connect_tunnel(&options).await? {
        Tunnel::Open(conn) => Ok(conn),
        Tunnel::Refused { status, reason, .. } => {
            anyhow::bail!("keyswap refused the tunnel: {status} {reason:?}")
        }
    }
}

/// One GET with `Authorization: Bearer <placeholder>`; its time in ms, if it answered `want`.
async fn timed(conn: &mut ProxyConnection, placeholder: &str, want: u16) -> anyhow::Result<f64> {
    let req = request("GET", "api.github.test", PATH, false)
        .header(header::AUTHORIZATION, format!("Bearer {placeholder}"))
        .body(empty())?;
    let started = Instant::now();
    let response = conn.send(req).await?;
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body()).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status == want, "keyswap answered {status}, not {want}");
    Ok(ms)
}
