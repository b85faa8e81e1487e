//! An "agent" network namespace joined to this host by a veth pair, with REDIRECT rules that
//! send its TCP to a transparent listener: what the transparent-mode tests and the bench's
//! transparent scenario build. Everything is removed on drop, also when a test panics.
//! Needs root, `ip` and `iptables`; the agent only ever dials the host-side veth address.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What this machine lacks to build the namespaces (empty: nothing).
pub fn missing_requirements(tools: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut missing = Vec::new();
    if !root {
        missing.push("root");
    }
    for (name, arg) in [("ip", "-V"), ("iptables", "--version")]
        .iter()
        .chain(tools)
    {
        if !Command::new(name)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            missing.push(*name);
        }
    }
    missing
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The agent's namespace, its veth pair and the REDIRECT rules; all removed on drop, also
/// when the test panics.
pub struct AgentNet {
    pub ns: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub agent_ip: Ipv4Addr,
    /// A second address of the agent's interface that no `sources:` entry maps.
    pub stranger_ip: Ipv4Addr,
    rules: Vec<Vec<String>>,
}

impl AgentNet {
    pub fn create() -> AgentNet {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (200 + (pid % 50) as u8, (n % 250) as u8 + 1);
        let net = AgentNet {
            ns: format!("ks-agent-{pid}-{n}"),
            host_if: format!("kst{}h{n}", pid % 100_000),
            host_ip: Ipv4Addr::new(10, a, b, 1),
            agent_ip: Ipv4Addr::new(10, a, b, 2),
            stranger_ip: Ipv4Addr::new(10, a, b, 3),
            rules: Vec::new(),
        };
        let agent_if = format!("kst{}a{n}", pid % 100_000);
        run("ip", &["netns", "add", &net.ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &agent_if,
            ],
        );
        run("ip", &["link", "set", &agent_if, "netns", &net.ns]);
        let host_cidr = format!("{}/24", net.host_ip);
        run("ip", &["addr", "add", &host_cidr, "dev", &net.host_if]);
        run("ip", &["link", "set", &net.host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &net.ns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        for ip in [net.agent_ip, net.stranger_ip] {
            in_ns(&["addr", "add", &format!("{ip}/24"), "dev", &agent_if]);
        }
        in_ns(&["link", "set", &agent_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        net
    }

    /// Redirects the agent's TCP to each of `ports` on the host-side address to `to`.
    pub fn redirect(&mut self, ports: &[u16], to: u16) {
        for port in ports {
            let rule: Vec<String> = [
                "PREROUTING",
                "-i",
                &self.host_if,
                "-p",
                "tcp",
                "-d",
                &self.host_ip.to_string(),
                "--dport",
                &port.to_string(),
                "-j",
                "REDIRECT",
                "--to-ports",
                &to.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = vec!["-w", "-t", "nat", "-A"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args);
            self.rules.push(rule);
        }
    }
}

impl Drop for AgentNet {
    fn drop(&mut self) {
        for rule in &self.rules {
            let mut args = vec!["-w", "-t", "nat", "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = Command::new("iptables").args(&args).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
