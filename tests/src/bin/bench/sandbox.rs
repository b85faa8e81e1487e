//! Scenario 9: what `keyswap exec`'s sandbox costs, against `keyswap exec --no-sandbox` in the
//! same run.
//!
//! - 9a, start-up: `keyswap exec --admin SOCKET` against the bench's running keyswap (so the
//!   proxy's own start-up is not counted) with the bench itself as the command
//!   (`bench sandbox-started`, which prints the wall-clock time its `main` began). The cost is
//!   that time minus the time just before exec was spawned: exec's start, the task's issue,
//!   the namespaces, mounts and seccomp, and the command's `execve`.
//! - 9b and 9c, keep-alive throughput through the sandbox's listener: the load generator must
//!   run inside the sandbox's network namespace, so it is the command (`bench sandbox-load`),
//!   reaching keyswap through `HTTPS_PROXY` as an agent does; keyswap reaches the bench
//!   upstream outside through `upstream.resolve` and swaps the placeholder on every request.
//!   9b runs the proxy inside exec (embedded: it accepts on the listener it was handed), 9c
//!   against the running keyswap (exec relays each connection of the listener to it).
//!
//! As root (CI), the sandboxed runs are `--user nobody` in `/`, and the `--no-sandbox` runs are
//! root's (exec refuses `--user` without the sandbox). Never prints a task's token: the load
//! generator only puts it into its `Proxy-Authorization`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use clap::Args;
use http::HeaderValue;
use rustls::pki_types::CertificateDer;

use crate::load::{self, Endpoint, Route};
use crate::peer::pinned_command;
use crate::procfs;
use crate::report::{quantile, Row, KEYSWAP};
use crate::scenarios::{progress, Plan};
use crate::setup::{self, PeerSetupOwned, POLICY, SECRET_ENV};

/// Carries keyswap's CA certificate (public, DER in base64) to the load generator: the sandbox
/// gives the command a private `/tmp`, where the bench's CA files are.
const TRUST_ENV: &str = "KEYSWAP_BENCH_PROXY_CA";
/// The user the sandboxed command runs as when the bench runs as root.
const SANDBOX_USER: &str = "nobody";
/// A run of exec that has not ended this long after it should have is killed.
const EXEC_LIMIT: Duration = Duration::from_secs(60);

/// What the scenario needs from the rest of the bench.
pub struct Inputs<'a> {
    pub quick: bool,
    pub setup: PeerSetupOwned,
    pub proxy_ca_dir: &'a Path,
    /// keyswap's CA certificate, what the load generator inside trusts.
    pub proxy_ca: CertificateDer<'static>,
    pub upstream: SocketAddr,
    /// The running keyswap's admin socket and process.
    pub admin_socket: &'a Path,
    pub keyswap_pid: Option<u32>,
    pub binary: Option<&'a Path>,
    /// Where the load generator runs; exec (the proxy's side) gets the proxy CPU.
    pub client_cpu: Option<usize>,
}

/// The rows of scenario 9; a part that cannot run gives a "not measured" row saying why.
pub fn run(inputs: Inputs<'_>) -> Vec<Row> {
    let context = match ExecSetup::new(&inputs) {
        Ok(context) => context,
        Err(why) => {
            return vec![not_measured(
                "9. keyswap exec's sandbox",
                "ms",
                &format!("{why:#}"),
            )]
        }
    };
    let mut rows = startup(&inputs, &context);
    for mode in [Mode::Embedded, Mode::Remote] {
        rows.extend(throughput(&inputs, &context, mode));
    }
    rows
}

fn not_measured(scenario: &str, unit: &'static str, why: &str) -> Row {
    let mut row = Row::new(scenario, unit, false);
    row.notes.push(format!("keyswap: not measured: {why}"));
    row
}

/// The binaries and files every run of exec uses.
struct ExecSetup {
    keyswap: PathBuf,
    bench: PathBuf,
    /// `--user nobody` when root.
    user: Option<&'static str>,
    /// The config of an embedded exec: no admin socket answers at its `admin.socket`.
    embedded_config: PathBuf,
    /// Why sandboxed runs cannot happen, found before trying.
    no_sandbox_why: Option<String>,
    /// exec's working directory: empty (an embedded exec searches it for plaintext secrets
    /// before it starts the command) and enterable by `nobody`.
    workdir: PathBuf,
}

impl Drop for ExecSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.workdir);
    }
}

impl ExecSetup {
    fn new(inputs: &Inputs<'_>) -> anyhow::Result<ExecSetup> {
        let bench = std::env::current_exe()?;
        let keyswap = match inputs.binary {
            Some(binary) => binary.to_path_buf(),
            // The bench built it beside itself before starting its keyswap.
            None => bench
                .parent()
                .context("the bench binary has no directory")?
                .join("keyswap"),
        };
        anyhow::ensure!(keyswap.exists(), "{} not found", keyswap.display());
        let root = std::fs::metadata("/proc/self")?.uid() == 0;
        let user = root.then_some(SANDBOX_USER);
        let embedded_config = inputs.setup.dir.join("keyswap-exec.yaml");
        std::fs::write(&embedded_config, embedded_config_text(inputs))?;
        let mut no_sandbox_why = None;
        if std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .is_ok_and(|n| n.trim() == "0")
        {
            no_sandbox_why =
                Some("user namespaces are disabled (user.max_user_namespaces = 0)".to_string());
        } else if root {
            if let Err(e) = others_can_execute(&bench) {
                no_sandbox_why = Some(format!("{e:#}"));
            }
        }
        let workdir =
            std::env::temp_dir().join(format!("keyswap-bench-exec-{}", std::process::id()));
        std::fs::create_dir_all(&workdir)?;
        std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o755))?;
        Ok(ExecSetup {
            keyswap,
            bench,
            user,
            embedded_config,
            no_sandbox_why,
            workdir,
        })
    }

    /// `keyswap exec` (pinned to `cpu`) against the running keyswap or embedded, sandboxed or
    /// not, running the bench with `command`, in an empty directory `nobody` may enter.
    fn exec(
        &self,
        inputs: &Inputs<'_>,
        mode: Mode,
        sandboxed: bool,
        cpu: Option<usize>,
        command: &[String],
    ) -> Command {
        let mut exec = pinned_command(&self.keyswap, cpu);
        exec.arg("exec");
        match mode {
            Mode::Remote => {
                exec.arg("--admin").arg(inputs.admin_socket);
                // exec against a running proxy needs no secret; the command must not get it.
                exec.env_remove(SECRET_ENV);
            }
            Mode::Embedded => {
                exec.arg("--config").arg(&self.embedded_config);
            }
        }
        exec.args(["--policy", POLICY]);
        match (sandboxed, self.user) {
            (true, Some(user)) => {
                exec.args(["--user", user]);
            }
            (true, None) => {}
            (false, _) => {
                exec.arg("--no-sandbox");
            }
        }
        exec.arg("--")
            .arg(&self.bench)
            .args(command)
            .current_dir(&self.workdir)
            .env("KEYSWAP_LOG", "warn")
            .env(
                TRUST_ENV,
                base64::engine::general_purpose::STANDARD.encode(inputs.proxy_ca.as_ref()),
            )
            .stdin(Stdio::null());
        exec
    }
}

/// Whether `other` users may execute `file`: it and every directory above it.
fn others_can_execute(file: &Path) -> anyhow::Result<()> {
    for path in file.ancestors() {
        let mode = std::fs::metadata(path)?.permissions().mode();
        anyhow::ensure!(
            mode & 0o001 != 0,
            "{} is not executable by {SANDBOX_USER} (mode {:o}), so the sandboxed command cannot \
             run the bench binary {}",
            path.display(),
            mode & 0o7777,
            file.display()
        );
    }
    Ok(())
}

/// keyswap inside exec: the bench policy, `localhost:PORT` resolved to the bench upstream, and
/// an admin socket nothing listens on (so exec starts keyswap itself).
fn embedded_config_text(inputs: &Inputs<'_>) -> String {
    let dir = &inputs.setup.dir;
    let port = inputs.upstream.port();
    format!(
        r#"version: 1
listen: 127.0.0.1:0
ca_dir: {ca_dir}
audit_log: {audit}
upstream:
  extra_roots: {roots}
  resolve:
    "localhost:{port}": "{upstream}"
secrets:
  api:
    from_env: {SECRET_ENV}
    placeholder: {placeholder}
admin:
  socket: {admin}
policies:
  {POLICY}:
    ttl: 1h
    allow:
      - host: localhost
        port: {port}
        secrets: [api]
"#,
        ca_dir = inputs.proxy_ca_dir.display(),
        audit = dir.join("audit-exec.jsonl").display(),
        roots = inputs.setup.upstream_roots.display(),
        upstream = inputs.upstream,
        placeholder = setup::PLACEHOLDER,
        admin = dir.join("exec-admin.sock").display(),
    )
}

/// Where the task's proxy runs.
#[derive(Clone, Copy)]
enum Mode {
    /// In exec's own process, accepting on the sandbox's listener itself.
    Embedded,
    /// In the bench's running keyswap; exec relays the sandbox's listener to it.
    Remote,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Embedded => "9b. keep-alive through exec's listener, embedded proxy",
            Mode::Remote => "9c. keep-alive through exec's listener, running keyswap",
        }
    }
}

fn sandbox_label(sandboxed: bool) -> &'static str {
    match sandboxed {
        true => "sandboxed",
        false => "--no-sandbox",
    }
}

/// Runs `exec` to its end with a limit; its stdout, or why it failed (exec's last stderr line).
fn output_of(mut exec: Command) -> anyhow::Result<Vec<u8>> {
    let child = exec
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting keyswap exec")?;
    let output = wait_limited(child)?;
    if !output.status.success() {
        anyhow::bail!(
            "keyswap exec failed ({}): {}",
            output.status,
            last_words(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Waits for `child` with [`EXEC_LIMIT`], killing it past that.
fn wait_limited(child: std::process::Child) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if waited.recv_timeout(EXEC_LIMIT).is_err() {
        // Our own child, by its id. The waiter is left behind: the sandbox's processes may
        // still hold exec's pipes open.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        anyhow::bail!("keyswap exec did not end within {EXEC_LIMIT:?}");
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the exec waiter panicked"))?
        .context("waiting for keyswap exec")
}

/// The last non-empty lines of exec's stderr (its reason for failing), shortened.
fn last_words(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("WARNING: --no-sandbox"))
        .collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("keyswap exec:"))
        .unwrap_or(lines.len().saturating_sub(1));
    let mut words = lines[start..].join(" ");
    if words.len() > 400 {
        let mut cut = 400;
        while !words.is_char_boundary(cut) {
            cut -= 1;
        }
        words.truncate(cut);
        words.push('…');
    }
    words
}

fn unix_nanos(t: SystemTime) -> anyhow::Result<u128> {
    Ok(t.duration_since(UNIX_EPOCH)?.as_nanos())
}

/// 9a: milliseconds from spawning exec to the command's `main`, `runs` times.
fn startup_runs(
    inputs: &Inputs<'_>,
    context: &ExecSetup,
    sandboxed: bool,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut millis = Vec::with_capacity(runs);
    for _ in 0..runs {
        let exec = context.exec(
            inputs,
            Mode::Remote,
            sandboxed,
            None,
            &[STARTED.to_string()],
        );
        let before = unix_nanos(SystemTime::now())?;
        let stdout = output_of(exec)?;
        let text = String::from_utf8_lossy(&stdout);
        let started: u128 = text
            .lines()
            .find_map(|l| l.strip_prefix("started "))
            .context("the command did not print when it started")?
            .trim()
            .parse()?;
        millis.push(started.saturating_sub(before) as f64 / 1e6);
    }
    millis.sort_by(f64::total_cmp);
    Ok(millis)
}

fn startup(inputs: &Inputs<'_>, context: &ExecSetup) -> Vec<Row> {
    let runs = if inputs.quick { 5 } else { 40 };
    let label = format!(
        "9a. keyswap exec start-up to the command's main, against a running keyswap, {runs} runs"
    );
    progress(&label, "keyswap");
    let plain = startup_runs(inputs, context, false, runs);
    let boxed = match &context.no_sandbox_why {
        Some(why) => Err(anyhow::anyhow!("{why}")),
        None => startup_runs(inputs, context, true, runs),
    };
    let mut rows = Vec::new();
    for (sandboxed, measured) in [(true, &boxed), (false, &plain)] {
        let name = format!("{label}, {}", sandbox_label(sandboxed));
        match measured {
            Ok(millis) => {
                for (q_name, q) in [("p50", 0.5), ("p90", 0.9)] {
                    let mut row = Row::new(format!("{name}: {q_name}"), "ms", false);
                    row.set(KEYSWAP, quantile(millis, q));
                    rows.push(row);
                }
            }
            Err(e) => rows.push(not_measured(
                &format!("{name}: p50"),
                "ms",
                &format!("{e:#}"),
            )),
        }
    }
    if let (Ok(boxed), Ok(plain)) = (&boxed, &plain) {
        for (q_name, q) in [("p50", 0.5), ("p90", 0.9)] {
            let mut row = Row::new(
                format!("9a. the sandbox's start-up cost (sandboxed − --no-sandbox): {q_name}"),
                "ms",
                false,
            );
            row.set(
                KEYSWAP,
                quantile(boxed, q)
                    .zip(quantile(plain, q))
                    .map(|(b, p)| b - p),
            );
            rows.push(row);
        }
    }
    if let Some(first) = rows.first_mut() {
        first.notes.push(format!(
            "keyswap: from just before spawning `keyswap exec --admin SOCKET` to the first line \
             of the command's main (the bench binary, wall clock); the sandboxed runs {}; issue \
             16's target is p50 ≤ 20 ms",
            match context.user {
                Some(user) => format!("as --user {user} (the bench runs as root)"),
                None => "as the bench's own user".to_string(),
            }
        ));
    }
    rows
}

/// One keep-alive run's outcome, as the load generator prints it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LoadResult {
    requests: u64,
    errors: u64,
    elapsed_s: f64,
}

struct Measured {
    rate: f64,
    /// CPU of the proxy's side (exec, and the running keyswap in remote mode) per request.
    cpu_us: Option<f64>,
    errors: u64,
}

/// 9b / 9c: sandboxed, then `--no-sandbox`, and the ratio.
fn throughput(inputs: &Inputs<'_>, context: &ExecSetup, mode: Mode) -> Vec<Row> {
    let plan = Plan::new(inputs.quick);
    let label = format!("{}, {} connections", mode.label(), plan.connections);
    let mut measured = Vec::new();
    for sandboxed in [true, false] {
        progress(&label, sandbox_label(sandboxed));
        let result = match (&context.no_sandbox_why, sandboxed) {
            (Some(why), true) => Err(anyhow::anyhow!("{why}")),
            _ => load_run(inputs, context, &plan, mode, sandboxed),
        };
        measured.push(result);
    }
    let mut rows = Vec::new();
    for (sandboxed, result) in [true, false].into_iter().zip(&measured) {
        let name = format!("{label}, {}", sandbox_label(sandboxed));
        match result {
            Ok(m) => {
                let mut rate = Row::new(name.clone(), "req/s", true);
                rate.set(KEYSWAP, Some(m.rate));
                if m.errors > 0 {
                    rate.notes
                        .push(format!("keyswap: {} failed requests", m.errors));
                }
                let mut cpu = Row::new(format!("{name}: proxy CPU per request"), "µs", false);
                cpu.set(KEYSWAP, m.cpu_us);
                rows.extend([rate, cpu]);
            }
            Err(e) => rows.push(not_measured(&name, "req/s", &format!("{e:#}"))),
        }
    }
    if let [Ok(boxed), Ok(plain)] = measured.as_slice() {
        let mut ratio = Row::new(format!("{label}: sandboxed / --no-sandbox"), "×", true);
        ratio.set(KEYSWAP, (plain.rate > 0.0).then(|| boxed.rate / plain.rate));
        ratio.notes.push(format!(
            "keyswap: the load generator runs as exec's command (inside the sandbox's network \
             namespace when sandboxed), HTTP/1.1, 1 KiB responses; proxy CPU is exec's{}; \
             issue 16's target is ≥ 0.95×. The load generator's CPU saturates first (as in \
             scenario 1), so requests/s also moves with the client's cost; the proxy's CPU per \
             request is the steadier figure",
            match mode {
                Mode::Embedded => "",
                Mode::Remote => " plus the running keyswap's (with exec's relay when sandboxed)",
            }
        ));
        let mut cpu_ratio = Row::new(
            format!("{label}: proxy CPU per request, sandboxed / --no-sandbox"),
            "×",
            false,
        );
        cpu_ratio.set(
            KEYSWAP,
            boxed
                .cpu_us
                .zip(plain.cpu_us)
                .filter(|(_, p)| *p > 0.0)
                .map(|(b, p)| b / p),
        );
        rows.extend([ratio, cpu_ratio]);
    }
    rows
}

/// One keep-alive run: exec (pinned like the proxies) runs the load generator, which pins
/// itself back to the client CPU and prints `mark` as its measuring window opens and closes,
/// then its result.
fn load_run(
    inputs: &Inputs<'_>,
    context: &ExecSetup,
    plan: &Plan,
    mode: Mode,
    sandboxed: bool,
) -> anyhow::Result<Measured> {
    let mut command = vec![
        "sandbox-load".to_string(),
        "--upstream-port".to_string(),
        inputs.upstream.port().to_string(),
        "--connections".to_string(),
        plan.connections.to_string(),
        "--warmup-ms".to_string(),
        plan.warmup.as_millis().to_string(),
        "--duration-ms".to_string(),
        plan.duration.as_millis().to_string(),
    ];
    if let Some(cpu) = inputs.client_cpu {
        command.extend(["--cpu".to_string(), cpu.to_string()]);
    }
    let mut exec = context.exec(inputs, mode, sandboxed, inputs.setup.cpu, &command);
    let log = inputs.setup.dir.join(format!(
        "exec-{}-{}.log",
        match mode {
            Mode::Embedded => "embedded",
            Mode::Remote => "remote",
        },
        sandbox_label(sandboxed).trim_start_matches('-')
    ));
    exec.stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let mut child = exec.spawn().context("starting keyswap exec")?;
    let exec_pid = child.id();
    let pids: Vec<u32> = match mode {
        Mode::Embedded => vec![exec_pid],
        Mode::Remote => std::iter::once(exec_pid)
            .chain(inputs.keyswap_pid)
            .collect(),
    };
    let stdout = child.stdout.take().context("exec's stdout")?;
    // Read on a thread, so a stuck exec is killed by `wait_limited` rather than hanging here.
    let reader = std::thread::spawn(move || {
        let (mut marks, mut result) = (Vec::new(), None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "mark" {
                let cpu: Option<Duration> = pids.iter().map(|&p| procfs::cpu_time(p)).sum();
                marks.extend(cpu);
            } else if let Some(json) = line.strip_prefix("result ") {
                result = serde_json::from_str::<LoadResult>(json).ok();
            }
        }
        (marks, result)
    });
    let status = wait_limited(child)?.status;
    let (marks, result) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the exec reader panicked"))?;
    let stderr = std::fs::read(&log).unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "keyswap exec failed ({status}): {}",
        last_words(&stderr)
    );
    let result = result.with_context(|| {
        format!(
            "the load generator printed no result: {}",
            last_words(&stderr)
        )
    })?;
    let cpu_us = match marks.as_slice() {
        [start, end] if result.requests > 0 => {
            Some((*end - *start).as_secs_f64() * 1e6 / result.requests as f64)
        }
        _ => None,
    };
    Ok(Measured {
        rate: result.requests as f64 / result.elapsed_s,
        cpu_us,
        errors: result.errors,
    })
}

/// The bench's first argument that makes it 9a's command.
pub const STARTED: &str = "sandbox-started";

/// `bench sandbox-started`, the command of 9a, called first thing in `main`: prints the wall
/// clock (the bench reads the same clock just before spawning exec).
pub fn started() -> std::process::ExitCode {
    match unix_nanos(SystemTime::now()) {
        Ok(now) => {
            println!("started {now}");
            std::process::ExitCode::SUCCESS
        }
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// `bench sandbox-load`: the load generator of 9b and 9c, run by `keyswap exec`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The bench upstream's port (`localhost:PORT` through the proxy).
    #[arg(long)]
    upstream_port: u16,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    warmup_ms: u64,
    #[arg(long)]
    duration_ms: u64,
    /// Pin this process to the CPU (exec runs pinned to the proxy's).
    #[arg(long)]
    cpu: Option<usize>,
}

pub fn load_main(args: &LoadArgs) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .context("pinning the load generator")?;
    }
    let proxy_url = std::env::var("HTTPS_PROXY").context("HTTPS_PROXY is not set")?;
    let (addr, proxy_authorization) = proxy_route(&proxy_url)?;
    let ca = std::env::var(TRUST_ENV).with_context(|| format!("{TRUST_ENV} is not set"))?;
    let ca = CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(ca)?);
    let endpoint = Endpoint::new(
        Route::Proxy {
            addr,
            proxy_authorization,
        },
        args.upstream_port,
        HeaderValue::from_str(&format!("Bearer {}", setup::PLACEHOLDER))?,
        &[ca],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let throughput = runtime.block_on(async {
        let mut conn = endpoint.open(false, None).await?;
        conn.get("/bytes/1024")
            .await
            .context("the first request through keyswap failed")?;
        drop(conn);
        load::keep_alive(
            &endpoint,
            false,
            args.connections,
            1,
            Duration::from_millis(args.warmup_ms),
            Duration::from_millis(args.duration_ms),
            || println!("mark"),
        )
        .await
    })?;
    let result = LoadResult {
        requests: throughput.requests,
        errors: throughput.errors,
        elapsed_s: throughput.elapsed.as_secs_f64(),
    };
    println!("result {}", serde_json::to_string(&result)?);
    runtime.shutdown_background();
    Ok(())
}

/// `http://ID:TOKEN@HOST:PORT` → the proxy's address and `Basic base64(ID:TOKEN)`, marked
/// sensitive. Errors never include the URL (it holds the token).
fn proxy_route(url: &str) -> anyhow::Result<(SocketAddr, HeaderValue)> {
    let rest = url
        .strip_prefix("http://")
        .context("HTTPS_PROXY is not an http:// URL")?;
    let (userinfo, authority) = rest
        .trim_end_matches('/')
        .rsplit_once('@')
        .context("HTTPS_PROXY has no task credentials")?;
    let addr: SocketAddr = authority
        .parse()
        .context("HTTPS_PROXY's host is not IP:PORT")?;
    let userinfo = percent_decode(userinfo).context("HTTPS_PROXY's userinfo is malformed")?;
    let basic = base64::engine::general_purpose::STANDARD.encode(userinfo);
    let mut value = HeaderValue::from_str(&format!("Basic {basic}"))?;
    value.set_sensitive(true);
    Ok((addr, value))
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}
