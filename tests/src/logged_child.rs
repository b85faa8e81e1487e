//! A child process whose stderr is read line by line while it runs (a `keyswap run` the test
//! started): tests wait for the line that says it is ready instead of sleeping, and read the
//! whole log afterwards for the leak checks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`LoggedChild::wait_for`] waits for a line: generous, it is not a measurement.
const LINE_LIMIT: Duration = Duration::from_secs(60);

pub struct LoggedChild {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: Mutex<mpsc::Receiver<String>>,
}

impl LoggedChild {
    /// Starts `cmd` with stdin and stdout closed and stderr captured. Killed when dropped.
    pub fn spawn(mut cmd: Command) -> LoggedChild {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the logged child");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        LoggedChild {
            child,
            lines,
            new_line: Mutex::new(rx),
        }
    }

    /// Waits for a stderr line containing `needle` (the proxy says when it is ready).
    pub fn wait_for(&self, needle: &str) -> String {
        let rx = self.new_line.lock().expect("log receiver");
        loop {
            match rx.recv_timeout(LINE_LIMIT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the child never logged {needle:?}; log:\n{}", self.log()),
            }
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until the child exits on its own (at most [`LINE_LIMIT`]: a bound against
    /// hanging, not a measurement).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LINE_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The explicit listener's address, from keyswap's `keyswap listening addr=…` line.
    pub fn listen_addr(&self) -> String {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("keyswap listening"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .expect("address in the log")
            .to_string()
    }
}

impl Drop for LoggedChild {
    /// Kills the child and keeps its stderr in the run's output directory
    /// ([`crate::output`]), which CI greps for real values after the run.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::output::keep("child-stderr.log", self.log().as_bytes());
    }
}

/// Waits until `path` holds a whole line (a child wrote it), and returns it.
pub async fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim_end().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
