//! Step 1: identify the task from `Proxy-Authorization: Basic base64(task:token)`.
//!
//! Tokens are compared in constant time. A refusal never says whether the task exists,
//! and never echoes what the agent sent. The audit learns which task was claimed, only when
//! that names a real task (never a token typed into the user field by mistake).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use keyswap_config::Config;

use crate::audit::decision::{Denial, Reason};
use crate::state::tasks::{LiveTask, TaskStore};

/// A request whose task could not be identified.
#[derive(Debug)]
pub struct Unidentified {
    /// The 407 refusal the agent gets.
    pub denial: Denial,
    /// For the audit only: the task `Proxy-Authorization` named, when it is a known task
    /// whose token did not match.
    pub claimed_task: Option<String>,
}

/// The task this request acts for, or a 407 refusal. Static and runtime tasks are looked up
/// alike, in one map read. `proxy` is the address the agent reached keyswap at, shown in the
/// refusal's example proxy URL.
///
/// With no `Proxy-Authorization` at all, a config that has exactly one task and gives it no
/// token identifies that task: the simplest laptop setup needs no credentials in the proxy URL.
pub fn identify(
    config: &Config,
    tasks: &dyn TaskStore,
    headers: &HeaderMap,
    proxy: SocketAddr,
) -> Result<Arc<LiveTask>, Unidentified> {
    let Some(value) = headers.get(http::header::PROXY_AUTHORIZATION) else {
        if config.tasks.len() == 1 {
            let only = config.tasks.values().next().filter(|t| t.token.is_none());
            if let Some(task) = only.and_then(|t| tasks.get(&t.id)) {
                return Ok(task);
            }
        }
        return Err(Unidentified {
            denial: Denial::new(
                Reason::NoTask,
                format!(
                    "no task identity: put the task id and token in the proxy URL, \
                     e.g. HTTPS_PROXY=http://TASK:TOKEN@{proxy}"
                ),
            ),
            claimed_task: None,
        });
    };
    let bad = |claimed_task: Option<String>| {
        Unidentified {
        denial: Denial::new(
            Reason::BadToken,
            format!(
                "unknown task or wrong token in the proxy URL (HTTPS_PROXY=http://TASK:TOKEN@{proxy}); \
                 ask the operator for this task's id and token"
            ),
        ),
        claimed_task,
    }
    };
    let (task_id, token) = parse_basic(value.as_bytes()).ok_or_else(|| bad(None))?;
    let task = tasks.get(&task_id).ok_or_else(|| bad(None))?;
    if task.token_matches(&token) {
        Ok(task)
    } else {
        Err(bad(Some(task.id.clone())))
    }
}

/// The task id `Proxy-Authorization` names, if any (to look it up in a fleet's store when
/// this replica does not know it yet).
pub fn claimed_task_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::PROXY_AUTHORIZATION)?;
    parse_basic(value.as_bytes()).map(|(task, _)| task)
}

/// `Basic <base64(user:password)>` → (user, password). The scheme name is case-insensitive
/// (RFC 9110 §11.1).
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let v = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("task-1:tok:en")
        );
        assert_eq!(
            parse_basic(v.as_bytes()),
            Some(("task-1".to_string(), "tok:en".to_string()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }
}
