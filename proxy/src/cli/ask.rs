//! `keyswap exec --ask`: prompts on the terminal `exec` was started from for each request of
//! its task that waits for a human. The answer is read from `/dev/tty` (the controlling
//! terminal of `exec`), never from the command's stdin, so the agent's own input stream
//! cannot answer for the human. Shows method, host, path and secret names, never a value.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::approval::describe;
use crate::admin::client::AdminClient;
use crate::api::{AnswerRequest, ApprovalInfo};
use crate::state::approvals::{Answer, Scope};
use crate::state::shared::Shared;

/// How often the list of waiting requests is read.
const POLL: Duration = Duration::from_millis(250);

/// Where the approvals are answered.
pub enum Source {
    /// A running proxy's admin API (the answer is audited as the socket's peer UID).
    Remote(AdminClient),
    /// The proxy inside this `exec` (audited as `tty:uid:N`).
    Embedded(Arc<Shared>),
}

/// The controlling terminal, for reading and writing; an error a person can act on if
/// there is none.
pub fn open_tty() -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context(
            "--ask needs a terminal to prompt on, and /dev/tty cannot be opened; run exec from a terminal, \
             or answer with `keyswap approvals` / `keyswap approve ID` / `keyswap deny ID` instead",
        )
}

/// Prompts for each waiting request of `task`, oldest first, until aborted.
pub async fn prompt_loop(tty: std::fs::File, source: Source, task: String) {
    let Ok(writer) = tty.try_clone() else {
        return;
    };
    let tty = Arc::new(std::sync::Mutex::new((BufReader::new(tty), writer)));
    loop {
        let waiting = match &source {
            Source::Remote(client) => client.approvals(Some(&task)).await.unwrap_or_default(),
            Source::Embedded(shared) => shared.approvals.list(Some(&task)),
        };
        if let Some(first) = waiting.into_iter().next() {
            let prompt_tty = tty.clone();
            let asked = first.clone();
            let reply = tokio::task::spawn_blocking(move || ask(&prompt_tty, &asked)).await;
            if let Ok(Some(answer)) = reply {
                let result = send(&source, &first, answer).await;
                let note = match result {
                    Ok(text) => text,
                    Err(e) => format!("keyswap: {} was not answered: {e}", first.id),
                };
                let _ = writeln_tty(&tty, &note);
            }
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the person typed: approve (with a scope) or deny.
enum Reply {
    Approve(Scope),
    Deny,
}

fn ask(
    tty: &std::sync::Mutex<(BufReader<std::fs::File>, std::fs::File)>,
    approval: &ApprovalInfo,
) -> Option<Reply> {
    let mut tty = tty.lock().ok()?;
    let (reader, writer) = &mut *tty;
    loop {
        write!(
            writer,
            "\r\nkeyswap: {}\r\n      approve? [y] once  [t] for the task  [n] deny: ",
            describe(approval)
        )
        .ok()?;
        writer.flush().ok()?;
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Some(Reply::Approve(Scope::Once)),
            "t" | "task" => return Some(Reply::Approve(Scope::Task)),
            "n" | "no" => return Some(Reply::Deny),
            _ => continue,
        }
    }
}

async fn send(source: &Source, approval: &ApprovalInfo, reply: Reply) -> anyhow::Result<String> {
    let (verb, scope) = match reply {
        Reply::Approve(scope) => ("approved", Some(scope)),
        Reply::Deny => ("denied", None),
    };
    match source {
        Source::Remote(client) => {
            let request = AnswerRequest {
                answer: if scope.is_some() { "approve" } else { "deny" }.into(),
                scope: scope.map(|s| s.as_str().to_string()),
                reason: scope
                    .is_none()
                    .then(|| "denied at the exec terminal".to_string()),
            };
            client.answer(&approval.id, &request).await?;
        }
        Source::Embedded(shared) => {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map(|m| m.uid().to_string());
            let by = format!("tty:uid:{}", uid.unwrap_or_else(|_| "unknown".into()));
            let answer = match scope {
                Some(scope) => Answer::Approve { scope, by },
                None => Answer::Deny {
                    note: Some("denied at the exec terminal".into()),
                    by,
                },
            };
            shared
                .approvals
                .answer(&shared.audit, &approval.id, answer)?;
        }
    }
    Ok(format!("keyswap: {verb} {}", approval.id))
}

fn writeln_tty(
    tty: &std::sync::Mutex<(BufReader<std::fs::File>, std::fs::File)>,
    text: &str,
) -> std::io::Result<()> {
    if let Ok(mut tty) = tty.lock() {
        write!(tty.1, "{text}\r\n")?;
    }
    Ok(())
}
