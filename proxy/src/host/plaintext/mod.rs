//! Real secret values in plain text where the agent will look: its working tree.
//!
//! keyswap keeps real values out of the agent's environment and network, but a `.env`, a
//! config file or a git remote URL in the project holds the same value where the agent simply
//! reads it. [`scan`] finds every form the scrubber knows of every configured value, [`tree`]
//! walks a working tree within a budget, and [`import_env`] moves a `.env`'s credentials into
//! files keyswap reads (and the sandbox hides), leaving placeholders in their place.
//!
//! `keyswap exec` calls [`check_working_tree`] on its working directory before it starts the
//! command, and refuses with [`exec_refusal`] on a hit. `keyswap scan` is the same search on
//! demand.
//!
//! Nothing here formats a real value: reports hold paths, line numbers and secret names.

pub mod dotenv;
pub mod import_env;
pub mod merge;
pub mod scan;
pub mod tree;

use std::fmt::Write;

pub use scan::{Form, ScanSet};
pub use tree::{check_working_tree, scan_roots, Hit, ScanBudget, ScanReport};

/// The exit status of `keyswap exec` when it refuses to start (its status for every failure
/// of its own, as with `env` and container runtimes).
pub const EXEC_REFUSED: u8 = 125;

/// At most this many paths are listed for what was skipped or not reached.
const LISTED: usize = 10;

/// One line per hit: `  FILE:LINE: secret NAME (raw|encoded)`.
pub fn hit_lines(report: &ScanReport) -> String {
    let mut out = String::new();
    for hit in &report.hits {
        let form = match hit.form {
            Form::Raw => "as it is",
            Form::Encoded => "encoded: base64, percent or JSON escapes",
        };
        let _ = writeln!(
            out,
            "  {}:{}: secret {} ({form})",
            hit.path.display(),
            hit.line,
            hit.secret
        );
    }
    out
}

/// What `keyswap exec` prints (then exits [`EXEC_REFUSED`]) when its working tree holds a real
/// value. Names files, lines and secrets, never a value.
pub fn exec_refusal(report: &ScanReport) -> String {
    let mut out = String::from(
        "keyswap exec: not starting the command: real secret values are in files it can read \
         under its working directory:\n",
    );
    out.push_str(&hit_lines(report));
    out.push_str(
        "Move a .env's credentials out with `keyswap import-env FILE` (each value goes to a \
         file the sandbox hides; the .env gets a placeholder), or remove the value from the \
         file (and rotate it if it was ever committed). --allow-plaintext starts the command \
         anyway.",
    );
    out
}

/// What `keyswap exec --allow-plaintext` prints before it starts the command anyway.
pub fn allow_plaintext_warning(report: &ScanReport) -> String {
    let mut out = String::from(
        "keyswap exec: WARNING: --allow-plaintext: starting the command although real secret \
         values are in files it can read; it can use them without keyswap:\n",
    );
    out.push_str(&hit_lines(report));
    out.trim_end().to_string()
}

/// What was left out of a search (cut short by the time budget, files too large or
/// unreadable), for a warning on stderr; `None` when everything was read.
pub fn incomplete_note(report: &ScanReport, budget: ScanBudget) -> Option<String> {
    let mut out = String::new();
    if report.cut_short {
        let _ = writeln!(
            out,
            "the search for plaintext secrets was cut short after {} ({} files, {} bytes read); not reached: {}",
            humantime::format_duration(budget.time),
            report.files_scanned,
            report.bytes_scanned,
            listed(&report.not_scanned),
        );
    }
    if !report.too_large.is_empty() {
        let _ = writeln!(
            out,
            "not searched, over {} bytes: {}",
            budget.max_file_size,
            listed(&report.too_large)
        );
    }
    if !report.unreadable.is_empty() {
        let _ = writeln!(
            out,
            "not searched, unreadable: {}",
            listed(&report.unreadable)
        );
    }
    (!out.is_empty()).then(|| out.trim_end().to_string())
}

fn listed(paths: &[std::path::PathBuf]) -> String {
    let mut shown: Vec<String> = paths
        .iter()
        .take(LISTED)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > LISTED {
        shown.push(format!("and {} more", paths.len() - LISTED));
    }
    shown.join(", ")
}
