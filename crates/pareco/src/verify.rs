//! `pareco verify`: two trees compared entry by entry, each difference on
//! standard output, the sizes on disk of both explained on standard error.

use std::io::Write;
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
use crate::sync::remote_options;
use crate::{EXIT_FATAL, EXIT_PARTIAL};

/// Prints each finding as one line: `PATH: WHAT`.
struct Lines(Mutex<std::io::Stdout>);

impl Findings for Lines {
    fn difference(&self, path: &RelPath, difference: &Difference) {
        let _ = writeln!(self.0.lock().expect("stdout lock"), "{path}: {difference}");
    }

    fn error(&self, path: &RelPath, side: Side, error: &TreeError) {
        let _ = writeln!(self.0.lock().expect("stdout lock"), "{path}: cannot compare ({side:?}: {error})");
    }
}

pub async fn run(args: VerifyArgs) -> Result<u8> {
    let a = Location::parse(&args.a)?;
    let b = Location::parse(&args.b)?;
    // Verify moves digests, not content: auto keeps a fixed count.
    let net = crate::cli::NetArgs { connections: verify_connections(args.net.connections), ..args.net };
    let options = remote_options(&[&a, &b], &net, &args.token, false)?;
    let (ea, eb) = tokio::join!(Endpoint::source(&a, &options), Endpoint::source(&b, &options));
    let (ea, eb) = (ea.context("A")?, eb.context("B")?);
    let opts = VerifyOptions {
        chunk_size: u32::try_from(args.chunk_size).context("chunk size too large")?,
        parallelism: crate::sync::parallelism(net.connections),
        checks: Checks { owner: args.metadata.owner(), group: args.metadata.group() },
        xattrs: args.metadata.xattrs,
        shard: args.shard.unwrap_or(pareco_plan::shard::Shard::ALL),
        progress: Default::default(),
    };
    let report = match verify(ea, eb, opts, Arc::new(Lines(Mutex::new(std::io::stdout())))).await {
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
