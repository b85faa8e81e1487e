//! `admin:` and `metrics:`: where the admin API and the metrics listener listen, the admin
//! API's bearer token, and addresses that clash with the proxy's. The token is read and
//! compared only through [`crate::secrets`]; messages name its variable, never its value.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::top::{check_socket_addr, non_empty_path};
use super::Checker;
use crate::error::Sink;
use crate::model::{Admin, Metrics, Task, DEFAULT_ADMIN_SOCKET};
use crate::raw::{RawAdmin, RawConfig, RawMetrics};
use crate::read::Located;
use crate::secrets;

pub(super) fn check_admin(
    raw: Option<&Located<RawAdmin>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Admin {
    let Some(raw) = raw else {
        return Admin::default();
    };
    let r = &raw.value;
    let socket = non_empty_path(r.socket.as_ref(), DEFAULT_ADMIN_SOCKET, sink);
    // Sidecars reach the TCP listener from outside the pod's loopback on purpose; the
    // bearer token, not the address, is what guards it.
    let listen = r
        .listen
        .as_ref()
        .and_then(|l| check_socket_addr(l, "127.0.0.1:9090", None, sink, checker));
    let token = match (&r.listen, &r.token_env) {
        (Some(listen), None) => {
            sink.at(
                listen,
                "the admin API's TCP listener needs a bearer token, but token_env is not set",
                "add `token_env: KEYSWAP_ADMIN_TOKEN` (a variable holding a random token of at least 16 bytes), or remove listen to serve only the unix socket",
            );
            None
        }
        (None, Some(name)) => {
            checker.warn(
                sink.file,
                name.pos,
                &name.path,
                "unused: the token guards only the TCP listener, and admin.listen is not set",
            );
            None
        }
        (Some(_), Some(name)) => secrets::read_admin_token(&name.value, checker.env)
            .map_err(|e| sink.at(name, e.message, e.fix))
            .ok(),
        (None, None) => None,
    };
    Admin {
        socket,
        // The model promises a TCP listener only together with its token.
        listen: listen.filter(|_| token.is_some()),
        token_env: r.token_env.as_ref().map(|n| n.value.clone()),
        token,
    }
}

pub(super) fn check_metrics(
    raw: Option<&Located<RawMetrics>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<Metrics> {
    let raw = raw?;
    let Some(listen) = &raw.value.listen else {
        sink.missing(
            raw,
            "listen",
            "add e.g. `listen: 127.0.0.1:9464`, or remove metrics:",
        );
        return None;
    };
    let exposed = "other machines can read the metrics";
    let listen = check_socket_addr(listen, "127.0.0.1:9464", Some(exposed), sink, checker)?;
    Some(Metrics { listen })
}

/// Two listeners on one address: the second cannot start.
pub(super) fn check_listeners_apart(
    raw: &RawConfig,
    listen: SocketAddr,
    admin: &Admin,
    metrics: Option<&Metrics>,
    sink: &mut Sink<'_>,
) {
    let admin_site = raw.admin.as_ref().and_then(|a| a.value.listen.as_ref());
    if let (Some(addr), Some(site)) = (admin.listen, admin_site) {
        if overlap(addr, listen) {
            sink.at(
                site,
                format!("{addr} is also where the proxy listens (listen)"),
                "give the admin API its own port",
            );
        }
    }
    let metrics_site = raw.metrics.as_ref().and_then(|m| m.value.listen.as_ref());
    if let (Some(metrics), Some(site)) = (metrics, metrics_site) {
        let addr = metrics.listen;
        let taken = [
            ("the proxy listens (listen)", Some(listen)),
            ("the admin API listens (admin.listen)", admin.listen),
        ];
        for (who, other) in taken {
            if other.is_some_and(|other| overlap(addr, other)) {
                sink.at(
                    site,
                    format!("{addr} is also where {who}"),
                    "give the metrics listener its own port",
                );
            }
        }
    }
}

/// Whether two listeners would bind the same port (port 0 picks a free one each time).
pub(super) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An agent holds its task's token: if that also opened the admin API, a prompt-injected
/// agent could issue itself tasks from any policy.
pub(super) fn check_admin_token_apart(
    raw: &RawConfig,
    admin: &Admin,
    tasks: &BTreeMap<String, Task>,
    sink: &mut Sink<'_>,
) {
    let (Some(token), Some(site)) = (
        &admin.token,
        raw.admin.as_ref().and_then(|a| a.value.token_env.as_ref()),
    ) else {
        return;
    };
    for task in tasks.values() {
        if task
            .token
            .as_ref()
            .is_some_and(|t| secrets::same_token(t, token))
        {
            sink.at(
                site,
                format!("the admin token is the same as task {}'s token", task.id),
                "use a separate admin token: an agent holds its task's token and must not reach the admin API",
            );
        }
    }
}
