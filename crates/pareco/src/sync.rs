//! `pareco sync`: a destination tree made an exact copy of a source tree,
//! in one round or, for a live source, in rounds until one sends little.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pareco_engine::endpoint::{Location, RemoteOptions};
use pareco_engine::tuning::Tuning;
use pareco_engine::{Endpoint, Stats, Summary, SyncOptions};
use pareco_net::{Notices, PoolOptions, TokenKey};
use pareco_plan::downtime;
use pareco_plan::shard::Shard;

use crate::cli::{Connections, NetArgs, SyncArgs, TokenArgs};
use crate::output::human;
use crate::{EXIT_LIVE_CHANGES, EXIT_PARTIAL, output, progress, security, token};

pub async fn run(args: SyncArgs) -> Result<u8> {
    let src = Location::parse(&args.src)?;
    let dst = Location::parse(&args.dst)?;
    if matches!((&src, &dst), (Location::Remote { .. }, Location::Remote { .. })) {
        anyhow::bail!("one side must be local: pareco does not relay between two servers");
    }
    if let (Location::Local(from), Location::Local(to)) = (&src, &dst) {
        check_overlap(from, to, args.delete)?;
    }
    let options = remote_options(&[&src, &dst], &args.net, &args.token, args.verbose)?;
    let opts = SyncOptions {
        chunk_size: u32::try_from(args.chunk_size).context("chunk size too large")?,
        block_size: u32::try_from(args.block_size).context("block size too large")?,
        checksum: args.checksum,
        delete: args.delete,
        dry_run: args.dry_run,
        sparse: args.sparse,
        specials: args.metadata.specials(),
        owner: args.metadata.owner(),
        group: args.metadata.group(),
        xattrs: args.metadata.xattrs,
        parallelism: parallelism(args.net.connections),
        shard: args.shard.unwrap_or(Shard::ALL),
        notices: told(args.verbose),
    };
    let source = Endpoint::source(&src, &dst, &options).await.context("source")?;
    let destination = Endpoint::destination(&dst, &src, &options).await.context("destination")?;
    if let Some(dir) = &args.state_dir {
        check_state_dir(dir, &[&src, &dst])?;
        for end in [&source, &destination] {
            end.keep_digests_in(dir).with_context(|| format!("state directory {}", dir.display()))?;
        }
    }

    let rounds = if args.until_converged { args.max_rounds } else { 1 };
    let live = Arc::new(Live::new([source.tree.clone(), destination.tree.clone()]));
    crate::metrics::serve(args.progress.metrics.metrics_listen, {
        let live = live.clone();
        move |families| live.metrics(families)
    })
    .await?;
    let root_name = match source.tree.stat(source.base.clone()).await {
        Ok((Some(stat), _)) if stat.kind != pareco_proto::Kind::Dir => output::file_name(&src),
        _ => None,
    };
    let mode = progress::Mode::new(args.quiet, args.progress.progress_interval);
    let mut summaries: Vec<Summary> = Vec::new();
    let mut observed: Vec<downtime::Round> = Vec::new();
    let mut predictions: Vec<Option<f64>> = Vec::new();
    let mut wire_so_far = (0, 0);
    let mut previous_start: Option<Instant> = None;
    let converge_seconds = args.converge_seconds;
    // Little enough left to call the next round the final one...
    let small = |s: &Summary| {
        s.bytes_transferred <= args.converge_bytes || converge_seconds.is_some_and(|limit| s.duration_s <= limit)
    };
    let settled = |s: &Summary| s.errors == 0 && small(s);
    // ... but for paths that fail: twice in a row, and more rounds will not
    // mend them.
    let stuck = |s: &Summary, before: Option<&Summary>| {
        s.errors > 0 && small(s) && before.is_some_and(|b| b.errors > 0 && small(b))
    };
    for round in 1..=rounds {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        live.begin(round, &stats);
        let display = progress::Display::start(mode, "progress", {
            let stats = stats.clone();
            move || output::sync_figures(&stats)
        });
        let console = Arc::new(output::Console {
            itemize: args.dry_run || args.verbose,
            changes_to_stderr: output::json_on_stdout(args.stats_json.as_deref()),
            bar: display.bar(),
            root_name: root_name.clone(),
        });
        let summary = pareco_engine::sync(source.clone(), destination.clone(), opts.clone(), stats, console).await;
        display.finish();
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
        observed.push(downtime::Round {
            since_previous_s: previous_start.map(|p| started.duration_since(p).as_secs_f64()),
            duration_s: summary.duration_s,
            walk_s: summary.walk_s,
            bytes_sent: summary.bytes_transferred,
        });
        previous_start = Some(started);
        let prediction = downtime::predict(&observed);
        predictions.push(prediction.map(|p| p.final_s));
        live.end(&summary, prediction.map(|p| p.final_s));
        if !args.quiet {
            let prefix = if args.until_converged { format!("round {round}: ") } else { String::new() };
            eprintln!("pareco: {prefix}{}", output::summary_line(&summary, args.dry_run));
            if args.until_converged && !args.dry_run {
                eprintln!("pareco: round {round}: {}", prediction_line(prediction.as_ref()));
            }
        }
        let done = !args.until_converged
            || settled(&summary)
            || stuck(&summary, summaries.last())
            || args.dry_run
            || summary.gave_up.is_some();
        summaries.push(summary);
        if done {
            break;
        }
    }
    let last = summaries.last().expect("at least one round");
    let converged = settled(last);
    if let Some(path) = &args.stats_json {
        if args.until_converged {
            let rounds: Vec<serde_json::Value> = summaries
                .iter()
                .zip(&predictions)
                .map(|(summary, predicted)| {
                    let mut round = serde_json::to_value(summary).expect("a summary is plain data");
                    round["predicted_final_round_s"] = serde_json::json!(predicted);
                    round
                })
                .collect();
            output::write_json(path, &serde_json::json!({ "converged": converged, "rounds": rounds }))?;
        } else {
            output::write_json(path, last)?;
        }
    }
    if args.until_converged && !args.quiet {
        let n = summaries.len();
        let before = n.checked_sub(2).map(|i| &summaries[i]);
        match (converged, stuck(last, before)) {
            (true, _) => eprintln!("pareco: converged after {n} round(s)"),
            (false, true) => eprintln!(
                "pareco: did not converge after {n} round(s): {} path(s) failed in each of the last two, \
                 everything else is in sync (more rounds would not mend them: see the errors above)",
                last.errors
            ),
            (false, false) => eprintln!("pareco: did not converge after {n} round(s)"),
        }
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

/// `final round (downtime) predicted: 4.2 s (…)`, or why there is none yet.
fn prediction_line(prediction: Option<&downtime::Prediction>) -> String {
    match prediction {
        None => "final round (downtime): no prediction yet (the first round catches up with all the destination \
                 lacked; the next one measures the rate of change)"
            .to_string(),
        Some(p) => format!(
            "final round (downtime) predicted: {:.1} s (walk {:.1} s, then {} changed at {}/s of wall time, \
             brought over at {}/s)",
            p.final_s,
            p.walk_s,
            human(p.bytes as u64),
            human(p.change_rate as u64),
            if p.transfer_rate.is_finite() { human(p.transfer_rate as u64) } else { "-".to_string() },
        ),
    }
}

/// What `--metrics-listen` shows of a sync: the round running now, the
/// rounds before it, and the connections they share.
struct Live {
    trees: [pareco_engine::tree::Tree; 2],
    state: Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    round: u32,
    current: Arc<Stats>,
    /// Totals of the rounds already over.
    before: Summary,
    last_duration_s: f64,
    predicted_final_s: Option<f64>,
}

impl Live {
    fn new(trees: [pareco_engine::tree::Tree; 2]) -> Live {
        Live { trees, state: Mutex::default() }
    }

    fn begin(&self, round: u32, stats: &Arc<Stats>) {
        let mut state = self.state.lock().expect("live state");
        state.round = round;
        state.current = stats.clone();
    }

    fn end(&self, summary: &Summary, predicted_final_s: Option<f64>) {
        let mut state = self.state.lock().expect("live state");
        let b = &mut state.before;
        b.bytes_transferred += summary.bytes_transferred;
        b.files_transferred += summary.files_transferred;
        b.errors += summary.errors;
        b.files_changed += summary.files_changed;
        b.files_vanished += summary.files_vanished;
        b.warnings += summary.warnings;
        b.entries_deleted += summary.entries_deleted;
        state.current = Arc::default();
        state.last_duration_s = summary.duration_s;
        state.predicted_final_s = predicted_final_s;
    }

    fn metrics(&self, f: &mut crate::metrics::Families) {
        let state = self.state.lock().expect("live state");
        let (now, before) = (state.current.snapshot(), &state.before);
        let (mut sent, mut received, mut reconnects, mut retried, mut open, mut peak) = (0, 0, 0, 0, 0, 0);
        for tree in &self.trees {
            let (s, r) = tree.wire_bytes();
            let (c, q) = tree.recoveries();
            (sent, received, reconnects, retried) = (sent + s, received + r, reconnects + c, retried + q);
            (open, peak) = (open + tree.open_connections(), peak.max(tree.peak_connections()));
        }
        f.gauge("pareco_round", "The round running now (1 without --until-converged).", state.round.into());
        f.gauge(
            "pareco_bytes_done",
            "Bytes of this round's files compared or sent.",
            now.bytes_processed + now.bytes_in_progress,
        );
        f.gauge("pareco_bytes", "Bytes of this round's files found so far.", now.bytes_total);
        f.gauge("pareco_files_done", "Files of this round whose outcome is known.", now.files_done);
        f.gauge("pareco_files", "Files of this round found so far.", now.files_total);
        f.counter(
            "pareco_content_sent_bytes",
            "File content sent, all rounds.",
            before.bytes_transferred + now.bytes_transferred,
        );
        f.counter(
            "pareco_files_transferred",
            "Files whose content was sent, all rounds.",
            before.files_transferred + now.files_transferred,
        );
        f.counter("pareco_wire_sent_bytes", "Bytes written to the connections.", sent);
        f.counter("pareco_wire_received_bytes", "Bytes read from the connections.", received);
        f.gauge("pareco_connections", "Connections to the server open now.", open);
        f.gauge("pareco_connections_peak", "The most connections open at once.", peak);
        f.counter("pareco_reconnects", "Connections re-opened after they died or stalled.", reconnects);
        f.counter("pareco_retries", "Requests sent again because their connection died.", retried);
        for (kind, n) in [
            ("failed", before.errors + now.errors),
            ("changed", before.files_changed + now.files_changed),
            ("vanished", before.files_vanished + now.files_vanished),
            ("skipped", before.warnings + now.warnings),
        ] {
            f.counter_with("pareco_errors", "Paths that did not sync, by kind.", vec![("kind", kind.to_owned())], n);
        }
        f.counter("pareco_deleted", "Destination entries removed.", before.entries_deleted + now.entries_deleted);
        f.gauge_f64(
            "pareco_last_round_duration_seconds",
            "How long the last finished round took.",
            state.last_duration_s,
        );
        if let Some(p) = state.predicted_final_s {
            f.gauge_f64("pareco_predicted_final_round_seconds", "The predicted final round (downtime).", p);
        }
    }
}

/// The digest cache must not be synced (or deleted) with the data.
/// Refuses a local destination inside the source directory (each run would
/// copy the copies again, deeper), and, with `--delete`, a source inside
/// the destination (it would be removed as extraneous).
fn check_overlap(src: &std::path::Path, dst: &std::path::Path, delete: bool) -> Result<()> {
    let (from, to) = (resolved(src)?, resolved(dst)?);
    if from == to || !src.is_dir() {
        return Ok(());
    }
    if to.starts_with(&from) {
        anyhow::bail!(
            "the destination {} is inside the source {}: every run would copy the copy into itself again; \
             choose a destination outside the source",
            dst.display(),
            src.display()
        );
    }
    if delete && from.starts_with(&to) {
        anyhow::bail!(
            "the source {} is inside the destination {}: --delete would remove the source itself",
            src.display(),
            dst.display()
        );
    }
    Ok(())
}

/// `path` made absolute with its symlinks resolved, as far as it exists
/// (a destination may not exist yet), and the `..` of the rest taken.
fn resolved(path: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut existing = std::path::absolute(path)?;
    let mut rest = Vec::new();
    let mut out = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match existing.components().next_back() {
            Some(last) if existing.parent().is_some() => rest.push(last.as_os_str().to_owned()),
            _ => break existing,
        }
        existing.pop();
    };
    for name in rest.iter().rev() {
        if name == ".." {
            out.pop();
        } else {
            out.push(name);
        }
    }
    Ok(out)
}

fn check_state_dir(dir: &std::path::Path, locations: &[&Location]) -> Result<()> {
    let trees: Vec<&std::path::Path> = locations
        .iter()
        .filter_map(|l| match l {
            Location::Local(path) => Some(path.as_path()),
            Location::Remote { .. } => None,
        })
        .collect();
    state_dir_outside(dir, &trees)
}

/// Refuses a state directory inside one of `trees` (it would be synced, or
/// deleted, with the data), both resolved as far as they exist.
pub(crate) fn state_dir_outside(dir: &std::path::Path, trees: &[&std::path::Path]) -> Result<()> {
    let state = resolved(dir)?;
    for tree in trees {
        if state.starts_with(resolved(tree)?) {
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

/// How a run tells the user how it tunes itself: on standard error with
/// `-v`, else not at all.
fn told(verbose: bool) -> Notices {
    match verbose {
        true => Notices::to(|line| eprintln!("pareco: {line}")),
        false => Notices::default(),
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
    let (connections, tuning) = connection_count(net.connections, max, told(verbose));
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
