//! `keyswap learn`: turns the audit of a learn-mode run into a policy.
//!
//! - `keyswap learn --audit FILE... [--task ID | --policy NAME] [--since T] [--name NEW]
//!   [--max-children N] [--merge CONFIG] [--force] [--key-file K]...` prints a `policies:`
//!   block (or, with `--merge`, the rules policy NAME of CONFIG lacks);
//! - `keyswap learn --replay --config CONFIG --policy NAME --audit FILE...` lists every
//!   recorded request the policy would refuse, with the reason (exit 1 if any).
//!
//! The audit's hash chain is verified first; a broken chain stops it unless `--force`.
//! Nothing here reads or prints a secret value: records hold secret names only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::audit::chain::LineHasher;
use crate::learn::observed::LearnError;
use crate::learn::replay::judge;
use crate::learn::{learn_rules, read_audit, render, render_merge, replay, Filter, ReadAudit};

#[derive(Debug, Args)]
pub struct LearnArgs {
    /// The audit file(s) of the run, a rotated set oldest first.
    #[arg(long = "audit", required = true)]
    pub audit: Vec<PathBuf>,
    /// Learn from (or, with --replay, check) this task's records only.
    #[arg(long)]
    pub task: Option<String>,
    /// Learn from the records of tasks issued from this policy; with --replay, the policy of
    /// --config to check.
    #[arg(long)]
    pub policy: Option<String>,
    /// Leave out records before this time (RFC 3339, or a duration ago such as 2h).
    #[arg(long)]
    pub since: Option<String>,
    /// The name of the printed policy.
    #[arg(long, default_value = "learned")]
    pub name: String,
    /// A path prefix with more distinct next segments than this becomes `prefix/**`.
    #[arg(long, default_value_t = crate::learn::DEFAULT_MAX_CHILDREN)]
    pub max_children: usize,
    /// Print only the rules policy --name of this config lacks to cover the run.
    #[arg(long, conflicts_with = "replay")]
    pub merge: Option<PathBuf>,
    /// Check policy --policy of --config against the audit instead of learning.
    #[arg(long, requires_all = ["config", "policy"])]
    pub replay: bool,
    /// The config whose policy --replay checks.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Learn even though the audit's hash chain is broken (it is reported).
    #[arg(long)]
    pub force: bool,
    /// The chain's HMAC key (`audit.key_file`); repeat for a set written under several keys.
    #[arg(long = "key-file")]
    pub key_files: Vec<PathBuf>,
}

pub fn learn(args: LearnArgs) -> ExitCode {
    match run(&args, &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keyswap: {}", super::causes(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs `keyswap learn`, writing what it prints to `out`; `Ok(false)` when a replay found
/// refusals.
pub fn run(args: &LearnArgs, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    if !crate::learn::render::valid_name(&args.name) {
        bail!(
            "--name {:?} is not a valid policy name (letters, digits, '-' and '_')",
            args.name
        );
    }
    let read = read(args)?;
    if let Some(broken) = &read.broken {
        eprintln!("keyswap: warning: the audit's hash chain is broken at {broken}; learning from it anyway (--force)");
    }
    if args.replay {
        let config = args
            .config
            .as_deref()
            .ok_or_else(|| anyhow!("--replay needs --config"))?;
        let name = args
            .policy
            .as_deref()
            .ok_or_else(|| anyhow!("--replay needs --policy"))?;
        return replay_policy(config, name, &read, out);
    }
    if read.records.is_empty() {
        bail!("no request record to learn from (check --task, --policy and --since)");
    }
    let text = match &args.merge {
        Some(config) => merge(config, args, &read)?,
        None => {
            let rules = learn_rules(&read.records, args.max_children);
            render(&args.name, &rules, &about(args, &read))
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(true)
}

/// Verifies and reads the audit under the filter the arguments give.
fn read(args: &LearnArgs) -> anyhow::Result<ReadAudit> {
    let mut keys = Vec::new();
    for path in &args.key_files {
        let key = keyswap_config::secrets::read_audit_key(path)
            .map_err(|e| anyhow!("--key-file: {}; {}", e.message, e.fix))?;
        keys.push(LineHasher::keyed(secrecy::ExposeSecret::expose_secret(
            &key,
        )));
    }
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let filter = Filter {
        task: args.task.clone(),
        // With --replay, --policy names the policy to check, not the records to read.
        policy: args.policy.clone().filter(|_| !args.replay),
        since,
    };
    read_audit(&args.audit, &keys, &filter, args.force).map_err(|e| match e {
        LearnError::Broken(_) => anyhow!("{e}"),
        other => anyhow!(other),
    })
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let ago: Duration = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?} is neither an RFC 3339 time nor a duration such as 2h")
    })?;
    Ok(SystemTime::now() - ago)
}

/// What the header comment says the policy was learned from.
fn about(args: &LearnArgs, read: &ReadAudit) -> String {
    let mut about = format!("{} recorded requests", read.records.len());
    if let Some(task) = &args.task {
        about.push_str(&format!(" of task {task}"));
    }
    if let Some(policy) = &args.policy {
        about.push_str(&format!(" of tasks of policy {policy}"));
    }
    if let Some(since) = &args.since {
        about.push_str(&format!(" since {since}"));
    }
    about
}

fn load(config: &Path) -> anyhow::Result<keyswap_config::Config> {
    keyswap_config::load(config).map_err(|errors| super::not_valid(config, &errors))
}

/// `--merge`: the rules for the records policy --name of `config` does not allow yet.
fn merge(config_path: &Path, args: &LearnArgs, read: &ReadAudit) -> anyhow::Result<String> {
    let config = load(config_path)?;
    let policy = config
        .policy(&args.name)
        .ok_or_else(|| anyhow!("{} has no policy {}", config_path.display(), args.name))?;
    let uncovered: Vec<_> = read
        .records
        .iter()
        .filter(|r| judge(&config, &policy.rules, r).is_err())
        .cloned()
        .collect();
    let rules = learn_rules(&uncovered, args.max_children);
    Ok(render_merge(
        &args.name,
        &config_path.display().to_string(),
        &rules,
        uncovered.len(),
        read.records.len(),
    ))
}

/// `--replay`: every recorded request policy `name` of `config` would refuse.
fn replay_policy(
    config_path: &Path,
    name: &str,
    read: &ReadAudit,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let config = load(config_path)?;
    let refused = replay(&config, name, &read.records).map_err(|e| anyhow!(e))?;
    for r in &refused {
        writeln!(out, "{}: {} ({})", r.request, r.reason, r.why)?;
    }
    writeln!(
        out,
        "policy {name} would refuse {} of {} recorded requests",
        refused.len(),
        read.records.len()
    )?;
    Ok(refused.is_empty())
}
