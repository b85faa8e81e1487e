//! The one-screen summary `keyswap check` prints of a valid config: listeners, files,
//! secrets by name, policies and tasks with their rules. Names only: never a secret value or
//! a token.

use std::path::Path;

use keyswap_config::{AuditLog, Config};

/// A one-screen summary: tasks, their hosts, and secrets by name.
pub fn summary(path: &Path, config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "listen      {}", config.listen);
    let _ = writeln!(out, "ca_dir      {}", config.ca_dir.display());
    let audit = match &config.audit_log {
        AuditLog::Stdout => "-".to_string(),
        AuditLog::File(p) => p.display().to_string(),
    };
    let _ = writeln!(out, "audit_log   {audit}");
    let names: Vec<&str> = config.secrets.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        out,
        "secrets     {}",
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    );
    let _ = writeln!(out, "admin       {}", config.admin.socket.display());
    if let Some(listen) = config.admin.listen {
        let _ = writeln!(out, "            {listen} (TCP, bearer token)");
    }
    if let Some(metrics) = &config.metrics {
        let _ = writeln!(out, "metrics     {}", metrics.listen);
    }
    let _ = writeln!(out, "policies    {}", config.policies.len());
    for policy in config.policies.values() {
        let _ = writeln!(
            out,
            "  {} (ttl {}, max {})",
            policy.name,
            humantime::format_duration(policy.ttl),
            humantime::format_duration(policy.max_ttl)
        );
        write_rules(&mut out, config, &policy.rules);
    }
    let _ = writeln!(out, "tasks       {}", config.tasks.len());
    for task in config.tasks.values() {
        let token = if task.token.is_some() {
            "token"
        } else {
            "no token"
        };
        let expires = task
            .expires
            .map(|t| format!(", expires {}", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default();
        let policy = task
            .policy
            .as_ref()
            .map(|p| format!(", policy {p}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {} ({token}{expires}{policy})", task.id);
        write_rules(&mut out, config, &task.rules);
    }
    out
}

fn write_rules(out: &mut String, config: &Config, rules: &[keyswap_config::Rule]) {
    use std::fmt::Write;
    {
        for rule in rules {
            let port = rule.port.map(|p| format!(":{p}")).unwrap_or_default();
            let mut what = Vec::new();
            if rule.tunnel {
                what.push("tunnel".to_string());
            }
            if let Some(methods) = &rule.methods {
                what.push(methods.join(","));
            }
            if let Some(paths) = &rule.paths {
                what.push(paths.to_string());
            }
            if !rule.secrets.is_empty() {
                let secrets: Vec<&str> = rule
                    .secrets
                    .iter()
                    .map(|id| config.secret(*id).name.as_str())
                    .collect();
                what.push(format!("secrets: {}", secrets.join(",")));
            }
            let _ = writeln!(
                out,
                "    [{}] {}{port} {}",
                rule.index,
                rule.host,
                what.join(" ")
            );
        }
    }
}
