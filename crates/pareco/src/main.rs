//! The `pareco` binary: glue between the command line and the engine.
//!
//! Exit status: 0 when everything requested was done; 1 when some paths
//! failed (each named on stderr); 24 when the only problems were source
//! files that changed or vanished while being copied (live data: run again);
//! 2 when nothing could be done (bad arguments, no connection, refused).

mod cli;
mod output;
mod token;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use pareco_engine::endpoint::{Location, RemoteOptions};
use pareco_engine::serve::{Access, TreeService};
use pareco_engine::tree::BlockingTree;
use pareco_engine::{Endpoint, Stats, SyncOptions};
use pareco_net::{PoolOptions, Security, ServerConfig, TokenKey};

use crate::cli::{Cli, Command, ServeArgs, SyncArgs};

const EXIT_PARTIAL: u8 = 1;
const EXIT_FATAL: u8 = 2;
const EXIT_LIVE_CHANGES: u8 = 24;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Serve(_) => "info",
        Command::Sync(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARECO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| 0),
            Command::Sync(args) => sync(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pareco: {e:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn security(args: &cli::TokenArgs) -> Security {
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

async fn serve(args: ServeArgs) -> Result<()> {
    let token = token::for_server(args.token.token_file.as_deref())?;
    let root = pareco_fs::FsTree::open(&args.root).with_context(|| format!("cannot serve {}", args.root.display()))?;
    let access = match (args.read_only, args.write_only) {
        (true, _) => Access::ReadOnly,
        (_, true) => Access::WriteOnly,
        _ => Access::ReadWrite,
    };
    let service = Arc::new(TreeService::new(BlockingTree::new(root, 32), access));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    // Handlers first: a signal that arrives right after the announcement
    // must drain the server, not kill it.
    let shutdown = shutdown_signal()?;
    println!("listening on {local}");
    use std::io::Write;
    std::io::stdout().flush()?;
    tracing::info!(root = %args.root.display(), ?access, "serving");
    let mut config = ServerConfig::new(TokenKey::from_token(token.as_bytes()));
    config.security = security(&args.token);
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout.max(1));
    if config.security == Security::Plaintext {
        tracing::warn!("--insecure-no-encryption: data from and to clients travels unencrypted");
    }
    pareco_net::serve(listener, config, service, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT (handlers installed at once).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
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

async fn sync(args: SyncArgs) -> Result<u8> {
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    let remote = matches!(src, Location::Remote { .. }) || matches!(dst, Location::Remote { .. });
    if matches!((&src, &dst), (Location::Remote { .. }, Location::Remote { .. })) {
        anyhow::bail!("one side must be local: pareco does not relay between two servers");
    }
    let key = if remote {
        TokenKey::from_token(token::require(args.token.token_file.as_deref())?.as_bytes())
    } else {
        TokenKey::from_token(b"")
    };
    let options = RemoteOptions {
        key,
        pool: PoolOptions {
            connections: args.connections as usize,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            security: security(&args.token),
        },
    };
    let opts = SyncOptions {
        chunk_size: u32::try_from(args.chunk_size).context("chunk size too large")?,
        block_size: u32::try_from(args.block_size).context("block size too large")?,
        checksum: args.checksum,
        delete: args.delete,
        dry_run: args.dry_run,
        parallelism: args.connections as usize,
    };
    let source = Endpoint::source(&src, &options).await.context("source")?;
    let destination = Endpoint::destination(&dst, &options).await.context("destination")?;

    let stats = Arc::new(Stats::default());
    let bar = output::progress(&stats, args.quiet);
    let console = Arc::new(output::Console { itemize: args.dry_run || args.verbose, bar: bar.clone() });
    let summary = pareco_engine::sync(source, destination, opts, stats, console).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = summary?;
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.quiet {
        eprintln!("pareco: {}", output::summary_line(&summary, args.dry_run));
    }
    Ok(if summary.errors > 0 {
        EXIT_PARTIAL
    } else if summary.files_changed + summary.files_vanished > 0 {
        EXIT_LIVE_CHANGES
    } else {
        0
    })
}
