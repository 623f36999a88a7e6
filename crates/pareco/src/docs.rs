//! `pareco completions SHELL` and `pareco man`: both made from the one
//! command-line definition in [`crate::cli`], so they cannot drift from it.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell` on standard output.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "pareco", &mut out);
    finish(out.flush())
}

/// Prints the manual page, pareco(1), with a section per subcommand.
pub fn man() -> ExitCode {
    let mut out = Vec::new();
    let written = write_man(&mut out).and_then(|()| std::io::stdout().lock().write_all(&out));
    finish(written)
}

fn write_man(out: &mut Vec<u8>) -> std::io::Result<()> {
    let command = Cli::command();
    clap_mangen::Man::new(command.clone()).render(out)?;
    // One section per subcommand, with its options, after the main page.
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("pareco {}", sub.get_name());
        let sub = sub.clone().bin_name(name.clone());
        let man = clap_mangen::Man::new(sub.clone());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{about}")?;
        }
        man.render_synopsis_section(out)?;
        man.render_options_section(out)?;
    }
    Ok(())
}

fn finish(written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`pareco man | head`) is no failure worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pareco: writing to standard output: {e}");
            ExitCode::from(crate::EXIT_FATAL)
        }
    }
}
