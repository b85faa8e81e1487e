//! `transparent:`: the listener that iptables/nftables REDIRECT sends agents' TCP to. Checks
//! its address (apart from the other listeners), that exactly one of `task` and `sources`
//! says which task a connection belongs to, that every named task exists, that every source
//! block parses, and that `ports` names at least one port. Nothing here touches a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::admin::overlap;
use super::top::check_socket_addr;
use super::Checker;
use crate::error::Sink;
use crate::model::{Admin, Metrics, PortMode, SourceNet, Task, Transparent, TransparentTasks};
use crate::raw::{RawPortMode, RawTransparent};
use crate::read::Located;

const EXAMPLE_LISTEN: &str = "0.0.0.0:15001";

/// The other listeners a transparent listener must not share a port with.
pub(super) struct Taken<'a> {
    pub listen: SocketAddr,
    pub admin: &'a Admin,
    pub metrics: Option<&'a Metrics>,
}

pub(super) fn check_transparent(
    raw: Option<&Located<RawTransparent>>,
    tasks: &BTreeMap<String, Task>,
    taken: Taken<'_>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<Transparent> {
    let raw = raw?;
    let r = &raw.value;
    let listen = match &r.listen {
        Some(listen) => {
            let addr = check_socket_addr(listen, EXAMPLE_LISTEN, None, sink, checker);
            if let Some(addr) = addr {
                check_apart(addr, listen, &taken, sink);
            }
            addr
        }
        None => {
            sink.missing(
                raw,
                "listen",
                format!("add e.g. `listen: {EXAMPLE_LISTEN}`: the port iptables REDIRECT sends the agents' TCP to"),
            );
            None
        }
    };
    let assigned = check_tasks(raw, tasks, sink);
    let ports = check_ports(raw, sink);
    Some(Transparent {
        listen: listen?,
        tasks: assigned?,
        ports: ports?,
    })
}

/// Two listeners on one port: the second cannot start.
fn check_apart(addr: SocketAddr, site: &Located<String>, taken: &Taken<'_>, sink: &mut Sink<'_>) {
    let others = [
        ("the proxy listens (listen)", Some(taken.listen)),
        ("the admin API listens (admin.listen)", taken.admin.listen),
        (
            "the metrics listener listens (metrics.listen)",
            taken.metrics.map(|m| m.listen),
        ),
    ];
    for (who, other) in others {
        if other.is_some_and(|other| overlap(addr, other)) {
            sink.at(
                site,
                format!("{addr} is also where {who}"),
                "give the transparent listener its own port",
            );
        }
    }
}

/// `task:` or `sources:`, exactly one of them, naming tasks that exist.
fn check_tasks(
    raw: &Located<RawTransparent>,
    tasks: &BTreeMap<String, Task>,
    sink: &mut Sink<'_>,
) -> Option<TransparentTasks> {
    let r = &raw.value;
    let known = |name: &Located<String>, sink: &mut Sink<'_>| -> bool {
        if tasks.contains_key(&name.value) {
            return true;
        }
        let defined: Vec<&str> = tasks.keys().map(String::as_str).collect();
        let fix = if defined.is_empty() {
            "define the task under tasks: (or in tasks_dir)".to_string()
        } else {
            format!(
                "name a task defined under tasks: or in tasks_dir ({})",
                defined.join(", ")
            )
        };
        sink.at(name, format!("task \"{}\" is not defined", name.value), fix);
        false
    };
    match (&r.task, &r.sources) {
        (Some(_), Some(sources)) => {
            sink.at(
                sources,
                "task and sources are both set",
                "keep task: when every redirected connection belongs to one task, or sources: to map source addresses to tasks, not both",
            );
            None
        }
        (None, None) => {
            sink.missing(
                raw,
                "task",
                "add `task: NAME` (every redirected connection belongs to that task), or `sources:` mapping source addresses/CIDRs to tasks",
            );
            None
        }
        (Some(task), None) => known(task, sink).then(|| TransparentTasks::One(task.value.clone())),
        (None, Some(sources)) => {
            if sources.value.0.is_empty() {
                sink.at(
                    sources,
                    "sources is empty, so every connection would be refused",
                    "map at least one source, e.g. \"10.213.0.2/32\": agent",
                );
                return None;
            }
            let mut ok = true;
            let mut seen = BTreeSet::new();
            let mut mapped = Vec::new();
            for (key, task) in &sources.value.0 {
                ok &= known(task, sink);
                match key.value.trim().parse::<SourceNet>() {
                    Ok(net) => {
                        if !seen.insert((net.addr, net.prefix)) {
                            sink.at(
                                key,
                                format!("{net} is listed twice"),
                                "keep one entry per source block",
                            );
                            ok = false;
                        }
                        mapped.push((net, task.value.clone()));
                    }
                    Err(e) => {
                        let fix = match &e {
                            crate::model::SourceNetError::HostBits(start) => {
                                format!("write \"{start}\", or a /32 for one address")
                            }
                            _ => "write an address or address/prefix, e.g. \"10.213.0.2/32\" or \"fd00:213::/64\"".to_string(),
                        };
                        sink.at(key, format!("\"{}\" {e}", key.value), fix);
                        ok = false;
                    }
                }
            }
            ok.then_some(TransparentTasks::BySource(mapped))
        }
    }
}

/// `ports:`: original destination port → `tls` or `http`, at least one.
fn check_ports(
    raw: &Located<RawTransparent>,
    sink: &mut Sink<'_>,
) -> Option<BTreeMap<u16, PortMode>> {
    let Some(ports) = &raw.value.ports else {
        sink.missing(
            raw,
            "ports",
            "add e.g. `ports: {443: tls, 80: http}`; connections to any other port are refused",
        );
        return None;
    };
    if ports.value.0.is_empty() {
        sink.at(
            ports,
            "ports is empty, so every connection would be refused",
            "add e.g. `443: tls` and `80: http`",
        );
        return None;
    }
    let mut ok = true;
    let mut modes = BTreeMap::new();
    for (key, mode) in &ports.value.0 {
        let port = match key.value.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                sink.at(
                    key,
                    format!("\"{}\" is not a port from 1 to 65535", key.value),
                    "write the original destination port, e.g. 443: tls",
                );
                ok = false;
                continue;
            }
        };
        let mode = match mode.value {
            RawPortMode::Tls => PortMode::Tls,
            RawPortMode::Http => PortMode::Http,
        };
        if modes.insert(port, mode).is_some() {
            sink.at(
                key,
                format!("port {port} is listed twice"),
                "keep one entry per port",
            );
            ok = false;
        }
    }
    ok.then_some(modes)
}
