//! `keyswap task issue|list|show|revoke`, `keyswap reload` and `keyswap env`: thin clients of
//! the admin API (and, for `env`, of the config). Only `task issue` prints a token — the one
//! time it exists outside the proxy.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use keyswap_certs::CertificateAuthority;
use secrecy::{ExposeSecret, SecretString};

use crate::admin::client::{AdminClient, AdminTarget};
use crate::api::{IssueRequest, RuleUsageInfo, TaskInfo};
use crate::host::child_env::{shell_exports, task_env, write_trust_files, ProxyEndpoint};

/// How to find the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The config whose `admin.socket` to use (only that field is read).
    #[arg(long, default_value = "keyswap.yaml")]
    pub config: PathBuf,
    /// The admin socket, or `http://HOST:PORT` for the TCP listener (token from
    /// --admin-token-env). Overrides the config's `admin.socket`.
    #[arg(long)]
    pub admin: Option<String>,
    /// The variable holding the admin API's bearer token (TCP only).
    #[arg(long, default_value = "KEYSWAP_ADMIN_TOKEN")]
    pub admin_token_env: String,
}

impl AdminArgs {
    /// The admin API to talk to: `--admin`, else the config's `admin.socket`, else the
    /// default socket.
    pub fn target(&self) -> anyhow::Result<AdminTarget> {
        if let Some(admin) = &self.admin {
            if let Some(rest) = admin.strip_prefix("http://") {
                let addr = rest
                    .trim_end_matches('/')
                    .parse()
                    .with_context(|| format!("--admin {admin}: write http://IP:PORT"))?;
                let token = std::env::var(&self.admin_token_env).with_context(|| {
                    format!(
                        "the admin API over TCP needs its token in {}",
                        self.admin_token_env
                    )
                })?;
                return Ok(AdminTarget::Tcp {
                    addr,
                    token: SecretString::from(token),
                });
            }
            return Ok(AdminTarget::Socket(PathBuf::from(admin)));
        }
        let socket = keyswap_config::admin_socket_of(&self.config)
            .unwrap_or_else(|| PathBuf::from(keyswap_config::model::DEFAULT_ADMIN_SOCKET));
        Ok(AdminTarget::Socket(socket))
    }
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Issue a task from a policy; prints its environment as shell `export` lines (or, with
    /// --json, the id, token, proxy URL, expiry and environment).
    Issue {
        #[arg(long)]
        policy: String,
        /// e.g. 30m or 2h; default: the policy's ttl; at most its max_ttl.
        #[arg(long)]
        ttl: Option<String>,
        /// Default: POLICY-<random>.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the live tasks (never their tokens).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one task.
    Show {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a task: its token stops working and its open connections close.
    Revoke {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// A task defined in the config (a runtime task's environment is printed once, by
    /// `keyswap task issue`).
    #[arg(long)]
    pub task: String,
    #[arg(long, default_value = "keyswap.yaml")]
    pub config: PathBuf,
    /// Print JSON instead of `export` lines.
    #[arg(long)]
    pub json: bool,
}

pub fn task(command: TaskCommand) -> anyhow::Result<()> {
    super::block_on(async move {
        match command {
            TaskCommand::Issue {
                policy,
                ttl,
                id,
                json,
                admin,
            } => {
                let client = AdminClient::new(admin.target()?);
                let request = IssueRequest {
                    policy,
                    ttl,
                    id,
                    by: Some("api".into()),
                    agent_addr: None,
                    sandbox: None,
                    lifeline: false,
                };
                let issued = client.issue(&request).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&issued)?);
                } else {
                    eprintln!(
                        "keyswap: issued task {} (policy {}, expires {})",
                        issued.id, issued.policy, issued.expires
                    );
                    print!("{}", shell_exports(&issued.env));
                }
            }
            TaskCommand::List { json, admin } => {
                let tasks = AdminClient::new(admin.target()?).list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tasks)?);
                } else {
                    print!("{}", task_table(&tasks));
                }
            }
            TaskCommand::Show { id, admin } => {
                let task = AdminClient::new(admin.target()?).show(&id).await?;
                println!("{}", serde_json::to_string_pretty(&task)?);
            }
            TaskCommand::Revoke { id, admin } => {
                let revoked = AdminClient::new(admin.target()?).revoke(&id, "api").await?;
                println!(
                    "revoked {}: {} connection(s) closed after {} request(s)",
                    revoked.id, revoked.connections_closed, revoked.requests
                );
            }
        }
        Ok(())
    })
}

pub fn reload(admin: AdminArgs) -> anyhow::Result<()> {
    super::block_on(async move {
        let summary = AdminClient::new(admin.target()?).reload().await?;
        println!("{}", serde_json::to_string_pretty(&summary)?);
        Ok(())
    })
}

/// One line per task: id, policy, source, expiry, connections, requests and, in a fleet, the
/// replicas holding its connections; under it one line per rule with a budget or a rate.
fn task_table(tasks: &[TaskInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<16} {:<8} {:<26} {:>5} {:>9}  REPLICAS",
        "ID", "POLICY", "SOURCE", "EXPIRES", "CONNS", "REQUESTS"
    );
    for task in tasks {
        let expires = match (&task.expires, task.expired) {
            (Some(at), true) => format!("{at} (expired)"),
            (Some(at), false) => at.clone(),
            (None, _) => "never".into(),
        };
        // A learning task reaches every host (without secrets): the list says so.
        let id = match task.learning {
            true => format!("{} (learning)", task.id),
            false => task.id.clone(),
        };
        let _ = writeln!(
            out,
            "{:<32} {:<16} {:<8} {:<26} {:>5} {:>9}  {}",
            id,
            task.policy.as_deref().unwrap_or("-"),
            task.source,
            expires,
            task.open_connections,
            task.requests,
            replicas_cell(task)
        );
        for rule in &task.budgets {
            let _ = writeln!(out, "  {}", budget_line(rule));
        }
        for lease in &task.leases {
            let _ = writeln!(
                out,
                "  lease {}: minted {}, expires {}, fingerprint ...{}",
                lease.secret, lease.minted, lease.expires, lease.fingerprint
            );
        }
    }
    out
}

/// `a-17:2,b-9:1`: each replica holding the task's connections, with how many (`-`: none,
/// or no fleet).
fn replicas_cell(task: &TaskInfo) -> String {
    if task.replicas.is_empty() {
        return "-".into();
    }
    let cells: Vec<String> = task
        .replicas
        .iter()
        .map(|(replica, conns)| format!("{replica}:{conns}"))
        .collect();
    cells.join(",")
}

/// `rule 0 (KEY): 12 of 500 used, 488 left, rate 5/s`.
fn budget_line(rule: &RuleUsageInfo) -> String {
    let mut line = format!("rule {} ({}): ", rule.rule, rule.key);
    match (rule.budget, rule.remaining) {
        (Some(budget), Some(remaining)) => {
            line.push_str(&format!("{} of {budget} used, {remaining} left", rule.used))
        }
        _ => line.push_str(&format!("{} used, no budget", rule.used)),
    }
    if let Some(rate) = &rule.rate {
        line.push_str(&format!(", rate {rate}"));
    }
    line
}

/// `keyswap env --task ID`: the environment of a task from the config, with its token from
/// its `token_env`.
pub fn env(args: EnvArgs) -> anyhow::Result<()> {
    let config =
        keyswap_config::load(&args.config).map_err(|e| super::not_valid(&args.config, &e))?;
    let task = config.task(&args.task).with_context(|| {
        format!(
            "no task {} in {}; a runtime task's environment is printed once, by `keyswap task issue`",
            args.task,
            args.config.display()
        )
    })?;
    let ca = CertificateAuthority::load_or_create(&config.ca_dir)?;
    let trust = write_trust_files(&config.ca_dir, ca.cert_pem())?;
    let placeholders: Vec<(String, String)> = keyswap_config::granted_secrets(&task.rules)
        .into_iter()
        .map(|id| config.secret(id))
        .flat_map(|s| s.agent_env())
        .collect();
    let env = task_env(
        ProxyEndpoint {
            task: &task.id,
            token: task.token.as_ref().map(|t| t.expose_secret()),
            addr: config.listen,
        },
        &trust,
        &placeholders,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&env)?);
    } else {
        print!("{}", shell_exports(&env));
    }
    Ok(())
}

/// Whether something answers on the admin socket at `path`.
pub async fn socket_answers(path: &Path) -> bool {
    tokio::net::UnixStream::connect(path).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(budget: Option<u64>, used: u64, rate: Option<&str>) -> RuleUsageInfo {
        RuleUsageInfo {
            rule: 1,
            key: "openai".into(),
            budget,
            used,
            remaining: budget.map(|b| b.saturating_sub(used)),
            rate: rate.map(str::to_string),
        }
    }

    #[test]
    fn budget_lines_show_used_left_and_rate() {
        assert_eq!(
            budget_line(&usage(Some(500), 12, Some("5/s"))),
            "rule 1 (openai): 12 of 500 used, 488 left, rate 5/s"
        );
        assert_eq!(
            budget_line(&usage(None, 3, Some("1/h"))),
            "rule 1 (openai): 3 used, no budget, rate 1/h"
        );
    }

    #[test]
    fn the_table_names_the_replicas_holding_a_tasks_connections() {
        let mut task = TaskInfo {
            id: "t-1".into(),
            source: "runtime".into(),
            policy: Some("p".into()),
            issued_by: "api".into(),
            issued_at: "2026-12-07T10:00:00Z".into(),
            expires: None,
            expired: false,
            open_connections: 2,
            requests: 5,
            learning: false,
            budgets: Vec::new(),
            leases: Vec::new(),
            replicas: Default::default(),
        };
        let alone = task_table(std::slice::from_ref(&task));
        assert!(
            alone.lines().next().unwrap().ends_with("  REPLICAS"),
            "{alone}"
        );
        assert!(alone.lines().nth(1).unwrap().ends_with("  -"), "{alone}");
        task.replicas = [("a-17".to_string(), 2), ("b-9".to_string(), 1)].into();
        let fleet = task_table(&[task]);
        assert!(
            fleet.lines().nth(1).unwrap().ends_with("  a-17:2,b-9:1"),
            "{fleet}"
        );
    }
}
