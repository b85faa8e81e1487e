//! Leaf certificates for intercepted hosts: SAN = the host (DNS or IP), ServerAuth EKU,
//! authority key identifier, random serial, `not_before` backdated an hour for clock skew.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::error::CertError;

/// A positive random serial with 120 bits of randomness (RFC 5280 allows up to 20 bytes).
pub fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Whether `name` is acceptable in a certificate: an IP literal or DNS name characters.
pub fn valid_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
}

pub fn leaf_params(names: &[&str], validity: Duration) -> Result<CertificateParams, CertError> {
    let first = names
        .first()
        .ok_or_else(|| CertError::BadHost(String::new()))?;
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        if !valid_name(name) {
            return Err(CertError::BadHost(name.to_string()));
        }
        sans.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_ascii_lowercase()
                    .try_into()
                    .map_err(|_| CertError::BadHost(name.to_string()))?,
            ),
        });
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, *first);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    Ok(params)
}
