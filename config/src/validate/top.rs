//! The top level of the config and `upstream:`: version, listen address, paths and the
//! resolve table. Paths are checked as written (relative to the working directory); only
//! `extra_roots` must already exist. Nothing here touches a secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Checker, TOP};
use crate::de::Located;
use crate::error::{io_reason, Sink};
use crate::host;
use crate::model::{AuditLog, Upstream};
use crate::raw::{RawConfig, RawUpstream};

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

/// `ca_dir` and `audit_log` (`-` = stdout), with their defaults.
pub(super) fn check_paths(raw: &RawConfig, sink: &mut Sink<'_>) -> (PathBuf, AuditLog) {
    let ca_dir = non_empty_path(raw.ca_dir.as_ref(), DEFAULT_CA_DIR, sink);
    let audit_log = match raw.audit_log.as_ref() {
        Some(l) if l.value == "-" => AuditLog::Stdout,
        other => AuditLog::File(non_empty_path(other, DEFAULT_AUDIT_LOG, sink)),
    };
    (ca_dir, audit_log)
}

pub(super) fn check_upstream(raw: &Located<RawUpstream>, sink: &mut Sink<'_>) -> Upstream {
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
    Upstream {
        extra_roots,
        resolve,
        allow_private,
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
