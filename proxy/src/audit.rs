//! Step 8: one JSON line per request (and per refused or tunnelled CONNECT).
//!
//! Records are built from the [`crate::Decision`] and the exchange's counters; they hold
//! secret *names*, query *keys* and never a value. Writing happens on a dedicated thread so
//! the request path never waits on the disk; the file is created with mode 0600.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use keyswap_config::AuditLog;
use serde::Serialize;

use crate::error::ProxyError;

/// How many records may wait for the writer before new ones are counted as dropped.
const QUEUE: usize = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub ts: String,
    pub task: Option<String>,
    pub conn: u64,
    pub method: String,
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub query_keys: Vec<String>,
    pub rule: Option<usize>,
    pub secrets: Vec<String>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub status: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub ms: f64,
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The keys of a query string, never its values; at most 32 keys of 64 bytes each.
pub fn query_keys(query: Option<&str>) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .take(32)
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let mut end = key.len().min(64);
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key[..end].to_string()
        })
        .collect()
}

enum Message {
    Record(Box<AuditRecord>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Where audit records go. Cheap to call from any task; never blocks.
pub struct AuditSink {
    tx: SyncSender<Message>,
    dropped: AtomicU64,
}

impl AuditSink {
    pub fn open(target: &AuditLog) -> Result<AuditSink, ProxyError> {
        let writer: Box<dyn Write + Send> = match target {
            AuditLog::Stdout => Box::new(std::io::stdout()),
            AuditLog::File(path) => {
                let io_error = |source| ProxyError::Io {
                    what: format!("audit log {}", path.display()),
                    source,
                };
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io_error)?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io_error)?;
                // An existing file keeps its mode on open; tighten it.
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(io_error)?;
                Box::new(file)
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("keyswap-audit".into())
            .spawn(move || write_loop(rx, writer))
            .map_err(|source| ProxyError::Io {
                what: "audit writer thread".into(),
                source,
            })?;
        Ok(AuditSink {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn record(&self, record: AuditRecord) {
        match self.tx.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::error!(dropped, "audit queue full: records dropped");
                }
            }
        }
    }

    /// Waits (blocking) until every record queued before this call is written and flushed.
    pub fn flush_blocking(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(rx: Receiver<Message>, writer: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(writer);
    let handle = |message: Message, out: &mut BufWriter<Box<dyn Write + Send>>| match message {
        Message::Record(record) => {
            if serde_json::to_writer(&mut *out, &record).is_ok() {
                let _ = out.write_all(b"\n");
            }
        }
        Message::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    };
    while let Ok(message) = rx.recv() {
        handle(message, &mut out);
        while let Ok(more) = rx.try_recv() {
            handle(more, &mut out);
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
}

impl AuditRecord {
    /// The record of a CONNECT itself: refused, tunnelled, or refused at the TLS handshake
    /// (`status` 0 there: no HTTP response was sent).
    pub fn for_connect(
        conn: u64,
        task: Option<&str>,
        target: Option<&crate::target::Target>,
        reason: crate::decision::Reason,
        status: u16,
        started: (std::time::Instant, SystemTime),
    ) -> AuditRecord {
        AuditRecord {
            ts: timestamp(started.1),
            task: task.map(str::to_string),
            conn,
            method: "CONNECT".into(),
            scheme: "https",
            host: target.map(|t| t.host.clone()).unwrap_or_default(),
            port: target.map(|t| t.port).unwrap_or(0),
            path: None,
            query_keys: Vec::new(),
            rule: None,
            secrets: Vec::new(),
            decision: if reason == crate::decision::Reason::Allowed {
                "allowed"
            } else {
                "denied"
            },
            reason: reason.as_str(),
            status,
            req_bytes: 0,
            resp_bytes: 0,
            ms: started.0.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_never_include_values() {
        assert_eq!(
            query_keys(Some("per_page=10&token=abc&flag&&x=")),
            vec!["per_page", "token", "flag", "x"]
        );
        assert!(query_keys(None).is_empty());
    }
}
