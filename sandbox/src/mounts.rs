//! The command's view of the filesystem: the user's own, less what keyswap hides.
//!
//! Order matters: private `/tmp` and `/dev/shm` first, then the kept paths bound back into
//! them, then the hidden paths (so a secret inside a kept working directory is still hidden),
//! then the read-only ones (a recursive bind, so hidden paths inside stay hidden).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::helper::Failure;
use crate::plan::{StartPlan, PRIVATE_DIRS};
use crate::Stage;

const NONE: Option<&str> = None;

fn fail(e: Errno, what: &str, path: &Path) -> Failure {
    Failure::new(Stage::Mounts, e, &format!("{what} {}", path.display()))
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

pub fn apply(plan: &StartPlan) -> Result<(), Failure> {
    // Nothing mounted here propagates back to the user's namespace.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(|e| fail(e, "making mounts private under", Path::new("/")))?;
    let kept = open_kept(plan)?;
    for dir in PRIVATE_DIRS.iter().map(Path::new).filter(|d| d.is_dir()) {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )
        .map_err(|e| fail(e, "mounting a private tmpfs on", dir))?;
    }
    for (path, fd) in &kept {
        bind_back(path, fd)?;
    }
    for path in &plan.hide {
        hide(path)?;
    }
    for path in &plan.read_only {
        make_read_only(path)?;
    }
    Ok(())
}

/// The kept paths (and the working directory) that lie under a private directory, opened
/// before the tmpfs covers them; one inside another kept path is covered by the outer one.
fn open_kept(plan: &StartPlan) -> Result<Vec<(PathBuf, OwnedFd)>, Failure> {
    let mut candidates: Vec<PathBuf> = plan
        .keep
        .iter()
        .chain(std::iter::once(&plan.cwd))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| PRIVATE_DIRS.iter().any(|d| p.starts_with(d)))
        .collect();
    candidates.sort();
    candidates.dedup();
    let mut kept: Vec<(PathBuf, OwnedFd)> = Vec::new();
    for path in candidates {
        if kept.iter().any(|(outer, _)| path.starts_with(outer)) {
            continue;
        }
        let fd = open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| fail(e, "opening", &path))?;
        kept.push((path, fd));
    }
    Ok(kept)
}

fn bind_back(path: &Path, fd: &OwnedFd) -> Result<(), Failure> {
    let is_dir = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| fail(errno(&e), "reading", path))?
        .is_dir();
    let made = match is_dir {
        true => std::fs::create_dir_all(path),
        false => path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::File::create(path).map(|_| ())),
    };
    made.map_err(|e| fail(errno(&e), "creating the mount point", path))?;
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        path,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| fail(e, "binding back", path))
}

/// A directory becomes an empty read-only tmpfs, anything else `/dev/null`. A path that does
/// not exist (or that the user cannot reach, so neither can the command) is skipped.
fn hide(path: &Path) -> Result<(), Failure> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if matches!(errno(&e), Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES) => {
            return Ok(())
        }
        Err(e) => return Err(fail(errno(&e), "reading", path)),
    };
    let mounted = match metadata.is_dir() {
        true => mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0555,size=4k"),
        ),
        false => mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE),
    };
    mounted.map_err(|e| fail(e, "hiding", path))
}

/// A recursive bind of the path onto itself, remounted read-only. The remount must repeat
/// the flags the kernel locked on the original mount (nosuid, nodev, ...), or it is refused.
fn make_read_only(path: &Path) -> Result<(), Failure> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(|e| fail(e, "binding", path))?;
    let locked = statvfs(path).map_err(|e| fail(e, "statvfs", path))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if locked.contains(fs) {
            flags |= ms;
        }
    }
    mount(NONE, path, NONE, flags, NONE).map_err(|e| fail(e, "making read-only", path))
}

/// Mounts the fresh `/proc` of the new pid namespace (called by its pid 1): the command sees
/// its own processes only, never keyswap or the user's shell.
pub fn fresh_proc() -> Result<(), Failure> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(|e| Failure::new(Stage::Proc, e, "mount proc on /proc"))
}
