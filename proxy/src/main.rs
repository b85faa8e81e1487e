#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    keyswap::cli::main_with(keyswap::cli::Cli::parse())
}
