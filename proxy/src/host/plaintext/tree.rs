//! The walk over a working tree: breadth first (the files an agent opens first, `.env` and
//! the top-level configs, are searched first), entries in name order, within a
//! [`ScanBudget`]. Only regular files are read; symbolic links are never followed (a link
//! into the tree reaches a file the walk finds anyway; one out of it is not the tree); `.git`
//! is skipped except `.git/config`, where remote URLs keep credentials; files a secret is
//! read from (`from_file`) are skipped, as that is where the value belongs.
//!
//! Never formats a value: the report holds paths, line numbers and secret names.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::scan::{scan_reader, Ended, Form, ScanSet};

/// What one search may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanBudget {
    /// Files larger than this are not read (and are listed in the report).
    pub max_file_size: u64,
    /// The search stops after this long (and the report lists what it did not reach).
    pub time: Duration,
}

/// Files above 10 MiB are skipped: credentials live in small text files, and a large file
/// is a data set, an archive or a build product.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 10 * 1024 * 1024;

impl ScanBudget {
    /// Before `keyswap exec` starts its command: 10 s, files up to 10 MiB.
    pub const EXEC: ScanBudget = ScanBudget {
        max_file_size: DEFAULT_MAX_FILE_SIZE,
        time: Duration::from_secs(10),
    };
    /// `keyswap scan`'s default: 60 s, files up to 10 MiB.
    pub const SCAN: ScanBudget = ScanBudget {
        max_file_size: DEFAULT_MAX_FILE_SIZE,
        time: Duration::from_secs(60),
    };
}

/// One place a real value was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    /// The root it was found under, joined with the path inside it.
    pub path: PathBuf,
    /// 1-based.
    pub line: u64,
    /// The secret's name in the config.
    pub secret: String,
    pub form: Form,
}

/// What a search found and what it left out.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Sorted by path, line, secret.
    pub hits: Vec<Hit>,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// Files over the budget's size limit, not read.
    pub too_large: Vec<PathBuf>,
    /// Files and directories that could not be opened or read.
    pub unreadable: Vec<PathBuf>,
    /// The time budget ran out: `not_scanned` lists what was not reached (a directory
    /// stands for everything under it) and the file that was being read.
    pub cut_short: bool,
    pub not_scanned: Vec<PathBuf>,
    pub elapsed: Duration,
}

impl ScanReport {
    pub fn is_clean(&self) -> bool {
        self.hits.is_empty()
    }
}

/// Searches the tree under `dir` for every value in `values`. The entry point for `keyswap
/// exec` (its working directory) and, once per root, for `keyswap scan`.
pub fn check_working_tree(values: &ScanSet, dir: &Path, budget: ScanBudget) -> ScanReport {
    let started = Instant::now();
    let mut report = ScanReport::default();
    scan_tree(values, dir, budget, started, &mut report);
    report.hits.sort();
    report.elapsed = started.elapsed();
    report
}

/// Searches several roots within one budget (`keyswap scan DIR…`).
pub fn scan_roots(values: &ScanSet, roots: &[PathBuf], budget: ScanBudget) -> ScanReport {
    let started = Instant::now();
    let mut report = ScanReport::default();
    for root in roots {
        if report.cut_short {
            report.not_scanned.push(root.clone());
            continue;
        }
        scan_tree(values, root, budget, started, &mut report);
    }
    report.hits.sort();
    report.elapsed = started.elapsed();
    report
}

fn scan_tree(
    values: &ScanSet,
    root: &Path,
    budget: ScanBudget,
    started: Instant,
    report: &mut ScanReport,
) {
    let deadline = started + budget.time;
    let shown = |rel: &Path| -> PathBuf {
        if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else if root == Path::new(".") {
            rel.to_path_buf()
        } else {
            root.join(rel)
        }
    };
    // Relative paths of directories still to read; the root is "" (itself).
    let mut dirs: VecDeque<PathBuf> = VecDeque::from([PathBuf::new()]);
    while let Some(rel) = dirs.pop_front() {
        if Instant::now() >= deadline {
            report.cut_short = true;
            report.not_scanned.push(shown(&rel));
            report.not_scanned.extend(dirs.drain(..).map(|d| shown(&d)));
            break;
        }
        let entries = match read_dir_sorted(&root.join(&rel)) {
            Ok(entries) => entries,
            Err(_) => {
                report.unreadable.push(shown(&rel));
                continue;
            }
        };
        let in_git = rel.file_name().is_some_and(|n| n == ".git");
        let mut files = Vec::new();
        for (name, kind) in entries {
            let child = rel.join(&name);
            // Inside `.git` only its config (remote URLs with userinfo): objects and packs
            // are compressed history, and can be huge.
            if kind.is_dir() && !in_git {
                if !kernel_view(&root.join(&child)) {
                    dirs.push_back(child);
                }
            } else if kind.is_file() && (!in_git || name == "config") {
                files.push(child);
            }
        }
        let mut files = files.into_iter();
        while let Some(file) = files.next() {
            if Instant::now() >= deadline {
                report.cut_short = true;
                report.not_scanned.push(shown(&file));
                report.not_scanned.extend(files.map(|f| shown(&f)));
                report.not_scanned.extend(dirs.drain(..).map(|d| shown(&d)));
                return;
            }
            scan_file(
                values,
                &root.join(&file),
                &shown(&file),
                budget,
                deadline,
                report,
            );
            if report.cut_short {
                report.not_scanned.extend(files.map(|f| shown(&f)));
                report.not_scanned.extend(dirs.drain(..).map(|d| shown(&d)));
                return;
            }
        }
    }
}

/// The kernel's views of processes, devices and itself (`/proc`, `/sys`, `/dev`): not files a
/// project keeps, and `/proc/PID/environ` of keyswap's own process would always match. They
/// are reached only when the working directory is `/`.
fn kernel_view(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|view| dir.starts_with(view))
}

/// A directory's entries (name, type as `lstat` sees it: a link is a link), sorted by name.
fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, std::fs::FileType)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        entries.push((entry.file_name(), entry.file_type()?));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn scan_file(
    values: &ScanSet,
    path: &Path,
    shown: &Path,
    budget: ScanBudget,
    deadline: Instant,
    report: &mut ScanReport,
) {
    let Ok(file) = open_regular(path) else {
        report.unreadable.push(shown.to_path_buf());
        return;
    };
    let Ok(meta) = file.metadata() else {
        report.unreadable.push(shown.to_path_buf());
        return;
    };
    if !meta.is_file() {
        return;
    }
    if meta.len() > budget.max_file_size {
        report.too_large.push(shown.to_path_buf());
        return;
    }
    if path.canonicalize().is_ok_and(|c| values.is_source(&c)) {
        return;
    }
    // One byte over the limit tells a file that grew while being read.
    match scan_reader(values, file, meta.len(), deadline, budget.max_file_size + 1) {
        Ok((hits, ended, bytes)) => {
            report.bytes_scanned += bytes;
            report.files_scanned += 1;
            report.hits.extend(hits.into_iter().map(|h| Hit {
                path: shown.to_path_buf(),
                line: h.line,
                secret: values.names()[h.secret].clone(),
                form: h.form,
            }));
            match ended {
                Ended::Done => {}
                Ended::TooLarge => report.too_large.push(shown.to_path_buf()),
                Ended::Deadline(_) => {
                    report.cut_short = true;
                    report.not_scanned.push(shown.to_path_buf());
                }
            }
        }
        Err(_) => report.unreadable.push(shown.to_path_buf()),
    }
}

/// Opens `path` for reading if it is still what the walk saw: no link is followed (a file
/// swapped for a link since the directory was read fails), and a FIFO does not block.
fn open_regular(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::kernel_view;
    use std::path::Path;

    #[test]
    fn proc_sys_and_dev_are_not_searched_but_a_project_is() {
        assert!(kernel_view(Path::new("/proc/self")));
        assert!(kernel_view(Path::new("/sys")));
        assert!(kernel_view(Path::new("/dev")));
        let project = std::env::temp_dir();
        assert!(!kernel_view(&project));
        assert!(!kernel_view(Path::new("/nonexistent-keyswap-test-dir")));
    }
}
