//! The records `keyswap learn` reads: the request records of an audit file set (verified as
//! one hash chain first), narrowed to one task or policy and a start time, keeping what the
//! run needed — requests that were allowed or learned, and `tunnel: true` connections.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;

use crate::audit::chain::LineHasher;
use crate::audit::decision::Carried;
use crate::audit::verify::verify;

/// One request record, as far as learning needs it (names only, never a value).
#[derive(Debug, Clone, Deserialize)]
pub struct Observed {
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub scheme: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
    /// Secrets whose real values were sent (a rule already granted them).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Learn mode: the placeholders the request carried, and where.
    #[serde(default)]
    pub carried: Vec<Carried>,
    #[serde(default)]
    pub tunnel: bool,
    #[serde(default)]
    pub decision: String,
}

impl Observed {
    /// A `tunnel: true` connection (spliced, no requests seen inside it).
    pub fn is_tunnel(&self) -> bool {
        self.tunnel && self.method == "CONNECT"
    }

    /// Every secret the request used or carried, sorted, without repeats.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.secrets.clone();
        names.extend(self.carried.iter().map(|c| c.secret.clone()));
        names.sort();
        names.dedup();
        names
    }
}

/// Which records to learn from.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub task: Option<String>,
    pub policy: Option<String>,
    /// Records before this time are left out.
    pub since: Option<SystemTime>,
}

impl Filter {
    fn keeps(&self, record: &Observed) -> bool {
        let named = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        let recent = match (&self.since, &record.ts) {
            (Some(since), Some(ts)) => {
                humantime::parse_rfc3339_weak(ts).is_ok_and(|at| at >= *since)
            }
            (Some(_), None) => false,
            (None, _) => true,
        };
        named(&self.task, &record.task) && named(&self.policy, &record.policy) && recent
    }
}

/// What was read.
#[derive(Debug, Default)]
pub struct ReadAudit {
    /// The records the run needed, in file order.
    pub records: Vec<Observed>,
    /// The chain's first broken link, when `force` read past it.
    pub broken: Option<String>,
    /// Lines that were not request records of the filter, or not JSON.
    pub skipped: usize,
}

/// Why the audit could not be learned from.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("the audit's hash chain is broken at {0}; the records may have been edited (check with `keyswap audit verify`, or pass --force to learn from them anyway)")]
    Broken(String),
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
}

/// Verifies `files` (oldest first) as one chain, then reads the records `filter` keeps.
/// A broken chain is an error unless `force`, when it is reported in [`ReadAudit::broken`].
pub fn read_audit(
    files: &[PathBuf],
    keys: &[LineHasher],
    filter: &Filter,
    force: bool,
) -> Result<ReadAudit, LearnError> {
    let mut read = ReadAudit::default();
    // A file that cannot be read is that, not a broken chain.
    for path in files {
        std::fs::metadata(path).map_err(|error| LearnError::Read {
            path: path.display().to_string(),
            error,
        })?;
    }
    if let Err(broken) = verify(files, keys) {
        if !force {
            return Err(LearnError::Broken(broken.to_string()));
        }
        read.broken = Some(broken.to_string());
    }
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|error| LearnError::Read {
            path: path.display().to_string(),
            error,
        })?;
        for line in text.lines() {
            match serde_json::from_str::<Observed>(line) {
                Ok(record) if needed(&record) && filter.keeps(&record) => read.records.push(record),
                _ => read.skipped += 1,
            }
        }
    }
    Ok(read)
}

/// A request that was served (allowed or learned), or a tunnel that was spliced.
fn needed(record: &Observed) -> bool {
    let served = matches!(record.decision.as_str(), "allowed" | "learned");
    let request = record.event.as_deref() == Some("request");
    request
        && served
        && (record.is_tunnel() || (record.method != "CONNECT" && record.path.is_some()))
}
