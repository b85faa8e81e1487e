//! keyswap's error type. Each variant says where the problem came from: the agent
//! (downstream), the upstream, or keyswap itself (internal). No variant carries a secret value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Internal: the config could not be loaded or validated.
    #[error("{0}")]
    Config(#[from] keyswap_config::ConfigErrors),
    /// Internal: the local CA or a leaf certificate.
    #[error(transparent)]
    Certs(#[from] keyswap_certs::CertError),
    /// Internal: `upstream.extra_roots` could not be used.
    #[error("{path}: upstream.extra_roots: {problem}; point it at a PEM file of CA certificates", path = path.display())]
    ExtraRoots { path: PathBuf, problem: String },
    /// Internal: building a TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Internal: a listener or file.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Internal: the CA files and trust store for a child process (`keyswap exec`).
    #[error("trust files for the child process: {0}")]
    TrustFiles(String),
    /// Internal: the secret matchers could not be built.
    #[error("could not build the placeholder matcher: {0}")]
    Matcher(String),
}

/// Displays an error with its sources, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
