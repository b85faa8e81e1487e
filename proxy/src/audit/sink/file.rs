//! Where audit records go: one JSON line each, written on a dedicated thread so the request
//! path never waits on the disk (see [`AuditSink`]); the file is created with mode 0600. The writer thread chains every line to the one before it
//! ([`crate::audit::chain`]) and reopens the file on request (log rotation).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keyswap_config::AuditLog;
use serde::Serialize;

use crate::audit::chain::{read_tail, Chain, LineHasher, Tail};
use crate::audit::record::{timestamp, AuditRecord, LifecycleRecord};
use crate::error::ProxyError;

/// How many bytes of records may wait for the writer before new ones are counted as dropped
/// (a disk that stopped answering must not grow keyswap's memory without bound).
const MAX_PENDING_BYTES: usize = 64 << 20;
/// How long the writer lets records gather between writes: the most a record waits.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Serialised records waiting for the writer, and how far writing has got.
struct Pending {
    lines: Vec<u8>,
    /// Records appended so far, ever.
    appended: u64,
    /// Records written and flushed so far, ever.
    written: u64,
    /// Someone waits in [`AuditSink::flush_blocking`]: write now instead of after the pause.
    flush_requested: bool,
    /// Someone waits in [`AuditSink::sync_blocking`]: `fdatasync` after this batch.
    sync_requested: bool,
    /// Someone waits in [`AuditSink::reopen_blocking`]: reopen the file after this batch.
    reopen_requested: bool,
    /// Reopens done so far, ever.
    reopened: u64,
    /// The sink was dropped: write what is left and end the writer thread.
    closed: bool,
}

struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the writer early (a flush request) and wakes flush waiters (a write done).
    changed: Condvar,
}

/// Where audit records go. Cheap to call from any task; never blocks on the disk.
///
/// The request path serialises its record into a shared buffer (a few microseconds, under a
/// lock held only for that) and returns; a dedicated thread writes the buffer out every
/// [`BATCH_PAUSE`]. So a busy proxy makes one write per batch, not one wake-up, context
/// switch and write per request, and the writer's turn on the CPU is one short `write`.
///
/// The writer thread is the only one that numbers and chains records ([`crate::audit::chain`]):
/// it puts `seq` and `prev` in front of each record as it writes it, so the chain follows
/// the file's order exactly and the request path takes no further lock.
///
/// Crash safety: each write call carries whole lines only (a batch of records, each with
/// its newline, or a segment header), appended with `O_APPEND`, so after a `kill -9` a record
/// is in the file whole or not at all — what was queued and not yet written (at most
/// [`BATCH_PAUSE`] of records) is lost. Only a write cut by the kernel itself (a full disk,
/// or a power cut) can leave a torn last line; the next start ends it with a newline and
/// says so in its header (`torn_tail`), and `keyswap audit verify` reports it as a truncated
/// tail. The file is `fdatasync`ed at most every [`SYNC_EVERY`], on reopen and on shutdown:
/// a power cut may lose up to that much.
pub struct AuditSink {
    queue: Arc<Queue>,
    dropped: AtomicU64,
    key_id: Option<String>,
}

impl AuditSink {
    /// Opens (creating, mode 0600) the audit log and starts a chain segment in it, unkeyed.
    pub fn open(target: &AuditLog) -> Result<AuditSink, ProxyError> {
        AuditSink::open_chained(target, LineHasher::unkeyed())
    }

    /// Opens the audit log and starts a chain segment hashed with `hasher`: its header
    /// links to the file's last line when the file already has records (a restart).
    pub fn open_chained(target: &AuditLog, hasher: LineHasher) -> Result<AuditSink, ProxyError> {
        let key_id = hasher.key_id().map(str::to_string);
        let output = Output::open(target, hasher)?;
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending {
                lines: Vec::new(),
                appended: 0,
                written: 0,
                flush_requested: false,
                sync_requested: false,
                reopen_requested: false,
                reopened: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let writer_queue = queue.clone();
        std::thread::Builder::new()
            .name("keyswap-audit".into())
            .spawn(move || write_loop(&writer_queue, output))
            .map_err(|source| ProxyError::Io {
                what: "audit writer thread".into(),
                source,
            })?;
        Ok(AuditSink {
            queue,
            dropped: AtomicU64::new(0),
            key_id,
        })
    }

    pub fn record(&self, record: AuditRecord) {
        self.write(&record);
    }

    pub fn lifecycle(&self, record: LifecycleRecord) {
        self.write(&record);
    }

    fn write<T: Serialize>(&self, record: &T) {
        let Ok(mut pending) = self.queue.pending.lock() else {
            return;
        };
        if pending.lines.len() >= MAX_PENDING_BYTES {
            drop(pending);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(dropped, "audit log is not keeping up: records dropped");
            }
            return;
        }
        if serde_json::to_writer(&mut pending.lines, record).is_ok() {
            pending.lines.push(b'\n');
            pending.appended += 1;
        }
    }

    /// Waits (blocking) until every record queued before this call is written and flushed.
    pub fn flush_blocking(&self) {
        self.wait_written(false);
    }

    /// [`AuditSink::flush_blocking`], then `fdatasync` (a clean shutdown).
    pub fn sync_blocking(&self) {
        self.wait_written(true);
    }

    fn wait_written(&self, sync: bool) {
        let Ok(mut pending) = self.queue.pending.lock() else {
            return;
        };
        let target = pending.appended;
        pending.flush_requested = true;
        pending.sync_requested |= sync;
        self.queue.changed.notify_all();
        while pending.written < target {
            pending = match self.queue.changed.wait(pending) {
                Ok(pending) => pending,
                Err(_) => return,
            };
        }
    }

    /// Waits (blocking) until the writer has written what was queued before this call to
    /// the file it has open, then reopened the log's path: if the path now names another
    /// file (logrotate renamed it away), later records go to a new file whose header links
    /// to the last line of the old one. A path that still names the open file is kept
    /// (nothing is written). Standard output is never reopened.
    pub fn reopen_blocking(&self) {
        let Ok(mut pending) = self.queue.pending.lock() else {
            return;
        };
        let target = pending.reopened + 1;
        pending.reopen_requested = true;
        pending.flush_requested = true;
        self.queue.changed.notify_all();
        while pending.reopened < target {
            pending = match self.queue.changed.wait(pending) {
                Ok(pending) => pending,
                Err(_) => return,
            };
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The id of the chain's HMAC key (`None`: an unkeyed chain).
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
}

/// The most a written record waits for `fdatasync`.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The writer thread's end: the open file (or stdout) and the chain.
struct Output {
    target: Target,
    chain: Chain,
    /// Chained lines of the batch being written (kept to reuse its allocation).
    scratch: Vec<u8>,
    synced: Instant,
    dirty: bool,
    /// A write failed: start a new segment from what the file really ends with.
    resync: bool,
}

enum Target {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        /// `(device, inode)` of `file`, to tell whether the path still names it.
        id: (u64, u64),
    },
}

impl Output {
    fn open(target: &AuditLog, hasher: LineHasher) -> Result<Output, ProxyError> {
        let mut output = Output {
            target: Target::Stdout,
            chain: Chain::new(hasher),
            scratch: Vec::new(),
            synced: Instant::now(),
            dirty: false,
            resync: false,
        };
        match target {
            AuditLog::Stdout => {
                let mut header = Vec::new();
                output
                    .chain
                    .header(timestamp(SystemTime::now()), 0, &mut header);
                let mut out = std::io::stdout().lock();
                out.write_all(&header)
                    .and_then(|()| out.flush())
                    .map_err(|source| ProxyError::Io {
                        what: "audit log (stdout)".into(),
                        source,
                    })?;
            }
            AuditLog::File(path) => {
                let io_error = |source| ProxyError::Io {
                    what: format!("audit log {}", path.display()),
                    source,
                };
                let (file, id) = open_file(path).map_err(io_error)?;
                start_segment(&mut output.chain, &file, false).map_err(io_error)?;
                output.target = Target::File {
                    path: path.clone(),
                    file,
                    id,
                };
            }
        }
        Ok(output)
    }

    /// Chains and writes `batch` (whole records, each ending in a newline) in one call.
    fn write_batch(&mut self, batch: &[u8]) {
        if self.resync {
            if let Target::File { file, .. } = &self.target {
                match start_segment(&mut self.chain, file, true) {
                    Ok(()) => self.resync = false,
                    Err(e) => {
                        tracing::error!(error = %e, "could not write the audit log");
                        return;
                    }
                }
            }
        }
        let mark = self.chain.mark();
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        for record in batch.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
            self.chain.append(record, &mut out);
        }
        let written = match &self.target {
            Target::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&out).and_then(|()| stdout.flush())
            }
            Target::File { file, .. } => (&*file).write_all(&out),
        };
        match written {
            Ok(()) => self.dirty = true,
            Err(e) => {
                tracing::error!(error = %e, "could not write the audit log");
                // Whatever part of the batch reached the file is found again by the next
                // segment's start; the chain must not claim lines that are not there.
                self.chain.reset(mark);
                self.resync = matches!(self.target, Target::File { .. });
            }
        }
        self.scratch = out;
    }

    fn sync(&mut self, force: bool) {
        if !self.dirty || (!force && self.synced.elapsed() < SYNC_EVERY) {
            return;
        }
        if let Target::File { file, .. } = &self.target {
            if let Err(e) = file.sync_data() {
                tracing::error!(error = %e, "could not sync the audit log");
            }
        }
        self.dirty = false;
        self.synced = Instant::now();
    }

    /// Reopens the path if it no longer names the open file (see
    /// [`AuditSink::reopen_blocking`]).
    fn reopen(&mut self) {
        let Target::File { path, id, .. } = &self.target else {
            return;
        };
        let same = std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id);
        if same {
            return;
        }
        let path = path.clone();
        self.sync(true);
        let opened = open_file(&path).and_then(|(file, id)| {
            start_segment(&mut self.chain, &file, true)?;
            Ok((file, id))
        });
        match opened {
            Ok((file, id)) => {
                tracing::info!(path = %path.display(), "audit log reopened");
                self.target = Target::File { path, file, id };
                self.resync = false;
            }
            Err(e) => tracing::error!(
                path = %path.display(),
                error = %e,
                "could not reopen the audit log; still writing to the file that was open"
            ),
        }
    }
}

/// Opens (creating, mode 0600) the audit file for appending and reading its end.
fn open_file(path: &std::path::Path) -> std::io::Result<(File, (u64, u64))> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open; tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

/// Writes a segment header to `file`, linked to the file's last line (or, in an empty file,
/// to the writer's last line when `carry`).
fn start_segment(chain: &mut Chain, mut file: &File, carry: bool) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let tail = if len > 0 {
        read_tail(file, len)?
    } else {
        Tail::default()
    };
    chain.start_segment(&tail, carry);
    let mut header = Vec::new();
    chain.header(timestamp(SystemTime::now()), tail.torn, &mut header);
    file.write_all(&header)
}

fn write_loop(queue: &Queue, mut out: Output) {
    let mut batch = Vec::new();
    loop {
        let Ok(mut pending) = queue.pending.lock() else {
            return;
        };
        if !pending.flush_requested && !pending.closed {
            pending = match queue.changed.wait_timeout(pending, BATCH_PAUSE) {
                Ok((pending, _)) => pending,
                Err(_) => return,
            };
        }
        pending.flush_requested = false;
        std::mem::swap(&mut batch, &mut pending.lines);
        let upto = pending.appended;
        let closed = pending.closed;
        let reopen = std::mem::take(&mut pending.reopen_requested);
        let sync = std::mem::take(&mut pending.sync_requested);
        drop(pending);
        if !batch.is_empty() {
            out.write_batch(&batch);
            batch.clear();
        }
        if reopen {
            out.reopen();
        }
        out.sync(closed || sync);
        if let Ok(mut pending) = queue.pending.lock() {
            pending.written = upto;
            if reopen {
                pending.reopened += 1;
            }
        }
        queue.changed.notify_all();
        if closed {
            return;
        }
    }
}

impl Drop for AuditSink {
    /// Ends the writer thread once it has written what is queued.
    fn drop(&mut self) {
        if let Ok(mut pending) = self.queue.pending.lock() {
            pending.closed = true;
        }
        self.queue.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(conn: u64) -> AuditRecord {
        crate::audit::record::tests::record(conn)
    }

    #[test]
    fn flush_writes_every_queued_record_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&AuditLog::File(path.clone())).unwrap();
        for conn in 1..=3 {
            sink.record(record(conn));
        }
        sink.flush_blocking();
        sink.record(record(4));
        sink.flush_blocking();
        let text = std::fs::read_to_string(&path).unwrap();
        let conns: Vec<u64> = text
            .lines()
            .skip(1) // the chain's header
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["conn"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(conns, vec![1, 2, 3, 4]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(sink.dropped(), 0);
    }
}
