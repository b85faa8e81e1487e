//! `keyswap approvals`, `keyswap approve ID [--scope once|task|rule]` and
//! `keyswap deny ID [--reason TEXT]`: thin clients of the admin API's `/v1/approvals`.
//! They show what a waiting request would do (method, host, path, secret names), never a
//! value.

use clap::{Args, ValueEnum};

use super::task::AdminArgs;
use crate::admin::client::AdminClient;
use crate::api::{AnswerRequest, Answered, ApprovalInfo};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this task's waiting requests.
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// This request only.
    Once,
    /// This exact host, method and path, for the task's lifetime.
    Task,
    /// The matched rule (for a request no rule allows: its host), for the task's lifetime.
    Rule,
}

impl ScopeArg {
    fn as_str(self) -> &'static str {
        match self {
            ScopeArg::Once => "once",
            ScopeArg::Task => "task",
            ScopeArg::Rule => "rule",
        }
    }
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The id `keyswap approvals` lists.
    pub id: String,
    #[arg(long, value_enum, default_value_t = ScopeArg::Once)]
    pub scope: ScopeArg,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The id `keyswap approvals` lists.
    pub id: String,
    /// Told to the agent and audited (at most 200 printable characters are kept).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Answers approval `id` through the admin API.
async fn answer(admin: &AdminArgs, id: &str, request: AnswerRequest) -> anyhow::Result<Answered> {
    let client = AdminClient::new(admin.target()?);
    Ok(client.answer(id, &request).await?)
}

pub fn list(args: ListArgs) -> anyhow::Result<()> {
    super::block_on(async move {
        let client = AdminClient::new(args.admin.target()?);
        let approvals = client.approvals(args.task.as_deref()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&approvals)?);
        } else {
            print!("{}", table(&approvals));
        }
        Ok(())
    })
}

pub fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    super::block_on(async move {
        let request = AnswerRequest {
            answer: "approve".into(),
            scope: Some(args.scope.as_str().into()),
            reason: None,
        };
        let answered = answer(&args.admin, &args.id, request).await?;
        println!(
            "approved {} of task {} (scope {}), recorded as {}",
            answered.id,
            answered.task,
            answered.scope.as_deref().unwrap_or("once"),
            answered.by
        );
        Ok(())
    })
}

pub fn deny(args: DenyArgs) -> anyhow::Result<()> {
    super::block_on(async move {
        let request = AnswerRequest {
            answer: "deny".into(),
            scope: None,
            reason: args.reason,
        };
        let answered = answer(&args.admin, &args.id, request).await?;
        println!(
            "denied {} of task {}, recorded as {}",
            answered.id, answered.task, answered.by
        );
        Ok(())
    })
}

/// One line per waiting request.
pub fn table(approvals: &[ApprovalInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<9} {:<7} {:<30} {:<30} {:<16} {:>7}",
        "ID", "TASK", "WHY", "METHOD", "HOST", "PATH", "SECRETS", "WAITED"
    );
    for a in approvals {
        let host = if a.port == 443 || (a.port == 80 && a.scheme == "http") {
            a.host.clone()
        } else {
            format!("{}:{}", a.host, a.port)
        };
        let secrets = if a.secrets.is_empty() {
            "-".to_string()
        } else {
            a.secrets.join(",")
        };
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<9} {:<7} {:<30} {:<30} {:<16} {:>6.0}s",
            a.id,
            a.task,
            a.why,
            a.method,
            host,
            a.path.as_deref().unwrap_or("-"),
            secrets,
            a.waited_secs
        );
        if let Some(words) = &a.agent_why {
            let _ = writeln!(out, "{:<10} the agent says: \"{words}\"", "");
        }
        if let Some(replica) = &a.replica {
            let _ = writeln!(out, "{:<10} waiting on replica {replica}", "");
        }
    }
    out
}

/// A one-paragraph description of a waiting request, for a prompt.
pub fn describe(a: &ApprovalInfo) -> String {
    let what = match &a.path {
        Some(path) => format!("{} {}://{}:{}{}", a.method, a.scheme, a.host, a.port, path),
        None => format!("CONNECT {}:{}", a.host, a.port),
    };
    let why = match (a.rule, a.why.as_str()) {
        (Some(rule), _) => format!("rule {rule} asks for approval ({})", a.why),
        (None, "grant") => "its agent asks for this grant for the task's lifetime".to_string(),
        (None, _) => "no rule allows it".to_string(),
    };
    let secrets = if a.secrets.is_empty() {
        "no secret".to_string()
    } else {
        format!("secret(s) {}", a.secrets.join(", "))
    };
    let mut text = format!(
        "[{}] task {} wants {what}\n      {why}; would swap in {secrets}; waiting {:.0}s",
        a.id, a.task, a.waited_secs
    );
    if let Some(words) = &a.agent_why {
        text.push_str(&format!("\n      the agent says: \"{words}\""));
    }
    text
}
