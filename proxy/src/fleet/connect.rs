//! Connections to the store: a Redis client from `store.redis` (address, database, ACL
//! user, password from `password_env`, TLS with the system's roots or `ca_file`). The
//! password goes only into the client's handshake; nothing here formats it.

use keyswap_config::{RedisAddr, RedisStore};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use secrecy::ExposeSecret;

use super::FleetError;

/// A client for `store`; connecting is left to the caller (a multiplexed connection for
/// commands, a pub/sub connection for events).
pub fn client(store: &RedisStore) -> Result<redis::Client, FleetError> {
    let (addr, db) = match &store.addr {
        RedisAddr::Tcp { host, port, db } if store.tls => (
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            *db,
        ),
        RedisAddr::Tcp { host, port, db } => (ConnectionAddr::Tcp(host.clone(), *port), *db),
        RedisAddr::Unix { path, db } => (ConnectionAddr::Unix(path.clone()), *db),
    };
    let mut settings = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &store.user {
        settings = settings.set_username(user);
    }
    if let Some((_, password)) = &store.password {
        settings = settings.set_password(password.expose_secret());
    }
    if store.tls {
        // redis builds its rustls config from the process's default provider, which a build
        // with more than one provider compiled in does not choose by itself: keyswap's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = addr.into_connection_info()?.set_redis_settings(settings);
    match &store.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| FleetError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Ok(redis::Client::build_with_tls(info, certs)?)
        }
        None => Ok(redis::Client::open(info)?),
    }
}
