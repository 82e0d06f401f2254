//! The `dsevents` binary: parses the command line, runs the command, and
//! turns its error into one `dsevents: ` line and an exit code.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error (clap's own
//! errors, and `UsageError` from the commands).

use std::process::ExitCode;

use clap::Parser;
use dsevents::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    dsevents::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => dsevents::server::run(args),
        Command::Query(command) => dsevents::query::run(command),
        Command::Replay(args) => dsevents::replay::run(args),
        Command::Import(args) => dsevents::import::run(args),
        Command::Export(args) => dsevents::export::run(args),
        Command::Backup(args) => dsevents::backup::run(args),
        Command::Prune(args) => dsevents::prune::run(args),
        Command::Forget(args) => dsevents::forget::run(args),
        Command::Status(args) => dsevents::status::run(args),
        Command::Completions { shell } => dsevents::cli::print_completions(shell),
        Command::Man(args) => dsevents::cli::man(args),
        Command::Urls(args) => dsevents::urls::run(args),
        Command::Simulate(args) => dsevents::simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("dsevents: {error}");
            for cause in error.chain().skip(1) {
                message.push_str(&format!(": {cause}"));
            }
            eprintln!("{message}");
            if error.is::<dsevents::cli::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
