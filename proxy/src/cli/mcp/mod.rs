//! `keyswap mcp`: a Model Context Protocol server over stdio (the official Rust SDK, `rmcp`)
//! that an agent started under `keyswap exec` registers as a tool provider. Each tool is one
//! or a few calls to `https://keyswap.internal` ([`client`]), through the task's own proxy
//! connection, and returns text for the model and the structured JSON it was made from.
//!
//! Tools: `keyswap_grants` (what the task may reach and with which placeholders, what it may
//! ask for), `keyswap_explain_refusal` (the last refusals and what would allow each),
//! `keyswap_request_access` (asks for a grant and waits for the human's answer),
//! `keyswap_task` (expiry, budgets). Stdout is the protocol; logs go to stderr.
//!
//! Never holds a secret value: the API returns none. The task token is in the proxy URL and
//! goes nowhere but the CONNECT's `Proxy-Authorization`.

mod client;
mod text;

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{json, Value};

use client::Internal;

/// How long `keyswap_request_access` waits when keyswap does not say (its default approval
/// timeout), and at most.
const DEFAULT_WAIT: Duration = Duration::from_secs(120);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Between two polls of a pending request.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// `keyswap mcp`.
#[derive(Debug, clap::Args)]
pub struct McpArgs {}

pub fn mcp(_args: McpArgs) -> anyhow::Result<()> {
    super::block_on(async {
        let internal = Internal::from_env()?;
        let server = Keyswap {
            internal: Arc::new(internal),
            tool_router: Keyswap::tool_router(),
        };
        let running = server.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        Ok(())
    })
}

/// `keyswap_explain_refusal`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExplainArgs {
    /// How many of the most recent refusals to explain (default 5, at most 50).
    pub limit: Option<u32>,
    /// Only refusals of this host.
    pub host: Option<String>,
}

/// `keyswap_request_access`'s arguments: the grant asked for.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AccessArgs {
    /// The host, e.g. api.github.com.
    pub host: String,
    /// The port (default 443).
    pub port: Option<u16>,
    /// HTTP methods, e.g. ["GET"] (omit for any, if the bounds allow any).
    pub methods: Option<Vec<String>>,
    /// Path patterns, e.g. ["/repos/acme/widget/**"]: "*" one segment, "**" any rest (omit
    /// for any, if the bounds allow any).
    pub paths: Option<Vec<String>>,
    /// Names of the secrets the requests need (see keyswap_grants' requestable bounds).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Why the task needs it, in one or two sentences: the human approving reads this.
    pub why: String,
    /// Seconds to wait for the human's answer (default keyswap's approval timeout).
    pub wait_secs: Option<u64>,
}

#[derive(Clone)]
pub struct Keyswap {
    internal: Arc<Internal>,
    tool_router: ToolRouter<Self>,
}

/// A tool's answer: text for the model and the JSON it was made from.
fn answer(text: String, structured: Value, is_error: bool) -> CallToolResult {
    let mut result = match is_error {
        true => CallToolResult::error(vec![ContentBlock::text(text)]),
        false => CallToolResult::success(vec![ContentBlock::text(text)]),
    };
    result.structured_content = Some(structured);
    result
}

/// keyswap.internal could not be reached or refused: an error the model can read.
fn unreachable(e: anyhow::Error) -> CallToolResult {
    let message = super::causes(&e);
    answer(
        format!("keyswap.internal could not be asked: {message}"),
        json!({ "error": message }),
        true,
    )
}

#[tool_router]
impl Keyswap {
    #[tool(
        description = "What this task may reach through keyswap: each rule's host, port, methods and paths, and the secrets it may use by placeholder and environment variable name; grants a human added; and what may be requested with keyswap_request_access."
    )]
    async fn keyswap_grants(&self) -> Result<CallToolResult, ErrorData> {
        Ok(match self.internal.get("/v1/self").await {
            Ok((200, view)) => answer(text::grants(&view), view, false),
            Ok((_, error)) => answer(text::error(&error), error, true),
            Err(e) => unreachable(e),
        })
    }

    #[tool(
        description = "Explains this task's most recent refusals by keyswap (a 403 or 407 with x-keyswap-reason): what was refused, why, and what would allow it (a grant to request with keyswap_request_access, or asking the operator). A refusal is a policy decision, not a fault: do not try to route around it."
    )]
    async fn keyswap_explain_refusal(
        &self,
        Parameters(args): Parameters<ExplainArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let limit = args.limit.unwrap_or(5).clamp(1, 50);
        let path = format!(
            "/v1/self/refusals?limit={}",
            if args.host.is_some() { 50 } else { limit }
        );
        Ok(match self.internal.get(&path).await {
            Ok((200, mut view)) => {
                if let (Some(host), Some(list)) = (&args.host, view["refusals"].as_array_mut()) {
                    list.retain(|r| {
                        r["host"]
                            .as_str()
                            .is_some_and(|h| h.eq_ignore_ascii_case(host))
                    });
                    list.truncate(limit as usize);
                }
                answer(text::refusals(&view), view, false)
            }
            Ok((_, error)) => answer(text::error(&error), error, true),
            Err(e) => unreachable(e),
        })
    }

    #[tool(
        description = "Asks a human for access this task does not have: a host, methods, paths and secrets (by name), with why. It is checked against the task's requestable bounds first (outside: refused at once, naming the bound), then waits for the human's answer and returns approved (the access works from now on, for this task's lifetime), denied with the human's reason, or pending if nobody answered in time."
    )]
    async fn keyswap_request_access(
        &self,
        Parameters(args): Parameters<AccessArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let body = json!({
            "host": args.host, "port": args.port, "methods": args.methods,
            "paths": args.paths, "secrets": args.secrets, "why": args.why,
        });
        let asked = match self.internal.post("/v1/self/requests", &body).await {
            Ok((202, view)) => view,
            Ok((_, view)) => return Ok(answer(text::request(&view), view, true)),
            Err(e) => return Ok(unreachable(e)),
        };
        let wait = args
            .wait_secs
            .map(Duration::from_secs)
            .or_else(|| asked["timeout_secs"].as_u64().map(Duration::from_secs))
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let id = asked["id"].as_str().unwrap_or_default().to_string();
        let view = self.wait_for(&id, asked, wait).await;
        let failed = matches!(
            view["status"].as_str(),
            Some("denied" | "refused" | "timed_out")
        );
        Ok(answer(text::request(&view), view, failed))
    }

    #[tool(
        description = "This task's id, policy, expiry (and seconds left), and the budgets of its rules (used and left)."
    )]
    async fn keyswap_task(&self) -> Result<CallToolResult, ErrorData> {
        Ok(match self.internal.get("/v1/self").await {
            Ok((200, view)) => {
                let task = text::task_json(&view);
                answer(text::task(&task), task, false)
            }
            Ok((_, error)) => answer(text::error(&error), error, true),
            Err(e) => unreachable(e),
        })
    }
}

impl Keyswap {
    /// Polls request `id` until it is answered or `wait` has passed; the last view.
    async fn wait_for(&self, id: &str, mut view: Value, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        let path = format!("/v1/self/requests/{id}");
        while view["status"] == "pending" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL_EVERY).await;
            match self.internal.get(&path).await {
                Ok((200, next)) => view = next,
                Ok(_) | Err(_) => break,
            }
        }
        view
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Keyswap {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("keyswap", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "keyswap is the egress proxy between this agent and the network: it holds the real \
                 credentials, the agent holds placeholders. Use keyswap_grants to see what this task \
                 may reach, keyswap_explain_refusal after a refusal (x-keyswap-reason), and \
                 keyswap_request_access to ask a human for more. Never try to route around a refusal.",
            )
    }
}
