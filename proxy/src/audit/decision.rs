//! A decision is a value: every request, and every CONNECT or redirected connection that
//! carried none, ends in exactly one [`Decision`] whose [`Reason`] comes from a closed set.
//! A refusal is one shape, [`Denial`]: the agent sees its reason in the `x-keyswap-reason`
//! header and a short body; the audit record, the log line and the metrics are written from
//! the decision it ends in.
//!
//! Messages built here name hosts, tasks and secret *names*, never a secret value.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use keyswap_scrub::body::{full, ProxyBody};

use crate::error::Origin;

/// The last line of every refusal body: where an agent sees what it may do and asks for more.
pub const SEE_GRANTS: &str = "See this task's grants and ask for more: MCP tool keyswap_grants, or GET https://keyswap.internal/v1/self";

/// Name of the response header that carries the reason of a refusal.
pub const REASON_HEADER: &str = "x-keyswap-reason";

/// Why a request was allowed or refused. Closed set: the audit log and the agent see
/// exactly these strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Allowed,
    NoTask,
    BadToken,
    TaskExpired,
    HostNotAllowed,
    RouteNotAllowed,
    PlaceholderNotAllowed,
    AuthorityMismatch,
    SniMismatch,
    PrivateAddress,
    BadRequest,
    UpstreamError,
    /// A secret the request needs could not be refreshed and is no longer swapped in.
    SecretUnavailable,
    /// The agent refused keyswap's certificate during the interception handshake (a TLS
    /// alert such as `unknown_ca`): it does not trust keyswap's CA. No HTTP response is sent.
    AgentTlsFailed,
    /// A transparent connection to an original destination port `transparent.ports` does
    /// not list.
    PortNotAllowed,
    /// The request waited for a human, who said no (the body carries their reason).
    ApprovalDenied,
    /// The request waited for a human longer than `approval.timeout`.
    ApprovalTimeout,
    /// The task already had `approval.max_pending` requests waiting for a human.
    ApprovalQueueFull,
    /// The matched rule's `budget:` for this task is used up.
    BudgetExhausted,
    /// The matched rule's `rate:` for this task is exceeded for now (with `Retry-After`).
    RateLimited,
    /// The task (or keyswap as a whole) already holds as many requests in flight or upstream
    /// connections as `limits:` allows, and none came free in time (with `Retry-After`).
    TaskBusy,
    /// No rule allows the request, and its task is in learn mode (`on_unlisted: learn`): it
    /// was forwarded with no secret swapped in, and recorded for `keyswap learn`.
    Learned,
    /// An AWS request signed in a way keyswap does not re-sign (chunk-signed streaming,
    /// SigV4A, a presigned URL) with a placeholder key id.
    SignatureUnsupported,
    /// keyswap shares its tasks through a store (`store:`) it cannot reach: no task is
    /// issued meanwhile, and past `store.grace` no request is served until it is back.
    StoreUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NoTask => "no_task",
            Reason::BadToken => "bad_token",
            Reason::TaskExpired => "task_expired",
            Reason::HostNotAllowed => "host_not_allowed",
            Reason::RouteNotAllowed => "route_not_allowed",
            Reason::PlaceholderNotAllowed => "placeholder_not_allowed",
            Reason::AuthorityMismatch => "authority_mismatch",
            Reason::SniMismatch => "sni_mismatch",
            Reason::PrivateAddress => "private_address",
            Reason::BadRequest => "bad_request",
            Reason::UpstreamError => "upstream_error",
            Reason::SecretUnavailable => "secret_unavailable",
            Reason::AgentTlsFailed => "agent_tls_failed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::ApprovalDenied => "approval_denied",
            Reason::ApprovalTimeout => "approval_timeout",
            Reason::ApprovalQueueFull => "approval_queue_full",
            Reason::BudgetExhausted => "budget_exhausted",
            Reason::RateLimited => "rate_limited",
            Reason::TaskBusy => "task_busy",
            Reason::Learned => "learned",
            Reason::SignatureUnsupported => "signature_unsupported",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }

    /// The audit record's `decision`: `allowed`, `denied` (the policy refused: deny by
    /// default), `error` (keyswap would have let the request through but something
    /// failed: the upstream, a secret's source, the agent's TLS), or `learned` (no rule
    /// allowed it; learn mode forwarded it without secrets).
    pub fn decision(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Learned => "learned",
            Reason::UpstreamError
            | Reason::SecretUnavailable
            | Reason::AgentTlsFailed
            | Reason::StoreUnavailable => "error",
            Reason::NoTask
            | Reason::BadToken
            | Reason::TaskExpired
            | Reason::HostNotAllowed
            | Reason::RouteNotAllowed
            | Reason::PlaceholderNotAllowed
            | Reason::AuthorityMismatch
            | Reason::SniMismatch
            | Reason::PrivateAddress
            | Reason::BadRequest
            | Reason::PortNotAllowed
            | Reason::ApprovalDenied
            | Reason::ApprovalTimeout
            | Reason::ApprovalQueueFull
            | Reason::BudgetExhausted
            | Reason::RateLimited
            | Reason::TaskBusy
            | Reason::SignatureUnsupported => "denied",
        }
    }

    /// Where the cause of this outcome lies: the agent's request (every refusal by policy,
    /// and a malformed request or handshake), the upstream (it failed or could not be
    /// reached), or keyswap (a secret it could not refresh).
    pub fn origin(self) -> Origin {
        match self {
            Reason::UpstreamError | Reason::PrivateAddress => Origin::Upstream,
            Reason::SecretUnavailable | Reason::StoreUnavailable => Origin::Internal,
            _ => Origin::Agent,
        }
    }

    /// The status the agent gets when this reason refuses a request.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::Allowed | Reason::Learned => StatusCode::OK,
            Reason::NoTask | Reason::BadToken => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Reason::BadRequest | Reason::SignatureUnsupported => StatusCode::BAD_REQUEST,
            Reason::UpstreamError => StatusCode::BAD_GATEWAY,
            Reason::SecretUnavailable | Reason::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            // Never sent (no HTTP exchange took place); listed for completeness.
            Reason::AgentTlsFailed => StatusCode::BAD_GATEWAY,
            Reason::ApprovalQueueFull
            | Reason::BudgetExhausted
            | Reason::RateLimited
            | Reason::TaskBusy => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the reason plus a one-paragraph explanation an agent can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    /// Seconds for a `Retry-After` header (a refusal that passes with time).
    pub retry_after: Option<u64>,
    /// The connection must end after this refusal (malformed input, a task that ended).
    pub close: bool,
    /// The parent proxy's status when it refused the upstream connection (`upstream_error`).
    pub parent_status: Option<u16>,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            retry_after: None,
            close: false,
            parent_status: None,
        }
    }

    /// The same refusal, ending its connection.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The same refusal with `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The response the agent receives; with `Connection: close` when the refusal ends its
    /// connection (malformed input must not be followed by more requests on it).
    pub fn response(&self) -> Response<ProxyBody> {
        let mut body = String::with_capacity(self.message.len() + 40 + SEE_GRANTS.len());
        body.push_str("keyswap refused this request (");
        body.push_str(self.reason.as_str());
        body.push_str("): ");
        body.push_str(&self.message);
        body.push('\n');
        body.push_str(SEE_GRANTS);
        body.push('\n');
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = self.reason.status();
        let headers = response.headers_mut();
        headers.insert(
            REASON_HEADER,
            HeaderValue::from_static(self.reason.as_str()),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.reason.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keyswap\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// How one request ended: allowed or refused, for which reason, under which rule, with
/// which secrets sent upstream. Built once per request; [`crate::audit::record::AuditRecord::new`]
/// turns it into the audit record, the log line and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// Index of the configured rule that matched, if any (a request let through by an
    /// approval of an unlisted request has none).
    pub rule: Option<usize>,
    /// Names of the secrets whose real values were sent upstream.
    pub secrets: Vec<String>,
    /// `bad_token` only: the known task the agent's credentials claimed to be.
    pub claimed_task: Option<String>,
    /// `upstream_error` through a parent proxy that refused the tunnel: its status.
    pub parent_status: Option<u16>,
    /// Learn mode only: the placeholders the request carried (forwarded as placeholders).
    pub carried: Vec<Carried>,
    /// The connection was a `tunnel: true` pass-through (spliced, not intercepted).
    pub tunnel: bool,
    /// Answered by keyswap itself (`keyswap.internal`): nothing was resolved or sent upstream.
    pub internal: bool,
}

/// A secret whose placeholder a learned request carried, and where: the header names
/// (lowercase, sorted), whether the URI (path or query) held it, whether the body did. Names
/// only.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uri: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body: bool,
}

impl Decision {
    pub fn new(reason: Reason) -> Decision {
        Decision {
            reason,
            rule: None,
            secrets: Vec::new(),
            claimed_task: None,
            parent_status: None,
            carried: Vec::new(),
            tunnel: false,
            internal: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_carries_reason_header_and_status() {
        let denial = Denial::new(Reason::HostNotAllowed, "example.com is not allowed");
        let response = denial.response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[REASON_HEADER], "host_not_allowed");
        let auth = Denial::new(Reason::NoTask, "x").closing().response();
        assert_eq!(auth.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(auth.headers().contains_key(header::PROXY_AUTHENTICATE));
        assert_eq!(auth.headers()[header::CONNECTION], "close");
        assert!(!auth.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn limits_refuse_with_429_and_rate_says_when_to_retry() {
        let budget = Denial::new(Reason::BudgetExhausted, "used up").response();
        assert_eq!(budget.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(budget.headers()[REASON_HEADER], "budget_exhausted");
        assert!(!budget.headers().contains_key(header::RETRY_AFTER));
        let rate = Denial::new(Reason::RateLimited, "slow down")
            .retry_after(3)
            .response();
        assert_eq!(rate.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rate.headers()[REASON_HEADER], "rate_limited");
        assert_eq!(rate.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn failures_are_errors_not_refusals() {
        assert_eq!(Reason::Allowed.decision(), "allowed");
        assert_eq!(Reason::HostNotAllowed.decision(), "denied");
        assert_eq!(Reason::PrivateAddress.decision(), "denied");
        assert_eq!(Reason::UpstreamError.decision(), "error");
        assert_eq!(Reason::AgentTlsFailed.decision(), "error");
        assert_eq!(Reason::AgentTlsFailed.as_str(), "agent_tls_failed");
        assert_eq!(Reason::Learned.decision(), "learned");
        assert_eq!(Reason::Learned.as_str(), "learned");
    }
}
