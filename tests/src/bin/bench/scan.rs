//! Scenario 10: `keyswap scan` over a generated working tree — 10,000 files totalling about
//! 200 MiB (quick: 1,000 files, 20 MiB) of text in 100-file directories, with the bench's
//! real value planted once, base64-encoded, in one of them. Wall time of the whole process
//! (config load, matcher build, walk, reads) and the bytes of the tree per second.
//!
//! The tree is written just before the scan, so it is read from the page cache: the figure is
//! keyswap's search, not the disk. The run counts only if the scan finds exactly the planted
//! hit. The tree lives in a temp directory, removed afterwards. Never prints the real value:
//! it reaches keyswap through the environment ([`SECRET_ENV`]), and keyswap prints names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;

use crate::report::{Row, KEYSWAP};
use crate::scenarios::progress;
use crate::setup::{PLACEHOLDER, SECRET_ENV};

/// Files per directory of the generated tree.
const PER_DIR: usize = 100;
/// The scan's time budget: far above what the tree needs, so a cut-short run is a failure.
const TIME_BUDGET: &str = "10m";
/// A scan that has not ended this long after it started is killed.
const SCAN_LIMIT: Duration = Duration::from_secs(900);

/// The tree's shape.
struct Shape {
    files: usize,
    bytes: u64,
}

impl Shape {
    fn new(quick: bool) -> Shape {
        match quick {
            true => Shape {
                files: 1_000,
                bytes: 20 << 20,
            },
            false => Shape {
                files: 10_000,
                bytes: 200 << 20,
            },
        }
    }

    fn label(&self) -> String {
        format!("{} files, {} MiB", self.files, self.bytes >> 20)
    }
}

/// The rows of scenario 10; a run that fails gives a "not measured" row saying why.
pub fn run(quick: bool, binary: Option<&Path>) -> Vec<Row> {
    let shape = Shape::new(quick);
    let title = format!("10. keyswap scan, {}", shape.label());
    match measure(&shape, binary) {
        Ok(scan) => {
            let mut wall = Row::new(format!("{title}: wall time"), "s", false);
            wall.set(KEYSWAP, Some(scan.wall.as_secs_f64()));
            wall.notes.push(format!(
                "keyswap: one process, config load to exit; found the planted base64 value at \
                 {}; tree generated just before (page cache)",
                scan.hit
            ));
            let mut rate = Row::new(format!("{title}: throughput"), "MB/s", true);
            rate.set(
                KEYSWAP,
                Some(scan.bytes as f64 / 1e6 / scan.wall.as_secs_f64()),
            );
            rate.notes.push(format!(
                "keyswap: {} bytes of the tree / wall time",
                scan.bytes
            ));
            vec![wall, rate]
        }
        Err(why) => {
            let mut row = Row::new(title, "s", false);
            row.notes.push(format!("keyswap: not measured: {why:#}"));
            vec![row]
        }
    }
}

struct Measured {
    wall: Duration,
    /// Bytes written into the tree.
    bytes: u64,
    /// Where the scan found the planted value (`file:line`, relative to the tree).
    hit: String,
}

fn measure(shape: &Shape, binary: Option<&Path>) -> anyhow::Result<Measured> {
    let keyswap = keyswap_binary(binary)?;
    let secret = std::env::var(SECRET_ENV).context("the real value's variable is not set")?;
    let dir = tempfile::Builder::new()
        .prefix("keyswap-bench-scan-")
        .tempdir()?;
    let tree = dir.path().join("tree");
    progress(
        "scenario 10",
        &format!("writing a tree of {}", shape.label()),
    );
    let (bytes, planted) = generate(&tree, shape, &secret)?;
    let config = dir.path().join("keyswap.yaml");
    std::fs::write(&config, config_text(dir.path()))?;
    progress("scenario 10", "keyswap scan");
    let started = Instant::now();
    let child = Command::new(&keyswap)
        .arg("scan")
        .arg(&tree)
        .arg("--config")
        .arg(&config)
        .args(["--json", "--time-budget", TIME_BUDGET])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", keyswap.display()))?;
    let out = wait_bounded(child, SCAN_LIMIT)?;
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.code() == Some(1),
        "keyswap scan exited with {} instead of 1 (a hit): {}",
        out.status,
        stderr.trim()
    );
    let hits: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("keyswap scan --json printed no JSON array")?;
    let hits = hits
        .as_array()
        .context("keyswap scan --json: not an array")?;
    let found: Vec<String> = hits
        .iter()
        .map(|h| {
            let file = h["file"].as_str().unwrap_or_default();
            let file = file
                .strip_prefix(&*tree.to_string_lossy())
                .map(|f| f.trim_start_matches('/'))
                .unwrap_or(file);
            format!(
                "{file}:{} ({})",
                h["line"],
                h["form"].as_str().unwrap_or("")
            )
        })
        .collect();
    let want = format!("{} (encoded)", planted);
    anyhow::ensure!(
        found == [want.clone()],
        "keyswap scan found {found:?}, expected only {want}"
    );
    anyhow::ensure!(
        !stderr.contains("cut short"),
        "the scan was cut short by its {TIME_BUDGET} budget"
    );
    Ok(Measured {
        wall,
        bytes,
        hit: planted,
    })
}

/// The keyswap binary measured: `--keyswap`, or the one beside the bench (which the bench
/// built before starting its keyswap).
fn keyswap_binary(binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match binary {
        Some(binary) => binary.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("keyswap"),
    };
    anyhow::ensure!(path.exists(), "{} not found", path.display());
    Ok(path)
}

/// A config with the bench's one secret, its files outside the tree.
fn config_text(dir: &Path) -> String {
    format!(
        "version: 1\nlisten: 127.0.0.1:0\nca_dir: {dir}/ca\naudit_log: {dir}/audit.jsonl\n\
         secrets:\n  bench:\n    from_env: {SECRET_ENV}\n    placeholder: {PLACEHOLDER}\n",
        dir = dir.display()
    )
}

/// Writes the tree: `shape.files` text files of equal size in directories of [`PER_DIR`],
/// the base64 of `secret` on one line of the file in the middle. Returns the bytes written
/// and the planted place (`dir/file:line`).
fn generate(tree: &Path, shape: &Shape, secret: &str) -> anyhow::Result<(u64, String)> {
    let size = (shape.bytes / shape.files as u64) as usize;
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let planted_file = shape.files / 2;
    let mut text = Text::new(0x5eed_cafe_f00d_d00d);
    let mut written = 0u64;
    let mut planted = String::new();
    let mut buf = Vec::with_capacity(size + 128);
    for i in 0..shape.files {
        let dir = tree.join(format!("d{:03}", i / PER_DIR));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let name = format!("f{i:05}.txt");
        buf.clear();
        text.fill(&mut buf, size);
        if i == planted_file {
            // Replace the start of a line in the middle with a YAML-like key and the value.
            let line = 40;
            let at = nth_line_start(&buf, line - 1).context("the file has too few lines")?;
            let entry = format!("token_b64: {encoded}\n");
            buf.splice(at..at, entry.bytes());
            buf.truncate(size);
            planted = format!("d{:03}/{name}:{line}", i / PER_DIR);
        }
        let mut file = std::fs::File::create(dir.join(&name))?;
        file.write_all(&buf)?;
        written += buf.len() as u64;
    }
    Ok((written, planted))
}

/// The byte offset where line `n` (0-based) of `buf` starts.
fn nth_line_start(buf: &[u8], n: usize) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    buf.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
}

/// Deterministic source-like text: lines of lowercase words (xorshift), never a base64 run
/// long enough to be a value.
struct Text(u64);

impl Text {
    fn new(seed: u64) -> Text {
        Text(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Appends `len` bytes of text lines (each ending in `\n`) to `buf`.
    fn fill(&mut self, buf: &mut Vec<u8>, len: usize) {
        let end = buf.len() + len;
        while buf.len() < end {
            let words = 4 + self.next() % 8;
            for w in 0..words {
                if w > 0 {
                    buf.push(b' ');
                }
                let letters = 2 + self.next() % 8;
                for _ in 0..letters {
                    buf.push(b'a' + (self.next() % 26) as u8);
                }
            }
            buf.extend_from_slice(b" = 1;\n");
        }
        buf.truncate(end);
        if let Some(last) = buf.last_mut() {
            *last = b'\n';
        }
    }
}

/// Waits for `child` (on a thread that collects its output), killing it after `limit`.
fn wait_bounded(
    child: std::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            anyhow::bail!("keyswap scan did not finish within {limit:?}")
        }
    }
}
