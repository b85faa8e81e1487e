//! Streaming find-and-replace over a body, used both to scrub real secret values out of
//! responses and to swap placeholders into request bodies where a rule opts in.
//!
//! A value may be split across two (or more) frames, so the last `longest - 1` bytes of
//! what has been seen are held back until the next frame shows whether they start a match.
//! Memory is bounded by the frame size plus that tail, whatever the body's length.
//!
//! This module never formats its patterns or replacements: [`Replacer`]'s `Debug` prints
//! only how many it holds.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

mod headers;

/// A fixed set of byte patterns and the replacement for each.
pub struct Replacer {
    automaton: Option<AhoCorasick>,
    replacements: Vec<Bytes>,
    /// Every pattern, sorted: the patterns a tail of a frame could begin form one contiguous
    /// run, found by binary search.
    sorted: Vec<Vec<u8>>,
    /// Which bytes begin some pattern.
    starts: [bool; 256],
    longest: usize,
}

impl std::fmt::Debug for Replacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacer")
            .field("patterns", &self.replacements.len())
            .finish()
    }
}

impl Replacer {
    /// `pairs` are (pattern, replacement), matched exactly; pattern ids are the positions in
    /// `pairs`. Empty patterns are ignored.
    pub fn new(pairs: Vec<(Vec<u8>, Bytes)>) -> Result<Self, aho_corasick::BuildError> {
        let pairs: Vec<_> = pairs.into_iter().filter(|(p, _)| !p.is_empty()).collect();
        let longest = pairs.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let automaton = if pairs.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(pairs.iter().map(|(p, _)| p.as_slice()))?,
            )
        };
        let mut starts = [false; 256];
        let mut sorted = Vec::with_capacity(pairs.len());
        for (pattern, _) in &pairs {
            starts[usize::from(pattern[0])] = true;
            sorted.push(pattern.clone());
        }
        sorted.sort_unstable();
        sorted.dedup();
        let replacements = pairs.into_iter().map(|(_, r)| r).collect();
        Ok(Replacer {
            automaton,
            replacements,
            sorted,
            starts,
            longest,
        })
    }

    /// Like [`Replacer::new`], plus every pattern in all-lower and all-upper ASCII case (a
    /// value an upstream lowercased — an HTTP/2 header name, a normalised identifier — still
    /// matches), each replaced by its replacement in the same case. Patterns are kept once,
    /// the first one winning, so a form listed in both hex cases keeps its own replacement.
    ///
    /// Case variants rather than case-insensitive matching: exact patterns keep
    /// aho-corasick's vectorised prefilter, about ten times faster on a body with no match.
    pub fn with_case_variants(
        pairs: Vec<(Vec<u8>, Bytes)>,
    ) -> Result<Self, aho_corasick::BuildError> {
        let lower = pairs
            .iter()
            .map(|(p, r)| (p.to_ascii_lowercase(), Bytes::from(r.to_ascii_lowercase())));
        let upper = pairs
            .iter()
            .map(|(p, r)| (p.to_ascii_uppercase(), Bytes::from(r.to_ascii_uppercase())));
        let all: Vec<_> = pairs.iter().cloned().chain(lower).chain(upper).collect();
        let mut seen = std::collections::HashSet::new();
        let unique = all
            .into_iter()
            .filter(|(p, _)| seen.insert(p.clone()))
            .collect();
        Replacer::new(unique)
    }

    /// What replaces match `m`.
    fn replacement(&self, m: &aho_corasick::Match) -> &[u8] {
        &self.replacements[m.pattern().as_usize()]
    }

    /// How many patterns the automaton holds.
    pub fn pattern_count(&self) -> usize {
        self.replacements.len()
    }

    /// Heap bytes used by the automaton (and its prefilter).
    pub fn memory_usage(&self) -> usize {
        self.automaton.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// Length of the longest pattern (0 when there is none).
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Indexes of the patterns that occur in `haystack`.
    pub fn find_ids<'h>(&'h self, haystack: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
        self.automaton
            .iter()
            .flat_map(move |ac| ac.find_iter(haystack))
            .map(|m| m.pattern().as_usize())
    }

    /// Every match in `haystack` (leftmost-longest, non-overlapping): where it is and what
    /// replaces it. For callers that label patterns through their replacement (the plaintext
    /// scan) rather than rewrite the haystack.
    pub fn find_spans<'h>(
        &'h self,
        haystack: &'h [u8],
    ) -> impl Iterator<Item = (std::ops::Range<usize>, &'h [u8])> + 'h {
        self.automaton
            .iter()
            .flat_map(move |ac| ac.find_iter(haystack))
            .map(|m| (m.range(), self.replacement(&m)))
    }

    pub fn contains_any(&self, haystack: &[u8]) -> bool {
        self.automaton
            .as_ref()
            .is_some_and(|ac| ac.is_match(haystack))
    }

    /// Replaces every match in `haystack`, or returns `None` when there is none.
    pub fn replace_all(&self, haystack: &[u8]) -> Option<Vec<u8>> {
        let ac = self.automaton.as_ref()?;
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        for m in ac.find_iter(haystack) {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(haystack.len()));
            buf.extend_from_slice(&haystack[pos..m.start()]);
            buf.extend_from_slice(self.replacement(&m));
            pos = m.end();
        }
        let mut buf = out?;
        buf.extend_from_slice(&haystack[pos..]);
        Some(buf)
    }

    /// Walks `haystack` as alternating plain runs and replacements.
    pub fn for_each_segment(&self, haystack: &[u8], mut f: impl FnMut(Segment<'_>)) {
        let mut pos = 0;
        if let Some(ac) = self.automaton.as_ref() {
            for m in ac.find_iter(haystack) {
                f(Segment::Plain(&haystack[pos..m.start()]));
                f(Segment::Replacement(self.replacement(&m)));
                pos = m.end();
            }
        }
        f(Segment::Plain(&haystack[pos..]));
    }

    /// Every match in `haystack` (leftmost-longest, not overlapping): pattern index and
    /// byte range. For callers that decide per match (the request body scan in
    /// the proxy's `swap`).
    pub fn matches<'h>(
        &'h self,
        haystack: &'h [u8],
    ) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + 'h {
        self.automaton
            .iter()
            .flat_map(move |ac| ac.find_iter(haystack))
            .map(|m| (m.pattern().as_usize(), m.range()))
    }

    /// The replacement of pattern `id`.
    pub fn replacement_of(&self, id: usize) -> &[u8] {
        &self.replacements[id]
    }

    /// Where the tail of `buf` that could still become a match begins: the first position
    /// from which the rest of `buf` is a proper prefix of some pattern (`buf.len()` if none).
    /// Only that tail is held back, so small frames (SSE events, WebSocket messages) flow on
    /// at once unless they end in the first bytes of a secret.
    pub fn hold_from(&self, buf: &[u8]) -> usize {
        let start = buf.len().saturating_sub(self.longest.saturating_sub(1));
        (start..buf.len())
            .find(|&i| self.starts[usize::from(buf[i])] && self.begins_longer_pattern(&buf[i..]))
            .unwrap_or(buf.len())
    }

    /// Whether `tail` is a proper prefix of some pattern. The patterns that start with
    /// `tail` sort together, right after where `tail` itself would sort; at most one of them
    /// (an equal pattern) is not longer than `tail`.
    fn begins_longer_pattern(&self, tail: &[u8]) -> bool {
        let first = self.sorted.partition_point(|p| p.as_slice() < tail);
        self.sorted[first..]
            .iter()
            .take(2)
            .any(|p| p.len() > tail.len() && p.starts_with(tail))
    }

    /// Feeds one frame of data. Returns what may be emitted now; keeps in `carry` what
    /// could be the start of a match completed by a later frame.
    fn feed(&self, carry: &mut BytesMut, data: Bytes) -> Bytes {
        let Some(ac) = self.automaton.as_ref() else {
            return data;
        };
        if carry.is_empty() && !ac.is_match(data.as_ref()) {
            // Fast path: no match in this frame; hold back only a possible start of one.
            let split = self.hold_from(&data);
            carry.extend_from_slice(&data[split..]);
            return data.slice(..split);
        }
        carry.extend_from_slice(&data);
        let buf = carry.split().freeze();
        let hold_from = self.hold_from(&buf);
        let mut out = BytesMut::with_capacity(buf.len());
        let mut pos = 0;
        for m in ac.find_iter(buf.as_ref()) {
            // A match starting before `hold_from` is complete and is the longest possible
            // at its start: no pattern longer than the rest of `buf` begins there.
            if m.start() >= hold_from {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(self.replacement(&m));
            pos = m.end();
        }
        let emit_to = hold_from.max(pos);
        out.extend_from_slice(&buf[pos..emit_to]);
        carry.extend_from_slice(&buf[emit_to..]);
        out.freeze()
    }

    /// For bytes that must pass unchanged (a compressed download whose decoded copy is
    /// scanned, see `crate::decode`): returns the bytes that are safe to pass on, holding back
    /// a tail that could start a match, or `None` as soon as any pattern is complete in what
    /// has been seen.
    pub fn guard(&self, carry: &mut BytesMut, data: &[u8]) -> Option<Bytes> {
        let Some(ac) = self.automaton.as_ref() else {
            return Some(Bytes::copy_from_slice(data));
        };
        carry.extend_from_slice(data);
        if ac.is_match(carry.as_ref()) {
            return None;
        }
        let emit = self.hold_from(carry);
        Some(carry.split_to(emit).freeze())
    }

    /// Replaces every match in what is left at the end of the body.
    fn finish(&self, carry: &mut BytesMut) -> Bytes {
        let rest = carry.split();
        match self.replace_all(&rest) {
            Some(replaced) => Bytes::from(replaced),
            None => rest.freeze(),
        }
    }
}

/// One piece of a haystack walked by [`Replacer::for_each_segment`].
pub enum Segment<'a> {
    Plain(&'a [u8]),
    Replacement(&'a [u8]),
}

/// A body whose data passes through a [`Replacer`]; trailers are replaced too.
pub struct ReplacingBody<B> {
    inner: B,
    replacer: Arc<Replacer>,
    carry: BytesMut,
    pending_trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> ReplacingBody<B> {
    pub fn new(inner: B, replacer: Arc<Replacer>) -> Self {
        ReplacingBody {
            inner,
            replacer,
            carry: BytesMut::new(),
            pending_trailers: None,
            done: false,
        }
    }
}

impl<B> Body for ReplacingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                if !this.carry.is_empty() {
                    let tail = this.replacer.finish(&mut this.carry);
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                return Poll::Ready(this.pending_trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.replacer.feed(&mut this.carry, data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            this.replacer.replace_in_headers(&mut trailers);
                            this.pending_trailers = Some(trailers);
                        }
                        this.done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() && self.pending_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Replacements may change the length.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn replacer() -> Arc<Replacer> {
        Arc::new(
            Replacer::new(vec![
                (b"SECRETVALUE".to_vec(), Bytes::from_static(b"<ph-a>")),
                (b"SECRET".to_vec(), Bytes::from_static(b"<ph-b>")),
                (b"other-value".to_vec(), Bytes::from_static(b"<ph-c>")),
            ])
            .unwrap(),
        )
    }

    /// A body that yields the given frames one per poll.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    async fn run(chunks: Vec<&'static [u8]>) -> Vec<u8> {
        let frames = Frames(chunks.into_iter().map(Bytes::from_static).collect());
        ReplacingBody::new(frames, replacer())
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn value_split_across_frames_is_replaced() {
        let out = run(vec![b"x=SECRETVA", b"LUE;y=oth", b"er-value!"]).await;
        assert_eq!(out, b"x=<ph-a>;y=<ph-c>!");
    }

    #[tokio::test]
    async fn every_split_point_is_replaced() {
        let input: &'static [u8] = b"aaSECRETVALUEbbSECRETcc other-value";
        for i in 0..input.len() {
            for j in i..input.len() {
                let out = run(vec![&input[..i], &input[i..j], &input[j..]]).await;
                assert_eq!(out, b"aa<ph-a>bb<ph-b>cc <ph-c>", "split at {i},{j}");
            }
        }
    }

    #[test]
    fn only_a_possible_start_of_a_secret_is_held_back() {
        let r = replacer();
        let mut carry = BytesMut::new();
        let out = r.feed(&mut carry, Bytes::from_static(b"data: hello\n\n"));
        assert_eq!(&out[..], b"data: hello\n\n");
        assert!(carry.is_empty());
        let out = r.feed(&mut carry, Bytes::from_static(b"token SECRETVA"));
        assert_eq!(&out[..], b"token ");
        assert_eq!(&carry[..], b"SECRETVA");
    }

    #[tokio::test]
    async fn a_value_lowercased_or_uppercased_split_across_frames_is_replaced() {
        let r = Arc::new(
            Replacer::with_case_variants(vec![
                (b"SecretValue%2F".to_vec(), Bytes::from_static(b"<Ph%2F>")),
                (b"SecretValue%2f".to_vec(), Bytes::from_static(b"<Ph%2f>")),
            ])
            .unwrap(),
        );
        // Each as given, lowercased and uppercased; the lowercase of the first is the second.
        assert_eq!(r.pattern_count(), 4);
        let input: &'static [u8] =
            b"a SecretValue%2f b SECRETVALUE%2F c secretvalue%2f d SecretValue%2F e";
        for i in 0..input.len() {
            let frames = Frames(
                vec![&input[..i], &input[i..]]
                    .into_iter()
                    .map(Bytes::from_static)
                    .collect(),
            );
            let out = ReplacingBody::new(frames, r.clone())
                .collect()
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(
                &out[..],
                b"a <Ph%2f> b <PH%2F> c <ph%2f> d <Ph%2F> e",
                "split at {i}"
            );
        }
    }

    #[test]
    fn headers_named_after_a_value_are_dropped_and_values_replaced() {
        let r = Replacer::with_case_variants(vec![(
            b"SecretValue".to_vec(),
            Bytes::from_static(b"ph"),
        )])
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-secretvalue", http::HeaderValue::from_static("1"));
        h.append("x-a", http::HeaderValue::from_static("SECRETVALUE"));
        h.append("x-a", http::HeaderValue::from_static("plain"));
        h.insert("x-b", http::HeaderValue::from_static("kept"));
        assert_eq!(r.replace_in_headers(&mut h), 1);
        assert!(h.get("x-secretvalue").is_none());
        let a: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        assert_eq!(a, vec![b"PH".to_vec(), b"plain".to_vec()]);
        assert_eq!(h.get("x-b").map(|v| v.as_bytes()), Some(&b"kept"[..]));
    }

    #[tokio::test]
    async fn bodies_without_matches_pass_unchanged() {
        let out = run(vec![b"hello ", b"SECRE", b"world"]).await;
        assert_eq!(out, b"hello SECREworld");
    }
}
