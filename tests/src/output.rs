//! Where the suite keeps what the code under test wrote, so that CI can grep it after a run
//! in which every test passed (cargo shows a passing test's output to no one).
//!
//! `KEYSWAP_TEST_OUTPUT=DIR` (set by `.ci/run`, read here, never set by a test) names the
//! directory. Each [`crate::harness::TestEnv`] writes its proxy's log, audit file and what its
//! agent received there; each [`crate::logged_child::LoggedChild`] its child's stderr; and
//! [`process_log`] every log line the code under test wrote outside a test's own thread. Without
//! the variable nothing is written and the in-process checks run alone.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The variable that names the output directory.
pub const OUTPUT_VAR: &str = "KEYSWAP_TEST_OUTPUT";

/// The output directory, if the run asked for one (created on first use).
pub fn dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(OUTPUT_VAR)?);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("{OUTPUT_VAR}={} cannot be created: {e}", dir.display()));
    Some(dir)
}

/// A fresh file name under the output directory for something the current test wrote:
/// the test's name (libtest names its thread after it), a sequence number and `what`.
pub fn path_for(what: &str) -> Option<PathBuf> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = dir()?;
    let thread = std::thread::current();
    let test: String = thread
        .name()
        .unwrap_or("unnamed")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Some(dir.join(format!("{test}.{n}.{what}")))
}

/// Writes `bytes` to [`path_for`]`(what)`, if the run keeps output.
pub fn keep(what: &str, bytes: &[u8]) {
    if let Some(path) = path_for(what) {
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Log lines written by the code under test, kept in memory for the leak check and, when
/// the run keeps output, appended to a file as they are written.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    file: Option<std::fs::File>,
}

impl LogCapture {
    /// A capture that also appends to `file`.
    pub fn to_file(file: std::fs::File) -> LogCapture {
        LogCapture(Arc::new(Mutex::new(Captured {
            bytes: Vec::new(),
            file: Some(file),
        })))
    }

    pub fn contents(&self) -> Vec<u8> {
        self.since(0)
    }

    /// What was written after the first `offset` bytes.
    pub fn since(&self, offset: usize) -> Vec<u8> {
        self.0
            .lock()
            .map(|c| c.bytes.get(offset..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|c| c.bytes.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut c) = self.0.lock() {
            c.bytes.extend_from_slice(buf);
            if let Some(file) = c.file.as_mut() {
                file.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A subscriber at the level the binary logs at (debug, dependencies capped as in
/// `keyswap::cli`), writing to `capture`.
pub fn subscriber(capture: LogCapture) -> impl tracing::Subscriber + Send + Sync {
    let mut filter = tracing_subscriber::EnvFilter::new("debug");
    for cap in keyswap::cli::DEPENDENCY_LOG_CAPS {
        filter = filter.add_directive(cap.parse().expect("valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(capture)
        .with_ansi(false)
        .finish()
}

/// Every log line the code under test wrote on a thread with no test's own subscriber: a
/// multi-thread runtime's workers, `spawn_blocking`, the audit writer thread. Installed as
/// the process's global subscriber on first use, once (the tests share one process; a
/// second `set_global_default` would fail, and a test that tried it would fail here).
pub fn process_log() -> &'static LogCapture {
    static GLOBAL: OnceLock<LogCapture> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let capture = match dir() {
            Some(dir) => {
                let path = dir.join(format!("other-threads.{}.log", std::process::id()));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                LogCapture::to_file(file)
            }
            None => LogCapture::default(),
        };
        tracing::subscriber::set_global_default(subscriber(capture.clone()))
            .expect("no other global tracing subscriber in the test process");
        capture
    })
}
