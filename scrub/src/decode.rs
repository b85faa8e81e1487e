//! Decoding compressed response bodies so the scrubber sees what the agent will read.
//!
//! Two cases, both streaming with bounded memory:
//! - **Declared** codings (`Content-Encoding`, and `Transfer-Encoding` codings other than
//!   `chunked`): [`DecodingBody`] decodes them (stacked codings in reverse order) and the
//!   agent receives the decoded body, scrubbed by [`crate::replace::ReplacingBody`].
//! - **Undeclared** compression (a body that begins with a gzip, zlib or zstd magic number):
//!   [`SniffingBody`] passes the ORIGINAL bytes on (downloads stay byte-exact) but decodes a
//!   copy for scanning, and releases compressed bytes only once everything they decode to has
//!   been scanned clean. A real value in the decoded copy cuts the body (an error, so the
//!   agent's stream is aborted, never a truncated body that looks complete).
//!
//! Expansion is bounded by [`MAX_EXPANSION`] and [`EXPANSION_ALLOWANCE`]; a body that decodes
//! to more is cut. The decoders are push-model (feed compressed bytes, get at most [`STEP`]
//! decoded bytes per step), so keyswap always knows which compressed prefix produced which
//! decoded prefix, and no step holds more than [`STEP`] decoded bytes.
//!
//! This module never formats body bytes or scrubber patterns: errors name the coding only.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::body::{BoxError, ProxyBody};
use crate::replace::Replacer;

/// A body may decode to at most this many times its compressed size (plus
/// [`EXPANSION_ALLOWANCE`]); more is treated as a decompression bomb and the body is cut.
/// Real text and JSON compress 3–20×; 100× leaves room for very repetitive data while a bomb
/// (1,000× for deflate, far more for zstd/brotli) is stopped within a few MiB.
pub const MAX_EXPANSION: u64 = 100;

/// Decoded bytes always allowed regardless of the ratio, so small, highly repetitive bodies
/// (a page of zeros, an empty JSON array padded by the server) are not mistaken for bombs.
pub const EXPANSION_ALLOWANCE: u64 = 1 << 20;

/// Most decoded bytes one decoding step produces: the per-stage memory bound.
pub const STEP: usize = 64 * 1024;

/// Compressed bytes fed between two release points of an undeclared-compressed body: the
/// granularity at which scanned-clean compressed bytes are released.
const SCAN_SLICE: usize = 8 * 1024;

/// Most codings keyswap will undo on one response (`Content-Encoding` and
/// `Transfer-Encoding` together); a longer stack is refused rather than decoded.
pub const MAX_CODINGS: usize = 4;

/// A coding keyswap can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw deflate as browsers also accept
    /// (decided from the first two bytes).
    Deflate,
    /// Zlib-wrapped only (undeclared bodies sniffed by magic number).
    Zlib,
    Brotli,
    Zstd,
}

/// The codings applied to a body, in the order they were applied (decode in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codings {
    list: [Coding; MAX_CODINGS],
    len: u8,
}

impl Codings {
    pub fn as_slice(&self) -> &[Coding] {
        &self.list[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A coding keyswap cannot decode (or too many stacked): the response is refused. It does
/// not carry the coding's name: the upstream chose it, and it could echo a real value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCoding;

/// The codings declared by `Content-Encoding` then `Transfer-Encoding` (minus `chunked`,
/// which hyper has already removed). Read this before hop-by-hop headers are stripped.
pub fn declared_codings(headers: &HeaderMap) -> Result<Codings, UnknownCoding> {
    let mut codings = Codings {
        list: [Coding::Gzip; MAX_CODINGS],
        len: 0,
    };
    for name in [header::CONTENT_ENCODING, header::TRANSFER_ENCODING] {
        for value in headers.get_all(&name) {
            let Ok(value) = value.to_str() else {
                return Err(UnknownCoding);
            };
            for token in value.split(',').map(str::trim) {
                let coding = match token.to_ascii_lowercase().as_str() {
                    "" | "identity" => continue,
                    "chunked" if name == header::TRANSFER_ENCODING => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "br" => Coding::Brotli,
                    "zstd" => Coding::Zstd,
                    _ => return Err(UnknownCoding),
                };
                if codings.len as usize == MAX_CODINGS {
                    return Err(UnknownCoding);
                }
                codings.list[codings.len as usize] = coding;
                codings.len += 1;
            }
        }
    }
    Ok(codings)
}

/// The agent's `Accept-Encoding` narrowed to the codings keyswap can decode, so an upstream
/// is never invited to answer in one it would have to refuse (`compress`, `exi`, …). `*`
/// becomes the decodable list; quality values are kept. `None` when the header needs no
/// change.
pub fn decodable_accept_encoding(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut changed = false;
    let mut kept: Vec<String> = Vec::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            changed = true;
            continue;
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (name, params) = token.split_once(';').unwrap_or((token, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" | "deflate" | "br" | "zstd" | "identity" => {
                    kept.push(token.to_string())
                }
                "*" => {
                    changed = true;
                    let params = if params.is_empty() {
                        String::new()
                    } else {
                        format!(";{params}")
                    };
                    kept.extend(
                        ["gzip", "deflate", "br", "zstd"].map(|coding| format!("{coding}{params}")),
                    );
                }
                _ => changed = true,
            }
        }
    }
    if !changed {
        return None;
    }
    let list = if kept.is_empty() {
        "identity".to_string()
    } else {
        kept.join(", ")
    };
    HeaderValue::from_str(&list).ok()
}

/// The coding an undeclared body's first bytes announce, if any. Brotli has no magic number,
/// so an undeclared brotli body is not recognised.
pub fn sniff(prefix: &[u8]) -> Option<Coding> {
    match prefix {
        // ID1 ID2 CM=8 (deflate): the third byte makes a text body's false positive unlikely.
        [0x1f, 0x8b, 0x08, ..] => Some(Coding::Gzip),
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some(Coding::Zlib),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Coding::Zstd),
        _ => None,
    }
}

/// Bytes needed to sniff.
pub const SNIFF_LEN: usize = 4;

/// Whether a zlib header (RFC 1950 §2.2) starts with these two bytes.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One decoder of a pipeline.
enum Stage {
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Deflate {
        /// `Some(zlib)` once decided (declared `deflate` waits for two bytes).
        zlib: Option<bool>,
        head: Vec<u8>,
        state: Option<flate2::Decompress>,
        ended: bool,
    },
    Brotli {
        state: Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
        ended: bool,
    },
    Zstd {
        ctx: Box<zstd::stream::raw::Decoder<'static>>,
        /// `false` inside a frame: the stream ends only between frames.
        between_frames: bool,
    },
}

impl Stage {
    fn new(coding: Coding) -> io::Result<Stage> {
        Ok(match coding {
            Coding::Gzip => Stage::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new()))),
            Coding::Deflate | Coding::Zlib => Stage::Deflate {
                zlib: (coding == Coding::Zlib).then_some(true),
                head: Vec::new(),
                state: None,
                ended: false,
            },
            Coding::Brotli => Stage::Brotli {
                state: Box::new(BrotliState::new(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                )),
                ended: false,
            },
            Coding::Zstd => Stage::Zstd {
                ctx: Box::new(zstd::stream::raw::Decoder::new()?),
                between_frames: true,
            },
        })
    }

    /// Decodes from `input` into `out` (empty, capacity [`STEP`]: at most one step of
    /// output); returns how much of `input` was consumed. With an empty `input`, produces
    /// what the input consumed so far can still yield.
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stage::Gzip(dec) => {
                // The writer dumps decoded bytes into its inner Vec (about 32 KiB per call);
                // those are handed out before it is given more, so that Vec stays small.
                let mut consumed = 0;
                if dec.get_ref().is_empty() {
                    if input.is_empty() {
                        dec.flush()?;
                    } else {
                        consumed = dec.write(input)?;
                    }
                }
                let pending = dec.get_mut();
                let n = pending.len().min(out.capacity());
                out.extend_from_slice(&pending[..n]);
                pending.drain(..n);
                Ok(consumed)
            }
            Stage::Deflate {
                zlib,
                head,
                state,
                ended,
            } => {
                let mut consumed = 0;
                if state.is_none() {
                    let want = 2usize.saturating_sub(head.len()).min(input.len());
                    head.extend_from_slice(&input[..want]);
                    consumed = want;
                    if head.len() < 2 {
                        return Ok(consumed);
                    }
                    let is_zlib = zlib.unwrap_or_else(|| is_zlib_header(head[0], head[1]));
                    *state = Some(flate2::Decompress::new(is_zlib));
                }
                let Some(dec) = state.as_mut() else {
                    return Ok(consumed);
                };
                let mut run = |src: &[u8], out: &mut Vec<u8>| -> io::Result<usize> {
                    if *ended {
                        return if src.is_empty() {
                            Ok(0)
                        } else {
                            Err(invalid("deflate: data after the end of the stream"))
                        };
                    }
                    let before = dec.total_in();
                    let status = dec
                        .decompress_vec(src, out, flate2::FlushDecompress::None)
                        .map_err(|_| invalid("deflate: invalid data"))?;
                    *ended |= status == flate2::Status::StreamEnd;
                    Ok((dec.total_in() - before) as usize)
                };
                if !head.is_empty() {
                    // The two bytes read to tell zlib from raw deflate go first.
                    let used = run(head, out)?;
                    head.drain(..used);
                    if !head.is_empty() {
                        return Ok(consumed);
                    }
                }
                if out.len() == out.capacity() {
                    return Ok(consumed);
                }
                Ok(consumed + run(&input[consumed..], out)?)
            }
            Stage::Brotli { state, ended } => {
                if *ended {
                    return if input.is_empty() {
                        Ok(0)
                    } else {
                        Err(invalid("br: data after the end of the stream"))
                    };
                }
                let room = out.capacity();
                out.resize(room, 0);
                let (mut avail_in, mut in_off) = (input.len(), 0usize);
                let (mut avail_out, mut out_off, mut total) = (room, 0usize, 0usize);
                let result = BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    input,
                    &mut avail_out,
                    &mut out_off,
                    out,
                    &mut total,
                    state,
                );
                out.truncate(out_off);
                match result {
                    BrotliResult::ResultFailure => Err(invalid("br: invalid data")),
                    BrotliResult::ResultSuccess => {
                        *ended = true;
                        Ok(in_off)
                    }
                    BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok(in_off),
                }
            }
            Stage::Zstd {
                ctx,
                between_frames,
            } => {
                let mut src = InBuffer::around(input);
                // Over a Vec, zstd writes into the spare capacity only: one step at most.
                let remaining = {
                    let mut dst = OutBuffer::around(out);
                    ctx.run(&mut src, &mut dst)
                        .map_err(|_| invalid("zstd: invalid data"))?
                };
                if src.pos() > 0 || remaining == 0 {
                    *between_frames = remaining == 0;
                }
                Ok(src.pos())
            }
        }
    }

    /// At the end of the body: an error unless the compressed stream was complete.
    fn finish(&mut self) -> io::Result<()> {
        let complete = match self {
            Stage::Gzip(dec) => dec.try_finish().is_ok() && dec.get_ref().is_empty(),
            Stage::Deflate { ended, .. } => *ended,
            Stage::Brotli { ended, .. } => *ended,
            Stage::Zstd { between_frames, .. } => *between_frames,
        };
        if complete {
            Ok(())
        } else {
            Err(invalid("the compressed body ended before its stream did"))
        }
    }
}

/// Stacked decoders, resumable: each call to [`Pipeline::next`] yields at most [`STEP`]
/// decoded bytes, so no stage ever holds more than one step of its predecessor's output.
struct Pipeline {
    stages: Vec<Stage>,
    /// Pending input of each stage (stage 0: compressed bytes not yet consumed).
    inputs: Vec<BytesMut>,
    /// Whether a stage may still produce output from what it has consumed.
    draining: Vec<bool>,
    fed: u64,
    decoded: u64,
}

impl Pipeline {
    /// `applied` in the order the codings were applied; decoding runs in reverse.
    fn new(applied: &[Coding]) -> io::Result<Pipeline> {
        let stages = applied
            .iter()
            .rev()
            .map(|c| Stage::new(*c))
            .collect::<io::Result<Vec<_>>>()?;
        let n = stages.len();
        Ok(Pipeline {
            stages,
            inputs: (0..n).map(|_| BytesMut::new()).collect(),
            draining: vec![false; n],
            fed: 0,
            decoded: 0,
        })
    }

    fn push(&mut self, data: &[u8]) {
        self.fed += data.len() as u64;
        self.inputs[0].extend_from_slice(data);
        self.draining[0] = true;
    }

    /// The next decoded bytes, or `None` when everything fed so far has been decoded.
    fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        let last = self.stages.len() - 1;
        'outer: loop {
            // Run the latest stage that has work, so earlier stages never run ahead.
            for i in (0..=last).rev() {
                if !self.draining[i] {
                    continue;
                }
                if i < last && !self.inputs[i + 1].is_empty() {
                    continue;
                }
                let mut out = Vec::with_capacity(STEP);
                let consumed = self.stages[i].step(&self.inputs[i], &mut out)?;
                let _ = self.inputs[i].split_to(consumed);
                if consumed == 0 && out.is_empty() && self.inputs[i].is_empty() {
                    self.draining[i] = false;
                    continue 'outer;
                }
                if consumed == 0 && out.is_empty() {
                    // Input left but no progress: a stage that needs output room it has.
                    return Err(invalid("a decoder made no progress"));
                }
                if out.is_empty() {
                    continue 'outer;
                }
                if i == last {
                    self.decoded += out.len() as u64;
                    if self.decoded > self.fed.saturating_mul(MAX_EXPANSION) + EXPANSION_ALLOWANCE {
                        return Err(invalid("the body decodes to more than keyswap's expansion bound (decompression bomb)"));
                    }
                    return Ok(Some(out));
                }
                self.inputs[i + 1].extend_from_slice(&out);
                self.draining[i + 1] = true;
                continue 'outer;
            }
            return Ok(None);
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.fed == 0 {
            // An empty body is empty in every coding.
            return Ok(());
        }
        self.stages.iter_mut().try_for_each(Stage::finish)
    }
}

fn cut(message: &'static str) -> BoxError {
    Box::new(invalid(message))
}

/// A declared-compressed body, decoded (the scrubber wraps it).
pub struct DecodingBody {
    inner: ProxyBody,
    pipeline: Pipeline,
    inner_done: bool,
    trailers: Option<HeaderMap>,
    failed: bool,
}

impl DecodingBody {
    pub fn new(inner: ProxyBody, codings: Codings) -> Result<DecodingBody, BoxError> {
        Ok(DecodingBody {
            inner,
            pipeline: Pipeline::new(codings.as_slice())?,
            inner_done: false,
            trailers: None,
            failed: false,
        })
    }
}

impl Body for DecodingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match this.pipeline.next() {
                Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                Ok(None) => {}
                Err(e) => {
                    this.failed = true;
                    tracing::warn!(error = %e, "compressed response body cut");
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if this.inner_done {
                if let Err(e) = this.pipeline.finish() {
                    this.failed = true;
                    tracing::warn!(error = %e, "compressed response body cut");
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.inner_done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pipeline.push(&data),
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A body with some frames already read from it in front.
struct Prefixed {
    front: VecDeque<Frame<Bytes>>,
    inner: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.front.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.inner.is_end_stream()
    }
}

/// Scanning state of a body that begins with a compression magic and declares no coding.
struct Scan {
    /// `None` after the copy turned out not to be compressed (raw scanning only).
    pipeline: Option<Pipeline>,
    /// Original bytes not yet released, starting at offset `released`.
    held: BytesMut,
    released: u64,
    /// Original bytes seen.
    seen: u64,
    raw_carry: BytesMut,
    decoded_carry: BytesMut,
    /// (compressed offset, decoded offset) after everything fed up to it was decoded.
    checkpoints: VecDeque<(u64, u64)>,
}

impl Scan {
    /// Scans one frame of original bytes; `Err` when a real value (or a bomb) is found.
    fn feed(&mut self, scrubber: &Replacer, data: &Bytes) -> Result<(), &'static str> {
        self.held.extend_from_slice(data);
        self.seen += data.len() as u64;
        // Literal bytes too (stored blocks, trailing data): a match there cannot be replaced
        // without corrupting the archive, so it cuts.
        if scrubber.guard(&mut self.raw_carry, data).is_none() {
            return Err("a real secret value in an undeclared compressed body");
        }
        for slice in data.chunks(SCAN_SLICE) {
            let Some(pipeline) = self.pipeline.as_mut() else {
                break;
            };
            pipeline.push(slice);
            loop {
                match pipeline.next() {
                    Ok(Some(out)) => {
                        if scrubber.guard(&mut self.decoded_carry, &out).is_none() {
                            return Err("a real secret value inside an undeclared compressed body");
                        }
                    }
                    Ok(None) => break,
                    Err(e) if pipeline.decoded == 0 && e.kind() == io::ErrorKind::InvalidData => {
                        // Not compressed after all (a text body that happens to start
                        // with "x^"): raw scanning alone from here.
                        self.pipeline = None;
                        self.checkpoints.clear();
                        self.decoded_carry.clear();
                        break;
                    }
                    Err(_) => return Err("an undeclared compressed body that keyswap could not decode or that exceeded the expansion bound"),
                }
            }
            if let Some(p) = &self.pipeline {
                self.checkpoints.push_back((p.fed, p.decoded));
            }
        }
        Ok(())
    }

    /// Original bytes that may be released now: everything they decode to has been scanned
    /// and lies before the decoded tail the scanner holds back.
    fn releasable(&mut self) -> Bytes {
        let raw_clean = self.seen - self.raw_carry.len() as u64;
        let upto = match &self.pipeline {
            None => raw_clean,
            Some(p) => {
                let decoded_clean = p.decoded - self.decoded_carry.len() as u64;
                let mut compressed_clean = self.released;
                while let Some(&(c, d)) = self.checkpoints.front() {
                    if d > decoded_clean {
                        break;
                    }
                    compressed_clean = compressed_clean.max(c);
                    self.checkpoints.pop_front();
                }
                compressed_clean.min(raw_clean)
            }
        };
        let n = upto.saturating_sub(self.released) as usize;
        self.released += n as u64;
        self.held.split_to(n).freeze()
    }

    /// At the end of the body: the carried tails cannot hold a complete match (the guard
    /// checks every byte it is given), so everything left is released.
    fn rest(&mut self) -> Bytes {
        self.released = self.seen;
        self.held.split().freeze()
    }
}

enum Sniffing {
    /// Reading the first [`SNIFF_LEN`] bytes.
    Start {
        front: VecDeque<Frame<Bytes>>,
        prefix: Vec<u8>,
        inner: ProxyBody,
    },
    Plain(crate::replace::ReplacingBody<Prefixed>),
    Scan {
        inner: ProxyBody,
        scan: Box<Scan>,
        done: bool,
    },
    /// A real value (or a bomb) was found: the next poll ends the body in an error.
    Cut(&'static str),
    Finished,
}

/// An identity-declared body: scrubbed as text unless it begins with a compression magic,
/// in which case its original bytes pass only once their decoded copy has been scanned.
pub struct SniffingBody {
    state: Sniffing,
    scrubber: Arc<Replacer>,
    trailers: Option<HeaderMap>,
}

impl SniffingBody {
    pub fn new(inner: ProxyBody, scrubber: Arc<Replacer>) -> SniffingBody {
        SniffingBody {
            state: Sniffing::Start {
                front: VecDeque::new(),
                prefix: Vec::new(),
                inner,
            },
            scrubber,
            trailers: None,
        }
    }

    /// Leaves the `Start` state once `prefix` is long enough or the body has ended.
    fn decide(
        &mut self,
        front: VecDeque<Frame<Bytes>>,
        prefix: &[u8],
        inner: ProxyBody,
        ended: bool,
    ) -> Sniffing {
        let Some(Ok(pipeline)) = sniff(prefix).map(|c| Pipeline::new(&[c])) else {
            return Sniffing::Plain(crate::replace::ReplacingBody::new(
                Prefixed { front, inner },
                self.scrubber.clone(),
            ));
        };
        let mut scan = Box::new(Scan {
            pipeline: Some(pipeline),
            held: BytesMut::new(),
            released: 0,
            seen: 0,
            raw_carry: BytesMut::new(),
            decoded_carry: BytesMut::new(),
            checkpoints: VecDeque::new(),
        });
        let mut done = ended;
        for frame in front {
            match frame.into_data() {
                Ok(data) => {
                    if let Err(why) = scan.feed(&self.scrubber, &data) {
                        return Sniffing::Cut(why);
                    }
                }
                Err(frame) => {
                    self.keep_trailers(frame);
                    done = true;
                }
            }
        }
        Sniffing::Scan { inner, scan, done }
    }

    fn keep_trailers(&mut self, frame: Frame<Bytes>) {
        if let Ok(mut trailers) = frame.into_trailers() {
            self.scrubber.replace_in_headers(&mut trailers);
            self.trailers = Some(trailers);
        }
    }
}

impl Body for SniffingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, Sniffing::Finished) {
                Sniffing::Plain(mut body) => {
                    let polled = Pin::new(&mut body).poll_frame(cx);
                    this.state = Sniffing::Plain(body);
                    return polled;
                }
                Sniffing::Finished => return Poll::Ready(None),
                Sniffing::Cut(why) => {
                    tracing::warn!(reason = why, "response body cut");
                    return Poll::Ready(Some(Err(cut(
                        "keyswap cut the body: once decompressed it carried a real secret value",
                    ))));
                }
                Sniffing::Start {
                    mut front,
                    mut prefix,
                    mut inner,
                } => {
                    let ended = match Pin::new(&mut inner).poll_frame(cx) {
                        Poll::Pending => {
                            this.state = Sniffing::Start {
                                front,
                                prefix,
                                inner,
                            };
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                        Poll::Ready(None) => true,
                        Poll::Ready(Some(Ok(frame))) => {
                            let is_data = match frame.data_ref() {
                                Some(data) => {
                                    let want =
                                        SNIFF_LEN.saturating_sub(prefix.len()).min(data.len());
                                    prefix.extend_from_slice(&data[..want]);
                                    true
                                }
                                None => false,
                            };
                            front.push_back(frame);
                            !is_data
                        }
                    };
                    this.state = if ended || prefix.len() >= SNIFF_LEN {
                        this.decide(front, &prefix, inner, ended)
                    } else {
                        Sniffing::Start {
                            front,
                            prefix,
                            inner,
                        }
                    };
                }
                Sniffing::Scan {
                    mut inner,
                    mut scan,
                    mut done,
                } => {
                    let ready = scan.releasable();
                    if !ready.is_empty() {
                        this.state = Sniffing::Scan { inner, scan, done };
                        return Poll::Ready(Some(Ok(Frame::data(ready))));
                    }
                    if done {
                        let rest = scan.rest();
                        if !rest.is_empty() {
                            this.state = Sniffing::Scan { inner, scan, done };
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                        return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                    }
                    match Pin::new(&mut inner).poll_frame(cx) {
                        Poll::Pending => {
                            this.state = Sniffing::Scan { inner, scan, done };
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                        Poll::Ready(None) => done = true,
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                if let Err(why) = scan.feed(&this.scrubber, &data) {
                                    this.state = Sniffing::Cut(why);
                                    continue;
                                }
                            }
                            Err(frame) => {
                                this.keep_trailers(frame);
                                done = true;
                            }
                        },
                    }
                    this.state = Sniffing::Scan { inner, scan, done };
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
