//! What `keyswap audit verify` reports: where a line is, the first broken link, and what a
//! chain that verifies holds.

use std::fmt;
use std::path::PathBuf;

/// Where a line is: file and 1-based line number.
#[derive(Debug, Clone)]
pub struct Loc {
    pub file: PathBuf,
    pub line: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The first broken link (or a file that cannot be checked at all).
#[derive(Debug, Clone)]
pub struct Break {
    pub at: Loc,
    pub message: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// What a chain that verifies holds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: usize,
    pub records: u64,
    pub segments: u64,
    /// The last whole line: where it is, its `seq` and its hash (under its segment's key).
    pub last: Option<(Loc, u64, String)>,
    /// Chains of the segments: `sha256` or `hmac-sha256 key KEYID`, without repeats.
    pub chains: Vec<String>,
    /// Things that are not breaks: a truncated tail, a recovered torn line, a first file
    /// that continues an earlier one.
    pub notes: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} file(s), {} record(s) in {} segment(s), chain {}",
            self.files,
            self.records,
            self.segments,
            self.chains.join(" + ")
        )?;
        if let Some((at, seq, hash)) = &self.last {
            write!(f, "; last line {at} seq {seq} hash {hash}")?;
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}
