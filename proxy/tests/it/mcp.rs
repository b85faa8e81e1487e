//! `keyswap mcp` driven by a real MCP client — the official Python SDK (`mcp` on PyPI) — as a
//! stdio subprocess in the environment `keyswap exec` gives an agent (`HTTPS_PROXY` with the
//! task's credentials, the CA in `SSL_CERT_FILE`), against the real proxy: it lists the tools,
//! reads the grants (they match the task), explains a refusal, is refused at once outside the
//! `requestable:` bounds, and asks for a grant inside them that a human approves through the
//! admin API while the tool waits — after which the request that was refused succeeds with the
//! secret swapped. Every transcript is searched for the real secrets and the task token.
//!
//! python3 with the `mcp` package (or pip to install it into a venv) must be present: under
//! CI=true its absence fails the test.

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

#[tokio::test]
async fn python_sdk_drives_keyswap_mcp_grants_refusals_and_an_approved_grant() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let python = python_with_mcp(scratch.path());
    if python.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the mcp package (or pip to install it) must be present in CI"
        );
        eprintln!(
            "\n*** NOTICE: python3 with mcp is not available: the MCP test did NOT run ***\n"
        );
        return;
    }
    let python = python.expect("python");
    let options = ProxyOptions {
        admin: true,
        ..ProxyOptions::default()
    };
    let env = TestEnv::start_with_options(&config(), Alpn::Both, options).await;
    // A refusal first, for keyswap_explain_refusal.
    let opts = env.agent(&format!("{API_HOST}:443"), Alpn::Http1Only);
    let auth = bearer(GITHUB_PLACEHOLDER);
    let refused = env
        .request(&opts, "GET", "/echo/granted/1", &[("authorization", &auth)])
        .await;
    assert_eq!(refused.reason(), Some("route_not_allowed"), "{refused:?}");

    let ca = scratch.path().join("keyswap-ca.pem");
    std::fs::write(&ca, &env.proxy_ca_pem).expect("write CA");
    let socket = env
        .proxy
        .admin_socket()
        .expect("admin socket")
        .to_path_buf();
    let approver = tokio::spawn(approve_the_grant(socket));
    let mut cmd = tokio::process::Command::new(&python);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.path())
        .env(
            "HTTPS_PROXY",
            format!("http://agent:{AGENT_TOKEN}@{}", env.proxy.addr()),
        )
        .env("SSL_CERT_FILE", &ca)
        .arg("-c")
        .arg(CLIENT)
        .arg(KEYSWAP)
        .arg(API_HOST)
        .stdin(Stdio::null())
        .kill_on_drop(true);
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
        env.keep(&[], &text);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the MCP client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    approver.await.expect("approver");
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    let names = &step(&steps, "tools")["names"];
    assert_eq!(
        names,
        &serde_json::json!([
            "keyswap_explain_refusal",
            "keyswap_grants",
            "keyswap_request_access",
            "keyswap_task"
        ])
    );
    let grants = step(&steps, "keyswap_grants");
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

    let explained = step(&steps, "keyswap_explain_refusal");
    let refusal = &explained["structured"]["refusals"][0];
    assert_eq!(refusal["reason"], "route_not_allowed", "{explained}");
    assert_eq!(refusal["path"], "/echo/granted/1", "{explained}");
    assert!(
        explained["text"]
            .as_str()
            .is_some_and(|t| t.contains("keyswap_request_access")),
        "{explained}"
    );

    let task = step(&steps, "keyswap_task");
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
    let now = env
        .request(&opts, "GET", "/echo/granted/1", &[("authorization", &auth)])
        .await;
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
