//! A task's proxy token as a needle: found in any bytes of a request (a header, a trailer,
//! the path, the query, a body frame) so that no upstream ever learns a proxy credential.
//!
//! One [`TokenFinder`] is built when the task is issued (a `memchr::memmem` searcher with its
//! SIMD prefilter, no automaton per request) and shared by every request of the task. It
//! holds a copy of the token, so it implements neither `Debug` nor `Display`: it never
//! formats the token.

use memchr::memmem::Finder;

/// Searches bytes for one task's token.
pub struct TokenFinder {
    finder: Finder<'static>,
}

impl TokenFinder {
    /// `None` for an empty token (which no request could be refused for).
    pub fn new(token: &[u8]) -> Option<TokenFinder> {
        (!token.is_empty()).then(|| TokenFinder {
            finder: Finder::new(token).into_owned(),
        })
    }

    /// Whether the token occurs in `haystack`.
    pub fn found_in(&self, haystack: &[u8]) -> bool {
        self.finder.find(haystack).is_some()
    }

    /// Length of the token.
    pub fn len(&self) -> usize {
        self.finder.needle().len()
    }

    /// Always false: an empty token has no finder.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The length of the longest tail of `buf` that is a proper prefix of the token: what a
    /// stream must hold back until the next bytes show whether the token is completed.
    pub fn held_tail(&self, buf: &[u8]) -> usize {
        let token = self.finder.needle();
        let start = buf.len().saturating_sub(token.len() - 1);
        (start..buf.len())
            .find(|&i| buf[i] == token[0] && token.starts_with(&buf[i..]))
            .map_or(0, |i| buf.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_holds_prefixes() {
        let f = TokenFinder::new(b"tok-abc").unwrap();
        assert!(f.found_in(b"x tok-abc y"));
        assert!(!f.found_in(b"tok-ab"));
        assert_eq!(f.held_tail(b"hello tok-a"), 5);
        assert_eq!(f.held_tail(b"hello t"), 1);
        assert_eq!(f.held_tail(b"hello"), 0);
        // A whole token is found, never held.
        assert_eq!(f.held_tail(b"tok-abc"), 0);
        assert_eq!(f.held_tail(b""), 0);
        assert!(TokenFinder::new(b"").is_none());
    }
}
