//! Config errors: where (file, line, column, field path), what, and how to fix it.
//!
//! Messages built anywhere in this crate end up here and are shown to the operator by
//! `keyswap check`; they must never contain a secret value or a command's output.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::locate::Pos;

/// One problem in a config file.
///
/// Displays as `{file}:{line}:{column} {field}: {message}; {fix}`, e.g.
/// `keyswap.yaml:14:9 tasks.fix-42.allow[0].host: "*foo" is not a valid pattern; use "*.foo"`.
/// Line and column are 1-based. Both are 0 when no position applies (the file could not be
/// read): then it displays as `{message}; {fix}`, the message naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}; {}", self.message, self.fix);
        }
        write!(
            f,
            "{}:{}:{} {}: {}; {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message,
            self.fix
        )
    }
}

impl ConfigError {
    /// A file that could not be read at all: `cannot read FILE: <the OS's reason>`.
    pub(crate) fn unreadable(file: &Path, e: &std::io::Error, fix: &str) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read {}: {e}", file.display()),
            fix: fix.into(),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in file order. Displays one error per line.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A short reason for an I/O error ("not found", "permission denied", ...).
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Collects errors for one file.
pub(crate) struct Sink<'a> {
    pub file: &'a Path,
    pub errors: &'a mut Vec<ConfigError>,
    /// Field paths already reported as unreadable (a schema error): nothing more is said
    /// about them, so one mistake gives one message.
    covered: BTreeSet<String>,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path, errors: &'a mut Vec<ConfigError>) -> Sink<'a> {
        Sink {
            file,
            errors,
            covered: BTreeSet::new(),
        }
    }

    /// Says nothing more about `field` (its value was refused when the file was read).
    pub fn cover(&mut self, field: &str) {
        self.covered.insert(field.to_string());
    }

    pub fn error(
        &mut self,
        pos: Pos,
        field: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        if self.covered.contains(field) {
            return;
        }
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// An error about a value that was read with its position.
    pub fn at<T>(
        &mut self,
        at: &crate::read::Located<T>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.error(at.pos, &at.path, message, fix);
    }

    /// An error about `field` missing from the mapping `parent`.
    pub fn missing<T>(
        &mut self,
        parent: &crate::read::Located<T>,
        field: &str,
        fix: impl Into<String>,
    ) {
        let path = crate::locate::child(&parent.path, field);
        self.error(parent.pos, &path, format!("{field} is required"), fix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_documented_format() {
        let e = ConfigError {
            file: PathBuf::from("keyswap.yaml"),
            line: 14,
            column: 9,
            field: "tasks.fix-42.allow[0].host".into(),
            message: "\"*foo\" is not a valid pattern".into(),
            fix: "use \"*.foo\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "keyswap.yaml:14:9 tasks.fix-42.allow[0].host: \"*foo\" is not a valid pattern; use \"*.foo\""
        );
        let all = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
