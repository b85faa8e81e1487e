//! The audit sink keyswap has: records serialised into a bounded queue by the request path,
//! written, chained and synced by one dedicated thread (see [`FileSink`]). The audit log is a
//! file (created with mode 0600, reopened on request for log rotation) or, given `-`,
//! standard output through the same thread and chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keyswap_config::AuditLog;
use serde::Serialize;

use super::output::Output;
use super::AuditSink;
use crate::audit::chain::LineHasher;
use crate::audit::record::{AuditRecord, LifecycleRecord};
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

/// The audit log as a file (or standard output): cheap to call from any task; never blocks
/// on the disk.
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
/// tail. The file is `fdatasync`ed at most every [`super::output::SYNC_EVERY`], on reopen and
/// on shutdown: a power cut may lose up to that much.
pub struct FileSink {
    queue: Arc<Queue>,
    dropped: AtomicU64,
    key_id: Option<String>,
}

impl FileSink {
    /// Opens (creating, mode 0600) the audit log and starts a chain segment in it, unkeyed.
    pub fn open(target: &AuditLog) -> Result<FileSink, ProxyError> {
        FileSink::open_chained(target, LineHasher::unkeyed())
    }

    /// Opens the audit log and starts a chain segment hashed with `hasher`: its header
    /// links to the file's last line when the file already has records (a restart).
    pub fn open_chained(target: &AuditLog, hasher: LineHasher) -> Result<FileSink, ProxyError> {
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
        Ok(FileSink {
            queue,
            dropped: AtomicU64::new(0),
            key_id,
        })
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
}

impl AuditSink for FileSink {
    fn record(&self, record: AuditRecord) {
        self.write(&record);
    }

    fn lifecycle(&self, record: LifecycleRecord) {
        self.write(&record);
    }

    /// Waits (blocking) until every record queued before this call is written and flushed.
    fn flush_blocking(&self) {
        self.wait_written(false);
    }

    /// [`AuditSink::flush_blocking`], then `fdatasync` (a clean shutdown).
    fn sync_blocking(&self) {
        self.wait_written(true);
    }

    /// Waits (blocking) until the writer has written what was queued before this call to
    /// the file it has open, then reopened the log's path: if the path now names another
    /// file (logrotate renamed it away), later records go to a new file whose header links
    /// to the last line of the old one. A path that still names the open file is kept
    /// (nothing is written). Standard output is never reopened.
    fn reopen_blocking(&self) {
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

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The id of the chain's HMAC key (`None`: an unkeyed chain).
    fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
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

impl Drop for FileSink {
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record(conn: u64) -> AuditRecord {
        crate::audit::record::tests::record(conn)
    }

    #[test]
    fn flush_writes_every_queued_record_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = FileSink::open(&AuditLog::File(path.clone())).unwrap();
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
