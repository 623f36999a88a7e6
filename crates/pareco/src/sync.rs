//! `pareco sync`: a destination tree made an exact copy of a source tree.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pareco_engine::endpoint::{Location, RemoteOptions};
use pareco_engine::{Endpoint, Stats, SyncOptions};
use pareco_net::{PoolOptions, TokenKey};

use crate::cli::SyncArgs;
use crate::{EXIT_LIVE_CHANGES, EXIT_PARTIAL, output, security, token};

pub async fn run(args: SyncArgs) -> Result<u8> {
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
