//! `store:`: the Redis server replicas share, its password (read here through
//! [`crate::secrets`], so no message can contain it), its key prefix and the grace period.

use std::path::PathBuf;

use super::{check_duration, Checker};
use crate::error::Sink;
use crate::read::Located;
use crate::secrets;
use crate::store::{
    parse_redis_url, RawRedis, RawStore, RedisAddr, RedisStore, Store, DEFAULT_STORE_GRACE,
    DEFAULT_STORE_PREFIX,
};

pub(super) fn check_store(
    raw: Option<&Located<RawStore>>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<Store> {
    let raw = raw?;
    let grace = match &raw.value.grace {
        None => Some(DEFAULT_STORE_GRACE),
        Some(text) => check_duration(text, sink).and_then(|d| {
            if d.is_zero() {
                sink.at(
                    text,
                    "a grace of 0 refuses every request at the first lost connection",
                    "write a duration such as 30s",
                );
                None
            } else {
                Some(d)
            }
        }),
    };
    let Some(redis) = &raw.value.redis else {
        sink.missing(
            raw,
            "redis",
            "add `redis: {url: redis://host:6379/0}`, or remove store: to keep everything in memory",
        );
        return None;
    };
    let redis = check_redis(redis, sink, checker);
    Some(Store {
        redis: redis?,
        grace: grace?,
    })
}

fn check_redis(
    raw: &Located<RawRedis>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<RedisStore> {
    let r = &raw.value;
    let parsed = match &r.url {
        None => {
            sink.missing(raw, "url", "add `url: redis://host:6379/0`");
            None
        }
        Some(url) => parse_redis_url(&url.value)
            .map_err(|(message, fix)| sink.at(url, message, fix))
            .ok(),
    };
    let password = r.password_env.as_ref().and_then(|name| {
        secrets::read_store_password(&name.value, checker.env)
            .map_err(|e| sink.at(name, e.message, e.fix))
            .ok()
            .map(|value| (name.value.clone(), value))
    });
    let prefix = match &r.prefix {
        None => DEFAULT_STORE_PREFIX.to_string(),
        Some(p) if p.value.is_empty() || p.value.chars().any(|c| c.is_control() || c == ' ') => {
            sink.at(
                p,
                "the prefix is empty or holds a space or control character",
                "write e.g. \"keyswap:\" or \"keyswap:prod:\"",
            );
            String::new()
        }
        Some(p) => p.value.clone(),
    };
    let (addr, user, scheme_tls) = parsed?;
    let tls = match (&r.tls, &addr) {
        (Some(tls), RedisAddr::Unix { .. }) if tls.value => {
            sink.at(
                tls,
                "TLS over a unix socket is not supported",
                "remove tls: or use a rediss:// URL",
            );
            return None;
        }
        (Some(tls), _) if !tls.value && scheme_tls => {
            sink.at(
                tls,
                "tls: false contradicts the rediss:// URL",
                "remove tls: or write redis://",
            );
            return None;
        }
        (Some(tls), _) => tls.value || scheme_tls,
        (None, _) => scheme_tls,
    };
    let ca_file = match &r.ca_file {
        Some(file) if !tls => {
            sink.at(
                file,
                "ca_file is used only with TLS",
                "add `tls: true` or remove ca_file",
            );
            None
        }
        Some(file) if !std::path::Path::new(&file.value).is_file() => {
            sink.at(
                file,
                format!("{} is not a readable file", file.value),
                "give the path of a PEM file of CA certificates",
            );
            None
        }
        Some(file) => Some(PathBuf::from(&file.value)),
        None => None,
    };
    if (r.password_env.is_some() && password.is_none()) || prefix.is_empty() {
        return None;
    }
    Some(RedisStore {
        addr,
        user,
        tls,
        ca_file,
        password,
        prefix,
    })
}
