//! The lease state file (`state_dir/leases.json`): every credential minted for a task whose
//! upstream revocation has not been confirmed, so that a keyswap that was killed, or could
//! not reach the upstream when it stopped, revokes it when it starts again. Rewritten whole
//! on every mint and every confirmed revocation, atomically (a 0600 temporary file in the
//! same directory, synced, renamed over it); records past their expiry are left out. One
//! keyswap at a time uses a `state_dir`: it holds an exclusive lock on `leases.json.lock`.
//!
//! A record holds the credential itself only where revoking it needs it: a GitHub
//! installation token (`DELETE /installation/token` authenticates with the token). Other
//! records (an OAuth2 access token, which keyswap does not revoke) hold no value. Nothing
//! here formats the file's content: errors name the path only.

use std::fs::{DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use keyswap_config::LeaseSource;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::state::leases::Lease;

/// The file's format.
const VERSION: u32 = 1;

/// The leases whose revocation is not confirmed, and the file they are written to.
#[derive(Default)]
pub struct LeaseFile {
    /// Set once the file is opened (and locked); unset: nothing is written.
    path: OnceLock<PathBuf>,
    /// Held open for the process's life: its lock says this `state_dir` is taken.
    lock: OnceLock<File>,
    held: Mutex<Vec<Arc<Lease>>>,
}

/// A record a previous keyswap left.
pub struct Recorded {
    pub task: String,
    pub secret: String,
    pub kind: String,
    pub fingerprint: String,
    pub expires: SystemTime,
    /// The GitHub API base URL and the token to revoke it with; `None`: not revocable.
    pub github: Option<(String, SecretString)>,
}

/// Why the file could not be opened. Names the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum LeaseFileError {
    #[error("{} is locked by another keyswap", .0.display())]
    Locked(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Moved aside to `<file>.unreadable` so that it is not overwritten.
    #[error("{} is not a lease state file keyswap can read; it was moved to {}.unreadable", .0.display(), .0.display())]
    Unreadable(PathBuf),
}

#[derive(Serialize, Deserialize)]
struct Body<E> {
    version: u32,
    leases: Vec<E>,
}

#[derive(Serialize)]
struct OutEntry<'a> {
    task: &'a str,
    secret: &'a str,
    kind: &'static str,
    fingerprint: &'a str,
    minted: String,
    expires: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    github: Option<OutGithub<'a>>,
}

#[derive(Serialize)]
struct OutGithub<'a> {
    api: &'a str,
    token: &'a str,
}

#[derive(Deserialize)]
struct InEntry {
    task: String,
    secret: String,
    kind: String,
    fingerprint: String,
    expires: String,
    github: Option<InGithub>,
}

#[derive(Deserialize)]
struct InGithub {
    api: String,
    token: String,
}

impl LeaseFile {
    /// Takes `path` (creating its directory, 0700): locks it for this process and returns
    /// what a previous keyswap recorded there. The records are not held yet ([`Self::hold`]).
    pub fn open(&self, path: PathBuf) -> Result<Vec<Recorded>, LeaseFileError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LeaseFileError::Io { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let lock_path = lock_path(&path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(LeaseFileError::Locked(lock_path));
        }
        let _ = self.lock.set(lock);
        let recorded = read(&path);
        let _ = self.path.set(path);
        recorded
    }

    /// Where the file is, once opened.
    pub fn path(&self) -> Option<&Path> {
        self.path.get().map(PathBuf::as_path)
    }

    /// Records `leases` (minted, or found at start) until [`Self::release`].
    pub fn hold(&self, leases: &[Arc<Lease>]) {
        let mut held = lock(&self.held);
        held.extend(leases.iter().cloned());
        self.write(&mut held);
    }

    /// `lease`'s revocation is confirmed (or it cannot be revoked): it leaves the file.
    pub fn release(&self, lease: &Arc<Lease>) {
        let mut held = lock(&self.held);
        let before = held.len();
        held.retain(|l| !Arc::ptr_eq(l, lease));
        if held.len() != before {
            self.write(&mut held);
        }
    }

    /// Every lease recorded and not released, expired ones left out.
    pub fn held(&self) -> Vec<Arc<Lease>> {
        let now = SystemTime::now();
        let held = lock(&self.held);
        held.iter().filter(|l| l.expires > now).cloned().collect()
    }

    /// Writes `held` (less what expired); a failure is logged, the leases stay held.
    fn write(&self, held: &mut Vec<Arc<Lease>>) {
        let Some(path) = self.path.get() else {
            return;
        };
        let now = SystemTime::now();
        held.retain(|l| l.expires > now);
        if let Err(e) = write_atomically(path, held) {
            tracing::error!(file = %path.display(), error = %e, "the lease state file could not be written; a restart now would not revoke the credentials minted since");
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn read(path: &Path) -> Result<Vec<Recorded>, LeaseFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LeaseFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parsed = serde_json::from_slice::<Body<InEntry>>(&bytes)
        .ok()
        .filter(|b| b.version == VERSION)
        .and_then(|b| b.leases.into_iter().map(recorded).collect::<Option<_>>());
    match parsed {
        Some(recorded) => Ok(recorded),
        None => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".unreadable");
            let _ = std::fs::rename(path, PathBuf::from(aside));
            Err(LeaseFileError::Unreadable(path.to_path_buf()))
        }
    }
}

fn recorded(entry: InEntry) -> Option<Recorded> {
    Some(Recorded {
        expires: humantime::parse_rfc3339(&entry.expires).ok()?,
        task: entry.task,
        secret: entry.secret,
        kind: entry.kind,
        fingerprint: entry.fingerprint,
        github: entry.github.map(|g| (g.api, SecretString::from(g.token))),
    })
}

fn write_atomically(path: &Path, held: &[Arc<Lease>]) -> std::io::Result<()> {
    let leases = held
        .iter()
        .map(|lease| OutEntry {
            task: &lease.task,
            secret: &lease.secret,
            kind: lease.source.kind(),
            fingerprint: &lease.fingerprint,
            minted: humantime::format_rfc3339_seconds(lease.minted_at).to_string(),
            expires: humantime::format_rfc3339_seconds(lease.expires).to_string(),
            github: match &*lease.source {
                LeaseSource::GithubApp(app) => Some(OutGithub {
                    api: &app.api,
                    token: lease.value.expose_secret(),
                }),
                _ => None,
            },
        })
        .collect();
    let body = serde_json::to_vec_pretty(&Body {
        version: VERSION,
        leases,
    })
    .map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // NamedTempFile creates its file 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&body)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
