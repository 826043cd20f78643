use std::process::ExitCode;

use api_guard::{
    cli::{self, Command, LogFormat},
    control, daemon, failure, preflight,
};

fn main() -> ExitCode {
    let cli = cli::parse();
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
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(daemon::run(*args)),
        command => operator(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if format == LogFormat::Json => {
            let line = serde_json::json!({
                "level": "ERROR",
                "message": failure::one_line(&err),
                "target": "api_guard",
            });
            eprintln!("{line}");
            ExitCode::from(failure::exit_code(&err) as u8)
        }
        Err(err) => {
            eprintln!("api-guard: error: {}", failure::one_line(&err));
            ExitCode::from(failure::exit_code(&err) as u8)
        }
    }
}

/// The commands that act on a daemon's pins (and the ones that only print).
fn operator(command: Command) -> anyhow::Result<()> {
    use std::io::Write as _;
    let out = &mut std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            use clap_complete::Generator as _;
            let mut cmd = cli::command();
            cmd.set_bin_name("api-guard");
            cmd.build();
            // A closed pipe (`| head`) is an error to report, not a panic.
            shell.try_generate(&cmd, out)?;
            return Ok(());
        }
        Command::Man { command } => {
            let mut cmd = cli::command();
            cmd.build();
            let page = match command {
                None => cmd,
                Some(name) => cmd
                    .find_subcommand(&name)
                    .cloned()
                    .ok_or_else(|| {
                        failure::Failure::new(
                            failure::ExitCode::Usage,
                            format!("no command named {name:?}"),
                        )
                    })?
                    .name(format!("api-guard-{name}")),
            };
            clap_mangen::Man::new(page).render(out)?;
            return Ok(());
        }
        _ => {}
    }
    preflight::check_privileges()?;
    match command {
        Command::Completions { .. } | Command::Man { .. } => unreachable!("printed above"),
        Command::Run(_) => unreachable!("handled by the daemon"),
        Command::Status { pins, json } => control::status(&pins.pin_dir, json, out),
        Command::Top {
            pins,
            n,
            interval,
            once,
            json,
        } => control::top(
            &pins.pin_dir,
            &control::TopOptions {
                n,
                interval,
                once,
                json,
            },
            out,
        ),
        Command::Block {
            pins,
            cidr,
            duration,
        } => control::block(&pins.pin_dir, &cidr, duration, out),
        Command::Unblock { pins, cidr } => control::unblock(&pins.pin_dir, &cidr, out),
        Command::Detach { pins } => {
            let removed = api_guard::pins::detach(&pins.pin_dir)?;
            writeln!(
                out,
                "removed {removed} pins (links and maps) from {}",
                pins.pin_dir.display()
            )?;
            Ok(())
        }
        Command::Limit {
            pins,
            cidr,
            rate,
            burst,
            remove,
        } => match (remove, cidr, rate) {
            (Some(net), _, _) => control::remove_limit(&pins.pin_dir, &net, out),
            (None, Some(net), Some(rate)) => control::limit(&pins.pin_dir, &net, rate, burst, out),
            _ => unreachable!("clap requires a CIDR and --rate without --remove"),
        },
    }
}
