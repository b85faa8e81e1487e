//! `bench`: measures keyswap side by side with a direct connection, hudsucker and mitmproxy in
//! one run, and reports ratios; then keyswap's task lifecycle alone (scenario 7), its
//! transparent listener against its explicit one (scenario 8, root only), and what
//! `keyswap exec`'s sandbox costs against `--no-sandbox` (scenario 9), how fast
//! `keyswap scan` searches a large working tree for plaintext secrets (scenario 10), what
//! one task's flood costs another task's requests (scenario 11), what re-signing AWS requests
//! costs against a header swap (scenario 12), what a credential lease costs: a task's first
//! request with its mint, and memory per lease (scenario 13), and what a fleet of three
//! replicas sharing a redis-server costs against the in-memory store (scenario 14).
//!
//! ```text
//! cargo run --release -p keyswap-tests --bin bench -- [--quick] [--out results.json]
//! cargo run --release -p keyswap-tests --bin bench -- soak [--duration 30m] [--rate N]
//! ```
//!
//! The load generator and the upstream share CPU 0; each proxy runs in its own process pinned
//! to CPU 1 (where the machine has two CPUs and `taskset`), so each proxy's CPU time and memory
//! are read from `/proc`. Every request through a proxy carries the placeholder and the
//! upstream answers 401 unless it received the real value, so a swap happens on every request.

mod aws;
mod fair;
mod fleet;
mod floor;
mod leases;
mod lifecycle;
mod load;
mod peer;
mod procfs;
mod report;
mod sandbox;
mod scan;
mod scenarios;
mod setup;
mod soak;
mod transparent;

#[cfg(feature = "hudsucker")]
mod hudsucker_peer;
mod mitmproxy_peer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use http::HeaderValue;

use crate::load::{Endpoint, Route};
use crate::peer::Spawned;
use crate::report::{Report, Row, RowJson, COLUMNS, DIRECT, KEYSWAP};
use crate::scenarios::{Contender, Plan};
use crate::setup::{World, SECRET_ENV, TASK};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "keyswap against direct, hudsucker and mitmproxy"
)]
struct Args {
    #[command(subcommand)]
    serve: Option<ChildProcess>,
    /// Short runs (smoke test, under a minute).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Run only these scenarios (0 is the machine floor, 7 keyswap's task lifecycle, 8 the
    /// transparent listener against the explicit one, as root, 9 `keyswap exec`'s sandbox, 10
    /// `keyswap scan` over a large tree, 11 one task's flood against another task's requests,
    /// 12 AWS re-signing against a header swap, 13 credential leases: a task's first request
    /// with its mint, memory per lease, 14 a fleet of three replicas and Redis against the
    /// in-memory store), e.g. `--only 1,6`; 3 takes its rate from 1 unless `--latency-rate` is
    /// given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Measure this keyswap binary instead of the one beside the bench (before/after runs).
    #[arg(long)]
    keyswap: Option<PathBuf>,
    /// Scenario 3's rate in requests/s, instead of half of keyswap's saturation.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Measure only these (for profiling), e.g. `--contenders direct,keyswap`.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
}

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    fn measures(&self, contender: &str) -> bool {
        self.contenders.is_empty() || self.contenders.iter().any(|c| c == contender)
    }
}

/// The child processes the bench starts from its own binary.
#[derive(Debug, Subcommand)]
enum ChildProcess {
    /// The bench upstream alone in a process (the plain rustls server of scenario 4).
    #[command(hide = true, name = "serve-upstream")]
    Upstream {
        #[arg(long)]
        ca_dir: PathBuf,
    },
    /// A TCP echo server (the machine floor).
    #[command(hide = true, name = "serve-echo")]
    Echo,
    /// The hudsucker peer.
    #[cfg(feature = "hudsucker")]
    #[command(hide = true, name = "serve-hudsucker")]
    Hudsucker(hudsucker_peer::ServeArgs),
    /// Scenario 9's load generator, run as `keyswap exec`'s command.
    #[command(hide = true, name = "sandbox-load")]
    SandboxLoad(sandbox::LoadArgs),
    /// Not a child: keyswap for `--duration` under resets, aborts, slow readers and config
    /// reloads, checking that nothing is lost, garbled or leaked and that RSS and fds stay flat.
    Soak(soak::SoakArgs),
}

/// Set in the pinned re-run of the bench, so it does not pin itself again.
const PINNED_ENV: &str = "KEYSWAP_BENCH_PINNED";
/// The CPU of the load generator and upstream; proxies get the next one.
const CLIENT_CPU: usize = 0;
const PROXY_CPU: usize = 1;

fn main() -> ExitCode {
    // `bench sandbox-started`, scenario 9's command: before anything else, even parsing.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sandbox::STARTED)
    {
        return sandbox::started();
    }
    let args = Args::parse();
    let result = match args.serve {
        Some(ChildProcess::Upstream { ca_dir }) => setup::serve_upstream(&ca_dir),
        Some(ChildProcess::Echo) => floor::serve_echo(),
        #[cfg(feature = "hudsucker")]
        Some(ChildProcess::Hudsucker(serve)) => hudsucker_peer::serve(serve),
        Some(ChildProcess::SandboxLoad(load_args)) => sandbox::load_main(&load_args),
        Some(ChildProcess::Soak(soak_args)) => soak::main(&soak_args),
        None => match pin_self(&args) {
            Ok(Some(code)) => return code,
            Ok(None) => bench(&args),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether proxies are pinned, and to which CPU.
fn proxy_cpu(args: &Args) -> Option<usize> {
    (std::env::var_os(PINNED_ENV).is_some() && !args.no_pin).then_some(PROXY_CPU)
}

/// Re-runs the bench under `taskset -c 0` when pinning is possible; returns its exit code.
fn pin_self(args: &Args) -> anyhow::Result<Option<ExitCode>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let has_taskset = std::process::Command::new("taskset")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if args.no_pin || std::env::var_os(PINNED_ENV).is_some() || cores < 2 || !has_taskset {
        return Ok(None);
    }
    let status = std::process::Command::new("taskset")
        .arg("-c")
        .arg(CLIENT_CPU.to_string())
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(PINNED_ENV, "1")
        .status()
        .context("re-running the bench under taskset")?;
    Ok(Some(ExitCode::from(status.code().unwrap_or(1) as u8)))
}

fn bench(args: &Args) -> anyhow::Result<()> {
    // The real value reaches the proxies through their environment, never a command line.
    // Set before any thread starts.
    let secret = setup::random_token("KSREAL-bench-")?;
    let token = setup::random_token("task-token-")?;
    std::env::set_var(SECRET_ENV, &secret);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, secret, token))
}

/// The running proxies; dropping it stops them.
struct Proxies {
    _spawned: Vec<Spawned>,
}

async fn run(args: &Args, secret: String, token: String) -> anyhow::Result<()> {
    let plan = Plan::new(args.quick);
    let cpu = proxy_cpu(args);
    let world = World::create(&secret).await?;
    let upstream = world.upstream.addr;
    let bearer = |v: &str| HeaderValue::from_str(&format!("Bearer {v}"));
    let proxy_auth = {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{TASK}:{token}"));
        HeaderValue::from_str(&format!("Basic {basic}"))?
    };
    let endpoint = |route: Route, port: u16, authorization: HeaderValue| {
        Endpoint::new(route, port, authorization, &world.trust)
    };
    let through = |addr| Route::Proxy {
        addr,
        proxy_authorization: proxy_auth.clone(),
    };

    let mut skipped = Vec::new();
    #[cfg(not(feature = "hudsucker"))]
    skipped.push("hudsucker: built without the `hudsucker` feature".to_string());
    let mut spawned = Vec::new();
    let mut contenders = vec![Contender {
        column: DIRECT,
        name: "direct",
        endpoint: endpoint(Route::Direct(upstream), upstream.port(), bearer(&secret)?)?,
        pid: None,
    }];
    let mut add = |column: usize, name: &'static str, started: anyhow::Result<Spawned>| {
        if !args.measures(name) {
            return anyhow::Ok(());
        }
        match started {
            Ok(proxy) => {
                let contender = Contender {
                    column,
                    name,
                    endpoint: endpoint(
                        through(proxy.addr),
                        upstream.port(),
                        bearer(setup::PLACEHOLDER)?,
                    )?,
                    pid: Some(proxy.pid()),
                };
                contenders.push(contender);
                spawned.push(proxy);
            }
            Err(e) => skipped.push(format!("{name}: {e:#}")),
        }
        anyhow::Ok(())
    };
    let keyswap_setup = world.peer_setup("keyswap", cpu)?;
    let admin_socket = setup::admin_socket(&keyswap_setup.dir);
    add(
        KEYSWAP,
        "keyswap",
        setup::spawn_keyswap(
            &keyswap_setup.borrow(),
            &world.proxy_ca_dir,
            upstream,
            &token,
            args.keyswap.as_deref(),
        ),
    )?;
    #[cfg(feature = "hudsucker")]
    if args.measures("hudsucker") {
        let hudsucker_setup = world.peer_setup("hudsucker", cpu)?;
        add(
            2,
            "hudsucker",
            hudsucker_peer::spawn(&hudsucker_setup.borrow()),
        )?;
    }
    match mitmproxy_peer::find_mitmdump() {
        _ if !args.measures("mitmproxy") => {}
        Some(mitmdump) => {
            let mitm_setup = world.peer_setup("mitmproxy", cpu)?;
            add(
                3,
                "mitmproxy",
                mitmproxy_peer::spawn(&mitmdump, &mitm_setup.borrow()),
            )?;
        }
        None => add(
            3,
            "mitmproxy",
            Err(anyhow::anyhow!(
                "`mitmdump` is not on PATH (`pip install mitmproxy` to include it)"
            )),
        )?,
    }
    let limit_server = setup::spawn_upstream(&world.upstream_ca_dir, cpu)?;
    let limit = Contender {
        column: DIRECT,
        name: "plain rustls server",
        endpoint: endpoint(
            Route::Direct(limit_server.addr),
            limit_server.addr.port(),
            bearer(&secret)?,
        )?,
        pid: Some(limit_server.pid()),
    };
    let _proxies = Proxies { _spawned: spawned };

    // A contender that cannot carry one request is left out, with the reason.
    let mut working = Vec::new();
    for c in contenders {
        let check = async {
            let mut conn = c.endpoint.open(false, None).await?;
            conn.get("/bytes/1024").await?;
            anyhow::Ok(())
        };
        match check.await {
            Ok(()) => working.push(c),
            Err(e) => skipped.push(format!("{}: its first request failed: {e:#}", c.name)),
        }
    }
    anyhow::ensure!(
        !args.measures("keyswap") || working.iter().any(|c| c.column == KEYSWAP),
        "keyswap did not carry a request: {skipped:?}"
    );
    let contenders = working;
    for s in &skipped {
        eprintln!("bench: skipped {s}");
    }

    let mut rows: Vec<Row> = Vec::new();
    if args.runs("0") {
        let quick = args.quick;
        match tokio::task::spawn_blocking(move || floor::measure(cpu, quick)).await? {
            Ok(floor) => rows.extend(floor),
            Err(e) => eprintln!("bench: machine floor not measured: {e:#}"),
        }
    }
    let mut saturation = vec![None; COLUMNS.len()];
    if args.runs("1") {
        let (h1_rows, measured) = scenarios::keep_alive(&plan, &contenders, false).await;
        rows.extend(h1_rows);
        saturation = measured;
    }
    if args.runs("2") {
        rows.extend(scenarios::keep_alive(&plan, &contenders, true).await.0);
    }
    if args.runs("3") {
        let rate = match args.latency_rate {
            Some(rate) => rate,
            None => saturation[KEYSWAP].unwrap_or(1000.0) / 2.0,
        };
        rows.extend(scenarios::latency(&plan, &contenders, rate, &saturation).await);
    }
    if args.runs("4") {
        rows.extend(scenarios::churn(&plan, &contenders, Some(&limit)).await);
        if let Some(keyswap) = contenders.iter().find(|c| c.column == KEYSWAP) {
            rows.extend(scenarios::new_host(&plan, keyswap).await);
        }
    }
    if args.runs("5") {
        rows.extend(scenarios::idle(&plan, &contenders).await);
    }
    if args.runs("6") {
        rows.extend(scenarios::streaming(&plan, &contenders).await);
    }
    if args.runs("7") {
        if let Some(keyswap) = contenders.iter().find(|c| c.column == KEYSWAP) {
            rows.extend(lifecycle::run(&plan, keyswap, &admin_socket).await);
        }
    }
    if args.runs("8") && args.measures("keyswap") {
        let inputs = transparent::Inputs {
            quick: args.quick,
            setup: world.peer_setup("keyswap-transparent", cpu)?,
            proxy_ca_dir: &world.proxy_ca_dir,
            upstream,
            token: &token,
            binary: args.keyswap.as_deref(),
            trust: world.trust.clone(),
        };
        match tokio::task::block_in_place(|| transparent::run(inputs)) {
            Ok(transparent_rows) => rows.extend(transparent_rows),
            Err(why) => {
                eprintln!("bench: skipped {why}");
                skipped.push(why);
            }
        }
    }
    if args.runs("9") && args.measures("keyswap") {
        let keyswap = contenders.iter().find(|c| c.column == KEYSWAP);
        let inputs = sandbox::Inputs {
            quick: args.quick,
            setup: world.peer_setup("keyswap-exec", cpu)?,
            proxy_ca_dir: &world.proxy_ca_dir,
            proxy_ca: world.trust[1].clone(),
            upstream,
            admin_socket: &admin_socket,
            keyswap_pid: keyswap.and_then(|k| k.pid),
            binary: args.keyswap.as_deref(),
            client_cpu: cpu.map(|_| CLIENT_CPU),
        };
        rows.extend(tokio::task::block_in_place(|| sandbox::run(inputs)));
    }
    if args.runs("11") {
        if let Some(keyswap) = contenders.iter().find(|c| c.column == KEYSWAP) {
            rows.extend(fair::run(&plan, keyswap, &admin_socket).await);
        }
    }
    if args.runs("10") && args.measures("keyswap") {
        let binary = args.keyswap.as_deref();
        rows.extend(tokio::task::block_in_place(|| {
            scan::run(args.quick, binary)
        }));
    }
    if args.runs("12") && args.measures("keyswap") {
        rows.extend(aws::run(args.quick, args.keyswap.as_deref()).await);
    }
    if args.runs("13") && args.measures("keyswap") {
        rows.extend(leases::run(args.quick, args.keyswap.as_deref()).await);
    }
    if args.runs("14") && args.measures("keyswap") {
        let inputs = fleet::Inputs {
            quick: args.quick,
            world: &world,
            cpu,
            token: &token,
            binary: args.keyswap.as_deref(),
        };
        match fleet::run(inputs).await? {
            Ok(fleet_rows) => rows.extend(fleet_rows),
            Err(why) => {
                eprintln!("bench: skipped {why}");
                skipped.push(why);
            }
        }
    }
    drop(limit_server);

    let pinning = match cpu {
        Some(proxy) => format!(
            "load generator and upstream on CPU {CLIENT_CPU}, each proxy (and scenario 4's rustls \
             server) on CPU {proxy}, by taskset"
        ),
        None => format!(
            "not pinned (CPUs allowed: {})",
            procfs::allowed_cpus().unwrap_or_default()
        ),
    };
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        mode: if args.quick { "quick" } else { "full" },
        machine: report::Machine {
            cpu: procfs::cpu_model(),
            cores: num_cpus(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
        pinning,
        skipped,
        rows: rows.iter().map(RowJson::from).collect(),
    };
    println!(
        "# keyswap bench ({} run)\n\nmachine: {}, {} CPUs, Linux {}\npinning: {}\ncolumns: {}\n",
        report.mode,
        report.machine.cpu,
        report.machine.cores,
        report.machine.kernel,
        report.pinning,
        COLUMNS.join(", ")
    );
    for s in &report.skipped {
        println!("skipped: {s}");
    }
    println!("\n{}", report::markdown(&rows));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: results written to {}", out.display());
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}
