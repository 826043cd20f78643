use std::process::ExitCode;

use api_guard::{
    cli::{self, Command, LogFormat},
    commands, daemon, failure,
};

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(usage) => return fail(&usage.into(), LogFormat::Text),
    };
    let (level, format) = match &cli.command {
        Command::Run(args) => (args.log_level, args.log_format),
        _ => (tracing::Level::WARN, LogFormat::Text),
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let result = match cli.command {
        Command::Run(args) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(daemon::run(*args)),
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
        },
        command => commands::run(command, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, format),
    }
}

/// One line on stderr (a JSON object with `--log-format json`), and the exit
/// code the error maps to.
fn fail(err: &anyhow::Error, format: LogFormat) -> ExitCode {
    if format == LogFormat::Json {
        let line = serde_json::json!({
            "level": "ERROR",
            "message": failure::one_line(err),
            "target": "api_guard",
        });
        eprintln!("{line}");
    } else {
        eprintln!("api-guard: error: {}", failure::one_line(err));
    }
    ExitCode::from(failure::exit_code(err) as u8)
}
