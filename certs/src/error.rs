//! The certificate errors. Messages name files and say how to fix; none carries key bytes.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {problem}; {fix}", path = path.display())]
    File {
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS server configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot issue a certificate for {0:?}: not a DNS name or IP address")]
    BadHost(String),
    #[error("the random number generator failed")]
    Random,
}
