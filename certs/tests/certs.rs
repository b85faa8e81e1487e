//! The CA on disk, leaf validity as a real rustls client sees it, and single-flight minting.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use keyswap_certs::{CertificateAuthority, LeafCache};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[test]
fn ca_key_is_private_certificate_public_and_reloaded_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let created = CertificateAuthority::load_or_create(&ca_dir).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(ca_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca-key.pem"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
    assert_eq!(
        std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
        0o755,
        "an agent running as another user must reach ca.pem"
    );
    let loaded = CertificateAuthority::load_or_create(&ca_dir).unwrap();
    assert_eq!(created.cert_pem(), loaded.cert_pem());
    assert!(!format!("{loaded:?}").contains("PRIVATE"));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    CertificateAuthority::load_or_create(&a).unwrap();
    CertificateAuthority::load_or_create(&b).unwrap();
    std::fs::copy(b.join("ca-key.pem"), a.join("ca-key.pem")).unwrap();
    let err = CertificateAuthority::load_or_create(&a)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    std::fs::remove_file(b.join("ca-key.pem")).unwrap();
    let err = CertificateAuthority::load_or_create(&b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

/// A full TLS handshake between a client trusting only the CA and the cached config.
async fn handshake(
    ca: &CertificateAuthority,
    config: Arc<rustls::ServerConfig>,
    name: &str,
) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(server_io)
            .await
            .ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        Some(())
    });
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(server_name, client_io)
        .await
        .ok()?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(b"x").await.ok()?;
    server.await.ok()??;
    alpn
}

#[tokio::test]
async fn leaves_verify_for_names_and_ips_and_offer_h2() {
    let ca = Arc::new(CertificateAuthority::generate("test CA").unwrap());
    let cache = LeafCache::new(ca.clone(), provider()).unwrap();
    for host in ["api.example.test", "127.0.0.1", "::1"] {
        let config = cache.server_config(host).await.unwrap();
        let alpn = handshake(&ca, config, host).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{host}");
    }
    // A leaf for one host is not valid for another.
    let config = cache.server_config("api.example.test").await.unwrap();
    assert!(handshake(&ca, config, "other.example.test").await.is_none());
    assert_eq!(cache.minted(), 3);
    assert!(cache.server_config("bad host").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_a_host_mint_once() {
    let ca = Arc::new(CertificateAuthority::generate("test CA").unwrap());
    let cache = Arc::new(LeafCache::new(ca, provider()).unwrap());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.server_config("A.Example.Test").await.is_ok() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(cache.minted(), 1);
    cache.server_config("b.example.test").await.unwrap();
    assert_eq!(cache.minted(), 2);
    assert_eq!(cache.len(), 2);
}
