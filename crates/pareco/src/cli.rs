//! The command line, defined once: parsing, help and validation of raw
//! values. Turning them into runtime objects happens in the commands.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pareco_compress::Compression;
use pareco_plan::shard::Shard;

/// PArallel REmote COpy: move live data between data centers over many
/// connections, sending only what changed.
#[derive(Debug, Parser)]
#[command(name = "pareco", version, about, long_about = None)]
pub struct Cli {
    /// Log lines as text (coloured only on a terminal) or as JSON objects,
    /// one per line, for log shippers (also PARECO_LOG_FORMAT=json).
    #[arg(long, value_name = "text|json", global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text each.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a directory tree to pareco clients.
    Serve(ServeArgs),
    /// Make DST an exact copy of SRC (one side may be pareco://HOST[:PORT]/PATH).
    Sync(SyncArgs),
    /// Send standard input as a stream to `pareco recv` (striped, compressed,
    /// resumable), or into a bucket (s3://BUCKET/PREFIX) as sealed objects.
    Send(SendArgs),
    /// Receive a stream from `pareco send` (or from a bucket) on standard output.
    Recv(RecvArgs),
    /// Compare two trees entry by entry, content included; exit 1 if they differ.
    Verify(VerifyArgs),
    /// Forward TCP connections (the cutover night): LISTEN TARGET pairs, or a rinetd.conf.
    Forward(ForwardArgs),
    /// Print a completion script for SHELL (bash, zsh or fish) on standard output.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on standard output.
    Man,
}

/// How a long run shows itself: progress lines, metrics.
#[derive(Debug, Args)]
pub struct ProgressArgs {
    /// When standard error is not a terminal (a log, journald), print one
    /// progress line every SECONDS (0: none); a terminal gets a bar.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub progress_interval: u64,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Prometheus metrics.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (text format) on http://HOST:PORT/metrics
    /// while the command runs (port 0 picks one; `metrics on HOST:PORT` is
    /// printed on stderr).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `pareco forward`: its command-line options are the defaults of every
/// rule; a configuration file's `[...]` options override them per rule.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// LISTEN TARGET pairs. LISTEN: HOST:PORT, [IPV6]:PORT, or PORT (all
    /// IPv4 addresses); port 0 picks one. TARGET: HOST:PORT, or several
    /// separated by commas, tried in order until one accepts.
    #[arg(value_name = "LISTEN TARGET", required_unless_present = "config", conflicts_with = "config")]
    pub rules: Vec<String>,
    /// Read the rules from FILE, in rinetd's format (plus CIDR allow/deny
    /// and [options]); SIGHUP reads it again.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Send a PROXY protocol header to targets first (v1: text, v2: binary),
    /// so that they see the client's address.
    #[arg(long, value_name = "v1|v2")]
    pub proxy_protocol: Option<pareco_forward::ProxyVersion>,
    /// Connections at once per rule (default: bounded by the descriptor limit only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Past --max-connections: wait (not accepted until one closes; clients
    /// wait in the listen queue) or refuse (accepted and reset at once).
    #[arg(long, value_name = "wait|refuse", default_value = "wait")]
    pub when_full: pareco_forward::WhenFull,
    /// Close a connection after DURATION with nothing moving either way
    /// (500ms, 30s, 5m, 8h, 2d, or seconds; database connections idle for
    /// hours are normal).
    #[arg(long, value_name = "DURATION", default_value = "off", value_parser = parse_maybe_duration)]
    pub idle_timeout: MaybeDuration,
    /// How long one attempt to reach one target address may take before the next is tried.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// On SIGTERM, how long established connections may take to finish
    /// before they are reset (none: until they close).
    #[arg(long, value_name = "DURATION", default_value = "none", value_parser = parse_maybe_duration)]
    pub drain_timeout: MaybeDuration,
    /// Write per-rule counters as JSON to FILE every --stats-interval, and
    /// at exit (-: standard output, one object each time).
    #[arg(long, value_name = "FILE", value_parser = parse_stats_path)]
    pub stats_json: Option<PathBuf>,
    /// How often --stats-json is written.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub stats_interval: Duration,
    /// Copy bytes through user memory instead of splice(2).
    #[arg(long)]
    pub no_splice: bool,
    /// Check the rules and print them, one line each; listen nowhere.
    #[arg(long)]
    pub check: bool,
    /// Print a line of counters (connections, bytes) on stderr every SECONDS (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub progress_interval: u64,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// A duration that may be off.
#[derive(Debug, Clone, Copy)]
pub struct MaybeDuration(pub Option<Duration>);

fn parse_maybe_duration(s: &str) -> Result<MaybeDuration, String> {
    pareco_forward::config::parse_optional_duration(s).map(MaybeDuration)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    pareco_forward::config::parse_duration(s)?.filter(|d| !d.is_zero()).ok_or_else(|| "must be positive".to_owned())
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// auto (zstd where it pays, at a level that keeps up with the link), none, or zstd[:LEVEL].
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_compression)]
    pub compress: Compression,
    /// (s3://) Bytes of the stream per object (4K to 1G; multiples of 1M from 1M on).
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub object_size: u64,
    /// (s3://) Continue the interrupted upload of the same input: what is
    /// already stored is checked against the input's first bytes, not sent again.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// (s3://) Do not write the stream's first SIZE bytes: the consumer
    /// already has them (a receiver restarted after it died).
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub skip: u64,
    /// (s3://) Leave the objects in the bucket once the stream is verified.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The other end: pareco://HOST:PORT (or use --listen and let it
    /// connect), or a bucket: s3://BUCKET/PREFIX.
    #[arg(required_unless_present = "listen", conflicts_with = "listen")]
    pub peer: Option<OsString>,
    /// Wait for the other end to connect, on HOST:PORT (port 0 picks one;
    /// `listening on HOST:PORT` is printed on stderr).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Parallel connections (when connecting): auto (as many as keep adding
    /// throughput, adjusted during the run) or a number; with s3://, the
    /// requests (PUTs or GETs) in flight (auto: 16).
    #[arg(short = 'j', long = "connections", value_name = "N|auto", default_value = "auto", value_parser = parse_connections)]
    pub connections: Connections,
    /// Most connections `-j auto` may open.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_connections: u16,
    /// Bytes in flight: the sender's window, the receiver's reorder buffer
    /// (like mbuffer -m); default 64M. It bounds the rate to SIZE per round
    /// trip: raise it on fast, long links (10 Gbit/s at 100 ms needs about
    /// 128M). With s3://, the objects held in memory; default -j objects.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub buffer: Option<u64>,
    /// Seconds to wait for a lost peer to come back before giving up; with
    /// s3://, to retry a failing request, and for the next object to appear.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub retry_for: u64,
    /// (s3://) An S3-compatible server's URL (http:// accepted); else
    /// AWS_ENDPOINT_URL, else AWS itself.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Seconds allowed to connect and authenticate.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout: u64,
    /// No progress line and no summary.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write statistics as JSON to FILE when done (-: standard output).
    #[arg(long, value_name = "FILE", value_parser = parse_stats_path)]
    pub stats_json: Option<PathBuf>,
    #[command(flatten)]
    pub progress: ProgressArgs,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// File holding the shared secret (else the PARECO_TOKEN environment variable).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Send data unencrypted (both ends must say so; peers are still
    /// authenticated by the token). Only for trusted, private networks.
    #[arg(long)]
    pub insecure_no_encryption: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to serve; client paths are relative to it and never leave it.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Serve pulls only: never write anything.
    #[arg(long, conflicts_with = "write_only")]
    pub read_only: bool,
    /// Accept pushes only: never send file content.
    #[arg(long)]
    pub write_only: bool,
    /// Seconds a new connection has to complete its handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Keep digests of served files here (outside --root), saved when the
    /// server stops, so that unchanged files are not read again to hash them.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Compression of what the server sends to clients that accept it: auto
    /// (zstd where it pays), none, or zstd[:LEVEL].
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_compression)]
    pub compress: Compression,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a local path or pareco://HOST[:PORT]/PATH.
    pub src: OsString,
    /// Destination: a local path or pareco://HOST[:PORT]/PATH.
    pub dst: OsString,
    /// Chunk size: the unit compared by digest and spread over connections.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// Block size a differing chunk is refined to (a database page).
    #[arg(long, value_name = "SIZE", default_value = "4K", value_parser = parse_size)]
    pub block_size: u64,
    /// Compare file content digests even when size and mtime match.
    #[arg(short = 'c', long)]
    pub checksum: bool,
    /// Delete destination entries that are not in the source.
    #[arg(long)]
    pub delete: bool,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    /// Leave all-zero runs of new content as holes, even where the source
    /// allocates them (holes of sparse source files are always kept).
    #[arg(short = 'S', long)]
    pub sparse: bool,
    /// Show what would change, one line per entry; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print one line per changed entry, and each change of the
    /// connection count and of the data kept in flight.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// No progress bar and no summary.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write statistics as JSON to FILE when done (-: standard output).
    #[arg(long, value_name = "FILE", value_parser = parse_stats_path)]
    pub stats_json: Option<PathBuf>,
    #[command(flatten)]
    pub progress: ProgressArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Keep digests of local files here (outside the synced trees) so that
    /// later runs do not read unchanged files again to hash them.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Do part I of N of the tree (I from 0): N processes, on one host or
    /// many, each with its own I, together do it all, each file once.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Repeat rounds (for a live source) until one sends at most
    /// --converge-bytes or takes at most --converge-seconds; each round
    /// predicts how long the final one (the downtime) will take.
    #[arg(long)]
    pub until_converged: bool,
    /// Most rounds with --until-converged.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "until_converged",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rounds: u32,
    /// A round that sends at most this much content has converged.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size, requires = "until_converged")]
    pub converge_bytes: u64,
    /// A round that takes at most this many seconds has converged too.
    #[arg(long, value_name = "SECONDS", requires = "until_converged", value_parser = parse_seconds)]
    pub converge_seconds: Option<f64>,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// One tree: a local path or pareco://HOST[:PORT]/PATH.
    pub a: OsString,
    /// The other tree: a local path or pareco://HOST[:PORT]/PATH.
    pub b: OsString,
    /// Unit of content comparison.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u64,
    #[command(flatten)]
    pub metadata: MetadataArgs,
    /// Compare part I of N of the trees (as `sync --shard I/N` divides them).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Print only the differences, not the summary.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the counts as JSON to FILE when done (-: standard output).
    #[arg(long, value_name = "FILE", value_parser = parse_stats_path)]
    pub stats_json: Option<PathBuf>,
    #[command(flatten)]
    pub progress: ProgressArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// Metadata beyond permissions, mtimes, symlinks, hard links and holes
/// (always kept): what `sync` keeps and `verify` compares.
#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// Archive mode: owners and groups too (-o -g); sync also recreates
    /// fifos and devices (--specials).
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Owners too (numeric; sync needs root at the receiving side).
    #[arg(short = 'o', long)]
    owner: bool,
    /// Groups too (numeric).
    #[arg(short = 'g', long)]
    group: bool,
    /// Extended attributes too (all but system.*, which holds ACLs).
    #[arg(short = 'X', long)]
    pub xattrs: bool,
    /// Fifos and device files too: sync recreates them (devices need root at
    /// the receiving side), verify compares them. Sockets never are.
    #[arg(long)]
    specials: bool,
}

impl MetadataArgs {
    /// Owners, asked for alone or by -a.
    pub fn owner(&self) -> bool {
        self.owner || self.archive
    }

    /// Groups, asked for alone or by -a.
    pub fn group(&self) -> bool {
        self.group || self.archive
    }

    /// Fifos and devices, asked for alone or by -a.
    pub fn specials(&self) -> bool {
        self.specials || self.archive
    }
}

/// How a client keeps its connections to a server.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Parallel connections: auto (as many as keep adding throughput,
    /// adjusted during the run) or a number.
    #[arg(short = 'j', long = "connections", value_name = "N|auto", default_value = "auto", value_parser = parse_connections)]
    pub connections: Connections,
    /// Most connections `-j auto` may open.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_connections: u16,
    /// Seconds allowed to connect and authenticate (each attempt).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout: u64,
    /// A connection with requests outstanding and nothing received for this
    /// many seconds is dropped and replaced (its requests are sent again).
    /// A server busy with a long request (copying or hashing gigabytes) says
    /// so four times a second, so this measures silence, not work.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Seconds to keep trying while no connection to the server works (it
    /// restarts, the network is down) before the run gives up.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub retry_for: u64,
    /// Compression of what crosses the wire: auto (zstd where it pays:
    /// random or already compressed data is sent as is), none (in either
    /// direction), or zstd[:LEVEL] (always try, at LEVEL, what this side sends).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_compression)]
    pub compress: Compression,
}

/// A connection count: chosen as the run goes, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// As many as keep adding throughput.
    Auto,
    /// This many.
    Fixed(u16),
}

fn parse_connections(s: &str) -> Result<Connections, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Connections::Auto);
    }
    match s.parse::<u16>() {
        Ok(n @ 1..=1024) => Ok(Connections::Fixed(n)),
        _ => Err(format!("expected auto or a number from 1 to 1024, not {s:?}")),
    }
}

/// Seconds, fractions allowed: `0.5`, `30`.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected a number of seconds, not {s:?}")),
    }
}

/// A `--stats-json` path: `-`, or a file in a directory that exists and may
/// be written, checked before any work (a run that did its work must not
/// fail at the end for want of a place to say so).
fn parse_stats_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if s == "-" {
        return Ok(path);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if path.is_dir() {
        return Err(format!("{s} is a directory"));
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)
        .map_err(|e| format!("cannot write in {}: {}", dir.display(), std::io::Error::from(e)))?;
    Ok(path)
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s)
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// Parses `4096`, `4K`, `1M`, `2G`, `1MiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size too large: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
