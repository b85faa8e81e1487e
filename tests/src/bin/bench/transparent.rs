//! Scenario 8: the transparent listener against the explicit listener, same keyswap process,
//! same run. An "agent" network namespace is joined to this host by a veth pair; a REDIRECT
//! for that interface sends its TCP 443 to keyswap's transparent listener. The load generator
//! runs on a thread that has entered the agent's namespace, and reaches keyswap either way:
//! `CONNECT localhost:443` to the explicit listener on the host-side veth address, or TLS
//! straight to that address's port 443 (SNI `localhost`), which the REDIRECT hands to the
//! transparent listener. Both resolve `localhost:443` to the bench upstream and swap the
//! placeholder on every request.
//!
//! Needs root, `ip` and `iptables`; without them the scenario is skipped, with the reason.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use http::HeaderValue;
use keyswap_tests::netns::{missing_requirements, AgentNet};

use crate::load::{Endpoint, Route};
use crate::report::{Row, KEYSWAP};
use crate::scenarios::{self, Contender, Plan};
use crate::setup::{self, PeerSetupOwned, SECRET_ENV, TASK, TOKEN_ENV};

/// What the scenario needs from the rest of the bench.
pub struct Inputs<'a> {
    pub quick: bool,
    pub setup: PeerSetupOwned,
    pub proxy_ca_dir: &'a Path,
    pub upstream: SocketAddr,
    pub token: &'a str,
    pub binary: Option<&'a Path>,
    pub trust: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// The rows of scenario 8, or why it was skipped.
pub fn run(inputs: Inputs<'_>) -> Result<Vec<Row>, String> {
    let missing = missing_requirements(&[]);
    if !missing.is_empty() {
        return Err(format!(
            "8. transparent listener: needs {} (network namespace and iptables REDIRECT)",
            missing.join(", ")
        ));
    }
    measure(inputs).map_err(|e| format!("8. transparent listener: {e:#}"))
}

fn measure(inputs: Inputs<'_>) -> anyhow::Result<Vec<Row>> {
    let mut net = AgentNet::create();
    let config = config(&inputs, &net);
    let keyswap =
        setup::spawn_keyswap_with(&inputs.setup.borrow(), &config, inputs.token, inputs.binary)?;
    let transparent = transparent_addr(&inputs.setup.dir.join("keyswap.log"))?;
    net.redirect(&[443], transparent.port());

    let placeholder = HeaderValue::from_str(&format!("Bearer {}", setup::PLACEHOLDER))?;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{TASK}:{}", inputs.token));
    let explicit = Contender {
        column: KEYSWAP,
        name: "keyswap explicit listener",
        endpoint: Endpoint::new(
            Route::Proxy {
                addr: keyswap.addr,
                proxy_authorization: HeaderValue::from_str(&format!("Basic {basic}"))?,
            },
            443,
            placeholder.clone(),
            &inputs.trust,
        )?,
        pid: Some(keyswap.pid()),
    };
    let redirected = Contender {
        column: KEYSWAP,
        name: "keyswap transparent listener",
        endpoint: Endpoint::new(
            Route::Direct(SocketAddr::new(net.host_ip.into(), 443)),
            443,
            placeholder,
            &inputs.trust,
        )?,
        pid: Some(keyswap.pid()),
    };
    let ns = format!("/run/netns/{}", net.ns);
    let quick = inputs.quick;
    let rows = std::thread::spawn(move || -> anyhow::Result<Vec<Row>> {
        let file = std::fs::File::open(&ns).with_context(|| format!("opening {ns}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the agent's network namespace")?;
        // Every socket this runtime opens is the agent's.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(load(quick, explicit, redirected))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))??;
    drop(keyswap);
    drop(net);
    Ok(rows)
}

/// Keep-alive throughput and CPU per request, then new connections, each door in turn.
async fn load(quick: bool, explicit: Contender, redirected: Contender) -> anyhow::Result<Vec<Row>> {
    let plan = Plan::new(quick);
    for door in [&explicit, &redirected] {
        let mut conn = door.endpoint.open(false, None).await?;
        conn.get("/bytes/1024")
            .await
            .with_context(|| format!("{}: the first request failed", door.name))?;
    }
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    for (door, tag) in [
        (&explicit, "8a. explicit listener"),
        (&redirected, "8b. transparent listener"),
    ] {
        let (keep_alive, _) = scenarios::keep_alive(&plan, std::slice::from_ref(door), false).await;
        let churn = scenarios::churn(&plan, std::slice::from_ref(door), None).await;
        let mut measured = Vec::new();
        for mut row in keep_alive.into_iter().take(2).chain(churn) {
            row.scenario = relabel(&row.scenario, tag);
            row.notes.clear();
            measured.push(row.values[KEYSWAP]);
            rows.push(row);
        }
        figures.push(measured);
    }
    let names = [
        ("keep-alive HTTP/1.1 req/s", true),
        ("keep-alive proxy CPU per request", false),
        ("new connections/s (SNI peek included)", true),
        ("proxy CPU per new connection", false),
    ];
    for (i, (name, higher)) in names.iter().enumerate() {
        let mut row = Row::new(format!("8. transparent / explicit: {name}"), "×", *higher);
        let ratio = match (
            figures[0].get(i).copied().flatten(),
            figures[1].get(i).copied().flatten(),
        ) {
            (Some(explicit), Some(transparent)) if explicit != 0.0 => Some(transparent / explicit),
            _ => None,
        };
        row.set(KEYSWAP, ratio);
        rows.push(row);
    }
    Ok(rows)
}

/// "1. keep-alive HTTP/1.1, 64 connections: …" → "8a. explicit listener: keep-alive …".
fn relabel(scenario: &str, tag: &str) -> String {
    let rest = scenario.split_once(". ").map_or(scenario, |(_, rest)| rest);
    format!("{tag}: {rest}")
}

/// keyswap for this scenario: the explicit and the transparent listener on the host-side
/// veth address, one task holding every redirected connection, `localhost:443` resolved to
/// the bench upstream.
fn config(inputs: &Inputs<'_>, net: &AgentNet) -> String {
    let dir = &inputs.setup.dir;
    format!(
        r#"version: 1
listen: {host}:0
ca_dir: {ca_dir}
audit_log: {audit}
upstream:
  extra_roots: {roots}
  resolve:
    "localhost:443": "{upstream}"
secrets:
  api:
    from_env: {SECRET_ENV}
    placeholder: {placeholder}
admin:
  socket: {admin}
tasks:
  {TASK}:
    token_env: {TOKEN_ENV}
    allow:
      - host: localhost
        port: 443
        secrets: [api]
transparent:
  listen: {host}:0
  task: {TASK}
  ports:
    443: tls
"#,
        host = net.host_ip,
        ca_dir = inputs.proxy_ca_dir.display(),
        audit = dir.join("audit.jsonl").display(),
        roots = inputs.setup.upstream_roots.display(),
        upstream = inputs.upstream,
        placeholder = setup::PLACEHOLDER,
        admin = setup::admin_socket(dir).display(),
    )
}

/// The transparent listener's address, from keyswap's JSON log (written before the
/// `keyswap listening` line the spawn waited for).
fn transparent_addr(log: &Path) -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string(log)?;
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["fields"]["message"] == "transparent listener listening" {
            let addr = event["fields"]["addr"]
                .as_str()
                .context("transparent listening line without addr")?;
            return Ok(addr.parse()?);
        }
    }
    anyhow::bail!(
        "keyswap did not log its transparent listener ({})",
        log.display()
    )
}
