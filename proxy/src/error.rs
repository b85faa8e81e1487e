//! keyswap's error type, and where an error came from ([`Origin`]: the agent, the upstream,
//! or keyswap itself). No variant carries a secret value.

use std::path::PathBuf;

/// Where an error came from: what a log line or a refusal blames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The agent (downstream): what it sent, or how it handshook.
    Agent,
    /// An upstream server, or the path to it.
    Upstream,
    /// keyswap itself: its config, its files, its CA.
    Internal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Agent => "agent",
            Origin::Upstream => "upstream",
            Origin::Internal => "internal",
        }
    }
}

/// keyswap's own set-up failing: its config, files, certificates, listeners (all of
/// [`Origin::Internal`]). Errors of one request are refusals with a
/// [`crate::audit::decision::Reason`], whose `origin` says whose fault they were.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The config could not be loaded or validated.
    #[error("{0}")]
    Config(#[from] keyswap_config::ConfigErrors),
    /// The local CA or a leaf certificate.
    #[error(transparent)]
    Certs(#[from] keyswap_certs::CertError),
    /// `upstream.extra_roots` could not be used.
    #[error("{path}: upstream.extra_roots: {problem}; point it at a PEM file of CA certificates", path = path.display())]
    ExtraRoots { path: PathBuf, problem: String },
    /// Building the TLS configuration of the upstream leg.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A listener or file.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The CA files and trust store for a child process (`keyswap exec`).
    #[error("trust files for the child process: {0}")]
    TrustFiles(String),
    /// The secret matchers could not be built.
    #[error("could not build the placeholder matcher: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
    /// The shared store of `store:` could not be set up (its address, never its password).
    #[error("store: {0}")]
    Fleet(String),
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
