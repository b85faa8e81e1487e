//! `keyswap audit verify FILE... [--key-file K]...`: checks the audit chain of one file or a
//! rotated set given oldest first. Exit 0 with a one-line summary, or exit 1 naming the first
//! broken link (file and line). A key is read only to hash with; it is never printed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::chain::LineHasher;
use crate::audit::verify as audit_verify;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of audit files (a rotated set oldest first, e.g.
    /// `audit.jsonl.2 audit.jsonl.1 audit.jsonl`) and report the first broken link.
    Verify {
        /// The files, in the order they were written.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The chain's HMAC key (`audit.key_file`); repeat for a set written under several keys.
        #[arg(long = "key-file")]
        key_files: Vec<PathBuf>,
    },
}

pub fn audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { files, key_files } => verify(&files, &key_files),
    }
}

fn verify(files: &[PathBuf], key_files: &[PathBuf]) -> ExitCode {
    let mut keys = Vec::new();
    for path in key_files {
        match keyswap_config::secrets::read_audit_key(path) {
            Ok(key) => keys.push(LineHasher::keyed(secrecy::ExposeSecret::expose_secret(
                &key,
            ))),
            Err(e) => {
                eprintln!("keyswap: --key-file: {}; {}", e.message, e.fix);
                return ExitCode::FAILURE;
            }
        }
    }
    match audit_verify::verify(files, &keys) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("broken chain: {broken}");
            ExitCode::FAILURE
        }
    }
}
