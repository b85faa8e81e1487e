//! One consistent view of the configuration and everything derived from it: the matchers
//! that find placeholders and real values, and the upstream clients. A reload builds a new
//! snapshot completely before swapping it in, so a bad config never replaces a good one and
//! no request ever sees half of each.

use std::sync::Arc;

use bytes::Bytes;
use keyswap_config::Config;
use secrecy::ExposeSecret;

use crate::error::ProxyError;
use crate::replace::Replacer;
use crate::upstream::UpstreamClients;

pub struct Snapshot {
    pub config: Config,
    /// Pattern `i` is the placeholder of `SecretId(i)`; its replacement the real value.
    pub placeholders: Replacer,
    /// Pattern `i` is the real value of `SecretId(i)`; its replacement the placeholder.
    pub scrubber: Arc<Replacer>,
    pub upstream: UpstreamClients,
}

impl Snapshot {
    /// The scrubber for one response: every real value, plus request-specific encoded forms
    /// (a swapped `Basic` credential's base64) mapped back to what the agent sent.
    pub fn scrubber_with(&self, extra: Vec<(Vec<u8>, Bytes)>) -> Result<Arc<Replacer>, ProxyError> {
        if extra.is_empty() {
            return Ok(self.scrubber.clone());
        }
        let mut pairs = scrub_pairs(&self.config);
        pairs.extend(extra);
        Replacer::new(pairs)
            .map(Arc::new)
            .map_err(|e| ProxyError::Matcher(e.to_string()))
    }

    pub fn build(
        config: Config,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Snapshot, ProxyError> {
        let matcher_error = |e: aho_corasick::BuildError| ProxyError::Matcher(e.to_string());
        let placeholders = Replacer::new(
            config
                .secrets
                .iter()
                .map(|s| {
                    (
                        s.placeholder.as_bytes().to_vec(),
                        Bytes::copy_from_slice(s.value.expose_secret().as_bytes()),
                    )
                })
                .collect(),
        )
        .map_err(matcher_error)?;
        let scrubber = Replacer::new(scrub_pairs(&config)).map_err(matcher_error)?;
        let upstream = UpstreamClients::build(&config, provider)?;
        Ok(Snapshot {
            config,
            placeholders,
            scrubber: Arc::new(scrubber),
            upstream,
        })
    }
}

/// Real value → placeholder, for every secret.
fn scrub_pairs(config: &Config) -> Vec<(Vec<u8>, Bytes)> {
    config
        .secrets
        .iter()
        .map(|s| {
            (
                s.value.expose_secret().as_bytes().to_vec(),
                Bytes::copy_from_slice(s.placeholder.as_bytes()),
            )
        })
        .collect()
}
