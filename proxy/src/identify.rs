//! Step 1: identify the task from `Proxy-Authorization: Basic base64(task:token)`.
//!
//! Tokens are compared in constant time. A refusal never says whether the task exists,
//! and never echoes what the agent sent.

use base64::Engine;
use http::HeaderMap;
use keyswap_config::{Config, Task};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::decision::{Denial, Reason};

/// The task this request acts for, or a 407 refusal.
///
/// With no `Proxy-Authorization` at all, a config that has exactly one task and gives it no
/// token identifies that task: the simplest laptop setup needs no credentials in the proxy URL.
pub fn identify<'c>(config: &'c Config, headers: &HeaderMap) -> Result<&'c Task, Denial> {
    let Some(value) = headers.get(http::header::PROXY_AUTHORIZATION) else {
        if config.tasks.len() == 1 {
            if let Some(task) = config.tasks.values().next().filter(|t| t.token.is_none()) {
                return Ok(task);
            }
        }
        return Err(Denial::new(
            Reason::NoTask,
            "no task identity: put the task id and token in the proxy URL, \
             e.g. HTTPS_PROXY=http://TASK:TOKEN@127.0.0.1:8080",
        ));
    };
    let bad = || {
        Denial::new(
            Reason::BadToken,
            "unknown task or wrong token in the proxy URL (HTTPS_PROXY=http://TASK:TOKEN@host:port); \
             ask the operator for this task's id and token",
        )
    };
    let (task_id, token) = parse_basic(value.as_bytes()).ok_or_else(bad)?;
    let task = config.task(&task_id).ok_or_else(bad)?;
    match &task.token {
        None => Ok(task),
        Some(expected) => {
            let ok: bool = expected
                .expose_secret()
                .as_bytes()
                .ct_eq(token.as_bytes())
                .into();
            if ok {
                Ok(task)
            } else {
                Err(bad())
            }
        }
    }
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
