//! `keyswap mcp` driven by real MCP clients — the official Python SDK (`mcp` on PyPI) and the
//! official TypeScript SDK (`@modelcontextprotocol/sdk` from npm) — as a stdio subprocess in the environment `keyswap exec` gives an agent (`HTTPS_PROXY` with the
//! task's credentials, the CA in `SSL_CERT_FILE`), against the real proxy: it lists the tools,
//! reads the grants (they match the task), explains a refusal, is refused at once outside the
//! `requestable:` bounds, and asks for a grant inside them that a human approves through the
//! admin API while the tool waits — after which the request that was refused succeeds with the
//! secret swapped. Every transcript is searched for the real secrets and the task token.
//!
//! python3 with the `mcp` package (or pip to install it into a venv), and node with npm (to
//! install the TypeScript SDK into a temporary prefix) must be present: under CI=true their
//! absence fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::AnswerRequest;
use keyswap::ProxyOptions;
use keyswap_tests::client::Alpn;
use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
use keyswap_tests::harness::{bearer, TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL};
use serde_json::Value;

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");
const SAFETY: Duration = Duration::from_secs(180);

const CLIENT: &str = r#"
import asyncio, json, os, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

def structured(result):
    value = getattr(result, "structuredContent", None)
    return value if value is not None else getattr(result, "structured_content", None)

def is_error(result):
    value = getattr(result, "isError", None)
    return bool(value if value is not None else getattr(result, "is_error", False))

CALLS = [
    ("keyswap_grants", {}),
    ("keyswap_explain_refusal", {"limit": 1}),
    ("keyswap_task", {}),
    ("keyswap_request_access", {"host": "evil.test", "paths": ["/x"], "why": "exfiltrate"}),
    ("keyswap_request_access", {"host": sys.argv[2], "methods": ["GET"], "paths": ["/echo/granted/**"],
                                "secrets": ["github"], "why": "read the granted items", "wait_secs": 120}),
]

async def main():
    params = StdioServerParameters(command=sys.argv[1], args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            print(json.dumps({"step": "tools", "names": sorted(t.name for t in tools.tools)}), flush=True)
            for name, args in CALLS:
                result = await session.call_tool(name, args)
                text = "".join(getattr(c, "text", "") for c in result.content)
                print(json.dumps({"step": name, "error": is_error(result), "text": text,
                                  "structured": structured(result)}), flush=True)

asyncio.run(main())
"#;

/// The same session through the TypeScript SDK (CommonJS build, found through NODE_PATH).
const TS_CLIENT: &str = r#"
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const [keyswap, host] = process.argv.slice(1);
const CALLS = [
  ["keyswap_grants", {}],
  ["keyswap_explain_refusal", { limit: 1 }],
  ["keyswap_task", {}],
  ["keyswap_request_access", { host: "evil.test", paths: ["/x"], why: "exfiltrate" }],
  ["keyswap_request_access", { host, methods: ["GET"], paths: ["/echo/granted/**"],
                               secrets: ["github"], why: "read the granted items", wait_secs: 120 }],
];
(async () => {
  const transport = new StdioClientTransport({ command: keyswap, args: ["mcp"], env: process.env });
  const client = new Client({ name: "keyswap-test", version: "1.0.0" });
  await client.connect(transport);
  const tools = await client.listTools();
  console.log(JSON.stringify({ step: "tools", names: tools.tools.map((t) => t.name).sort() }));
  for (const [name, args] of CALLS) {
    const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 170000 });
    const text = (result.content || []).map((c) => c.text || "").join("");
    console.log(JSON.stringify({ step: name, error: Boolean(result.isError), text,
                                 structured: result.structuredContent ?? null }));
  }
  await client.close();
})().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
"#;

fn config() -> String {
    ConfigBuilder::new()
        .admin_socket()
        .secret("github", Secret::github().field("env", "GITHUB_TOKEN"))
        .task(
            "agent",
            Entry::with_token()
                .field(
                    "requestable",
                    &format!("[{{host: {API_HOST}, methods: [GET], paths: [\"/echo/**\"], secrets: [github]}}]"),
                )
                .rule(
                    Rule::api()
                        .methods(&["GET"])
                        .paths(&["/echo/listed/**"])
                        .secrets(&["github"]),
                ),
        )
        .yaml()
}

fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A python3 that can import `mcp`: the one on PATH, or a venv made for this test.
fn python_with_mcp(scratch: &Path) -> Option<PathBuf> {
    if runs("python3", &["-c", "import mcp.client.stdio"]) {
        return Some(PathBuf::from("python3"));
    }
    let venv = scratch.join("venv");
    if !runs("python3", &["-m", "venv", venv.to_str()?]) {
        return None;
    }
    let pip = venv.join("bin/pip").display().to_string();
    if !runs(&pip, &["install", "--quiet", "mcp"]) {
        return None;
    }
    Some(venv.join("bin/python"))
}

/// A `node_modules` directory holding the TypeScript SDK, installed by npm into `scratch`.
fn typescript_sdk(scratch: &Path) -> Option<PathBuf> {
    let prefix = scratch.join("npm");
    let installed = runs(
        "npm",
        &[
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            prefix.to_str()?,
            "@modelcontextprotocol/sdk@1",
        ],
    );
    let node_modules = prefix.join("node_modules");
    let resolves = std::process::Command::new("node")
        .env("NODE_PATH", &node_modules)
        .args([
            "-e",
            "require.resolve('@modelcontextprotocol/sdk/client/index.js')",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (installed && resolves).then_some(node_modules)
}

/// Approves the first grant approval of task `agent` that appears.
async fn approve_the_grant(socket: PathBuf) {
    let admin = AdminClient::new(AdminTarget::Socket(socket));
    let deadline = tokio::time::Instant::now() + SAFETY;
    while tokio::time::Instant::now() < deadline {
        let waiting = admin.approvals(Some("agent")).await.expect("approvals");
        if let Some(grant) = waiting.into_iter().find(|a| a.why == "grant") {
            assert_eq!(grant.agent_why.as_deref(), Some("read the granted items"));
            let approve = AnswerRequest {
                answer: "approve".into(),
                scope: Some("once".into()),
                reason: None,
            };
            admin.answer(&grant.id, &approve).await.expect("approve");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no grant approval appeared");
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("the client printed no {name} step: {steps:?}"))
}

/// Fails under CI=true when a client is missing; otherwise says loudly that it did not run.
fn missing(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} must be present in CI"
    );
    eprintln!("\n*** NOTICE: {what} is not available: the MCP test did NOT run ***\n");
}

/// The proxy, a refusal for keyswap_explain_refusal to find, and the CA file.
struct Session {
    env: TestEnv,
    ca: PathBuf,
}

async fn session(scratch: &Path) -> Session {
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&config(), Alpn::Both, options).await;
    let refused = granted_request(&env).await;
    assert_eq!(refused.reason(), Some("route_not_allowed"), "{refused:?}");
    let ca = scratch.join("keyswap-ca.pem");
    std::fs::write(&ca, &env.proxy_ca_pem).expect("write CA");
    Session { env, ca }
}

/// The request a grant is asked for: refused before, allowed after.
async fn granted_request(env: &TestEnv) -> keyswap_tests::harness::Reply {
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let auth = bearer(GITHUB_PLACEHOLDER);
    env.request(&opts, "GET", "/echo/granted/1", &[("authorization", &auth)])
        .await
}

/// Runs `program` (an MCP client given `keyswap` and the API host as its last arguments) in
/// the environment `keyswap exec` gives an agent, approving the grant it asks for; returns the
/// steps it printed, after checking every transcript for real values and the token.
async fn drive(
    s: &Session,
    scratch: &Path,
    program: &Path,
    args: &[&str],
    extra_env: &[(&str, &Path)],
) -> Vec<Value> {
    let socket = s
        .env
        .proxy
        .admin_socket()
        .expect("admin socket")
        .to_path_buf();
    let approver = tokio::spawn(approve_the_grant(socket));
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch)
        .env(
            "HTTPS_PROXY",
            format!("http://agent:{AGENT_TOKEN}@{}", s.env.proxy.addr()),
        )
        .env("SSL_CERT_FILE", &s.ca)
        .args(args)
        .arg(KEYSWAP)
        .arg(API_HOST)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.envs(extra_env.iter().copied());
    let out = tokio::time::timeout(SAFETY, cmd.output())
        .await
        .expect("the MCP client finished")
        .expect("the MCP client started");
    for (what, bytes) in [
        ("MCP client stdout", &out.stdout),
        ("MCP client stderr", &out.stderr),
    ] {
        assert_no_real_secret(what, bytes);
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(AGENT_TOKEN), "{what} holds the task token");
        s.env.keep(&[], &text);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the MCP client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    approver.await.expect("approver");
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn python_sdk_drives_keyswap_mcp_grants_refusals_and_an_approved_grant() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let Some(python) = python_with_mcp(scratch.path()) else {
        return missing("python3 with the mcp package (or pip to install it)");
    };
    let s = session(scratch.path()).await;
    let steps = drive(&s, scratch.path(), &python, &["-c", CLIENT], &[]).await;
    check_session(&s, &steps).await;
}

#[tokio::test]
async fn typescript_sdk_drives_keyswap_mcp_grants_refusals_and_an_approved_grant() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    if !runs("node", &["--version"]) {
        return missing("node");
    }
    let Some(node_modules) = typescript_sdk(scratch.path()) else {
        return missing("the TypeScript MCP SDK (npm to install it)");
    };
    let s = session(scratch.path()).await;
    let node_path = [("NODE_PATH", node_modules.as_path())];
    let steps = drive(
        &s,
        scratch.path(),
        Path::new("node"),
        &["-e", TS_CLIENT],
        &node_path,
    )
    .await;
    check_session(&s, &steps).await;
}

/// What every client must have seen, and the request the approved grant now lets through.
async fn check_session(s: &Session, steps: &[Value]) {
    let env = &s.env;
    let names = &step(steps, "tools")["names"];
    assert_eq!(
        names,
        &serde_json::json!([
            "keyswap_explain_refusal",
            "keyswap_grants",
            "keyswap_request_access",
            "keyswap_task"
        ])
    );
    let grants = step(steps, "keyswap_grants");
    assert_eq!(grants["structured"]["task"], "agent", "{grants}");
    let rule = &grants["structured"]["rules"][0];
    assert_eq!(
        rule["paths"],
        serde_json::json!(["/echo/listed/**"]),
        "{grants}"
    );
    assert_eq!(
        rule["secrets"][0]["placeholder"], GITHUB_PLACEHOLDER,
        "{grants}"
    );
    assert!(
        grants["text"]
            .as_str()
            .is_some_and(|t| t.contains("$GITHUB_TOKEN")),
        "{grants}"
    );

    let explained = step(steps, "keyswap_explain_refusal");
    let refusal = &explained["structured"]["refusals"][0];
    assert_eq!(refusal["reason"], "route_not_allowed", "{explained}");
    assert_eq!(refusal["path"], "/echo/granted/1", "{explained}");
    assert!(
        explained["text"]
            .as_str()
            .is_some_and(|t| t.contains("keyswap_request_access")),
        "{explained}"
    );

    let task = step(steps, "keyswap_task");
    assert_eq!(task["structured"]["task"], "agent", "{task}");

    let outside = steps
        .iter()
        .find(|s| {
            s["step"] == "keyswap_request_access" && s["structured"]["grant"]["host"] == "evil.test"
        })
        .expect("the outside request's step");
    assert_eq!(outside["error"], true, "{outside}");
    assert_eq!(outside["structured"]["status"], "refused", "{outside}");

    let inside = steps
        .iter()
        .find(|s| {
            s["step"] == "keyswap_request_access" && s["structured"]["grant"]["host"] == API_HOST
        })
        .expect("the inside request's step");
    assert_eq!(inside["structured"]["status"], "approved", "{inside}");
    assert_eq!(inside["error"], false, "{inside}");

    // The same request now goes through, the secret swapped in.
    let now = granted_request(env).await;
    assert_eq!(now.status, 200, "{now:?}");
    let sent = env
        .upstream
        .seen()
        .into_iter()
        .rev()
        .find(|r| r.path_and_query == "/echo/granted/1")
        .and_then(|r| r.headers.into_iter().find(|(n, _)| n == "authorization"))
        .map(|(_, v)| v);
    assert!(
        sent == Some(format!("Bearer {GITHUB_REAL}")),
        "the granted secret was not swapped in"
    );
    env.assert_no_leaks();
}
