#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `keyswap exec`'s sandbox helper: dispatched before anything else runs, because it must
    // stay single-threaded to create a user namespace. Not a command for users.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(keyswap_sandbox::HELPER_SUBCOMMAND) {
        return keyswap_sandbox::helper_main(&args.next().unwrap_or_default());
    }
    keyswap::cli::main_with(keyswap::cli::Cli::parse())
}
