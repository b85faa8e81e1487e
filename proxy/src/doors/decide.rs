//! The one decision both doors make once a connection's task and target are known, before
//! any certificate is minted or any byte goes upstream: the task has not expired; a rule of
//! the task names the host (or, under `on_unlisted: ask`, a human lets the connection through;
//! under `on_unlisted: learn`, it is intercepted so each request in it is recorded);
//! the rule says intercept or tunnel. A CONNECT and a redirected TLS connection are decided
//! by the same call, so a feature added here works on both doors.

use std::sync::Arc;
use std::time::SystemTime;

use keyswap_config::{first_rule_for_host, Scheme};

use crate::audit::decision::{Denial, Reason};
use crate::pipeline::agent_api::INTERNAL_HOST;
use crate::pipeline::approve::ask_connect;
use crate::pipeline::learn::learning;
use crate::state::shared::Shared;
use crate::state::tasks::LiveTask;
use crate::wire::target::Target;

/// What the door does with a decided connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// TLS is terminated with a leaf for the target; each request is decided on its own.
    Intercept,
    /// A `tunnel: true` rule: bytes are spliced, nothing swapped or scrubbed.
    Tunnel { rule: usize },
    /// `keyswap.internal:443`: TLS is terminated and every request is answered by keyswap
    /// itself ([`crate::pipeline::agent_api`]); nothing is resolved or dialled.
    Internal,
}

/// A refused target.
#[derive(Debug)]
pub struct TargetRefusal {
    pub denial: Denial,
    /// The host is a `tunnel: true` host: its client need not trust keyswap's CA, so the
    /// refusal cannot be delivered inside TLS.
    pub tunnel_host: bool,
}

/// A refusal whatever the target: the task store has been out of reach past its grace, or
/// the task has expired.
fn standing_refusal(shared: &Shared, task: &LiveTask) -> Option<Denial> {
    if let Some(denial) = shared.store_refusal() {
        return Some(denial);
    }
    task.is_expired(SystemTime::now()).then(|| {
        Denial::new(
            Reason::TaskExpired,
            format!(
                "task {} has expired; ask the operator to extend it",
                task.id
            ),
        )
    })
}

/// Decides `(task, target)` for connection `conn` (see the module docs). May wait for a
/// human under `on_unlisted: ask`; revoking the task ends the wait.
pub async fn decide_target(
    shared: &Shared,
    task: &Arc<LiveTask>,
    conn: u64,
    target: &Target,
) -> Result<Handling, TargetRefusal> {
    let snapshot = shared.snapshot();
    let rules = snapshot.rules_of(task).unwrap_or_default();
    let rule = first_rule_for_host(rules, Scheme::Https, &target.host, target.port);
    let tunnel_host = rule.is_some_and(|r| r.tunnel);
    if let Some(denial) = standing_refusal(shared, task) {
        return Err(TargetRefusal {
            denial,
            tunnel_host,
        });
    }
    if target.host == INTERNAL_HOST {
        return match target.port {
            443 => Ok(Handling::Internal),
            _ => Err(TargetRefusal {
                denial: Denial::new(
                    Reason::HostNotAllowed,
                    format!("{INTERNAL_HOST} answers on port 443 only: use https://{INTERNAL_HOST}/v1/self"),
                ),
                tunnel_host: false,
            }),
        };
    }
    // No configured rule: a grant a human approved for the task may name the host (grants
    // are never tunnels).
    if rule.is_none()
        && first_rule_for_host(
            &snapshot.granted_rules_of(task),
            Scheme::Https,
            &target.host,
            target.port,
        )
        .is_some()
    {
        return Ok(Handling::Intercept);
    }
    let Some(rule) = rule else {
        let refusal = Denial::new(
            Reason::HostNotAllowed,
            format!(
                "{target} is not in task {}'s allowlist; ask the operator to add a rule",
                task.id
            ),
        );
        // Under on_unlisted: learn the connection is intercepted (never tunnelled blind), so
        // each request in it is decided, forwarded unswapped and recorded on its own.
        if learning(&snapshot, task) {
            return Ok(Handling::Intercept);
        }
        // Under on_unlisted: ask the connection waits for a human; approved, it is
        // intercepted and each request in it is decided (and, unlisted, asked about) on its own.
        return match ask_connect(shared, &snapshot, task, conn, target, refusal).await {
            Ok(()) => Ok(Handling::Intercept),
            Err(denial) => Err(TargetRefusal {
                denial,
                tunnel_host: false,
            }),
        };
    };
    Ok(match rule.tunnel {
        true => Handling::Tunnel { rule: rule.index },
        false => Handling::Intercept,
    })
}
