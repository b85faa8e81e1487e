//! The audit log's hash chain: what the writer thread adds to every line, and how a file's
//! end is read back when a segment starts (a start, a reopen after rotation).
//!
//! Every line of an audit file is a JSON object that begins with `"seq"` and `"prev"`:
//! `seq` counts lines from 0 at the top of a file, `prev` is the hex SHA-256 (with
//! `audit.key_file`: HMAC-SHA-256 under that key) of the exact bytes of the line before it,
//! without its newline. A *segment* starts with an `audit_start` header line naming its start
//! time, the chain's algorithm and key id; its `prev` links to the line before it: the end
//! of the previous segment in the same file (a restart), of the previous file (a rotation),
//! or `null` when there was none. Hashing is done by the writer with the writer's key, so
//! `prev` of line *n* is always `H_key(line n-1)` where `key` is the key of line *n*'s
//! segment.
//!
//! This module never formats the key: only its id, a short hash of it, appears anywhere.

use std::fs::File;
use std::os::unix::fs::FileExt;

use keyswap_config::AuditKey;
use ring::{digest, hmac};
use secrecy::ExposeSecret;
use serde::Serialize;

/// `event` of a segment's header line.
pub const HEADER_EVENT: &str = "audit_start";
/// The `chain` of an unkeyed segment.
pub const CHAIN_SHA256: &str = "sha256";
/// The `chain` of a segment keyed by `audit.key_file`.
pub const CHAIN_HMAC: &str = "hmac-sha256";
/// How far back from a file's end a start looks for its last whole line; a record is a few
/// hundred bytes, so a file whose last line is longer than this is not keyswap's.
const MAX_TAIL: u64 = 16 << 20;

/// How the lines of one segment are hashed.
#[derive(Clone)]
pub struct LineHasher {
    key: Option<(hmac::Key, String)>,
}

impl LineHasher {
    /// Plain SHA-256: anyone who can write the file can recompute the chain, so it catches
    /// accidents and careless edits, not a careful forger.
    pub fn unkeyed() -> LineHasher {
        LineHasher { key: None }
    }

    /// HMAC-SHA-256 under `key`: recomputing the chain needs the key.
    pub fn keyed(key: &[u8]) -> LineHasher {
        LineHasher {
            key: Some((hmac::Key::new(hmac::HMAC_SHA256, key), key_id(key))),
        }
    }

    pub fn from_config(key: Option<&AuditKey>) -> LineHasher {
        match key {
            Some(key) => LineHasher::keyed(key.value.expose_secret()),
            None => LineHasher::unkeyed(),
        }
    }

    /// The key's id (`None`: unkeyed).
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|(_, id)| id.as_str())
    }

    pub fn chain_name(&self) -> &'static str {
        if self.key.is_some() {
            CHAIN_HMAC
        } else {
            CHAIN_SHA256
        }
    }

    /// The hash of one line's bytes (without its newline).
    pub fn hash(&self, line: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        match &self.key {
            Some((key, _)) => out.copy_from_slice(hmac::sign(key, line).as_ref()),
            None => out.copy_from_slice(digest::digest(&digest::SHA256, line).as_ref()),
        }
        out
    }
}

/// A key's public name: the first 8 bytes of a domain-separated SHA-256 of it, in hex. It
/// tells which key a segment needs; it does not help recover the key (a 32-byte key is
/// checked at load).
pub fn key_id(key: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"keyswap audit key id\0");
    ctx.update(key);
    hex(&ctx.finish().as_ref()[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A segment's header line (before `seq` and `prev` are put in front).
#[derive(Serialize)]
struct Header<'a> {
    event: &'static str,
    ts: String,
    chain: &'static str,
    key_id: Option<&'a str>,
    pid: u32,
    /// The last line of the file was cut short (a crash mid-write) and is this many bytes
    /// long; the header ended it with a newline and links past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    torn_tail: Option<usize>,
}

/// The chain's state as the writer carries it from one line to the next.
pub struct Chain {
    hasher: LineHasher,
    /// `seq` of the next line.
    next_seq: u64,
    /// Hash of the last line written (`None`: nothing before the next line).
    last: Option<[u8; 32]>,
}

impl Chain {
    pub fn new(hasher: LineHasher) -> Chain {
        Chain {
            hasher,
            next_seq: 0,
            last: None,
        }
    }

    pub fn hasher(&self) -> &LineHasher {
        &self.hasher
    }

    /// The state to roll back to if a write fails.
    pub fn mark(&self) -> (u64, Option<[u8; 32]>) {
        (self.next_seq, self.last)
    }

    pub fn reset(&mut self, mark: (u64, Option<[u8; 32]>)) {
        (self.next_seq, self.last) = mark;
    }

    /// Where a new segment continues from: the file's end as read by [`read_tail`] if the
    /// file has any, else the last line this writer wrote (`carry`: a rotation), else
    /// nothing (a first start).
    pub fn start_segment(&mut self, tail: &Tail, carry: bool) {
        match &tail.last_line {
            Some(line) => {
                self.last = Some(self.hasher.hash(line));
                self.next_seq = seq_of(line).map_or(0, |s| s + 1);
            }
            None if tail.torn == 0 => {
                // An empty file: numbering restarts; the link is kept on a rotation only.
                self.next_seq = 0;
                if !carry {
                    self.last = None;
                }
            }
            None => {
                self.next_seq = 0;
                self.last = None;
            }
        }
    }

    /// Appends the segment header (after a newline that ends a torn tail, if any).
    pub fn header(&mut self, ts: String, torn_tail: usize, out: &mut Vec<u8>) {
        if torn_tail > 0 {
            out.push(b'\n');
        }
        let header = Header {
            event: HEADER_EVENT,
            ts,
            chain: self.hasher.chain_name(),
            key_id: self.hasher.key_id(),
            pid: std::process::id(),
            torn_tail: (torn_tail > 0).then_some(torn_tail),
        };
        match serde_json::to_vec(&header) {
            Ok(body) => self.append(&body, out),
            Err(e) => tracing::error!(error = %e, "could not build the audit header"),
        }
    }

    /// Appends one record (a serialised JSON object, no newline) with `seq` and `prev` put
    /// in front of its fields, and its newline.
    pub fn append(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(self.next_seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":");
        match &self.last {
            Some(hash) => {
                out.push(b'"');
                out.extend_from_slice(hex(hash).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        match record.strip_prefix(b"{") {
            Some(b"}") => out.push(b'}'),
            Some(rest) => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            // Records are always objects; anything else is kept as a field, never dropped.
            None => {
                out.extend_from_slice(b",\"record\":");
                out.extend_from_slice(record);
                out.push(b'}');
            }
        }
        self.last = Some(self.hasher.hash(&out[start..]));
        self.next_seq += 1;
        out.push(b'\n');
    }
}

/// `seq` of a chained line, if it is one.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: Option<u64>,
    }
    serde_json::from_slice::<Seq>(line).ok()?.seq
}

/// The end of an existing file: its last whole line and the length of a torn line after it.
#[derive(Debug, Default)]
pub struct Tail {
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last newline (a line cut short by a crash).
    pub torn: usize,
}

/// Reads the end of `file` (`len` bytes long) backwards until it holds the last whole line.
pub fn read_tail(file: &File, len: u64) -> std::io::Result<Tail> {
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let newlines = tail.iter().filter(|&&b| b == b'\n').count();
        let reached_start = pos == 0;
        if newlines >= 2 || reached_start || len - pos >= MAX_TAIL {
            break;
        }
        let chunk = pos.min(64 * 1024);
        pos -= chunk;
        let mut buf = vec![0u8; usize::try_from(chunk).unwrap_or(0)];
        file.read_exact_at(&mut buf, pos)?;
        buf.extend_from_slice(&tail);
        tail = buf;
    }
    let Some(last_nl) = tail.iter().rposition(|&b| b == b'\n') else {
        // No newline at all: everything is one torn line (or a line too long to be ours).
        return Ok(Tail {
            last_line: None,
            torn: if pos == 0 { tail.len() } else { 0 },
        });
    };
    let torn = tail.len() - last_nl - 1;
    let body = &tail[..last_nl];
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if pos == 0 => body,
        // The line starts before what was read: too long to be a record of ours.
        None => {
            return Ok(Tail {
                last_line: None,
                torn,
            })
        }
    };
    Ok(Tail {
        last_line: Some(line.to_vec()),
        torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_link_to_the_hash_of_the_line_before() {
        let mut chain = Chain::new(LineHasher::unkeyed());
        let mut out = Vec::new();
        chain.header("t".into(), 0, &mut out);
        chain.append(br#"{"event":"request","a":1}"#, &mut out);
        chain.append(b"{}", &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(r#"{"seq":0,"prev":null,"event":"audit_start""#));
        let h0 = hex(&LineHasher::unkeyed().hash(lines[0].as_bytes()));
        assert_eq!(
            lines[1],
            format!(r#"{{"seq":1,"prev":"{h0}","event":"request","a":1}}"#)
        );
        let h1 = hex(&LineHasher::unkeyed().hash(lines[1].as_bytes()));
        assert_eq!(lines[2], format!(r#"{{"seq":2,"prev":"{h1}"}}"#));
    }

    #[test]
    fn keyed_hash_differs_and_key_id_is_short() {
        let key = [7u8; 32];
        let keyed = LineHasher::keyed(&key);
        assert_ne!(keyed.hash(b"x"), LineHasher::unkeyed().hash(b"x"));
        assert_eq!(keyed.key_id().unwrap().len(), 16);
        assert_eq!(keyed.chain_name(), CHAIN_HMAC);
    }

    #[test]
    fn tail_finds_the_last_whole_line_and_a_torn_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let read = |content: &[u8]| {
            let mut f = File::create(&path).unwrap();
            f.write_all(content).unwrap();
            let f = File::open(&path).unwrap();
            read_tail(&f, content.len() as u64).unwrap()
        };
        let t = read(b"a\nbb\n");
        assert_eq!((t.last_line.as_deref(), t.torn), (Some(&b"bb"[..]), 0));
        let t = read(b"a\nbb\ncc");
        assert_eq!((t.last_line.as_deref(), t.torn), (Some(&b"bb"[..]), 2));
        let t = read(b"only\n");
        assert_eq!((t.last_line.as_deref(), t.torn), (Some(&b"only"[..]), 0));
        let t = read(b"torn");
        assert_eq!((t.last_line.as_deref(), t.torn), (None, 4));
        let long: Vec<u8> = std::iter::repeat_n(b'x', 200_000)
            .chain(*b"\nlast\n")
            .collect();
        let t = read(&long);
        assert_eq!(t.last_line.as_deref(), Some(&b"last"[..]));
    }
}
