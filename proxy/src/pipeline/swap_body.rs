//! The request body, scanned for placeholders as it streams ([`ScanBody`]): a placeholder of
//! a secret the rule does not grant fails the body; a granted one is swapped for its value
//! where the rule swaps in bodies.
//!
//! A body is refused after part of it may have gone upstream: the body then fails, which
//! makes the client abort the upstream request (h2 stream reset, h1 connection closed), and
//! the shared [`BodyRefusal`] tells the caller why.
//!
//! Like [`crate::pipeline::swap`], this writes real values into the outgoing request and
//! nowhere else.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use keyswap_config::SecretId;
use keyswap_scrub::body::BoxError;
use keyswap_scrub::replace::Replacer;

use crate::pipeline::swap::find_in_headers;
use crate::state::snapshot::Snapshot;

/// Set by a [`ScanBody`] when the body carried placeholders of secrets the rule does not
/// grant: the ids, for the refusal and the audit.
pub type BodyRefusal = Arc<OnceLock<Vec<SecretId>>>;

/// The error a refused body fails with, which aborts the upstream request.
#[derive(Debug, thiserror::Error)]
#[error("the request body carries the placeholder of a secret this rule does not grant")]
pub struct PlaceholderInBody;

/// The placeholder matcher of a config snapshot, held by a streaming body.
pub struct SnapshotPlaceholders(pub Arc<Snapshot>);

impl AsRef<Replacer> for SnapshotPlaceholders {
    fn as_ref(&self) -> &Replacer {
        &self.0.placeholders
    }
}

/// A request body scanned for placeholders as it streams. A placeholder of a secret not in
/// `granted` fails the body (and sets the [`BodyRefusal`]); a granted one is swapped for its
/// value when `swap`, else passed unchanged. Trailers are treated alike.
///
/// Like [`keyswap_scrub::replace::ReplacingBody`], only a tail that could start a placeholder is held
/// back between frames, so no placeholder (not even a part of one) goes out before it is
/// decided, and memory is bounded by the frame size. A frame without a placeholder is passed
/// on as the same buffer, never copied.
pub struct ScanBody<B, P> {
    inner: B,
    placeholders: P,
    granted: Vec<SecretId>,
    swap: bool,
    refused: BodyRefusal,
    carry: BytesMut,
    ready: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    done: bool,
    failed: bool,
}

impl<B, P: AsRef<Replacer>> ScanBody<B, P> {
    pub fn new(
        inner: B,
        placeholders: P,
        granted: Vec<SecretId>,
        swap: bool,
        refused: BodyRefusal,
    ) -> Self {
        ScanBody {
            inner,
            placeholders,
            granted,
            swap,
            refused,
            carry: BytesMut::new(),
            ready: VecDeque::new(),
            trailers: None,
            done: false,
            failed: false,
        }
    }

    /// Takes one data frame: queues what may go on now in `ready`, keeps in `carry` a tail
    /// that a later frame could complete into a placeholder.
    fn feed(&mut self, data: Bytes) -> Result<(), Vec<SecretId>> {
        let keep = self.placeholders.as_ref().longest().saturating_sub(1);
        if self.carry.is_empty() {
            return self.process(data, false);
        }
        if data.len() < keep {
            // A short frame: join it to the (shorter still) carry.
            self.carry.extend_from_slice(&data);
            let joined = self.carry.split().freeze();
            return self.process(joined, false);
        }
        // A placeholder that starts in the carry ends within the next `keep` bytes: decide
        // those on a small joined buffer, then scan the rest of the frame in place.
        let carried = self.carry.len();
        self.carry.extend_from_slice(&data[..keep]);
        let junction = self.carry.split().freeze();
        let resume = self.junction(&junction, carried)?;
        self.process(data.slice(resume - carried..), false)
    }

    /// Decides the placeholders that start in the first `carried` bytes of `junction`; emits
    /// what precedes the first one that does not. Returns where scanning resumes.
    fn junction(&mut self, junction: &Bytes, carried: usize) -> Result<usize, Vec<SecretId>> {
        let replacer = self.placeholders.as_ref();
        let mut out = BytesMut::new();
        let mut refused = Vec::new();
        let mut pos = 0;
        for (id, range) in replacer.matches(junction) {
            if range.start >= carried {
                break;
            }
            if !self.granted.contains(&SecretId(id)) {
                refused.push(SecretId(id));
                continue;
            }
            out.extend_from_slice(&junction[pos..range.start]);
            if self.swap {
                out.extend_from_slice(replacer.replacement_of(id));
            } else {
                out.extend_from_slice(&junction[range.clone()]);
            }
            pos = range.end;
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let resume = pos.max(carried);
        out.extend_from_slice(&junction[pos..resume]);
        if !out.is_empty() {
            self.ready.push_back(out.freeze());
        }
        Ok(resume)
    }

    /// Scans `buf` (which follows everything decided so far). At the end of the body nothing
    /// is held back.
    fn process(&mut self, buf: Bytes, at_end: bool) -> Result<(), Vec<SecretId>> {
        let replacer = self.placeholders.as_ref();
        let hold = if at_end {
            buf.len()
        } else {
            replacer.hold_from(&buf)
        };
        if !replacer.contains_any(&buf) {
            if hold > 0 {
                self.ready.push_back(buf.slice(..hold));
            }
            self.carry.extend_from_slice(&buf[hold..]);
            return Ok(());
        }
        let mut out: Option<BytesMut> = None;
        let mut refused = Vec::new();
        let mut pos = 0;
        for (id, range) in replacer.matches(&buf) {
            // A match from `hold` on could be the start of a longer placeholder.
            if range.start >= hold {
                break;
            }
            if !self.granted.contains(&SecretId(id)) {
                refused.push(SecretId(id));
                continue;
            }
            if self.swap {
                let o = out.get_or_insert_with(|| BytesMut::with_capacity(buf.len()));
                o.extend_from_slice(&buf[pos..range.start]);
                o.extend_from_slice(replacer.replacement_of(id));
            }
            pos = range.end;
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let emit_to = hold.max(pos);
        let emitted = match out {
            Some(mut o) => {
                o.extend_from_slice(&buf[pos..emit_to]);
                o.freeze()
            }
            None => buf.slice(..emit_to),
        };
        if !emitted.is_empty() {
            self.ready.push_back(emitted);
        }
        self.carry.extend_from_slice(&buf[emit_to..]);
        Ok(())
    }

    /// Trailers are header-like: refused like the body, swapped only where the body is.
    fn trailers(&self, trailers: &mut HeaderMap) -> Result<(), Vec<SecretId>> {
        let replacer = self.placeholders.as_ref();
        let refused: Vec<SecretId> = find_in_headers(replacer, trailers)
            .into_iter()
            .map(|(_, id)| id)
            .filter(|id| !self.granted.contains(id))
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        if self.swap {
            replacer.replace_in_headers(trailers);
        }
        Ok(())
    }

    fn fail(&mut self, mut ids: Vec<SecretId>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        ids.sort();
        ids.dedup();
        let _ = self.refused.set(ids);
        self.failed = true;
        self.ready.clear();
        self.carry.clear();
        Poll::Ready(Some(Err(Box::new(PlaceholderInBody))))
    }
}

impl<B, P> Body for ScanBody<B, P>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    P: AsRef<Replacer> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.done {
                if !this.carry.is_empty() {
                    let rest = this.carry.split().freeze();
                    if let Err(ids) = this.process(rest, true) {
                        return this.fail(ids);
                    }
                    continue;
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(ids) = this.feed(data) {
                            return this.fail(ids);
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            if let Err(ids) = this.trailers(&mut trailers) {
                                return this.fail(ids);
                            }
                            this.trailers = Some(trailers);
                        }
                        this.done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
            || (self.ready.is_empty()
                && self.carry.is_empty()
                && self.trailers.is_none()
                && (self.done || self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.swap {
            // Swapped values may differ in length from their placeholders.
            if self.is_end_stream() {
                SizeHint::with_exact(0)
            } else {
                SizeHint::default()
            }
        } else {
            // Unchanged bytes: the length the agent declared still holds.
            let buffered: u64 =
                self.ready.iter().map(|b| b.len() as u64).sum::<u64>() + self.carry.len() as u64;
            let inner = self.inner.size_hint();
            let mut hint = SizeHint::new();
            hint.set_lower(inner.lower() + buffered);
            if let Some(upper) = inner.upper() {
                hint.set_upper(upper + buffered);
            }
            hint
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const GRANTED: &[u8] = b"ks_granted_placeholder_01";
    const OTHER: &[u8] = b"ks_other_placeholder_0002";

    fn placeholders() -> Arc<Replacer> {
        Arc::new(
            Replacer::new(vec![
                (GRANTED.to_vec(), Bytes::from_static(b"<value-0>")),
                (OTHER.to_vec(), Bytes::from_static(b"<value-1>")),
            ])
            .unwrap(),
        )
    }

    /// A body that yields the given frames one per poll.
    struct Frames(VecDeque<Bytes>);

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

    async fn run(chunks: &[&[u8]], swap: bool) -> (Result<Vec<u8>, ()>, Option<Vec<SecretId>>) {
        let frames = Frames(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect());
        let refused = BodyRefusal::default();
        let body = ScanBody::new(
            frames,
            placeholders(),
            vec![SecretId(0)],
            swap,
            refused.clone(),
        );
        let out = body.collect().await.map(|c| c.to_bytes().to_vec());
        (out.map_err(|_| ()), refused.get().cloned())
    }

    #[tokio::test]
    async fn every_split_point_swaps_or_refuses() {
        let granted = [b"a=".as_slice(), GRANTED, b"&b=", GRANTED, b"!"].concat();
        let refused = [b"a=".as_slice(), GRANTED, b"&b=", OTHER, b"!"].concat();
        for i in 0..granted.len() {
            for j in i..granted.len() {
                let parts = [&granted[..i], &granted[i..j], &granted[j..]];
                let (out, why) = run(&parts, true).await;
                assert_eq!(out.unwrap(), b"a=<value-0>&b=<value-0>!", "split {i},{j}");
                assert_eq!(why, None);
                let (out, _) = run(&parts, false).await;
                assert_eq!(out.unwrap(), granted, "scan only, split {i},{j}");
                for swap in [true, false] {
                    let parts = [&refused[..i], &refused[i..j], &refused[j..]];
                    let (out, why) = run(&parts, swap).await;
                    assert!(out.is_err(), "split {i},{j} not refused");
                    assert_eq!(why, Some(vec![SecretId(1)]));
                }
            }
        }
    }

    #[tokio::test]
    async fn no_part_of_an_ungranted_placeholder_is_emitted() {
        let frames = Frames(
            [b"hello ".as_slice(), &OTHER[..10], &OTHER[10..], b" tail"]
                .into_iter()
                .map(Bytes::copy_from_slice)
                .collect(),
        );
        let mut body = ScanBody::new(
            frames,
            placeholders(),
            vec![SecretId(0)],
            false,
            BodyRefusal::default(),
        );
        let mut emitted = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => emitted.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => break,
            }
        }
        assert_eq!(emitted, b"hello ");
    }

    #[tokio::test]
    async fn frames_without_placeholders_are_passed_without_copying() {
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let tail = Bytes::from([b"xx".as_slice(), &GRANTED[..3]].concat());
        let mut body = ScanBody::new(
            Frames([big.clone(), tail, big.clone()].into_iter().collect()),
            placeholders(),
            vec![SecretId(0)],
            true,
            BodyRefusal::default(),
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.as_ptr(), big.as_ptr(), "a clean frame was copied");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &second[..],
            b"xx",
            "a possible placeholder start was not held"
        );
        // The held start joins a small junction; the rest of the big frame is not copied.
        let junction = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&junction[..], &GRANTED[..3]);
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            rest.as_ptr(),
            big.as_ptr(),
            "the frame after a held tail was copied"
        );
        assert!(body.frame().await.is_none());
    }
}
