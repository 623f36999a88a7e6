//! `pareco send` / `pareco recv`: a byte stream from one host's standard
//! input to another's standard output, over TCP links, or through a bucket
//! (`s3://…`, see [`crate::relay`]): this module dispatches on the scheme.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pareco_engine::endpoint::Location;
use pareco_engine::pipe::{self, PipeError, PipeOptions, PipeStats, PipeSummary, Rendezvous};
use pareco_net::{NetError, Notices, TokenKey};

use crate::cli::{RecvArgs, SendArgs, StreamArgs};
use crate::output::human;
use crate::progress::{self, Display, Figures};
use crate::{EXIT_FATAL, EXIT_PARTIAL, security, token};

/// The window of a TCP stream without --buffer.
pub const DEFAULT_BUFFER: u64 = 64 << 20;

pub async fn send(args: SendArgs) -> Result<u8> {
    if let Some(url) = crate::relay::url(&args.stream)? {
        return crate::relay::send(args, url).await;
    }
    crate::relay::refuse_relay_options(
        &args.stream,
        [("--object-size", args.object_size != 16 << 20), ("--resume", args.resume)],
    )?;
    let compression = args.compress;
    let (rendezvous, options) = prepare(&args.stream).await?;
    let stats = Arc::new(PipeStats::default());
    let bar = progress(&stats, &args.stream, "sent").await?;
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let result = pipe::send(stdin, rendezvous, compression, options, stats.clone()).await;
    finish(result, &stats, bar, &args.stream, "sent")
}

pub async fn recv(args: RecvArgs) -> Result<u8> {
    if std::io::stdout().is_terminal() {
        bail!("standard output is a terminal: send the stream to a file or a command (pareco recv … > FILE)");
    }
    if crate::output::json_on_stdout(args.stream.stats_json.as_deref()) {
        bail!("--stats-json -: standard output carries the stream; give the statistics a file");
    }
    if let Some(url) = crate::relay::url(&args.stream)? {
        return crate::relay::recv(args, url).await;
    }
    crate::relay::refuse_relay_options(&args.stream, [("--skip", args.skip != 0), ("--keep", args.keep)])?;
    let args = args.stream;
    let (rendezvous, options) = prepare(&args).await?;
    let stats = Arc::new(PipeStats::default());
    let bar = progress(&stats, &args, "received").await?;
    // Straight to the file descriptor: no line buffering of binary data.
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let result = pipe::receive(stdout, rendezvous, options, stats.clone()).await;
    finish(result, &stats, bar, &args, "received")
}

/// Where the other end is, and the channel options.
async fn prepare(args: &StreamArgs) -> Result<(Rendezvous, PipeOptions)> {
    let token_file = args.token.token_file.as_deref();
    let rendezvous = match (&args.peer, args.listen) {
        (Some(peer), _) => {
            // (-j auto's changes are logged: PARECO_LOG=info shows them.)
            let notices = Notices::to(|line| tracing::info!("{line}"));
            let (connections, tuning) =
                crate::sync::connection_count(args.connections, args.max_connections as usize, notices);
            Rendezvous::Connect { addr: Location::parse_peer(peer)?, connections, tuning }
        }
        (None, Some(addr)) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!("listening on {}", listener.local_addr()?);
            Rendezvous::Listen(listener)
        }
        (None, None) => bail!("give the other end (pareco://HOST:PORT) or --listen HOST:PORT"),
    };
    let token = match rendezvous {
        Rendezvous::Listen(_) => token::for_server(token_file)?,
        Rendezvous::Connect { .. } => token::require(token_file)?,
    };
    let options = PipeOptions {
        key: TokenKey::from_token(token.as_bytes()),
        security: security(&args.token),
        buffer: usize::try_from(args.buffer.unwrap_or(DEFAULT_BUFFER)).context("--buffer too large")?,
        retry_for: Duration::from_secs(args.retry_for),
        connect_timeout: Duration::from_secs(args.connect_timeout),
    };
    Ok((rendezvous, options))
}

/// Progress of a stream over TCP links; its metrics, if asked for.
async fn progress(stats: &Arc<PipeStats>, args: &StreamArgs, verb: &'static str) -> Result<Display> {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let reader = stats.clone();
    crate::metrics::serve(args.progress.metrics.metrics_listen, move |f| {
        f.counter("pareco_stream_bytes", "Bytes of the stream read (send) or written (recv).", load(&reader.bytes));
        f.counter("pareco_stream_frames", "Frames of the stream.", load(&reader.frames));
        f.counter(
            "pareco_wire_payload_bytes",
            "Frame payload bytes on the wire (compressed), resends included.",
            load(&reader.payload_bytes),
        );
        f.counter("pareco_retries", "Frames sent again after their connection was lost.", load(&reader.resent_frames));
        f.counter("pareco_reconnects", "Connections opened after the first ones.", load(&reader.reconnects));
        f.gauge("pareco_connections_peak", "The most connections open at once.", load(&reader.connections));
    })
    .await?;
    let stats = stats.clone();
    // The sender counts what the receiver has (acknowledged), beside what it read.
    let sender = verb == "sent";
    Ok(progress_line(args, verb, move || {
        let (bytes, payload) = (load(&stats.bytes), load(&stats.payload_bytes));
        let ratio = if payload == 0 { 1.0 } else { bytes as f64 / payload as f64 };
        let retries = load(&stats.resent_frames);
        let status = format!("compression {ratio:.2}:1, {retries} frames resent");
        match sender {
            true => (load(&stats.acked), format!("{} read, {status}", human(bytes))),
            false => (bytes, status),
        }
    }))
}

/// A pv-like display of a stream (a line on a terminal, a line per
/// `--progress-interval` otherwise; nothing with `-q`): bytes, rate, and
/// what `status` says beside its byte count.
pub fn progress_line(
    args: &StreamArgs,
    verb: &'static str,
    status: impl Fn() -> (u64, String) + Send + 'static,
) -> Display {
    let mode = progress::Mode::new(args.quiet, args.progress.progress_interval);
    Display::start(mode, "progress", move || {
        let (done, extra) = status();
        Figures { done, total: None, growing: false, files: None, verb, extra }
    })
}

fn finish(
    result: Result<PipeSummary, PipeError>,
    stats: &PipeStats,
    bar: Display,
    args: &StreamArgs,
    verb: &str,
) -> Result<u8> {
    bar.finish();
    let bytes = stats.bytes.load(Ordering::Relaxed);
    match result {
        Ok(summary) => {
            if let Some(path) = &args.stats_json {
                crate::output::write_json(path, &summary)?;
            }
            if !args.quiet {
                let rate = summary.bytes as f64 / summary.duration_s.max(1e-9);
                eprintln!(
                    "pareco: {verb} {} in {:.1} s ({}/s) over {} connections, compression {:.2}:1, {} frames resent, {} reconnects, verified",
                    human(summary.bytes),
                    summary.duration_s,
                    human(rate as u64),
                    summary.connections,
                    summary.compression_ratio,
                    summary.resent_frames,
                    summary.reconnects,
                );
            }
            Ok(0)
        }
        // Refused before anything moved (wrong token, not a pareco peer).
        Err(e @ PipeError::Net(NetError::Handshake(_))) => {
            eprintln!("pareco: {e}");
            Ok(EXIT_FATAL)
        }
        Err(e) => {
            let what = if verb == "received" { "delivered" } else { "read" };
            eprintln!("pareco: stream incomplete: {bytes} bytes {what}: {e}");
            Ok(EXIT_PARTIAL)
        }
    }
}
