//! The `seedq` binary: parse the command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = seedq::cli::Cli::parse();
    match seedq::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(seedq::cli::exit_code(&err))
        }
    }
}
