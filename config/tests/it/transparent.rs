//! `transparent:` loads into the model the proxy runs on: the task from the listener or from
//! the source address (longest prefix first), and the ports read as TLS or plain HTTP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use keyswap_config::{load_str, PortMode, SourceNet, TransparentTasks};

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "TOKEN_A".to_string(),
            "token-a-0123456789abcdef".to_string(),
        ),
        (
            "TOKEN_B".to_string(),
            "token-b-0123456789abcdef".to_string(),
        ),
    ])
}

const SOURCES: &str = r#"
version: 1
tasks:
  agent-a:
    token_env: TOKEN_A
    allow:
      - host: api.example.test
  agent-b:
    token_env: TOKEN_B
    allow:
      - host: api.example.test
transparent:
  listen: 0.0.0.0:15001
  sources:
    "10.213.0.0/16": agent-a
    "10.213.0.2/32": agent-b
    "fd00:213::/64": agent-b
  ports:
    443: tls
    80: http
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn sources_map_to_tasks_by_longest_prefix() {
    let config = load_str(SOURCES, Path::new("keyswap.yaml"), &env())
        .unwrap_or_else(|e| panic!("config must load:\n{e}"));
    let transparent = config.transparent.expect("transparent section");
    assert_eq!(transparent.listen, "0.0.0.0:15001".parse().unwrap());
    assert!(matches!(transparent.tasks, TransparentTasks::BySource(_)));
    assert_eq!(transparent.task_for(ip("10.213.0.2")), Some("agent-b"));
    assert_eq!(transparent.task_for(ip("10.213.7.9")), Some("agent-a"));
    assert_eq!(
        transparent.task_for(ip("::ffff:10.213.0.2")),
        Some("agent-b")
    );
    assert_eq!(transparent.task_for(ip("fd00:213::5")), Some("agent-b"));
    assert_eq!(transparent.task_for(ip("10.214.0.2")), None);
    assert_eq!(transparent.task_for(ip("fd00:214::5")), None);
    assert_eq!(transparent.port_mode(443), Some(PortMode::Tls));
    assert_eq!(transparent.port_mode(80), Some(PortMode::Http));
    assert_eq!(transparent.port_mode(8443), None);
}

#[test]
fn one_task_takes_every_connection() {
    let yaml = r#"
version: 1
tasks:
  agent:
    allow:
      - host: api.example.test
transparent:
  listen: 127.0.0.1:15001
  task: agent
  ports: {443: tls}
"#;
    let config = load_str(yaml, Path::new("keyswap.yaml"), &env())
        .unwrap_or_else(|e| panic!("config must load:\n{e}"));
    let transparent = config.transparent.expect("transparent section");
    assert_eq!(transparent.task_for(ip("192.0.2.7")), Some("agent"));
    assert_eq!(transparent.task_for(ip("2001:db8::1")), Some("agent"));
    let without = load_str(
        "version: 1\ntasks:\n  agent:\n    allow:\n      - host: a.test\n",
        Path::new("keyswap.yaml"),
        &env(),
    )
    .expect("loads");
    assert!(without.transparent.is_none());
}

#[test]
fn source_blocks_parse_strictly() {
    let net: SourceNet = "10.213.0.2".parse().unwrap();
    assert_eq!(net.to_string(), "10.213.0.2/32");
    assert!(net.contains(ip("10.213.0.2")) && !net.contains(ip("10.213.0.3")));
    let all: SourceNet = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
    for bad in [
        "10.0.0.1/24",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "x",
        "::1/129",
    ] {
        assert!(bad.parse::<SourceNet>().is_err(), "{bad}");
    }
}
