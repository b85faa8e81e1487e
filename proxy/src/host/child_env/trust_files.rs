//! The trust files a child process is pointed at, so that its runtimes accept keyswap's CA
//! ([`write_trust_files`]).
//!
//! # Trust files
//! - `keyswap-ca.pem`: keyswap's CA certificate alone (Node's `NODE_EXTRA_CA_CERTS` adds it to
//!   Node's built-in roots).
//! - `bundle.pem`: the platform's trusted roots plus keyswap's CA, for runtimes whose variable
//!   *replaces* their roots (OpenSSL, Python, curl, git, ...): hosts keyswap tunnels without
//!   intercepting still verify. If the platform roots cannot be read, the bundle holds keyswap's
//!   CA alone and [`TrustFiles::warnings`] says why.
//! - `java-truststore.p12`: the same certificates as a PKCS#12 trust store. Java's PKCS12
//!   key store loads a certificate as a `trustedCertEntry` only if its bag carries Oracle's
//!   trusted-key-usage attribute (OID 2.16.840.1.113894.746875.1.1); `p12-keystore` writes it on
//!   every certificate entry. The password ([`TRUST_STORE_PASSWORD`]) is fixed and public: the
//!   store holds only public certificates, and the JVM needs it to check the store's MAC.
//!
//! Every file is written to a temporary file in the same directory, made 0644 and renamed over
//! the old one, so a process starting concurrently reads either the old or the new file, never
//! half of one. Only `CERTIFICATE` blocks of the CA PEM are written: a PEM that also holds the
//! CA's private key never puts that key into a world-readable file.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
use rustls::pki_types::CertificateDer;

use crate::error::ProxyError;

/// Password of the Java trust store. Not a secret: the store holds only public certificates.
pub const TRUST_STORE_PASSWORD: &str = "keyswap-public";
pub const CA_FILE: &str = "keyswap-ca.pem";
pub const BUNDLE_FILE: &str = "bundle.pem";
pub const JAVA_TRUST_STORE_FILE: &str = "java-truststore.p12";

/// The files [`write_trust_files`] wrote.
#[derive(Clone, Debug)]
pub struct TrustFiles {
    pub ca_pem: PathBuf,
    pub bundle_pem: PathBuf,
    pub java_truststore: PathBuf,
    pub java_truststore_password: String,
    /// Problems that left the bundle and trust store with fewer platform roots (each also
    /// logged). Empty when all platform roots were read.
    pub warnings: Vec<String>,
}

/// Writes `keyswap-ca.pem`, `bundle.pem` and `java-truststore.p12` into `dir` (created if
/// missing). `keyswap_ca_pem` must hold at least one `CERTIFICATE` block; anything else in it
/// is ignored.
pub fn write_trust_files(dir: &Path, keyswap_ca_pem: &str) -> Result<TrustFiles, ProxyError> {
    write_trust_files_with(dir, keyswap_ca_pem, platform_roots())
}

/// The platform's trusted roots, or what kept them from being read.
struct PlatformRoots {
    certs: Vec<CertificateDer<'static>>,
    problems: Vec<String>,
}

fn platform_roots() -> PlatformRoots {
    let found = rustls_native_certs::load_native_certs();
    let mut problems: Vec<String> = found
        .errors
        .iter()
        .map(|e| format!("reading the platform's trusted roots: {e}"))
        .collect();
    if found.certs.is_empty() && problems.is_empty() {
        problems.push("the platform has no trusted root certificates".to_string());
    }
    PlatformRoots {
        certs: found.certs,
        problems,
    }
}

fn write_trust_files_with(
    dir: &Path,
    keyswap_ca_pem: &str,
    roots: PlatformRoots,
) -> Result<TrustFiles, ProxyError> {
    let ca = ca_certificates(keyswap_ca_pem)?;
    let mut warnings = roots.problems;
    if roots.certs.is_empty() {
        warnings.push(format!(
            "{BUNDLE_FILE} and {JAVA_TRUST_STORE_FILE} hold keyswap's CA only: \
             hosts keyswap does not intercept will fail TLS verification in the child"
        ));
    }
    // The platform store can already hold keyswap's CA (or the bundle of an earlier run when
    // SSL_CERT_FILE points at one); each certificate is written once.
    let mut platform: Vec<CertificateDer<'static>> = Vec::new();
    for cert in roots.certs {
        if !ca.contains(&cert) && !platform.contains(&cert) {
            platform.push(cert);
        }
    }

    std::fs::create_dir_all(dir).map_err(|source| ProxyError::Io {
        what: format!("creating trust directory {}", dir.display()),
        source,
    })?;
    let ca_pem: String = ca.iter().map(|c| pem_certificate(c)).collect();
    let mut bundle = String::new();
    for cert in &platform {
        bundle.push_str(&pem_certificate(cert));
    }
    bundle.push_str(&ca_pem);
    let (store, skipped) = java_trust_store(&ca, &platform)?;
    warnings.extend(skipped);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }

    let files = TrustFiles {
        ca_pem: dir.join(CA_FILE),
        bundle_pem: dir.join(BUNDLE_FILE),
        java_truststore: dir.join(JAVA_TRUST_STORE_FILE),
        java_truststore_password: TRUST_STORE_PASSWORD.to_string(),
        warnings,
    };
    write_atomically(&files.ca_pem, ca_pem.as_bytes())?;
    write_atomically(&files.bundle_pem, bundle.as_bytes())?;
    write_atomically(&files.java_truststore, &store)?;
    Ok(files)
}

/// The `CERTIFICATE` blocks of `pem`; an error if there are none or one is malformed.
fn ca_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProxyError::TrustFiles(format!("keyswap's CA PEM is malformed: {e}")))?;
    if certs.is_empty() {
        return Err(ProxyError::TrustFiles(
            "keyswap's CA PEM holds no CERTIFICATE block".to_string(),
        ));
    }
    Ok(certs)
}

fn pem_certificate(der: &CertificateDer<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::with_capacity(encoded.len() + encoded.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A PKCS#12 store with every certificate as a trusted-certificate entry; platform roots that
/// cannot be parsed are left out and named in the returned warnings.
fn java_trust_store(
    ca: &[CertificateDer<'static>],
    platform: &[CertificateDer<'static>],
) -> Result<(Vec<u8>, Vec<String>), ProxyError> {
    let mut store = KeyStore::new();
    for (i, cert) in ca.iter().enumerate() {
        let entry = Certificate::from_der(cert).map_err(|e| {
            ProxyError::TrustFiles(format!("keyswap's CA certificate cannot be parsed: {e}"))
        })?;
        let alias = match i {
            0 => "keyswap-ca".to_string(),
            _ => format!("keyswap-ca-{}", i + 1),
        };
        store.add_entry(&alias, KeyStoreEntry::Certificate(entry));
    }
    let mut skipped = Vec::new();
    for (i, cert) in platform.iter().enumerate() {
        match Certificate::from_der(cert) {
            Ok(entry) => {
                store.add_entry(
                    &format!("platform-root-{:03}", i + 1),
                    KeyStoreEntry::Certificate(entry),
                );
            }
            Err(e) => skipped.push(format!(
                "platform root #{} left out of {JAVA_TRUST_STORE_FILE}: {e}",
                i + 1
            )),
        }
    }
    let bytes = store
        .writer(TRUST_STORE_PASSWORD)
        .write()
        .map_err(|e| ProxyError::TrustFiles(format!("encoding the Java trust store: {e}")))?;
    Ok((bytes, skipped))
}

/// Writes `path` through a temporary file in the same directory and a rename, so a reader sees
/// the old or the new contents, never a mix. The file ends up 0644: the child may run as
/// another user, and nothing in it is secret.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), ProxyError> {
    let io = |source| ProxyError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".keyswap-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ca_pem() -> String {
        keyswap_certs::CertificateAuthority::generate("keyswap child-env test CA")
            .expect("CA")
            .cert_pem()
            .to_string()
    }

    #[test]
    fn files_are_written_world_readable_with_the_ca_in_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust_dir = dir.path().join("new/trust");
        let pem = test_ca_pem();
        let files = write_trust_files(&trust_dir, &pem).expect("trust files");
        let ca = std::fs::read_to_string(&files.ca_pem).expect("ca");
        assert_eq!(
            ca_certificates(&ca).expect("pem"),
            ca_certificates(&pem).expect("pem")
        );
        let bundle = std::fs::read_to_string(&files.bundle_pem).expect("bundle");
        assert!(bundle.ends_with(&ca), "keyswap CA missing from the bundle");
        let store = std::fs::read(&files.java_truststore).expect("store");
        let read = KeyStore::from_pkcs12(
            &store,
            TRUST_STORE_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .expect("store reads back");
        assert!(matches!(
            read.entry("keyswap-ca"),
            Some(KeyStoreEntry::Certificate(_))
        ));
        assert_eq!(
            read.entries_len(),
            ca_certificates(&bundle).expect("pem").len()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in [&files.ca_pem, &files.bundle_pem, &files.java_truststore] {
                let mode = std::fs::metadata(path).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o644, "{}", path.display());
            }
        }
        // Only the three files: no temporary file is left behind.
        assert_eq!(std::fs::read_dir(&trust_dir).expect("dir").count(), 3);
        // Rewriting replaces the files in place.
        write_trust_files(&trust_dir, &pem).expect("rewrite");
        assert_eq!(std::fs::read_dir(&trust_dir).expect("dir").count(), 3);
    }

    #[test]
    fn unreadable_platform_roots_leave_the_ca_alone_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = test_ca_pem();
        let files = write_trust_files_with(
            dir.path(),
            &pem,
            PlatformRoots {
                certs: Vec::new(),
                problems: vec!["no store".to_string()],
            },
        )
        .expect("trust files");
        let bundle = std::fs::read_to_string(&files.bundle_pem).expect("bundle");
        assert_eq!(ca_certificates(&bundle).expect("pem").len(), 1);
        assert!(files
            .warnings
            .iter()
            .any(|w| w.contains("keyswap's CA only")));
        assert!(files.warnings.iter().any(|w| w == "no store"));
    }

    #[test]
    fn platform_copy_of_the_ca_is_written_once_and_keys_are_never_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = keyswap_certs::CertificateAuthority::generate("dup").expect("CA");
        let other = keyswap_certs::CertificateAuthority::generate("other").expect("CA");
        let pem_with_key = format!(
            "{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ca.cert_pem()
        );
        let files = write_trust_files_with(
            dir.path(),
            &pem_with_key,
            PlatformRoots {
                certs: vec![ca.cert_der().clone(), other.cert_der().clone()],
                problems: Vec::new(),
            },
        )
        .expect("trust files");
        assert!(files.warnings.is_empty());
        let bundle = std::fs::read_to_string(&files.bundle_pem).expect("bundle");
        assert_eq!(ca_certificates(&bundle).expect("pem").len(), 2);
        for path in [&files.ca_pem, &files.bundle_pem] {
            let text = std::fs::read_to_string(path).expect("read");
            assert!(!text.contains("PRIVATE KEY"), "{}", path.display());
        }
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_trust_files(dir.path(), "not a pem").expect_err("refused");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }
}
