//! The local CA: ECDSA P-256, created on first run with its key written 0600 from the start
//! (no moment where it is readable by others), loaded afterwards and checked to match.
//!
//! The certificate is public and must be readable by an agent running as another user (a
//! sidecar's agent container, an agent account on a shared host): `ca.pem` is 0644 and the
//! directories keyswap creates for it are 0755, set explicitly so a restrictive umask cannot
//! hide them. Only the key is private.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::error::CertError;
use crate::leaf::{leaf_params, random_serial};

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca-key.pem";

pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    subject: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads `dir/ca.pem` + `dir/ca-key.pem`, or creates both when neither exists.
    pub fn load_or_create(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let ca = Self::generate("keyswap local CA")?;
                create_public_dirs(dir)?;
                write_new(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_new(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                tracing::info!(cert = %cert_path.display(), "created a new local CA");
                Ok(ca)
            }
            (true, false) => Err(CertError::File {
                path: key_path,
                problem: "missing while ca.pem exists".into(),
                fix: "restore the key, or remove ca.pem to create a new CA (agents must then trust the new one)",
            }),
            (false, true) => Err(CertError::File {
                path: cert_path,
                problem: "missing while ca-key.pem exists".into(),
                fix: "restore the certificate, or remove ca-key.pem to create a new CA",
            }),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        warn_about_modes(cert_path, key_path);
        let cert_pem = std::fs::read_to_string(cert_path)
            .map_err(|e| file_error(cert_path, e, "make it readable by keyswap"))?;
        let key_pem = std::fs::read_to_string(key_path)
            .map_err(|e| file_error(key_path, e, "make it readable by keyswap"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| CertError::File {
            path: key_path.to_path_buf(),
            problem: "not a PEM private key keyswap can use".into(),
            fix: "use a PKCS#8 ECDSA P-256 key, or remove both files to create a new CA",
        })?;
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| CertError::File {
                path: cert_path.to_path_buf(),
                problem: "no PEM certificate found".into(),
                fix: "restore ca.pem, or remove both files to create a new CA",
            })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|_| CertError::File {
            path: cert_path.to_path_buf(),
            problem: "not a CA certificate keyswap can parse".into(),
            fix: "restore ca.pem, or remove both files to create a new CA",
        })?;
        if !cert_contains_key(&cert_der, issuer.key().public_key_raw()) {
            return Err(CertError::File {
                path: key_path.to_path_buf(),
                problem: "does not match the certificate in ca.pem".into(),
                fix: "restore the matching pair, or remove both files to create a new CA",
            });
        }
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer,
            subject: "loaded CA".into(),
        })
    }

    /// An in-memory CA (tests, bench).
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "keyswap");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            subject: common_name.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A server certificate chain and a fresh key for `names`, signed by this CA.
    pub fn issue_server_cert(
        &self,
        names: &[&str],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = leaf_params(names, Duration::days(30))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

/// Whether the DER certificate carries this public key (a byte search on the SPKI's bit
/// string is exact enough: a 65-byte uncompressed P-256 point does not occur by chance).
fn cert_contains_key(cert: &[u8], public_key: &[u8]) -> bool {
    !public_key.is_empty() && cert.windows(public_key.len()).any(|w| w == public_key)
}

/// Creates `dir` and every missing parent as 0755. Directories that already exist keep
/// their mode: keyswap does not loosen what an operator set.
fn create_public_dirs(dir: &Path) -> Result<(), CertError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        let fix = "make the directory writable or choose another ca_dir";
        match std::fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {}
            // Created meanwhile by someone else: leave its mode alone.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(file_error(path, e, fix)),
        }
        // The umask may have taken bits away; the certificate's directory must be searchable.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| file_error(path, e, fix))?;
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_error(path, e, "make the CA directory writable"))?;
    // `mode` at creation is filtered by the umask; set it exactly (a 0600 key only ever
    // loses bits to the umask, so it is never readable by others in between).
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| file_error(path, e, "make the CA directory writable"))?;
    file.write_all(contents)
        .map_err(|e| file_error(path, e, "check the disk"))
}

/// Warns when an existing CA's files have modes that break agents (certificate or its
/// directory not readable by others) or expose the key (readable by group or others).
fn warn_about_modes(cert_path: &Path, key_path: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    if let Ok(m) = mode(key_path) {
        if m & 0o077 != 0 {
            tracing::warn!(
                key = %key_path.display(),
                mode = format!("{m:o}"),
                "the CA key is readable by other users; chmod 600 it"
            );
        }
    }
    if let Ok(m) = mode(cert_path) {
        if m & 0o004 == 0 {
            tracing::warn!(
                cert = %cert_path.display(),
                mode = format!("{m:o}"),
                "the CA certificate is not readable by other users, so an agent running as \
                 another user cannot trust keyswap; chmod 644 it"
            );
        }
    }
    if let Some(dir) = cert_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(m) = mode(dir) {
            if m & 0o005 != 0o005 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{m:o}"),
                    "the CA directory is not readable by other users, so an agent running as \
                     another user cannot read the certificate; chmod 755 it (the key stays 0600)"
                );
            }
        }
    }
}

fn file_error(path: &Path, e: std::io::Error, fix: &'static str) -> CertError {
    CertError::File {
        path: path.to_path_buf(),
        problem: e.to_string(),
        fix,
    }
}
