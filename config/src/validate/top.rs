//! The top level of the config and `upstream:`: version, listen address, paths and the
//! resolve table. Paths are checked as written (relative to the working directory); only
//! `extra_roots` must already exist; `allow_private: true` is warned about. Nothing here
//! touches a secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Checker, TOP};
use crate::error::{io_reason, Sink};
use crate::host;
use crate::model::{Audit, AuditKey, AuditLog, Upstream};
use crate::raw::{RawAudit, RawConfig, RawUpstream};
use crate::read::Located;
use crate::secrets;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
use crate::model::DEFAULT_CA_DIR;
const DEFAULT_AUDIT_LOG: &str = "./.keyswap/audit.jsonl";

pub(super) fn check_version(raw: &RawConfig, sink: &mut Sink<'_>) {
    match &raw.version {
        None => sink.error(
            TOP,
            "version",
            "version is required",
            "add `version: 1` at the top of the file",
        ),
        Some(v) if v.value != 1 => sink.at(
            v,
            format!("unsupported config version {}", v.value),
            "use version: 1",
        ),
        Some(_) => {}
    }
}

pub(super) fn check_listen(
    listen: Option<&Located<String>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> SocketAddr {
    listen
        .and_then(|listen| {
            check_socket_addr(
                listen,
                DEFAULT_LISTEN,
                Some("other machines can reach the proxy"),
                sink,
                checker,
            )
        })
        .unwrap_or_else(|| {
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address is valid")
        })
}

/// An `ip:port` field. When the address is not loopback and `exposed` says what that
/// exposes, a warning says so.
pub(super) fn check_socket_addr(
    value: &Located<String>,
    example: &str,
    exposed: Option<&str>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<SocketAddr> {
    match value.value.parse::<SocketAddr>() {
        Ok(addr) => {
            if let Some(exposed) = exposed.filter(|_| !addr.ip().is_loopback()) {
                checker.warn(
                    sink.file,
                    value.pos,
                    &value.path,
                    format!("{addr} is not a loopback address: {exposed}"),
                );
            }
            Some(addr)
        }
        Err(_) => {
            sink.at(
                value,
                format!("\"{}\" is not an IP address and port", value.value),
                format!("write ip:port, e.g. {example} (host names are not accepted)"),
            );
            None
        }
    }
}

pub(super) fn non_empty_path(
    value: Option<&Located<String>>,
    default: &str,
    sink: &mut Sink<'_>,
) -> PathBuf {
    match value {
        None => PathBuf::from(default),
        Some(v) if v.value.trim().is_empty() => {
            sink.at(
                v,
                "the path is empty",
                format!("write a path, or remove the field for {default}"),
            );
            PathBuf::from(default)
        }
        Some(v) => PathBuf::from(&v.value),
    }
}

/// `ca_dir`, `audit_log` (`-` = stdout) and `state_dir`, with their defaults. `state_dir`
/// defaults to `state` beside `ca_dir` (`./.keyswap/state`), so that a config that moves its
/// CA elsewhere moves keyswap's state with it.
pub(super) fn check_paths(raw: &RawConfig, sink: &mut Sink<'_>) -> (PathBuf, AuditLog, PathBuf) {
    let ca_dir = non_empty_path(raw.ca_dir.as_ref(), DEFAULT_CA_DIR, sink);
    let audit_log = match raw.audit_log.as_ref() {
        Some(l) if l.value == "-" => AuditLog::Stdout,
        other => AuditLog::File(non_empty_path(other, DEFAULT_AUDIT_LOG, sink)),
    };
    let beside_ca = ca_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("state"), |p| p.join("state"));
    let state_dir = match raw.state_dir.as_ref() {
        None => beside_ca,
        Some(v) => non_empty_path(Some(v), "state beside ca_dir", sink),
    };
    (ca_dir, audit_log, state_dir)
}

/// `audit:`. The key file is read here (and again by nothing else: a reload reads it anew
/// with the rest of the config); a key other users can read protects nothing, which is
/// worth a warning rather than an error (container secret mounts are often 0644).
pub(super) fn check_audit(
    raw: Option<&Located<RawAudit>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Audit {
    let Some(key_file) = raw.and_then(|r| r.value.key_file.as_ref()) else {
        return Audit::default();
    };
    if key_file.value.trim().is_empty() {
        sink.at(
            key_file,
            "the path is empty",
            "write the path of the key file, or remove key_file for an unkeyed chain",
        );
        return Audit::default();
    }
    let path = PathBuf::from(&key_file.value);
    match secrets::read_audit_key(&path) {
        Ok(value) => {
            warn_if_shared(&path, key_file, sink, checker);
            Audit {
                key: Some(AuditKey { path, value }),
            }
        }
        Err(e) => {
            sink.at(key_file, e.message, e.fix);
            Audit::default()
        }
    }
}

fn warn_if_shared(
    path: &std::path::Path,
    at: &Located<String>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        checker.warn(
            sink.file,
            at.pos,
            &at.path,
            format!(
                "{} has mode {mode:04o}: other users can read the audit key and recompute the chain; chmod 600 it",
                path.display()
            ),
        );
    }
}

pub(super) fn check_upstream(
    raw: &Located<RawUpstream>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Upstream {
    let raw = &raw.value;
    let extra_roots = raw.extra_roots.as_ref().map(|roots| {
        let path = PathBuf::from(&roots.value);
        let readable = std::fs::File::open(&path)
            .and_then(|f| f.metadata())
            .map(|m| m.is_file());
        match readable {
            Ok(true) => {}
            Ok(false) => sink.at(
                roots,
                format!("{} is not a file", path.display()),
                "point extra_roots at a PEM file of CA certificates",
            ),
            Err(e) => sink.at(
                roots,
                format!("{} cannot be read: {}", path.display(), io_reason(&e)),
                "check the path (relative to the working directory) and its permissions",
            ),
        }
        path
    });
    let mut resolve = HashMap::new();
    for (key, value) in raw
        .resolve
        .as_ref()
        .map(|r| r.value.0.as_slice())
        .unwrap_or_default()
    {
        let target = match parse_host_port(&key.value) {
            Ok(target) => Some(target),
            Err((message, fix)) => {
                sink.at(key, message, fix);
                None
            }
        };
        let addr = match value.value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                sink.at(
                    value,
                    format!("\"{}\" is not an IP address and port", value.value),
                    "write ip:port, e.g. \"127.0.0.1:9443\" or \"[::1]:9443\"",
                );
                None
            }
        };
        if let (Some(target), Some(addr)) = (target, addr) {
            if resolve.insert(target.clone(), addr).is_some() {
                sink.at(
                    key,
                    format!("{}:{} is listed twice", target.0, target.1),
                    "keep one entry per host and port",
                );
            }
        }
    }
    let allow_private = raw.allow_private.as_ref().is_some_and(|a| a.value);
    if let Some(flag) = raw.allow_private.as_ref().filter(|a| a.value) {
        // An allowed name can be made to resolve anywhere (DNS rebinding, a wildcard
        // record): with this on, every allowed host can lead to this machine or its network.
        checker.warn(
            sink.file,
            flag.pos,
            &flag.path,
            "any allowed host that resolves to a loopback, private or link-local address is dialled, \
             so an allowed name that points there reaches this machine and its network; \
             prefer upstream.resolve entries for the internal hosts you need",
        );
    }
    let proxy = raw
        .proxy
        .as_ref()
        .and_then(|p| super::proxy::check_parent_proxy(p, sink, checker));
    Upstream {
        extra_roots,
        resolve,
        allow_private,
        proxy,
    }
}

/// `host:port` of a resolve key; the host lowercased (IPv6 without brackets).
fn parse_host_port(key: &str) -> Result<(String, u16), (String, String)> {
    let fix = "write \"host:port\", e.g. \"api.example.test:443\"";
    let Some((host, port)) = key.rsplit_once(':') else {
        return Err((format!("\"{key}\" has no port"), fix.into()));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err((
                format!("\"{key}\" does not end in a port from 1 to 65535"),
                fix.into(),
            ))
        }
    };
    let bracketed = host.starts_with('[');
    let host = host::parse_exact(host).map_err(|e| (e.message, e.fix))?;
    if host.contains(':') && !bracketed {
        return Err((
            format!("\"{key}\" needs brackets around the IPv6 address"),
            "write \"[::1]:443\"".into(),
        ));
    }
    Ok((host, port))
}
