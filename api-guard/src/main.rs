use std::process::ExitCode;

use api_guard::{
    cli::{Cli, Command},
    daemon, failure,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Run(args) => args.log_level,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api-guard: error: cannot start the async runtime: {e}");
            return ExitCode::from(failure::ExitCode::Runtime as u8);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => daemon::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("api-guard: error: {}", failure::one_line(&err));
            ExitCode::from(failure::exit_code(&err) as u8)
        }
    }
}
