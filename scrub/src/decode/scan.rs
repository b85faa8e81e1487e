//! The scan of an undeclared-compressed body: its original bytes are held until everything
//! they decode to has been scanned clean.

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};

use super::pipeline::Pipeline;
use super::SCAN_SLICE;
use crate::replace::Replacer;

/// Scanning state of a body that begins with a compression magic and declares no coding.
pub(super) struct Scan {
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
    /// A scan whose decoded copy runs through `pipeline`.
    pub(super) fn new(pipeline: Pipeline) -> Scan {
        Scan {
            pipeline: Some(pipeline),
            held: BytesMut::new(),
            released: 0,
            seen: 0,
            raw_carry: BytesMut::new(),
            decoded_carry: BytesMut::new(),
            checkpoints: VecDeque::new(),
        }
    }

    /// Scans one frame of original bytes; `Err` when a real value (or a bomb) is found.
    pub(super) fn feed(&mut self, scrubber: &Replacer, data: &Bytes) -> Result<(), &'static str> {
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
    pub(super) fn releasable(&mut self) -> Bytes {
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
    pub(super) fn rest(&mut self) -> Bytes {
        self.released = self.seen;
        self.held.split().freeze()
    }
}
