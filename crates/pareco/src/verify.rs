//! `pareco verify`: two trees compared entry by entry, each difference on
//! standard output, the sizes on disk of both explained on standard error.

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use pareco_engine::Endpoint;
use pareco_engine::endpoint::Location;
use pareco_engine::tree::TreeError;
use pareco_engine::verify::{Findings, VerifyOptions, verify};
use pareco_plan::verify::{Checks, Difference, Side, explain_usage};
use pareco_proto::RelPath;

use crate::cli::VerifyArgs;
use crate::output::{self, human};
use crate::progress;
use crate::sync::remote_options;
use crate::{EXIT_FATAL, EXIT_PARTIAL};

/// Prints each finding as one line: `PATH: WHAT`, on stdout (on stderr
/// when stdout carries `--stats-json -`).
struct Lines {
    out: Mutex<Box<dyn Write + Send>>,
    /// The progress bar to print around, if any.
    bar: Option<indicatif::ProgressBar>,
}

impl Lines {
    fn print(&self, line: String) {
        let write = || {
            let _ = writeln!(self.out.lock().expect("stdout lock"), "{line}");
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Findings for Lines {
    fn difference(&self, path: &RelPath, difference: &Difference) {
        self.print(format!("{path}: {difference}"));
    }

    fn error(&self, path: &RelPath, side: Side, error: &TreeError) {
        self.print(format!("{path}: cannot compare ({side:?}: {error})"));
    }
}

pub async fn run(args: VerifyArgs) -> Result<u8> {
    let a = Location::parse(&args.a)?;
    let b = Location::parse(&args.b)?;
    // Verify moves digests, not content: auto keeps a fixed count.
    let net = crate::cli::NetArgs { connections: verify_connections(args.net.connections), ..args.net };
    let options = remote_options(&[&a, &b], &net, &args.token, false)?;
    let (ea, eb) = tokio::join!(Endpoint::source(&a, &b, &options), Endpoint::source(&b, &a, &options));
    let (ea, eb) = (ea.context("A")?, eb.context("B")?);
    let opts = VerifyOptions {
        chunk_size: u32::try_from(args.chunk_size).context("chunk size too large")?,
        parallelism: crate::sync::parallelism(net.connections),
        checks: Checks { owner: args.metadata.owner(), group: args.metadata.group() },
        xattrs: args.metadata.xattrs,
        specials: args.metadata.specials(),
        shard: args.shard.unwrap_or(pareco_plan::shard::Shard::ALL),
        progress: Arc::default(),
    };
    let live = opts.progress.clone();
    let trees = [ea.tree.clone(), eb.tree.clone()];
    crate::metrics::serve(args.progress.metrics.metrics_listen, move |f| {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        f.gauge("pareco_bytes_done", "Bytes of content compared on each side.", load(&live.bytes_done));
        f.gauge("pareco_bytes", "Bytes of content to compare on each side, found so far.", load(&live.bytes_total));
        f.gauge("pareco_entries_done", "Entries compared.", load(&live.entries));
        f.counter("pareco_differences", "Differences found.", load(&live.differences));
        let (mut sent, mut received, mut reconnects, mut retried) = (0, 0, 0, 0);
        for tree in &trees {
            let ((s, r), (c, q)) = (tree.wire_bytes(), tree.recoveries());
            (sent, received, reconnects, retried) = (sent + s, received + r, reconnects + c, retried + q);
        }
        f.counter("pareco_wire_sent_bytes", "Bytes written to the connections.", sent);
        f.counter("pareco_wire_received_bytes", "Bytes read from the connections.", received);
        f.counter("pareco_reconnects", "Connections re-opened after they died or stalled.", reconnects);
        f.counter("pareco_retries", "Requests sent again because their connection died.", retried);
    })
    .await?;
    let mode = progress::Mode::new(args.quiet, args.progress.progress_interval);
    let live = opts.progress.clone();
    let display = progress::Display::start(mode, "progress", move || progress::Figures {
        done: live.bytes_done.load(Relaxed),
        total: Some(live.bytes_total.load(Relaxed)),
        growing: live.dirs_pending.load(Relaxed) > 0,
        files: None,
        verb: "compared",
        extra: format!("{} entries, {} difference(s)", live.entries.load(Relaxed), live.differences.load(Relaxed)),
    });
    let out: Box<dyn Write + Send> = match crate::output::json_on_stdout(args.stats_json.as_deref()) {
        true => Box::new(std::io::stderr()),
        false => Box::new(std::io::stdout()),
    };
    let lines = Lines { out: Mutex::new(out), bar: display.bar() };
    let report = verify(ea, eb, opts, Arc::new(lines)).await;
    display.finish();
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pareco: verify: {e}");
            return Ok(EXIT_FATAL);
        }
    };
    if let Some(path) = &args.stats_json {
        output::write_json(path, &report)?;
    }
    if !args.quiet {
        let verdict = match (report.differences, report.errors) {
            (0, 0) => "identical".to_string(),
            (d, 0) => format!("{d} difference(s)"),
            (d, e) => format!("{d} difference(s), {e} path(s) not compared"),
        };
        eprintln!(
            "pareco: verify: {verdict}; {} entries compared, {} hashed on each side, in {:.1} s",
            report.entries,
            human(report.bytes_hashed),
            report.duration_s
        );
        if report.skipped > 0 {
            let what = if args.metadata.specials() {
                "sockets"
            } else {
                "sockets, fifos and devices; -a or --specials compares fifos and devices"
            };
            let entries = if report.skipped == 1 { "entry" } else { "entries" };
            eprintln!("pareco: {} {entries} not compared, as sync skips them ({what})", report.skipped);
        }
        for (side, usage) in [("A", &report.usage_a), ("B", &report.usage_b)] {
            eprintln!(
                "pareco: {side}: {} files, apparent size {}, allocated {} ({})",
                usage.files,
                human(usage.apparent),
                human(usage.allocated),
                usage.explain()
            );
        }
        if let Some(why) = explain_usage(&report.usage_a, &report.usage_b) {
            eprintln!("pareco: {why}");
        }
    }
    Ok(if report.differences + report.errors > 0 { EXIT_PARTIAL } else { 0 })
}

/// Verify's traffic is digests and listings, whose pace the hashing on each
/// side sets, not the link: `auto` is a fixed 16 there.
fn verify_connections(connections: crate::cli::Connections) -> crate::cli::Connections {
    match connections {
        crate::cli::Connections::Auto => crate::cli::Connections::Fixed(16),
        fixed => fixed,
    }
}
