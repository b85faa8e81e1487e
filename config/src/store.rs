//! `store:`: where several keyswap replicas keep what they share (tasks, revocations), and
//! how long a replica keeps serving when it cannot reach it.
//!
//! The raw types mirror the file; [`Store`] is the validated model. The store's password
//! (`password_env`) lives only in a [`secrecy::SecretString`]; [`RedisStore`]'s `Debug`
//! names the variable, never the value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

use crate::read::Located;

/// `store.grace` when not set.
pub const DEFAULT_STORE_GRACE: Duration = Duration::from_secs(30);

/// `store.redis.prefix` when not set.
pub const DEFAULT_STORE_PREFIX: &str = "keyswap:";

/// `store:`: state shared by several keyswap replicas (without it, everything is in memory).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    /// A Redis (6 or later) or Valkey server the replicas share (required).
    pub redis: Option<Located<RawRedis>>,
    /// How long a replica that cannot reach the store keeps serving the tasks it knows
    /// (default 30s); it issues none meanwhile, and past it refuses every request until the
    /// store is back.
    pub grace: Option<Located<String>>,
}

/// `store.redis:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    /// redis://host:6379/0, rediss://host:6380/0 (TLS) or redis+unix:///path/to/redis.sock;
    /// no password in it (use password_env).
    pub url: Option<Located<String>>,
    /// Connect with TLS (default: true for rediss:// URLs, else false).
    pub tls: Option<Located<bool>>,
    /// A PEM file of CA certificates the store's TLS certificate is checked against, instead
    /// of the system's roots (only with TLS).
    pub ca_file: Option<Located<String>>,
    /// An environment variable holding the store's password (never logged).
    pub password_env: Option<Located<String>>,
    /// The prefix of every key keyswap writes (default "keyswap:"), so that several fleets
    /// can share one server.
    pub prefix: Option<Located<String>>,
}

/// `store:`, validated.
#[derive(Debug, Clone)]
pub struct Store {
    pub redis: RedisStore,
    /// How long a replica cut off from the store keeps serving the tasks it knows.
    pub grace: Duration,
}

/// How a Redis server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAddr {
    /// host, port and database number.
    Tcp { host: String, port: u16, db: i64 },
    /// A unix socket and database number.
    Unix { path: PathBuf, db: i64 },
}

/// `store.redis`, validated.
#[derive(Clone)]
pub struct RedisStore {
    pub addr: RedisAddr,
    /// The user named in the URL (Redis 6 ACL), if any.
    pub user: Option<String>,
    pub tls: bool,
    /// Roots for the server's certificate instead of the system's (only with `tls`).
    pub ca_file: Option<PathBuf>,
    /// The variable the password was read from, and the password.
    pub password: Option<(String, SecretString)>,
    pub prefix: String,
}

impl RedisStore {
    /// The store as `scheme://host:port/db`, for messages (never with a password).
    pub fn display(&self) -> String {
        match &self.addr {
            RedisAddr::Tcp { host, port, db } => {
                let scheme = if self.tls { "rediss" } else { "redis" };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("{scheme}://{host}:{port}/{db}")
            }
            RedisAddr::Unix { path, db } => format!("redis+unix://{}?db={db}", path.display()),
        }
    }
}

impl fmt::Debug for RedisStore {
    // The password is never formatted, even redacted: only its variable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("password_env", &self.password.as_ref().map(|(env, _)| env))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Parses a store URL: `redis://[user@]host[:port][/db]`, `rediss://...`,
/// `redis+unix:///path[?db=N]` or `unix:///path[?db=N]`. Returns the address, the user and
/// whether the scheme asks for TLS; a message and a fix otherwise.
pub(crate) fn parse_redis_url(
    url: &str,
) -> Result<(RedisAddr, Option<String>, bool), (String, String)> {
    let fix = "write redis://host:6379/0, rediss://host:6380/0 or redis+unix:///run/redis.sock";
    let bad = |message: String| (message, fix.to_string());
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad(format!("\"{url}\" is not a URL")))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis+unix" | "unix" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') {
                return Err(bad("a unix socket URL needs an absolute path".into()));
            }
            let db = match query.strip_prefix("db=") {
                Some(n) => n
                    .parse()
                    .map_err(|_| bad(format!("\"{n}\" is not a database number")))?,
                None if query.is_empty() => 0,
                None => return Err(bad(format!("unknown parameter \"{query}\" (only db=N)"))),
            };
            Ok((
                RedisAddr::Unix {
                    path: PathBuf::from(path),
                    db,
                },
                None,
                false,
            ))
        }
        scheme @ ("redis" | "rediss") => {
            let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
            let db = match db {
                "" => 0,
                n => n
                    .parse()
                    .map_err(|_| bad(format!("\"{n}\" is not a database number")))?,
            };
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((userinfo, _)) if userinfo.contains(':') => {
                    return Err((
                        "the URL holds a password".into(),
                        "remove it from the URL and name a variable holding it in password_env"
                            .into(),
                    ))
                }
                Some((user, hostport)) => {
                    (Some(user.to_string()).filter(|u| !u.is_empty()), hostport)
                }
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport)
                .ok_or_else(|| bad(format!("\"{hostport}\" is not host or host:port")))?;
            Ok((RedisAddr::Tcp { host, port, db }, user, scheme == "rediss"))
        }
        other => Err(bad(format!("\"{other}\" is not a Redis URL scheme"))),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (default port 6379).
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => 6379,
    };
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (addr, user, tls) = parse_redis_url("redis://cache.internal:6380/2").unwrap();
        assert_eq!(
            addr,
            RedisAddr::Tcp {
                host: "cache.internal".into(),
                port: 6380,
                db: 2
            }
        );
        assert_eq!((user, tls), (None, false));
        let (addr, user, tls) = parse_redis_url("rediss://keyswap@[::1]").unwrap();
        assert_eq!(
            addr,
            RedisAddr::Tcp {
                host: "::1".into(),
                port: 6379,
                db: 0
            }
        );
        assert_eq!((user.as_deref(), tls), (Some("keyswap"), true));
        let (addr, _, _) = parse_redis_url("redis+unix:///run/redis.sock?db=3").unwrap();
        assert_eq!(
            addr,
            RedisAddr::Unix {
                path: "/run/redis.sock".into(),
                db: 3
            }
        );
        assert!(parse_redis_url("redis://u:hunter2@host")
            .unwrap_err()
            .0
            .contains("password"));
        assert!(parse_redis_url("http://host").is_err());
        assert!(parse_redis_url("redis://host:0").is_err());
        assert!(parse_redis_url("redis+unix://relative.sock").is_err());
    }
}
