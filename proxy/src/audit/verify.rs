//! `keyswap audit verify`: walks the hash chain of one or several audit files given in order
//! (a rotated set is one chain) and stops at the first broken link, naming the file and the
//! line to look at. See [`crate::audit::chain`] for the format.
//!
//! What a broken link means, by what is found:
//! - a line that is not a chained JSON record: edited, inserted, or cut short;
//! - `seq` not one more than the line before: records deleted, inserted or reordered;
//! - `prev` not the hash of the line before, with `seq` in order: the line before was edited;
//! - a header that does not link to the line before it: a file missing or out of order.
//!
//! A last line without its newline at the very end of the set is a crash's torn write, not
//! tampering: it is reported as a truncated tail and the chain up to it verifies. Records
//! deleted from the end of the newest file cannot be told from records never written; the
//! summary names the last line's hash so it can be compared with a copy kept elsewhere.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::audit::chain::{hex, LineHasher, CHAIN_HMAC, CHAIN_SHA256, HEADER_EVENT};

mod report;

pub use report::{Break, Loc, Summary};

/// The fields of a line that the chain is about.
#[derive(Deserialize)]
struct Fields {
    seq: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    prev: Option<Option<String>>,
    event: Option<String>,
    chain: Option<String>,
    key_id: Option<String>,
    torn_tail: Option<usize>,
}

/// `Some(None)` for an explicit `null`, `None` for a missing field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A line accepted into the chain.
struct Link {
    line: Vec<u8>,
    seq: u64,
    at: Loc,
}

/// A line that failed, reported unless the next line is a header that says it was torn.
struct Held {
    at: Loc,
    len: usize,
    problem: Break,
}

struct Walk<'k> {
    keys: &'k [LineHasher],
    hasher: Option<LineHasher>,
    last: Option<Link>,
    before_last: Option<Link>,
    held: Option<Held>,
    summary: Summary,
}

/// Verifies `files` in order as one chain. `keys` are the HMAC keys segments may need
/// (given any, every segment must be keyed with one of them).
pub fn verify(files: &[PathBuf], keys: &[LineHasher]) -> Result<Summary, Break> {
    let mut walk = Walk {
        keys,
        hasher: None,
        last: None,
        before_last: None,
        held: None,
        summary: Summary {
            files: files.len(),
            records: 0,
            segments: 0,
            last: None,
            chains: Vec::new(),
            notes: Vec::new(),
        },
    };
    for (i, path) in files.iter().enumerate() {
        walk.file(path, i + 1 == files.len())?;
    }
    if let Some(held) = walk.held.take() {
        return Err(held.problem);
    }
    let Some(last) = &walk.last else {
        return Err(Break {
            at: Loc {
                file: files.first().cloned().unwrap_or_default(),
                line: 0,
            },
            message: "no audit records: the file(s) are empty".into(),
        });
    };
    let hash = walk
        .hasher
        .as_ref()
        .map(|h| hex(&h.hash(&last.line)))
        .unwrap_or_default();
    walk.summary.last = Some((last.at.clone(), last.seq, hash));
    Ok(walk.summary)
}

impl Walk<'_> {
    fn file(&mut self, path: &Path, last_file: bool) -> Result<(), Break> {
        let at = |line| Loc {
            file: path.to_path_buf(),
            line,
        };
        let file = File::open(path).map_err(|e| Break {
            at: at(0),
            message: format!("cannot be read: {e}"),
        })?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let read = reader.read_until(b'\n', &mut buf).map_err(|e| Break {
                at: at(n + 1),
                message: format!("cannot be read: {e}"),
            })?;
            if read == 0 {
                return Ok(());
            }
            n += 1;
            let Some(line) = buf.strip_suffix(b"\n") else {
                return self.torn_end(at(n), buf.len(), last_file);
            };
            self.line(line, at(n))?;
        }
    }

    /// A last line without its newline.
    fn torn_end(&mut self, at: Loc, len: usize, last_file: bool) -> Result<(), Break> {
        if let Some(held) = self.held.take() {
            return Err(held.problem);
        }
        if !last_file {
            return Err(Break {
                at,
                message: "the line is cut short (no newline) but more files follow: the file was truncated, or the files are out of order".into(),
            });
        }
        self.summary.notes.push(format!(
            "truncated tail at {at} ({len} bytes cut short, e.g. by a crash mid-write; not part of the chain)"
        ));
        Ok(())
    }

    fn line(&mut self, line: &[u8], at: Loc) -> Result<(), Break> {
        let fields = serde_json::from_slice::<Fields>(line).ok();
        let is_header = fields
            .as_ref()
            .is_some_and(|f| f.event.as_deref() == Some(HEADER_EVENT));
        if let Some(held) = self.held.take() {
            let recovered = is_header
                && fields.as_ref().and_then(|f| f.torn_tail) == Some(held.len)
                && held.at.file == at.file
                && held.at.line + 1 == at.line;
            if !recovered {
                return Err(held.problem);
            }
            self.summary.notes.push(format!(
                "torn line at {} ({} bytes) ended by a restart, as its header says",
                held.at, held.len
            ));
            let fields = fields.as_ref().expect("a header was parsed");
            return self.header(line, fields, at, false);
        }
        let Some(fields) = fields else {
            self.hold(
                line,
                &at,
                at.clone(),
                "not a JSON audit record: the line was edited, inserted or cut short".into(),
            );
            return Ok(());
        };
        if is_header {
            return self.header(line, &fields, at, true);
        }
        self.record(line, &fields, at)
    }

    fn hold(&mut self, line: &[u8], at: &Loc, report: Loc, message: String) {
        self.held = Some(Held {
            at: at.clone(),
            len: line.len(),
            problem: Break {
                at: report,
                message,
            },
        });
    }

    fn record(&mut self, line: &[u8], fields: &Fields, at: Loc) -> Result<(), Break> {
        let (Some(last), Some(hasher)) = (&self.last, &self.hasher) else {
            return Err(Break {
                at,
                message: format!("the chain does not start with an {HEADER_EVENT} header: this is not the first file of the chain, or lines were removed from its top"),
            });
        };
        let (Some(seq), Some(Some(prev))) = (fields.seq, &fields.prev) else {
            self.hold(
                line,
                &at,
                at.clone(),
                "has no seq or prev: not a chained record (inserted?)".into(),
            );
            return Ok(());
        };
        let expected = last.seq + 1;
        if seq != expected {
            let what = if seq > expected {
                format!(
                    "{} record(s) missing before this line, or lines reordered",
                    seq - expected
                )
            } else {
                "a line was inserted, repeated or moved here".to_string()
            };
            let message = format!("seq is {seq} where {expected} was expected: {what}");
            self.hold(line, &at, at.clone(), message);
            return Ok(());
        }
        if *prev != hex(&hasher.hash(&last.line)) {
            let message = format!(
                "the line was edited: its hash does not match the prev that {at} recorded (or that prev was edited)"
            );
            let report = last.at.clone();
            self.hold(line, &at, report, message);
            return Ok(());
        }
        self.summary.records += 1;
        self.accept(line, seq, at);
        Ok(())
    }

    fn header(
        &mut self,
        line: &[u8],
        fields: &Fields,
        at: Loc,
        may_be_torn_unheld: bool,
    ) -> Result<(), Break> {
        let fail = |message: String| Break {
            at: at.clone(),
            message,
        };
        let hasher = self.segment_hasher(fields).map_err(fail)?;
        // A torn line that happened to hold a whole record (cut just before its newline)
        // was accepted; its header links past it.
        let target = if may_be_torn_unheld && self.last_was_torn(fields, &at) {
            self.before_last.as_ref()
        } else {
            self.last.as_ref()
        };
        let Some(Some(prev)) = &fields.prev else {
            if fields.prev.is_none() {
                return Err(fail("the header has no prev".into()));
            }
            if let Some(target) = target {
                return Err(fail(format!(
                    "the chain starts again here without a link to {}: what came before cannot be vouched for (lines removed, or keyswap started on an empty file while an older one was kept)",
                    target.at
                )));
            }
            return self.begin_segment(line, fields, at, hasher, 0);
        };
        let expected = match target {
            None => {
                self.summary.notes.push(format!(
                    "{at} continues a chain from a file that was not given (link not checked)"
                ));
                0
            }
            Some(target) => {
                check_link(target, prev, &hasher, &at).map_err(fail)?;
                if target.at.file == at.file {
                    target.seq + 1
                } else {
                    0
                }
            }
        };
        self.begin_segment(line, fields, at, hasher, expected)
    }

    /// The hasher a segment's header calls for, among the keys given.
    fn segment_hasher(&self, fields: &Fields) -> Result<LineHasher, String> {
        let hasher = match &fields.key_id {
            Some(id) => self
                .keys
                .iter()
                .find(|k| k.key_id() == Some(id.as_str()))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "this segment is chained with HMAC key id {id}; pass that key with --key-file"
                    )
                })?,
            None if !self.keys.is_empty() => {
                return Err(
                    "this segment is not keyed although --key-file was given: the chain was recomputed without the key, or written before audit.key_file was set".into(),
                )
            }
            None => LineHasher::unkeyed(),
        };
        let chain = fields.chain.as_deref().unwrap_or_default();
        if chain != hasher.chain_name() || !matches!(chain, CHAIN_SHA256 | CHAIN_HMAC) {
            return Err(format!(
                "the header names chain {chain:?}, expected {:?}",
                hasher.chain_name()
            ));
        }
        Ok(hasher)
    }

    /// Whether the header at `at` says the accepted line just before it was torn (and so
    /// links to the line before that one); notes it when so.
    fn last_was_torn(&mut self, fields: &Fields, at: &Loc) -> bool {
        let (Some(n), Some(last)) = (fields.torn_tail, &self.last) else {
            return false;
        };
        if last.line.len() == n && last.at.file == at.file && last.at.line + 1 == at.line {
            self.summary.notes.push(format!(
                "torn line at {} ({n} bytes) ended by a restart, as its header says",
                last.at
            ));
            return true;
        }
        false
    }

    fn begin_segment(
        &mut self,
        line: &[u8],
        fields: &Fields,
        at: Loc,
        hasher: LineHasher,
        expected_seq: u64,
    ) -> Result<(), Break> {
        let seq = fields.seq.unwrap_or(u64::MAX);
        let expected = if at.line == 1 { 0 } else { expected_seq };
        if seq != expected {
            return Err(Break {
                at,
                message: format!(
                    "seq is {seq} where {expected} was expected: records deleted, inserted or reordered here"
                ),
            });
        }
        let chain = match hasher.key_id() {
            Some(id) => format!("{} key {id}", hasher.chain_name()),
            None => hasher.chain_name().to_string(),
        };
        if !self.summary.chains.contains(&chain) {
            self.summary.chains.push(chain);
        }
        self.summary.segments += 1;
        self.hasher = Some(hasher);
        self.accept(line, seq, at);
        Ok(())
    }

    fn accept(&mut self, line: &[u8], seq: u64, at: Loc) {
        self.before_last = self.last.take();
        self.last = Some(Link {
            line: line.to_vec(),
            seq,
            at,
        });
    }
}

/// Whether a header's `prev` is the hash of `target`, the line it must link to.
fn check_link(target: &Link, prev: &str, hasher: &LineHasher, at: &Loc) -> Result<(), String> {
    if prev == hex(&hasher.hash(&target.line)) {
        return Ok(());
    }
    Err(if target.at.file == at.file {
        format!(
            "the header does not link to {}: that line was edited, or lines were removed or inserted between them",
            target.at
        )
    } else {
        format!(
            "the header does not link to the last line of the file before ({}): a file is missing or out of order, or the end of that file was edited or cut",
            target.at
        )
    })
}
