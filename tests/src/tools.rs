//! Whether a real client the tests drive is installed.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether `tool` runs here (`tool probe`, e.g. `git --version`). Under `CI=true` its absence
/// fails the test; elsewhere the test prints a notice that cannot be missed and passes
/// (straight to stderr: libtest captures `eprintln!` of passing tests).
pub fn available(tool: &str, probe: &str) -> bool {
    let found = Command::new(tool)
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} must be on PATH in CI");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** NOTICE: {tool} is not on PATH: a test that needs it did NOT run ***\n"
        );
    }
    found
}
