//! One decoder per coding, each push-model: fed compressed bytes, it yields at most one
//! [`super::STEP`] of decoded bytes per call.

use std::io::{self, Write};

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use super::{invalid, Coding};

/// Whether a zlib header (RFC 1950 §2.2) starts with these two bytes.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// One decoder of a pipeline.
pub(super) enum Stage {
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
    pub(super) fn new(coding: Coding) -> io::Result<Stage> {
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

    /// Decodes from `input` into `out` (empty, capacity [`super::STEP`]: at most one step of
    /// output); returns how much of `input` was consumed. With an empty `input`, produces
    /// what the input consumed so far can still yield.
    pub(super) fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stage::Gzip(dec) => gzip_step(dec, input, out),
            Stage::Deflate {
                zlib,
                head,
                state,
                ended,
            } => deflate_step(*zlib, head, state, ended, input, out),
            Stage::Brotli { state, ended } => brotli_step(state, ended, input, out),
            Stage::Zstd {
                ctx,
                between_frames,
            } => zstd_step(ctx, between_frames, input, out),
        }
    }

    /// At the end of the body: an error unless the compressed stream was complete.
    pub(super) fn finish(&mut self) -> io::Result<()> {
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

type Gzip = flate2::write::MultiGzDecoder<Vec<u8>>;

fn gzip_step(dec: &mut Gzip, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
    // The writer dumps decoded bytes into its inner Vec (about 32 KiB per call); those are
    // handed out before it is given more, so that Vec stays small.
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

/// `zlib` is `Some` when the coding says which framing it is; otherwise the first two bytes
/// decide, gathered in `head` until `state` can be made.
fn deflate_step(
    zlib: Option<bool>,
    head: &mut Vec<u8>,
    state: &mut Option<flate2::Decompress>,
    ended: &mut bool,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
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
    if !head.is_empty() {
        // The two bytes read to tell zlib from raw deflate go first.
        let used = inflate(dec, ended, head, out)?;
        head.drain(..used);
        if !head.is_empty() {
            return Ok(consumed);
        }
    }
    if out.len() == out.capacity() {
        return Ok(consumed);
    }
    Ok(consumed + inflate(dec, ended, &input[consumed..], out)?)
}

/// One call of the deflate decoder over `src`; returns how much of it was consumed.
fn inflate(
    dec: &mut flate2::Decompress,
    ended: &mut bool,
    src: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
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
}

type Brotli = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

fn brotli_step(
    state: &mut Brotli,
    ended: &mut bool,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
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

fn zstd_step(
    ctx: &mut zstd::stream::raw::Decoder<'static>,
    between_frames: &mut bool,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
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
