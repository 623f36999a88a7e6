//! The `pareco` binary: glue between the command line and the engine.
//!
//! Exit status: 0 when everything requested was done; 1 when some paths
//! failed (each named on stderr); 24 when the only problems were source
//! files that changed or vanished while being copied (live data: run again);
//! 2 when nothing could be done (bad arguments, no connection, refused).
//! For `send` and `recv`: 0 only when the whole stream arrived and was
//! verified, 1 when it did not (the receiver says how much was delivered),
//! 2 when it could not start (no bucket, wrong token, prefix in use…).
//! For `forward`: 0 after a drain (SIGTERM), 2 when nothing could start
//! (bad configuration, listen address in use).

mod cli;
mod docs;
mod forward;
mod metrics;
mod output;
mod progress;
mod relay;
mod serve;
mod stream;
mod sync;
mod token;
mod verify;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use pareco_net::Security;

use crate::cli::{Cli, Command, LogFormat};

pub(crate) const EXIT_PARTIAL: u8 = 1;
pub(crate) const EXIT_FATAL: u8 = 2;
pub(crate) const EXIT_LIVE_CHANGES: u8 = 24;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Serve(_) | Command::Forward(_) => "info",
        Command::Sync(_) | Command::Send(_) | Command::Recv(_) | Command::Verify(_) => "warn",
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man => return docs::man(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARECO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let format = cli.log_format.or_else(|| {
        let value = std::env::var("PARECO_LOG_FORMAT").ok()?;
        let format = clap::ValueEnum::from_str(&value, true);
        if format.is_err() {
            eprintln!("pareco: PARECO_LOG_FORMAT={value:?} is neither text nor json: logging as text");
        }
        format.ok()
    });
    match format.unwrap_or(LogFormat::Text) {
        LogFormat::Json => logs.json().init(),
        // Colour codes only for a person at a terminal, never in a file.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|()| 0),
            Command::Sync(args) => sync::run(args).await,
            Command::Send(args) => stream::send(args).await,
            Command::Recv(args) => stream::recv(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Forward(args) => forward::run(args).await,
            Command::Completions { .. } | Command::Man => unreachable!("answered before the runtime starts"),
        }
    });
    // A stream that failed may leave a thread blocked on its input: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pareco: {}", error_line(&e));
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// An error and its causes on one line, each cause said once: a cause whose
/// text an outer message already includes is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

pub(crate) fn security(args: &cli::TokenArgs) -> Security {
    if args.insecure_no_encryption { Security::Plaintext } else { Security::Encrypted }
}

/// Many connections and many open files at once: raise the soft limit on
/// file descriptors to the hard limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("cannot raise the file descriptor limit: {e}");
        }
    }
}

/// Completes on the first SIGTERM or SIGINT (handlers installed at once).
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: finishing requests in progress");
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_of_an_error_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot connect to h:1: {text}")).context("destination");
        assert_eq!(super::error_line(&e), format!("destination: cannot connect to h:1: {text}"));
    }
}
