//! `pareco sync`: a destination tree made an exact copy of a source tree,
//! in one round or, for a live source, in rounds until one sends little.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pareco_engine::endpoint::{Location, RemoteOptions};
use pareco_engine::tuning::Tuning;
use pareco_engine::{Endpoint, Stats, Summary, SyncOptions};
use pareco_net::{Notices, PoolOptions, TokenKey};
use pareco_plan::shard::Shard;

use crate::cli::{Connections, NetArgs, SyncArgs, TokenArgs};
use crate::{EXIT_LIVE_CHANGES, EXIT_PARTIAL, output, security, token};

pub async fn run(args: SyncArgs) -> Result<u8> {
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    if matches!((&src, &dst), (Location::Remote { .. }, Location::Remote { .. })) {
        anyhow::bail!("one side must be local: pareco does not relay between two servers");
    }
    let options = remote_options(&[&src, &dst], &args.net, &args.token, args.verbose)?;
    let opts = SyncOptions {
        chunk_size: u32::try_from(args.chunk_size).context("chunk size too large")?,
        block_size: u32::try_from(args.block_size).context("block size too large")?,
        checksum: args.checksum,
        delete: args.delete,
        dry_run: args.dry_run,
        sparse: args.sparse,
        specials: args.specials || args.metadata.archive,
        owner: args.metadata.owner(),
        group: args.metadata.group(),
        xattrs: args.metadata.xattrs,
        parallelism: parallelism(args.net.connections),
        shard: args.shard.unwrap_or(Shard::ALL),
    };
    let source = Endpoint::source(&src, &options).await.context("source")?;
    let destination = Endpoint::destination(&dst, &options).await.context("destination")?;
    if let Some(dir) = &args.state_dir {
        check_state_dir(dir, &[&src, &dst])?;
        for end in [&source, &destination] {
            end.keep_digests_in(dir).with_context(|| format!("state directory {}", dir.display()))?;
        }
    }

    let rounds = if args.until_converged { args.max_rounds } else { 1 };
    let mut summaries: Vec<Summary> = Vec::new();
    let mut wire_so_far = (0, 0);
    let settled = |s: &Summary| s.bytes_transferred <= args.converge_bytes && s.errors == 0;
    for round in 1..=rounds {
        let stats = Arc::new(Stats::default());
        let bar = output::progress(&stats, args.quiet);
        let console = Arc::new(output::Console { itemize: args.dry_run || args.verbose, bar: bar.clone() });
        let summary = pareco_engine::sync(source.clone(), destination.clone(), opts.clone(), stats, console).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mut summary = summary?;
        for end in [&source, &destination] {
            if let Err(e) = end.save_digests() {
                tracing::warn!("cannot save the digest cache: {e}");
            }
        }
        // The connections live across rounds: count each round's own traffic.
        let wire = (summary.wire_bytes_sent, summary.wire_bytes_received);
        summary.wire_bytes_sent -= wire_so_far.0;
        summary.wire_bytes_received -= wire_so_far.1;
        wire_so_far = wire;
        if let Some(cause) = &summary.gave_up {
            // Said once, not once per entry (each cause once).
            let n = summary.entries_abandoned;
            eprintln!("pareco: giving up: {cause}; {n} entries not synced (what was synced stays: run again)");
        }
        if !args.quiet {
            let prefix = if args.until_converged { format!("round {round}: ") } else { String::new() };
            eprintln!("pareco: {prefix}{}", output::summary_line(&summary, args.dry_run));
        }
        let done = !args.until_converged || settled(&summary) || args.dry_run || summary.gave_up.is_some();
        summaries.push(summary);
        if done {
            break;
        }
    }
    let last = summaries.last().expect("at least one round");
    let converged = settled(last);
    if let Some(path) = &args.stats_json {
        if args.until_converged {
            output::write_json(path, &serde_json::json!({ "converged": converged, "rounds": summaries }))?;
        } else {
            output::write_json(path, last)?;
        }
    }
    if args.until_converged && !args.quiet {
        eprintln!(
            "pareco: {} after {} round(s)",
            if converged { "converged" } else { "did not converge" },
            summaries.len()
        );
    }
    Ok(if last.errors > 0 {
        EXIT_PARTIAL
    } else if args.until_converged {
        if converged { 0 } else { EXIT_LIVE_CHANGES }
    } else if last.files_changed + last.files_vanished > 0 {
        EXIT_LIVE_CHANGES
    } else {
        0
    })
}

/// The digest cache must not be synced (or deleted) with the data.
fn check_state_dir(dir: &std::path::Path, locations: &[&Location]) -> Result<()> {
    let dir = std::path::absolute(dir)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    for location in locations {
        let Location::Local(path) = location else { continue };
        let trees = [std::path::absolute(path).ok(), path.canonicalize().ok()];
        if let Some(tree) = trees.into_iter().flatten().find(|tree| dir.starts_with(tree)) {
            anyhow::bail!(
                "the state directory {} is inside {}: keep it outside the synced trees",
                dir.display(),
                tree.display()
            );
        }
    }
    Ok(())
}

/// How much the engine does at once: as many requests as connections (with
/// `-j auto`, as for 32, which a long fat link may well use; queues are
/// bounded by bytes too).
pub(crate) fn parallelism(connections: Connections) -> usize {
    match connections {
        Connections::Auto => AUTO_PARALLELISM,
        Connections::Fixed(n) => n as usize,
    }
}

const AUTO_PARALLELISM: usize = 32;

/// Connections `-j auto` starts with: on a slow link every second at few
/// connections is lost, and 8 are still few for a host.
const AUTO_START: usize = 8;

/// Connections `-j auto` never goes below.
const AUTO_MIN: usize = 4;

/// The connections to open first, and with `-j auto` how the count moves
/// (up to `max`; `notices` hear of every change).
pub(crate) fn connection_count(connections: Connections, max: usize, notices: Notices) -> (usize, Option<Tuning>) {
    match connections {
        Connections::Fixed(n) => (n as usize, None),
        Connections::Auto => {
            let start = AUTO_START.min(max);
            (start, Some(Tuning { start, min: AUTO_MIN.min(start), max, notices }))
        }
    }
}

/// How to reach a server, for whichever of `locations` is remote (the token
/// is required only then); `verbose` tells how `-j auto` moves the count.
pub(crate) fn remote_options(
    locations: &[&Location],
    net: &NetArgs,
    token_args: &TokenArgs,
    verbose: bool,
) -> Result<RemoteOptions> {
    let remote = locations.iter().any(|l| matches!(l, Location::Remote { .. }));
    let key = if remote {
        TokenKey::from_token(token::require(token_args.token_file.as_deref())?.as_bytes())
    } else {
        TokenKey::from_token(b"")
    };
    let max = net.max_connections as usize;
    let notices = if verbose { Notices::to(|line| eprintln!("pareco: {line}")) } else { Notices::default() };
    let (connections, tuning) = connection_count(net.connections, max, notices);
    Ok(RemoteOptions {
        key,
        pool: PoolOptions {
            connections,
            max_connections: max.max(connections),
            connect_timeout: Duration::from_secs(net.connect_timeout),
            security: security(token_args),
            compression: net.compress,
            retry_for: Duration::from_secs(net.retry_for),
            stall_timeout: Duration::from_secs(net.timeout),
            notices: Notices::to(|line| eprintln!("pareco: {line}")),
        },
        tuning,
    })
}
