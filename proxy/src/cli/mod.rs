//! The `keyswap` command line: `run`, `check`, `ca export`, `exec` ([`exec`]), `task` and
//! `env` ([`task`]), `approvals`, `approve` and `deny` ([`approval`]), `mcp` (the agent's MCP
//! server over keyswap.internal). This is the edge
//! where errors become messages for a person; nothing here prints a secret value (`task issue` prints the new task's token: that is its job).

mod approval;
mod ask;
pub mod audit;
mod ca;
mod check;
mod exec;
mod health;
mod import_env;
pub mod learn;
mod mcp;
mod run;
mod sandbox;
mod scan;
mod summary;
mod task;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use summary::summary;

#[derive(Debug, Parser)]
#[command(
    name = "keyswap",
    version,
    about = "Egress proxy that swaps placeholder tokens for real credentials on the wire"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. SIGHUP reopens the audit log and reloads the config; a bad config
    /// keeps the running one.
    Run {
        #[arg(long, default_value = "keyswap.yaml")]
        config: PathBuf,
    },
    /// Validate a config and print a summary; exits 1 listing every error.
    Check {
        #[arg(long, default_value = "keyswap.yaml")]
        config: PathBuf,
    },
    /// The local CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Run a command as a task issued for its lifetime: the proxy variables, CA bundles and
    /// placeholders are set in its environment, and the task is revoked when it exits.
    ///
    /// Uses the running proxy's admin socket if there is one; otherwise runs keyswap inside
    /// this process on an ephemeral loopback port for the length of the command.
    Exec(exec::ExecArgs),
    /// Issue, list, show and revoke tasks through the running proxy's admin API.
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Print the environment (shell `export` lines) of a task defined in the config.
    Env(task::EnvArgs),
    /// Ask the running proxy to read its config file again (like SIGHUP).
    Reload {
        #[command(flatten)]
        admin: task::AdminArgs,
    },
    /// Print the JSON Schema of the config file, for editors (see config/keyswap.schema.json).
    Schema,
    /// List the requests waiting for a human's approval.
    Approvals(approval::ListArgs),
    /// Let a waiting request through (--scope task / rule: also later ones like it).
    Approve(approval::ApproveArgs),
    /// Refuse a waiting request (approval_denied, with --reason told to the agent).
    Deny(approval::DenyArgs),
    /// The audit log: check its hash chain.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Exit 0 if the metrics listener answers `GET /healthz` with 200 (a container health
    /// check that needs no shell or curl in the image).
    Health(health::HealthArgs),
    /// Search working trees for the config's real secret values in plain text (every form
    /// the scrubber knows): exit 1 on a hit, 0 clean, 2 on a usage or config error, 3 if the
    /// time budget cut a clean search short.
    Scan(scan::ScanArgs),
    /// Move a .env's credentials into 0600 files outside the working tree, leave placeholders
    /// of the same shape in their place, and print (or --write) the config entries.
    ImportEnv(import_env::ImportEnvArgs),
    /// Turn the audit of a learn-mode run (`on_unlisted: learn`) into a policy, or check a
    /// policy against it (--replay).
    Learn(learn::LearnArgs),
    /// A Model Context Protocol server over stdio for an agent run under `keyswap exec`: its
    /// grants, its refusals explained, and asking a human for more (keyswap.internal).
    /// Register it with e.g. `claude mcp add keyswap -- keyswap mcp`.
    Mcp(mcp::McpArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print (or write) the CA certificate PEM, creating the CA if it does not exist yet.
    /// Reads only the config's `ca_dir`: no secret needs to be set.
    Export {
        #[arg(long, default_value = "keyswap.yaml")]
        config: PathBuf,
        /// Use this CA directory instead of the config's `ca_dir`.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Write the PEM here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Log ceilings for libraries that see header values.
pub const DEPENDENCY_LOG_CAPS: &[&str] = &[
    "h2=info",
    "hyper=info",
    "hyper_util=info",
    "rustls=info",
    "tokio_rustls=info",
    // The AWS signer traces the request it signs (header values, a session token).
    "aws_sigv4=info",
];

pub fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("KEYSWAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Below info, the HTTP and TLS libraries log frames that can hold header values;
    // keyswap never lets them, whatever KEYSWAP_LOG asks for.
    for quiet in DEPENDENCY_LOG_CAPS {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main_with(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => run::run(&config),
        Command::Exec(args) => return exec::exec(args),
        Command::Audit { command } => return audit::audit(command),
        Command::Scan(args) => return scan::scan(args),
        Command::ImportEnv(args) => return import_env::import_env(args),
        Command::Learn(args) => return learn::learn(args),
        Command::Task { command } => task::task(command),
        Command::Env(args) => task::env(args),
        Command::Reload { admin } => task::reload(admin),
        Command::Schema => {
            print!("{}", keyswap_config::json_schema());
            Ok(())
        }
        Command::Approvals(args) => approval::list(args),
        Command::Approve(args) => approval::approve(args),
        Command::Deny(args) => approval::deny(args),
        Command::Health(args) => health::health(args),
        Command::Mcp(args) => mcp::mcp(args),
        Command::Ca {
            command:
                CaCommand::Export {
                    config,
                    ca_dir,
                    out,
                },
        } => ca::ca_export(&config, ca_dir, out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyswap: {}", causes(&e));
            ExitCode::FAILURE
        }
    }
}

/// A config that did not load, for a one-line `keyswap: ...` message: an unreadable file
/// says only that, a file with errors lists them.
pub fn not_valid(path: &Path, errors: &keyswap_config::ConfigErrors) -> anyhow::Error {
    if errors.0.iter().all(|e| e.line == 0) {
        anyhow::anyhow!("{errors}")
    } else {
        anyhow::anyhow!("{} is not valid:\n{errors}", path.display())
    }
}

/// An error and its causes, `a: b: c`, leaving out a cause its error already shows (an I/O
/// error that is both in the message and the source would otherwise be printed twice).
pub fn causes(e: &anyhow::Error) -> String {
    let mut shown = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if shown.is_empty() {
            shown = text;
        } else if !shown.ends_with(&text) {
            shown = format!("{shown}: {text}");
        }
    }
    shown
}

fn check(path: &Path) -> ExitCode {
    // The same environment `run` reads, recorded so that the summary can name what was read.
    let env = check::RecordingEnv::process();
    match keyswap_config::load_with(path, &env) {
        Ok(config) => {
            print!("{}", summary(path, &config));
            print!("{}", env.report(&config));
            print!("{}", check::sandbox_report(&config, path));
            for warning in &config.warnings {
                println!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) if errors.0.iter().all(|e| e.line == 0) => {
            // The file could not be read: the error says so.
            eprintln!("keyswap: {errors}");
            ExitCode::FAILURE
        }
        Err(errors) => {
            eprintln!("{} has {} error(s):", path.display(), errors.0.len());
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one admin API call on a current-thread runtime, as the CLI's short commands do.
pub(crate) fn block_on<T>(
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(call)
}
