//! The matcher and the streaming search of one file: every form of every real value
//! ([`keyswap_scrub::encodings::forms`], the scrubber's own encoder) in one automaton built by the
//! scrubber's [`Replacer`], read in chunks with an overlap of the longest form less one byte,
//! so that a value split across two reads is still found, and line numbers counted as the
//! bytes stream past. No file is read twice and none is held whole in memory.
//!
//! Never formats a value or a form: a match is reported as a secret's name and a line.

use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use keyswap_config::Config;
use secrecy::ExposeSecret;

use keyswap_scrub::encodings;
use keyswap_scrub::replace::Replacer;

/// How many bytes are read at a time.
const CHUNK: usize = 256 * 1024;

/// At most this many hits are kept per file (a generated file may repeat a value
/// thousands of times; the first ones are enough to find it).
pub const MAX_HITS_PER_FILE: usize = 20;

/// In what form a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    /// The value as it is (in any ASCII case).
    Raw,
    /// Base64, percent-encoding or a JSON escape of it.
    Encoded,
}

impl Form {
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Raw => "raw",
            Form::Encoded => "encoded",
        }
    }
}

/// Every form of every real value of a config, in one automaton. Each pattern's
/// "replacement" is its label, `INDEX:r` (raw) or `INDEX:e` (encoded), never written anywhere:
/// the automaton only finds.
pub struct ScanSet {
    matcher: Replacer,
    names: Vec<String>,
    /// Files a secret is read from (`from_file`), canonical: they are where the value belongs.
    sources: Vec<std::path::PathBuf>,
}

impl std::fmt::Debug for ScanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanSet")
            .field("secrets", &self.names)
            .field("patterns", &self.matcher.pattern_count())
            .finish()
    }
}

impl ScanSet {
    /// All configured secrets' current values, in every form the scrubber knows, and the
    /// files they are read from (relative paths resolved as the config's loader does, from
    /// the working directory).
    pub fn from_config(config: &Config) -> Result<ScanSet, aho_corasick::BuildError> {
        let mut pairs = Vec::new();
        for (i, secret) in config.secrets.iter().enumerate() {
            let forms = encodings::forms(secret.value.expose_secret(), "");
            // The raw value comes first (encodings::forms says so); with_case_variants keeps
            // the first of equal patterns, so a form equal to the raw value stays "raw".
            for (n, (form, _)) in forms.into_iter().enumerate() {
                let kind = if n == 0 { 'r' } else { 'e' };
                pairs.push((form, Bytes::from(format!("{i}:{kind}"))));
            }
        }
        let sources = config
            .secrets
            .iter()
            .filter_map(|s| match &s.source {
                keyswap_config::SecretSource::File(path) => path.canonicalize().ok(),
                _ => None,
            })
            .collect();
        Ok(ScanSet {
            matcher: Replacer::with_case_variants(pairs)?,
            names: config.secrets.iter().map(|s| s.name.clone()).collect(),
            sources,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// The secrets' names, in config order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `canonical` is a file a secret is read from.
    pub fn is_source(&self, canonical: &std::path::Path) -> bool {
        self.sources.iter().any(|s| s == canonical)
    }

    fn label(&self, label: &[u8]) -> Option<(usize, Form)> {
        let text = std::str::from_utf8(label).ok()?;
        let (index, kind) = text.split_once(':')?;
        let form = match kind {
            "r" | "R" => Form::Raw,
            _ => Form::Encoded,
        };
        Some((index.parse().ok()?, form))
    }
}

/// One place a value was found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHit {
    /// 1-based.
    pub line: u64,
    /// Index into [`ScanSet::names`].
    pub secret: usize,
    pub form: Form,
}

/// How the search of one file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Read to the end.
    Done,
    /// Stopped at the deadline, this many bytes in.
    Deadline(u64),
    /// Stopped at the size limit (the file grew past it while being read).
    TooLarge,
}

/// Searches `reader` to its end (or `deadline`, or `max_bytes`), reading each byte once;
/// `size_hint` (the file's size) bounds the buffer for small files.
/// Hits are in order, one per (line, secret, form), at most [`MAX_HITS_PER_FILE`].
pub fn scan_reader(
    set: &ScanSet,
    mut reader: impl Read,
    size_hint: u64,
    deadline: Instant,
    max_bytes: u64,
) -> std::io::Result<(Vec<FileHit>, Ended, u64)> {
    let keep = set.matcher.longest().saturating_sub(1);
    let chunk = usize::try_from(size_hint.saturating_add(1))
        .unwrap_or(CHUNK)
        .clamp(keep.max(1), CHUNK);
    // Allocated (and zeroed) once: the carried tail is moved to the front, never re-zeroed.
    let mut buf = vec![0u8; keep + chunk];
    let mut hits: Vec<FileHit> = Vec::new();
    // Bytes at the start of `buf` carried over from the previous read (already searched).
    let mut carried = 0usize;
    // The line `buf[0]` is on.
    let mut line = 1u64;
    let mut total = 0u64;
    loop {
        let n = read_some(&mut reader, &mut buf[carried..carried + chunk])?;
        if n == 0 {
            return Ok((hits, Ended::Done, total));
        }
        total += n as u64;
        let end = carried + n;
        let window = &buf[..end];
        let mut counted_to = 0usize;
        let mut line_at = line;
        for (range, label) in set.matcher.find_spans(window) {
            // A match that ends inside the carried bytes lay wholly in the previous read.
            if range.end <= carried || hits.len() >= MAX_HITS_PER_FILE {
                continue;
            }
            let Some((secret, form)) = set.label(label) else {
                continue;
            };
            line_at += newlines(&window[counted_to..range.start]);
            counted_to = range.start;
            let hit = FileHit {
                line: line_at,
                secret,
                form,
            };
            if !hits.contains(&hit) {
                hits.push(hit);
            }
        }
        let cut = end.saturating_sub(keep);
        line += newlines(&buf[..cut]);
        buf.copy_within(cut..end, 0);
        carried = end - cut;
        if total >= max_bytes {
            return Ok((hits, Ended::TooLarge, total));
        }
        if Instant::now() >= deadline {
            return Ok((hits, Ended::Deadline(total), total));
        }
    }
}

/// Reads until `buf` is full or the end: fewer, larger searches.
fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const VALUE: &str = "unit-test-value-0123456789abcdef";

    fn set() -> ScanSet {
        let pairs = encodings::forms(VALUE, "")
            .into_iter()
            .enumerate()
            .map(|(n, (f, _))| (f, Bytes::from(if n == 0 { "0:r" } else { "0:e" })))
            .collect();
        ScanSet {
            matcher: Replacer::with_case_variants(pairs).expect("automaton"),
            names: vec!["unit".into()],
            sources: Vec::new(),
        }
    }

    fn scan(data: &[u8]) -> Vec<FileHit> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (hits, ended, total) =
            scan_reader(&set(), data, data.len() as u64, deadline, u64::MAX).expect("read");
        assert_eq!(ended, Ended::Done);
        assert_eq!(total, data.len() as u64);
        hits
    }

    /// A reader that hands out one byte fewer than asked, so chunk edges fall everywhere.
    struct Dribble<'a>(&'a [u8], usize);

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.0.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_value_across_a_chunk_boundary_is_found_once_on_its_line() {
        // Place the value so that it straddles the first CHUNK boundary at every offset.
        for offset in 1..VALUE.len() {
            let mut data = b"x\n".repeat((CHUNK - offset) / 2);
            data.resize(CHUNK - offset, b'y');
            let lines = 1 + data.iter().filter(|&&b| b == b'\n').count() as u64;
            data.extend_from_slice(VALUE.as_bytes());
            data.extend_from_slice(b"\nafter\n");
            let hits = scan(&data);
            assert_eq!(hits.len(), 1, "offset {offset}");
            assert_eq!(hits[0].line, lines, "offset {offset}");
            assert_eq!(hits[0].form, Form::Raw);
        }
    }

    #[test]
    fn short_reads_change_nothing() {
        let text = format!("a\nb {VALUE}\nc\n{}\n", VALUE.to_uppercase());
        let deadline = Instant::now() + Duration::from_secs(60);
        let (hits, _, _) =
            scan_reader(&set(), Dribble(text.as_bytes(), 3), 4, deadline, u64::MAX).expect("read");
        let lines: Vec<u64> = hits.iter().map(|h| h.line).collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn encoded_forms_are_labelled_encoded() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let hits = scan(format!("key: {b64}\n").as_bytes());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].form, Form::Encoded);
    }

    #[test]
    fn a_clean_file_has_no_hit() {
        assert!(scan(b"nothing here\nunit-test-value-0123\n").is_empty());
    }
}
