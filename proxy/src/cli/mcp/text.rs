//! The text `keyswap mcp`'s tools give the model, made from keyswap.internal's JSON: short,
//! one line per rule or refusal. Names, placeholders and patterns only.

use serde_json::{json, Value};

fn list(value: &Value, any: &str) -> String {
    match value.as_array() {
        Some(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", "),
        None => any.to_string(),
    }
}

fn rule_line(rule: &Value) -> String {
    let mut line = format!(
        "- {} {}://{}:{} {}",
        list(&rule["methods"], "any method"),
        rule["scheme"].as_str().unwrap_or("https"),
        rule["host"].as_str().unwrap_or_default(),
        rule["port"],
        list(&rule["paths"], "any path"),
    );
    let secrets: Vec<String> = rule["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let env = s["env"]
                .as_str()
                .map(|e| format!(" (${e})"))
                .unwrap_or_default();
            format!(
                "{} = {}{env}",
                s["name"].as_str().unwrap_or_default(),
                s["placeholder"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if !secrets.is_empty() {
        line.push_str(&format!("; secrets: {}", secrets.join(", ")));
    }
    if rule["tunnel"] == true {
        line.push_str("; tunnel (nothing swapped)");
    }
    if let Some(approve) = rule["approve"].as_str() {
        line.push_str(&format!("; a human approves {approve}"));
    }
    if rule["budget"].is_object() {
        line.push_str(&format!(
            "; budget {} left of {}",
            rule["budget"]["left"], rule["budget"]["requests"]
        ));
    }
    line
}

pub fn grants(view: &Value) -> String {
    let mut out = format!(
        "Task {} (policy {}). Requests no rule allows: {}.\nRules:\n",
        view["task"].as_str().unwrap_or_default(),
        view["policy"].as_str().unwrap_or("-"),
        view["on_unlisted"].as_str().unwrap_or("deny"),
    );
    for rule in view["rules"].as_array().into_iter().flatten() {
        out.push_str(&rule_line(rule));
        out.push('\n');
    }
    let grants = view["grants"].as_array().cloned().unwrap_or_default();
    if !grants.is_empty() {
        out.push_str("Granted by a human for this task's lifetime:\n");
        for rule in &grants {
            out.push_str(&rule_line(rule));
            out.push('\n');
        }
    }
    let bounds = view["requestable"].as_array().cloned().unwrap_or_default();
    if bounds.is_empty() {
        out.push_str("Nothing may be requested: ask the operator for anything else.\n");
    } else {
        out.push_str("May be requested with keyswap_request_access (a human approves):\n");
        for b in &bounds {
            out.push_str(&format!(
                "- {} https://{}:{} {}; secrets: {}\n",
                list(&b["methods"], "any method"),
                b["host"].as_str().unwrap_or_default(),
                b["port"],
                list(&b["paths"], "any path"),
                list(&b["secrets"], "none"),
            ));
        }
    }
    out
}

pub fn refusals(view: &Value) -> String {
    let items = view["refusals"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "No refusals recorded for this task.".to_string();
    }
    let mut out = String::new();
    for r in &items {
        out.push_str(&format!(
            "- {} {} {}:{}{} refused ({}): {}\n  To allow it: {}\n",
            r["ts"].as_str().unwrap_or_default(),
            r["method"].as_str().unwrap_or_default(),
            r["host"].as_str().unwrap_or_default(),
            r["port"],
            r["path"].as_str().unwrap_or_default(),
            r["reason"].as_str().unwrap_or_default(),
            r["explanation"].as_str().unwrap_or_default(),
            r["to_allow"].as_str().unwrap_or_default(),
        ));
        if r["request"].is_object() {
            out.push_str(&format!("  Request: {}\n", r["request"]));
        }
    }
    out
}

pub fn request(view: &Value) -> String {
    let status = view["status"].as_str().unwrap_or("error");
    let reason = view["reason"]
        .as_str()
        .or(view["message"].as_str())
        .unwrap_or("");
    match status {
        "approved" => format!(
            "Approved ({}): the access works from now on, for this task's lifetime.",
            view["id"].as_str().unwrap_or_default()
        ),
        "denied" if reason.is_empty() => "Denied by a human (no reason given).".to_string(),
        "denied" => format!("Denied by a human: {reason}"),
        "pending" => format!(
            "Still waiting for a human; ask again later with the same request, or poll https://keyswap.internal/v1/self/requests/{}.",
            view["id"].as_str().unwrap_or_default()
        ),
        "timed_out" => format!("Nobody answered in time: {reason}"),
        "refused" => format!("Refused at once: {reason}"),
        _ => error(view),
    }
}

pub fn error(view: &Value) -> String {
    format!(
        "keyswap.internal refused: {} ({})",
        view["message"].as_str().unwrap_or("no message"),
        view["error"].as_str().unwrap_or("error"),
    )
}

/// The task part of `/v1/self`: expiry and budgets.
pub fn task_json(view: &Value) -> Value {
    let budgets: Vec<Value> = view["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(view["grants"].as_array().into_iter().flatten())
        .filter(|r| r["budget"].is_object() || !r["rate"].is_null())
        .map(|r| json!({"host": r["host"], "paths": r["paths"], "budget": r["budget"], "rate": r["rate"]}))
        .collect();
    json!({
        "task": view["task"], "policy": view["policy"], "expires": view["expires"],
        "expires_in_secs": view["expires_in_secs"], "budgets": budgets,
    })
}

pub fn task(task: &Value) -> String {
    let mut out = format!(
        "Task {} (policy {}), {}.\n",
        task["task"].as_str().unwrap_or_default(),
        task["policy"].as_str().unwrap_or("-"),
        match task["expires"].as_str() {
            Some(at) => format!("expires {at} (in {}s)", task["expires_in_secs"]),
            None => "does not expire".to_string(),
        }
    );
    for b in task["budgets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "- {} {}: budget {}, rate {}\n",
            b["host"].as_str().unwrap_or_default(),
            list(&b["paths"], "any path"),
            if b["budget"].is_object() {
                format!(
                    "{} left of {}",
                    b["budget"]["left"], b["budget"]["requests"]
                )
            } else {
                "none".into()
            },
            b["rate"].as_str().unwrap_or("none"),
        ));
    }
    out
}
