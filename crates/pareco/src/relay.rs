//! `pareco send s3://BUCKET/PREFIX` / `pareco recv s3://BUCKET/PREFIX`:
//! the stream through a bucket. Glue only: the URL, the `AWS_*`
//! configuration and the token in; progress, summary and exit status out.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pareco_engine::relay::{self, RelayError, RelayOptions, RelayStats, RelaySummary, S3Bucket, S3Config};
use pareco_stream::relay::naming::{Names, RelayUrl};
use pareco_stream::relay::{DEFAULT_OBJECT_SIZE, Layout};

use crate::cli::{Connections, RecvArgs, SendArgs, StreamArgs};
use crate::output::human;
use crate::progress::Display;
use crate::stream::{DEFAULT_BUFFER, progress_line};
use crate::{EXIT_FATAL, EXIT_PARTIAL, token};

/// Requests in flight with `-j auto` (not tuned: the count is fixed).
const AUTO_REQUESTS: usize = 16;

/// Longest one request (a whole object's PUT or GET) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The bucket location, if the other end is one (a mistyped one is an error).
pub fn url(args: &StreamArgs) -> Result<Option<RelayUrl>> {
    let Some(peer) = args.peer.as_ref().and_then(|p| p.to_str()) else { return Ok(None) };
    if !RelayUrl::is_object_url(peer) {
        return Ok(None);
    }
    Ok(Some(RelayUrl::parse(peer)?))
}

/// Fails if an option meant for buckets was given for a TCP stream.
pub fn refuse_relay_options<const N: usize>(args: &StreamArgs, used: [(&str, bool); N]) -> Result<()> {
    let endpoint = ("--endpoint", args.endpoint.is_some());
    if let Some((name, _)) = used.into_iter().chain([endpoint]).find(|(_, used)| *used) {
        bail!("{name} is for streams through a bucket (s3://BUCKET/PREFIX)");
    }
    Ok(())
}

pub async fn send(args: SendArgs, url: RelayUrl) -> Result<u8> {
    let layout = Layout::new(args.object_size).map_err(|e| anyhow::anyhow!("--object-size: {e}"))?;
    let (bucket, options) = prepare(&args.stream, &url, layout.object_size())?;
    let stats = Arc::new(RelayStats::default());
    let bar = progress(&stats, &args.stream, "put").await?;
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let plan = relay::SendPlan { layout, compression: args.compress, resume: args.resume };
    let result = relay::send(stdin, bucket, Names::new(&url.prefix), plan, options, stats.clone()).await;
    finish(result, &stats, bar, &args.stream, &url, End::Send)
}

pub async fn recv(args: RecvArgs, url: RelayUrl) -> Result<u8> {
    let (bucket, options) = prepare(&args.stream, &url, DEFAULT_OBJECT_SIZE)?;
    let stats = Arc::new(RelayStats::default());
    let bar = progress(&stats, &args.stream, "got").await?;
    // Straight to the file descriptor: no line buffering of binary data.
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let plan = relay::ReceivePlan { skip: args.skip, keep: args.keep };
    let result = relay::receive(stdout, bucket, Names::new(&url.prefix), plan, options, stats.clone()).await;
    finish(result, &stats, bar, &args.stream, &url, End::Recv { skip: args.skip })
}

/// The bucket's client and the relay's options, from the command line and
/// the environment.
fn prepare(args: &StreamArgs, url: &RelayUrl, object_size: u64) -> Result<(Arc<S3Bucket>, RelayOptions)> {
    if args.token.insecure_no_encryption {
        bail!("--insecure-no-encryption: objects in a bucket are always sealed with the token");
    }
    let token = token::require(args.token.token_file.as_deref())?;
    let config = s3_config(&url.bucket, args.endpoint.as_deref())?;
    let bucket = S3Bucket::open(&config).with_context(|| format!("cannot use {url}"))?;
    let requests = match args.connections {
        Connections::Fixed(n) => n as usize,
        Connections::Auto => AUTO_REQUESTS,
    };
    let buffer = args.buffer.unwrap_or((requests as u64 * object_size).max(DEFAULT_BUFFER));
    let options = RelayOptions {
        token: token.into_bytes(),
        requests,
        buffer: usize::try_from(buffer).context("--buffer too large")?,
        retry_for: Duration::from_secs(args.retry_for),
    };
    Ok((Arc::new(bucket), options))
}

/// The configuration every S3 tool reads: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or
/// `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` (or `--endpoint`).
fn s3_config(bucket: &str, endpoint: Option<&str>) -> Result<S3Config> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (Some(access_key_id), Some(secret_access_key)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    else {
        bail!(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)"
        );
    };
    let endpoint =
        endpoint.map(str::to_string).or_else(|| var("AWS_ENDPOINT_URL_S3")).or_else(|| var("AWS_ENDPOINT_URL"));
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        bail!("endpoint {e:?} is not an http:// or https:// URL");
    }
    Ok(S3Config {
        bucket: bucket.to_string(),
        region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()),
        endpoint,
        access_key_id,
        secret_access_key,
        session_token: var("AWS_SESSION_TOKEN"),
        request_timeout: REQUEST_TIMEOUT,
    })
}

async fn progress(stats: &Arc<RelayStats>, args: &StreamArgs, verb: &'static str) -> Result<Display> {
    let reader = stats.clone();
    crate::metrics::serve(args.progress.metrics.metrics_listen, move |f| {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        f.counter("pareco_stream_bytes", "Bytes of the stream read (send) or written (recv).", load(&reader.bytes));
        f.counter(
            "pareco_wire_payload_bytes",
            "Object payload bytes (sealed, compressed).",
            load(&reader.payload_bytes),
        );
        f.counter("pareco_objects_put", "Objects stored in the bucket.", load(&reader.objects_put));
        f.counter("pareco_objects_got", "Objects read from the bucket.", load(&reader.objects_got));
        f.counter("pareco_retries", "Requests to the bucket tried again.", load(&reader.retries));
    })
    .await?;
    let stats = stats.clone();
    let done = if verb == "put" { "read" } else { "written" };
    Ok(progress_line(args, done, move || {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (bytes, payload) = (load(&stats.bytes), load(&stats.payload_bytes));
        let objects = load(&stats.objects_put) + load(&stats.objects_got);
        let carried = bytes.saturating_sub(if verb == "put" { load(&stats.skipped_bytes) } else { 0 });
        let ratio = if payload == 0 { 1.0 } else { carried as f64 / payload as f64 };
        (bytes, format!("{objects} objects {verb}, compression {ratio:.2}:1, {} retries", load(&stats.retries)))
    }))
}

/// Which end finished.
enum End {
    Send,
    Recv { skip: u64 },
}

fn finish(
    result: Result<RelaySummary, RelayError>,
    stats: &RelayStats,
    bar: Display,
    args: &StreamArgs,
    url: &RelayUrl,
    end: End,
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
                let (verb, objects, extra) = match end {
                    End::Send => ("stored", summary.objects_put, format!("in {url}")),
                    End::Recv { .. } => {
                        let removed = match summary.objects_removed {
                            0 => "kept in the bucket".to_string(),
                            n => format!("{n} objects removed"),
                        };
                        ("received", summary.objects_got, format!("verified, {removed}"))
                    }
                };
                eprintln!(
                    "pareco: {verb} {} in {objects} objects in {:.1} s ({}/s), compression {:.2}:1, {} retries, {extra}",
                    human(summary.bytes),
                    summary.duration_s,
                    human(rate as u64),
                    summary.compression_ratio,
                    summary.retries,
                );
            }
            Ok(0)
        }
        Err(RelayError::CannotStart(e)) => {
            eprintln!("pareco: {e}");
            Ok(EXIT_FATAL)
        }
        // A resume refused (nothing of this input was stored), or a skip
        // past the end (nothing delivered).
        Err(e @ (RelayError::InputChanged { .. } | RelayError::SkipPastEnd { .. })) => {
            eprintln!("pareco: {e}");
            Ok(EXIT_FATAL)
        }
        Err(e) => {
            match end {
                End::Send => eprintln!("pareco: stream incomplete: {bytes} bytes read: {e}"),
                End::Recv { skip } => eprintln!(
                    "pareco: stream incomplete: {bytes} bytes delivered (continue with --skip {}): {e}",
                    skip + bytes
                ),
            }
            Ok(EXIT_PARTIAL)
        }
    }
}
