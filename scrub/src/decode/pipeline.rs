//! Stacked decoders run as one resumable pipeline, with the expansion bound checked on what
//! the last stage yields.

use std::io;

use bytes::BytesMut;

use super::stage::Stage;
use super::{invalid, Coding, EXPANSION_ALLOWANCE, MAX_EXPANSION, STEP};

/// Stacked decoders, resumable: each call to [`Pipeline::next`] yields at most [`STEP`]
/// decoded bytes, so no stage ever holds more than one step of its predecessor's output.
pub(super) struct Pipeline {
    stages: Vec<Stage>,
    /// Pending input of each stage (stage 0: compressed bytes not yet consumed).
    inputs: Vec<BytesMut>,
    /// Whether a stage may still produce output from what it has consumed.
    draining: Vec<bool>,
    pub(super) fed: u64,
    pub(super) decoded: u64,
}

impl Pipeline {
    /// `applied` in the order the codings were applied; decoding runs in reverse.
    pub(super) fn new(applied: &[Coding]) -> io::Result<Pipeline> {
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

    pub(super) fn push(&mut self, data: &[u8]) {
        self.fed += data.len() as u64;
        self.inputs[0].extend_from_slice(data);
        self.draining[0] = true;
    }

    /// The next decoded bytes, or `None` when everything fed so far has been decoded.
    pub(super) fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
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

    pub(super) fn finish(&mut self) -> io::Result<()> {
        if self.fed == 0 {
            // An empty body is empty in every coding.
            return Ok(());
        }
        self.stages.iter_mut().try_for_each(Stage::finish)
    }
}
