//! A task this replica knows only by its token's SHA-256 digest: one issued on another
//! replica of a fleet, whose token never left that replica except toward its agent. The
//! store holds only the digest; this replica learns the token when the agent presents it
//! (and keeps it in memory only, to refuse requests that carry it, like any task's token).
//! Never formats a token or its digest.

use std::sync::OnceLock;

use subtle::ConstantTimeEq;

use crate::wire::token::TokenFinder;

/// SHA-256 of a task's token.
pub type Digest = [u8; 32];

/// The SHA-256 digest of `token`.
pub fn digest_of(token: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// A token known by its digest.
pub struct TokenDigest {
    digest: Digest,
    /// The token as a needle, once an agent presented it.
    learned: OnceLock<Option<TokenFinder>>,
}

impl TokenDigest {
    pub fn new(digest: Digest) -> TokenDigest {
        TokenDigest {
            digest,
            learned: OnceLock::new(),
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether `presented` hashes to the digest (compared in constant time). The first match
    /// keeps the token as a needle for [`TokenDigest::finder`].
    pub fn matches(&self, presented: &str) -> bool {
        let matched: bool = digest_of(presented.as_bytes()).ct_eq(&self.digest).into();
        if matched {
            self.learned
                .get_or_init(|| TokenFinder::new(presented.as_bytes()));
        }
        matched
    }

    /// The token as a needle, once an agent has presented it (every connection identifies
    /// before its first request, so its requests are searched).
    pub fn finder(&self) -> Option<&TokenFinder> {
        self.learned.get().and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_matches_only_its_token_and_then_finds_it() {
        let known = TokenDigest::new(digest_of(b"token-0123456789abcdef"));
        assert!(known.finder().is_none());
        assert!(!known.matches("token-0123456789abcde"));
        assert!(known.finder().is_none());
        assert!(known.matches("token-0123456789abcdef"));
        assert!(known
            .finder()
            .is_some_and(|f| f.found_in(b"?q=token-0123456789abcdef")));
    }
}
