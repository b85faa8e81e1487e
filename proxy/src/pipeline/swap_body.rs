//! The request body, scanned for placeholders as it streams ([`ScanBody`]): a placeholder of
//! a secret the rule does not grant fails the body; a granted one is swapped for its value
//! where the rule swaps in bodies. Trailers are not body: they are headers, checked and
//! swapped by the header rules ([`crate::pipeline::trailers`]) when they arrive.
//!
//! A body is refused after part of it may have gone upstream: the body then fails, which
//! makes the client abort the upstream request (h2 stream reset, h1 connection closed), and
//! the shared [`BodyRefusal`] tells the caller why.
//!
//! Like [`crate::pipeline::swap`], this writes real values into the outgoing request and
//! nowhere else.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use keyswap_config::SecretId;
use keyswap_scrub::body::BoxError;
use keyswap_scrub::replace::Replacer;

use crate::pipeline::swap::Misplaced;
use crate::state::snapshot::Snapshot;

/// Set by the request body's layers when they refuse it, for the refusal and the audit.
pub type BodyRefusal = Arc<OnceLock<BodyRefused>>;

/// The secrets whose placeholders a body carried, filled as it streams (learn mode only: the
/// record names them, never a value).
pub type BodySeen = Arc<Mutex<BTreeSet<SecretId>>>;

/// Why a request body (its data or its trailers) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefused {
    /// An ungranted placeholder, a granted one in a trailer out of its scope, the task token.
    Misplaced(Misplaced),
    /// Trailers larger than a request head may be.
    TrailersTooLarge,
    /// A trailer carries the placeholder of a secret that could not be refreshed.
    SecretUnavailable(SecretId),
    /// The upstream stopped reading the body, and its rest was longer than keyswap reads to
    /// check it ([`crate::pipeline::settle::UNREAD_BODY_LIMIT`]).
    UnreadTooLong,
}

impl BodyRefused {
    /// The reason a request refused for its body is recorded with.
    pub fn reason(&self) -> crate::audit::decision::Reason {
        use crate::audit::decision::Reason;
        match self {
            BodyRefused::Misplaced(_) => Reason::PlaceholderNotAllowed,
            BodyRefused::TrailersTooLarge | BodyRefused::UnreadTooLong => Reason::BadRequest,
            BodyRefused::SecretUnavailable(_) => Reason::SecretUnavailable,
        }
    }
}

/// The error a refused body fails with, which aborts the upstream request.
#[derive(Debug, thiserror::Error)]
#[error("the request body or its trailers were refused")]
pub struct RefusedBody;

/// The header rules applied to a body's trailers when they arrive: checks them, swaps in
/// them, or refuses them.
pub type TrailerCheck = Box<dyn Fn(&mut HeaderMap) -> Result<(), BodyRefused> + Send>;

/// The placeholder matcher a streaming body holds: the config snapshot's, or the task's own
/// in which its leases' placeholders stand for its minted credentials
/// ([`crate::state::leases::Leases::placeholders_for`]).
pub enum SnapshotPlaceholders {
    Snapshot(Arc<Snapshot>),
    Task(Arc<Replacer>),
}

impl AsRef<Replacer> for SnapshotPlaceholders {
    fn as_ref(&self) -> &Replacer {
        match self {
            SnapshotPlaceholders::Snapshot(snapshot) => &snapshot.placeholders,
            SnapshotPlaceholders::Task(replacer) => replacer,
        }
    }
}

/// A request body scanned for placeholders as it streams. A placeholder of a secret not in
/// `granted` fails the body (and sets the [`BodyRefusal`]); a granted one is swapped for its
/// value when `swap`, else passed unchanged. Trailers go through `trailers` (the header rules).
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
    trailer_check: TrailerCheck,
    seen: Option<BodySeen>,
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
        trailer_check: TrailerCheck,
    ) -> Self {
        ScanBody {
            inner,
            placeholders,
            granted,
            swap,
            refused,
            trailer_check,
            seen: None,
            carry: BytesMut::new(),
            ready: VecDeque::new(),
            trailers: None,
            done: false,
            failed: false,
        }
    }

    /// Notes in `seen` every granted placeholder the body carries.
    pub fn noting(mut self, seen: Option<BodySeen>) -> Self {
        self.seen = seen;
        self
    }

    fn note(&self, id: usize) {
        if let Some(seen) = &self.seen {
            seen.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(SecretId(id));
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
            self.note(id);
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
            self.note(id);
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

    fn fail(&mut self, refused: BodyRefused) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.refused.set(refused);
        self.failed = true;
        self.ready.clear();
        self.carry.clear();
        Poll::Ready(Some(Err(Box::new(RefusedBody))))
    }

    fn fail_ids(&mut self, mut ids: Vec<SecretId>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        ids.sort();
        ids.dedup();
        self.fail(BodyRefused::Misplaced(Misplaced::NotGranted(ids)))
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
                        return this.fail_ids(ids);
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
                            return this.fail_ids(ids);
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            if let Err(refused) = (this.trailer_check)(&mut trailers) {
                                return this.fail(refused);
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
#[path = "swap_body_tests.rs"]
mod tests;
