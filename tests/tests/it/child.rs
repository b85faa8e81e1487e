//! keyswap as a process of its own, for the tests that need one (a signal, a kill, several
//! replicas): this test binary re-executed with [`CHILD_ARGS`] set runs [`keyswap_child`],
//! which is keyswap's own command line. The suite otherwise runs proxies in-process.

use std::process::{Command, ExitCode};

/// Set to the arguments (separated by [`ARG_SEP`]) when this binary runs as `keyswap`.
const CHILD_ARGS: &str = "KS_KEYSWAP_CHILD_ARGS";
const ARG_SEP: char = '\u{1f}';

/// Not a test: the entry point when this test binary is re-executed as `keyswap` (with
/// [`CHILD_ARGS`] set).
#[test]
#[ignore = "entry point of the keyswap child process, run by the tests that start one"]
fn keyswap_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let argv = std::iter::once("keyswap".to_string()).chain(args.split(ARG_SEP).map(String::from));
    let cli = <keyswap::cli::Cli as clap::Parser>::parse_from(argv);
    let code = keyswap::cli::main_with(cli);
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

/// `keyswap ARGS` as a child of this test.
pub(crate) fn keyswap_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child::keyswap_child",
        "--include-ignored",
        "--nocapture",
        "--quiet",
    ])
    .env(CHILD_ARGS, args.join(&ARG_SEP.to_string()));
    cmd
}
