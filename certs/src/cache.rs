//! Per-host TLS server configs for interception, minted once per host.
//!
//! Concurrent first connections to one host wait on the same `OnceCell`, so a burst mints
//! a single leaf. Entries are re-minted when their leaf has less than a day left. At most
//! [`MAX_CACHED_HOSTS`] hosts are kept (wildcard rules allow unbounded subdomains); when the
//! cache is full, half of it is dropped. All configs share one leaf key, one session cache
//! and one ticketer, so resumption works across hosts and a hit costs an `Arc` clone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};
use tokio::sync::OnceCell;

use crate::ca::CertificateAuthority;
use crate::error::CertError;
use crate::leaf::{leaf_params, valid_name};

/// Most hosts with a cached config.
pub const MAX_CACHED_HOSTS: usize = 10_000;
/// How long a minted leaf is valid.
const LEAF_VALIDITY: Duration = Duration::days(7);
/// Re-mint when less than this is left.
const REMINT_BEFORE: Duration = Duration::hours(24);

#[derive(Clone)]
struct Cached {
    config: Arc<ServerConfig>,
    not_after: OffsetDateTime,
}

type Slot = Arc<OnceCell<Cached>>;

pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    provider: Arc<CryptoProvider>,
    leaf_key: KeyPair,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    entries: DashMap<String, Slot>,
    minted: AtomicU64,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("hosts", &self.entries.len())
            .field("minted", &self.minted())
            .finish()
    }
}

impl LeafCache {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        Ok(LeafCache {
            ca,
            provider,
            leaf_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            sessions: ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            entries: DashMap::new(),
            minted: AtomicU64::new(0),
        })
    }

    /// The server config for intercepting `host`.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CertError> {
        if !valid_name(host) {
            return Err(CertError::BadHost(host.to_string()));
        }
        let key = host.to_ascii_lowercase();
        loop {
            let slot = self.slot(&key);
            let cached = slot.get_or_try_init(|| async { self.mint(&key) }).await?;
            if cached.not_after - OffsetDateTime::now_utc() > REMINT_BEFORE {
                return Ok(cached.config.clone());
            }
            // Expiring: replace this slot (only if nobody did already) and go again.
            self.entries
                .remove_if(&key, |_, current| Arc::ptr_eq(current, &slot));
        }
    }

    fn slot(&self, key: &str) -> Slot {
        if let Some(slot) = self.entries.get(key) {
            return slot.clone();
        }
        if self.entries.len() >= MAX_CACHED_HOSTS {
            self.evict_half();
        }
        self.entries
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone()
    }

    fn evict_half(&self) {
        let mut keep = true;
        self.entries.retain(|_, _| {
            keep = !keep;
            keep
        });
        tracing::info!(hosts = self.entries.len(), "leaf cache full: dropped half");
    }

    fn mint(&self, host: &str) -> Result<Cached, CertError> {
        let params = leaf_params(&[host], LEAF_VALIDITY)?;
        let not_after = params.not_after;
        let cert = params.signed_by(&self.leaf_key, self.ca.issuer())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        config.ticketer = self.ticketer.clone();
        config.send_tls13_tickets = 2;
        self.minted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(host, "minted a leaf certificate");
        Ok(Cached {
            config: Arc::new(config),
            not_after,
        })
    }

    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
