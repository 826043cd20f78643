//! `api-guard completions` and `api-guard man`: what the command line is, for
//! shells and for man.

use std::io::Write;

use anyhow::Result;

use crate::{cli, failure::Failure};

/// Shell completions for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) -> Result<()> {
    use clap_complete::Generator as _;
    let mut cmd = cli::command();
    cmd.set_bin_name("api-guard");
    cmd.build();
    // A closed pipe (`| head`) is an error to report, not a panic.
    shell.try_generate(&cmd, out)?;
    Ok(())
}

/// The man page of api-guard, or of one of its commands.
pub fn man(command: Option<&str>, out: &mut impl Write) -> Result<()> {
    let mut cmd = cli::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => cmd
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| Failure::Usage(format!("no command named {name:?}")))?
            .name(format!("api-guard-{name}")),
    };
    clap_mangen::Man::new(page).render(out)?;
    Ok(())
}
