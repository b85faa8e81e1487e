//! The writer thread's end of the audit sink: the open file (or standard output), the chain
//! that numbers and links every line, syncing, and reopening after log rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use keyswap_config::AuditLog;

use crate::audit::chain::{read_tail, Chain, LineHasher, Tail};
use crate::audit::record::timestamp;
use crate::error::ProxyError;

/// The most a written record waits for `fdatasync`.
pub(super) const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The writer thread's end: the open file (or stdout) and the chain.
pub(super) struct Output {
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
    pub(super) fn open(target: &AuditLog, hasher: LineHasher) -> Result<Output, ProxyError> {
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
    pub(super) fn write_batch(&mut self, batch: &[u8]) {
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

    pub(super) fn sync(&mut self, force: bool) {
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
    /// [`super::AuditSink::reopen_blocking`]).
    pub(super) fn reopen(&mut self) {
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
