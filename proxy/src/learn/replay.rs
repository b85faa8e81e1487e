//! `keyswap learn --replay` (and `--merge`): decides each recorded request again under one
//! policy of a config, the way the proxy would — the rule (first match on scheme, host, port,
//! method and path), then every secret the request used or carried granted by it, in the
//! headers it was carried in — and lists what the policy would refuse, with the reason.

use keyswap_config::{first_rule_for_host, match_route, Config, RouteMatch, Rule, Scheme};

use crate::audit::decision::Reason;
use crate::learn::observed::Observed;

/// A recorded request the policy would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `METHOD scheme://host:port/path`, or `CONNECT host:port`.
    pub request: String,
    pub reason: Reason,
    /// What is missing, naming hosts, paths and secret names only.
    pub why: String,
}

/// Every record of `records` that policy `name` of `config` would refuse, in record order.
/// `Err` when the config has no such policy.
pub fn replay(config: &Config, name: &str, records: &[Observed]) -> Result<Vec<Refused>, String> {
    let policy = config
        .policy(name)
        .ok_or_else(|| format!("the config has no policy {name}"))?;
    Ok(records
        .iter()
        .filter_map(|record| judge(config, &policy.rules, record).err())
        .collect())
}

/// `Ok` when `rules` allow `record` as it was made.
pub fn judge(config: &Config, rules: &[Rule], record: &Observed) -> Result<(), Refused> {
    let scheme = match record.scheme.as_str() {
        "http" => Scheme::Http,
        _ => Scheme::Https,
    };
    if record.is_tunnel() {
        let request = format!("CONNECT {}:{}", record.host, record.port);
        return match first_rule_for_host(rules, Scheme::Https, &record.host, record.port) {
            Some(rule) if rule.tunnel => Ok(()),
            Some(_) => Err(refused(
                request,
                Reason::HostNotAllowed,
                "the run tunnelled this host; its rule here intercepts (add tunnel: true)",
            )),
            None => Err(refused(
                request,
                Reason::HostNotAllowed,
                "no rule names this host",
            )),
        };
    }
    let path = record.path.as_deref().unwrap_or("/");
    let request = format!(
        "{} {}://{}:{}{path}",
        record.method, record.scheme, record.host, record.port
    );
    let rule = match match_route(
        rules,
        scheme,
        &record.host,
        record.port,
        &record.method,
        path,
    ) {
        RouteMatch::Rule(rule) => rule,
        RouteMatch::HostNotAllowed => {
            return Err(refused(
                request,
                Reason::HostNotAllowed,
                "no rule names this host",
            ))
        }
        RouteMatch::RouteNotAllowed => {
            return Err(refused(
                request,
                Reason::RouteNotAllowed,
                "no rule allows this method and path",
            ))
        }
    };
    for secret in record.secret_names() {
        let Some(id) = config.secret_by_name(&secret) else {
            return Err(refused(
                request,
                Reason::PlaceholderNotAllowed,
                &format!("the config has no secret {secret}"),
            ));
        };
        if !rule.grants(id) {
            let why = format!("rule {} does not grant secret {secret}", rule.index);
            return Err(refused(request, Reason::PlaceholderNotAllowed, &why));
        }
        let carried = record.carried.iter().filter(|c| c.secret == secret);
        for header in carried.flat_map(|c| c.headers.iter()) {
            if rule.swap_in.headers && !rule.swaps_into_header(config.secret(id), header) {
                let why = format!(
                    "rule {} does not swap secret {secret} into header {header}",
                    rule.index
                );
                return Err(refused(request, Reason::PlaceholderNotAllowed, &why));
            }
        }
    }
    Ok(())
}

fn refused(request: String, reason: Reason, why: &str) -> Refused {
    Refused {
        request,
        reason,
        why: why.to_string(),
    }
}
