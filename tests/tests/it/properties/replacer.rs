//! The streaming replacer's property, checked on one input. Shared by the proptest suite
//! (`tests/tests/it/properties.rs`, on stable, in every CI run) and the cargo-fuzz target
//! `replacer_stream` (which includes this file), so both check the same contract.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use keyswap_scrub::replace::{Replacer, ReplacingBody};

/// Replace-all computed independently of aho-corasick: scan left to right; at each position
/// take the longest pattern starting there (the first listed among equals), emit its
/// replacement and continue after it, else copy one byte. Empty patterns are ignored.
/// Returns the output and whether any pattern matched.
pub fn reference(pairs: &[(Vec<u8>, Vec<u8>)], haystack: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(haystack.len());
    let mut found = false;
    let mut i = 0;
    while i < haystack.len() {
        let mut best: Option<&(Vec<u8>, Vec<u8>)> = None;
        for pair in pairs {
            let longer = best.is_none_or(|b| pair.0.len() > b.0.len());
            if !pair.0.is_empty() && haystack[i..].starts_with(&pair.0) && longer {
                best = Some(pair);
            }
        }
        match best {
            Some((pattern, replacement)) => {
                out.extend_from_slice(replacement);
                i += pattern.len();
                found = true;
            }
            None => {
                out.push(haystack[i]);
                i += 1;
            }
        }
    }
    (out, found)
}

/// A body that yields the given frames, one per poll, always ready.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Cuts `haystack` into frames of the given sizes, used in turn (0 is an empty frame); the
/// rest goes in one last frame.
pub fn split(haystack: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut pos = 0;
    for &size in sizes.iter().cycle().take(4 * haystack.len() + sizes.len()) {
        if pos == haystack.len() {
            break;
        }
        let end = (pos + size).min(haystack.len());
        frames.push(Bytes::copy_from_slice(&haystack[pos..end]));
        pos = end;
    }
    if pos < haystack.len() || frames.is_empty() {
        frames.push(Bytes::copy_from_slice(&haystack[pos..]));
    }
    frames
}

/// What `ReplacingBody` emits when its input arrives in `frames`.
fn stream(replacer: Arc<Replacer>, frames: &[Bytes]) -> Vec<u8> {
    let mut body = ReplacingBody::new(Frames(frames.iter().cloned().collect()), replacer);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                out.extend_from_slice(&frame.into_data().expect("only data frames"))
            }
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => break,
            Poll::Pending => panic!("a body over ready frames returned Pending"),
        }
    }
    assert!(body.is_end_stream(), "ended but not is_end_stream");
    out
}

/// For these patterns and replacements, `haystack` cut at `sizes`: the streamed output
/// equals [`reference`] whatever the cuts; so does `Replacer::replace_all` on the whole
/// haystack, and `contains_any` agrees; `Replacer::guard` (for streams that cannot be
/// rewritten) stops exactly when the haystack holds a pattern and otherwise passes every
/// byte through unchanged.
pub fn check_replacer(pairs: &[(Vec<u8>, Vec<u8>)], haystack: &[u8], sizes: &[usize]) {
    let (want, found) = reference(pairs, haystack);
    let replacer = Arc::new(
        Replacer::new(
            pairs
                .iter()
                .map(|(p, r)| (p.clone(), Bytes::copy_from_slice(r)))
                .collect(),
        )
        .expect("a small pattern set builds"),
    );
    let whole = replacer
        .replace_all(haystack)
        .unwrap_or_else(|| haystack.to_vec());
    assert_eq!(whole, want, "replace_all");
    assert_eq!(replacer.contains_any(haystack), found, "contains_any");

    let frames = split(haystack, sizes);
    assert_eq!(
        stream(replacer.clone(), &frames),
        want,
        "streamed output differs from replace-all; frames {:?}",
        frames.iter().map(Bytes::len).collect::<Vec<_>>()
    );

    let mut carry = BytesMut::new();
    let mut passed = Vec::new();
    let mut stopped = false;
    for frame in &frames {
        match replacer.guard(&mut carry, frame) {
            Some(safe) => passed.extend_from_slice(&safe),
            None => {
                stopped = true;
                break;
            }
        }
    }
    assert_eq!(
        stopped, found,
        "guard stopped: {stopped}, a pattern present: {found}"
    );
    if !stopped {
        passed.extend_from_slice(&carry);
        assert_eq!(passed, haystack, "guard changed the bytes");
    }
}
