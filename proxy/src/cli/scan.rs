//! `keyswap scan [DIR…]`: search working trees for the config's real secret values in plain
//! text (every form the scrubber knows), for CI and pre-commit hooks. Exit 0 clean, 1 on a
//! hit, 2 on a usage or config error, 3 when nothing was found but the time budget cut the
//! search short. Prints files, lines and secret names, never a value.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::host::plaintext::{self, ScanBudget, ScanReport, ScanSet};

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Directories to search (default: the working directory).
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// The config whose secrets are searched for; their values are read as `run` reads them.
    #[arg(long, default_value = "keyswap.yaml")]
    pub config: PathBuf,
    /// Print the hits as one JSON array on stdout: [{"file", "line", "secret", "form"}],
    /// sorted by file, line and secret ("form" is "raw" or "encoded").
    #[arg(long)]
    pub json: bool,
    /// Stop searching after this long (e.g. 30s, 5m); what was not reached is listed and the
    /// exit status is 3 if nothing was found.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub time_budget: String,
    /// Files larger than this many bytes are not read (they are listed).
    #[arg(long, value_name = "BYTES", default_value_t = plaintext::tree::DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: u64,
}

/// Exit status: a secret value was found.
const FOUND: u8 = 1;
/// Exit status: usage or config error.
const USAGE: u8 = 2;
/// Exit status: nothing found, but the search was cut short.
const INCOMPLETE: u8 = 3;

/// One hit as `--json` prints it.
#[derive(Serialize)]
struct JsonHit<'a> {
    file: String,
    line: u64,
    secret: &'a str,
    form: &'static str,
}

pub fn scan(args: ScanArgs) -> ExitCode {
    let time = match humantime::parse_duration(&args.time_budget) {
        Ok(time) => time,
        Err(e) => {
            eprintln!("keyswap scan: --time-budget {}: {e}", args.time_budget);
            return ExitCode::from(USAGE);
        }
    };
    let budget = ScanBudget {
        max_file_size: args.max_file_size,
        time,
    };
    let config = match keyswap_config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!(
                "keyswap scan: {}",
                super::causes(&super::not_valid(&args.config, &errors))
            );
            return ExitCode::from(USAGE);
        }
    };
    let set = match ScanSet::from_config(&config) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("keyswap scan: building the matcher: {e}");
            return ExitCode::from(USAGE);
        }
    };
    drop(config);
    if set.is_empty() {
        eprintln!(
            "keyswap scan: {} configures no secret: nothing to search for",
            args.config.display()
        );
    }
    let dirs = if args.dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.dirs
    };
    for dir in &dirs {
        if !dir.is_dir() {
            eprintln!("keyswap scan: {} is not a directory", dir.display());
            return ExitCode::from(USAGE);
        }
    }
    let report = plaintext::scan_roots(&set, &dirs, budget);
    print_report(&report, args.json);
    if let Some(note) = plaintext::incomplete_note(&report, budget) {
        eprintln!("keyswap scan: {note}");
    }
    if !report.is_clean() {
        eprintln!(
            "keyswap scan: {} place(s) hold a real secret value in plain text; move a .env's \
             credentials out with `keyswap import-env FILE`, remove the others (and rotate any \
             value that was ever committed)",
            report.hits.len()
        );
        ExitCode::from(FOUND)
    } else if report.cut_short {
        ExitCode::from(INCOMPLETE)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(report: &ScanReport, json: bool) {
    if json {
        let hits: Vec<JsonHit<'_>> = report
            .hits
            .iter()
            .map(|h| JsonHit {
                file: h.path.display().to_string(),
                line: h.line,
                secret: &h.secret,
                form: h.form.as_str(),
            })
            .collect();
        match serde_json::to_string(&hits) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("keyswap scan: {e}"),
        }
        return;
    }
    for hit in &report.hits {
        println!(
            "{}:{}: secret {} ({})",
            hit.path.display(),
            hit.line,
            hit.secret,
            hit.form.as_str()
        );
    }
}
