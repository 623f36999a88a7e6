//! The sync: bring a destination tree to exactly the state of a source tree,
//! sending only what differs, with every kind of work overlapped.
//!
//! How work flows:
//! - [`walk`]: a few workers list directories on both sides at once and let
//!   the planner decide per entry; subdirectories go back on a stack (depth
//!   first, so pending work stays small), entries become tasks right away, so
//!   the transfer starts with the first directory, not after the scan.
//! - [`small`]: small files are batched, many per request, in both
//!   directions (read batch from the source, write batch to the destination).
//! - [`links`]: paths sharing an inode become hard links at the end.
//! - [`big`]: larger files are cut into pieces and chunk groups spread over
//!   every connection; existing ones are compared by chunk digests (both sides
//!   hash their own copy, in parallel) and differing chunks refined to blocks.
//! - [`rebuild`]: a file whose content moved (bytes inserted or removed) is
//!   rebuilt from pieces of its old version cut at content-defined
//!   boundaries, plus only what is new.
//! - [`reuse`]: a file the destination has under another name (renamed,
//!   moved, rotated) is copied there instead of sent; deletions wait for the
//!   end of the run, so that nothing is removed before it has served.
//! - [`budget`]: file data in flight is held to what the link needs.
//! - [`meta`]: with `owner`/`group`/`xattrs`, each directory's entries get
//!   their owners and extended attributes once their names are final.
//!
//! Every queue is bounded (files, chunk groups, bytes of data in flight), so
//! memory depends on the work in flight, not on the size of the tree.
//! Directories get their final permissions and mtime once everything inside
//! them is done. A failure on one path is reported and counted; the rest go on.

mod big;
mod budget;
mod links;
mod meta;
mod rebuild;
mod reuse;
mod small;
mod walk;

use std::sync::Arc;
use std::time::Instant;

use pareco_net::Notices;
use pareco_plan::shard::Shard;
use pareco_proto::{FailureKind, Kind, RelPath, Stat};
use tokio::sync::Semaphore;

use crate::endpoint::Endpoint;
use crate::report::{Change, Problem, Reporter, Stats, Summary};
use crate::tree::TreeError;

/// Files up to this size travel whole, in batches.
pub const SMALL_FILE_MAX: u32 = 64 << 10;

/// How often data is sent before a checksum mismatch at the destination is
/// taken for a fault of the files rather than of the transit (only a
/// plaintext channel lets corrupted data reach the writer, which refuses
/// it: then it is read and sent again).
const TRANSIT_ATTEMPTS: u32 = 3;

/// What to sync and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Unit of comparison and of parallelism within a file.
    pub chunk_size: u32,
    /// Unit a differing chunk is refined to.
    pub block_size: u32,
    /// Compare content digests of files whose size and mtime match.
    pub checksum: bool,
    /// Remove destination entries that the source does not have.
    pub delete: bool,
    /// Report what would change; change nothing.
    pub dry_run: bool,
    /// Leave all-zero pieces of new content as holes, even if the source
    /// allocates them (holes of sparse sources are always kept).
    pub sparse: bool,
    /// Recreate fifos and device files (else they are skipped with a warning).
    pub specials: bool,
    /// Give destination entries the source's owner (numeric).
    pub owner: bool,
    /// Give destination entries the source's group (numeric).
    pub group: bool,
    /// Give destination entries the source's extended attributes.
    pub xattrs: bool,
    /// How much to do at once (normally the number of connections).
    pub parallelism: usize,
    /// Which part of the tree this process does (`--shard I/N`).
    pub shard: Shard,
    /// Where the run says how it tunes itself (`-v`): each change of the
    /// data it keeps in flight.
    pub notices: Notices,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            chunk_size: 1 << 20,
            block_size: 4 << 10,
            checksum: false,
            delete: false,
            dry_run: false,
            sparse: false,
            specials: false,
            owner: false,
            group: false,
            xattrs: false,
            parallelism: 16,
            shard: Shard::ALL,
            notices: Notices::default(),
        }
    }
}

/// Why a sync could not run at all (as opposed to failing on some paths).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The source does not exist.
    #[error("the source does not exist")]
    SourceMissing,
    /// The source could not be examined.
    #[error("source: {0}")]
    Source(TreeError),
    /// The destination could not be examined or created.
    #[error("destination: {0}")]
    Destination(TreeError),
    /// A directory is to be synced onto something that is not one.
    #[error("the destination exists and is not a directory")]
    DestinationNotDirectory,
    /// The options are inconsistent.
    #[error("{0}")]
    Options(String),
}

/// Shared state of one run.
pub(crate) struct Ctx {
    src: Endpoint,
    dst: Endpoint,
    opts: SyncOptions,
    stats: Arc<Stats>,
    reporter: Arc<dyn Reporter>,
    /// Entries being worked on (bounds tasks and queued small files).
    files: Arc<Semaphore>,
    /// Chunk groups being compared.
    groups: Arc<Semaphore>,
    /// Small-file batches in flight.
    batches: Arc<Semaphore>,
    /// File data in flight.
    data: budget::DataBudget,
    /// When the run started (its rate decides the size of pieces).
    started: std::time::Instant,
    /// Paths sharing an inode.
    links: links::Links,
    /// Destination files the source lacks: where moved content may be.
    index: reuse::Index,
    /// New large files held until the walk is over (see `reuse`).
    later: reuse::Later<walk::Held>,
    /// Removals put off to the end of the run.
    deletions: reuse::Deletions,
    /// Whether setting an owner was refused once already (not root).
    owner_refused: std::sync::atomic::AtomicBool,
    /// Why the run gave up on a server, once it has: the entries that fail
    /// for that reason are counted, not reported one by one.
    gave_up: std::sync::OnceLock<String>,
}

/// How one entry ended.
pub(crate) enum Outcome {
    /// Done; `transferred` if content was written.
    Synced { transferred: bool, change: Option<Change> },
    /// The source changed while being copied.
    Changed,
    /// The source disappeared.
    Vanished,
    /// Failed, for this reason.
    Failed(String),
    /// Not done because the run gave up on the server (no connection for
    /// `--retry-for`), for this reason.
    GaveUp(String),
}

impl Ctx {
    fn new(src: Endpoint, dst: Endpoint, opts: SyncOptions, stats: Arc<Stats>, reporter: Arc<dyn Reporter>) -> Self {
        let j = opts.parallelism.max(1);
        // As much as 4 MiB per connection may be in flight on a long, fat
        // link, if the link needs it.
        let ceiling = (j as u64 * (4 << 20)).clamp(64 << 20, 512 << 20);
        Ctx {
            src,
            dst,
            files: Arc::new(Semaphore::new((128 * j).clamp(1024, 8192))),
            groups: Arc::new(Semaphore::new(4 * j)),
            batches: Arc::new(Semaphore::new(4 * j)),
            data: budget::DataBudget::new(ceiling, opts.notices.clone()),
            started: std::time::Instant::now(),
            links: links::Links::default(),
            index: Default::default(),
            later: Default::default(),
            deletions: Default::default(),
            owner_refused: Default::default(),
            gave_up: Default::default(),
            opts,
            stats,
            reporter,
        }
    }

    /// Reports how a regular file of `size` bytes (as listed) ended and
    /// counts it.
    fn finish_file(&self, rel: &RelPath, size: u64, outcome: Outcome) {
        Stats::add(&self.stats.files_done, 1);
        self.finish(rel, size, outcome);
    }

    /// A file listed at `listed` bytes is copied at `read` bytes (a live
    /// source grew): the totals grow with it, so that what is sent never
    /// exceeds them and progress ends at 100 %.
    fn grown(&self, listed: u64, read: u64) {
        if let Some(more) = read.checked_sub(listed).filter(|&n| n > 0) {
            Stats::add(&self.stats.bytes_total, more);
            Stats::add(&self.stats.bytes_processed, more);
        }
    }

    /// Reports how an entry of `size` bytes ended and counts it.
    fn finish(&self, rel: &RelPath, size: u64, outcome: Outcome) {
        Stats::add(&self.stats.bytes_processed, size);
        match outcome {
            Outcome::Synced { transferred, change } => {
                if transferred {
                    Stats::add(&self.stats.files_transferred, 1);
                }
                if let Some(change) = change {
                    self.reporter.change(rel, change);
                }
            }
            Outcome::Changed => {
                Stats::add(&self.stats.files_changed, 1);
                self.reporter.problem(rel, &Problem::Changed);
            }
            Outcome::Vanished => {
                Stats::add(&self.stats.files_vanished, 1);
                self.reporter.problem(rel, &Problem::Vanished);
            }
            Outcome::Failed(why) => self.fail(rel, why),
            Outcome::GaveUp(why) => {
                Stats::add(&self.stats.errors, 1);
                Stats::add(&self.stats.entries_abandoned, 1);
                self.gave_up.get_or_init(|| why);
            }
        }
    }

    /// Whether a planned entry is this shard's to do (a directory is
    /// walked by every shard whatever the answer).
    fn owns(&self, rel: &RelPath, p: &pareco_plan::dir::Planned) -> bool {
        match &p.src {
            Some(src) => self.opts.shard.owns(rel, src),
            None => self.opts.shard.owns_path(rel),
        }
    }

    fn fail(&self, rel: &RelPath, why: String) {
        Stats::add(&self.stats.errors, 1);
        self.reporter.problem(rel, &Problem::Failed(why));
    }
}

/// Classifies an error on the source side: a missing file vanished.
fn source_failure(e: TreeError) -> Outcome {
    match e.kind() {
        Some(FailureKind::NotFound) => Outcome::Vanished,
        // The walk lists no path through a symlink: one there now (the
        // entry, or a directory above it, replaced since) is a change.
        Some(FailureKind::Changed | FailureKind::SymlinkInPath) => Outcome::Changed,
        _ if e.gave_up() => Outcome::GaveUp(e.to_string()),
        _ => Outcome::Failed(format!("source: {e}")),
    }
}

/// The error of a request the server refused (its access policy).
fn refused<T>(result: Result<T, TreeError>) -> Option<TreeError> {
    result.err().filter(|e| e.kind() == Some(FailureKind::Refused))
}

fn destination_failure(e: TreeError) -> Outcome {
    if e.gave_up() { Outcome::GaveUp(e.to_string()) } else { Outcome::Failed(format!("destination: {e}")) }
}

/// Syncs `src` onto `dst`. Per-path problems are reported to `reporter` and
/// counted in `stats` (which the caller may poll for progress); only a
/// problem that prevents the whole run is an error.
pub async fn sync(
    src: Endpoint,
    mut dst: Endpoint,
    opts: SyncOptions,
    stats: Arc<Stats>,
    reporter: Arc<dyn Reporter>,
) -> Result<Summary, SyncError> {
    check_options(&opts)?;
    let started = Instant::now();
    // Each root is listed while it is looked at (a file's listing fails,
    // and is dropped): one round trip to each side before the walk.
    // An empty read asks whether the source sends content at all (a
    // `--write-only` server does not): refused up front, not file by file.
    // A dry run, which writes nothing, asks the destination with an empty
    // copy whether the real run could (a `--read-only` server says no),
    // so that it fails as the real run would.
    let (src_root, src_list, reads, writes) = tokio::join!(
        src.tree.stat(src.base.clone()),
        src.tree.list(src.base.clone()),
        src.tree.read_files(Vec::new(), 0),
        async { if opts.dry_run { dst.tree.clone_files(Vec::new()).await } else { Ok(Vec::new()) } }
    );
    if let Some(e) = refused(reads) {
        return Err(SyncError::Source(e));
    }
    if let Some(e) = refused(writes) {
        return Err(SyncError::Destination(e));
    }
    let (src_root, src_now) = src_root.map_err(SyncError::Source)?;
    let src_root = src_root.ok_or(SyncError::SourceMissing)?;
    let single = src_root.kind != Kind::Dir;
    // Missing directories above the destination are made as `mkdir -p`
    // would under the usual umask: the sync never sets their mode, and
    // 0o700 would keep a service of another user out of its own data.
    if !opts.dry_run
        && let Some((parent, _)) = dst.base.split_last()
        && parent != RelPath::root()
    {
        dst.tree.ensure_dir(parent, 0o755).await.map_err(SyncError::Destination)?;
    }
    // For a tree, the destination is created if missing.
    let (dst_root, dst_list) = if single {
        (dst.tree.stat(dst.base.clone()).await.map(|(stat, _)| stat), None)
    } else if opts.dry_run {
        let (root, list) = tokio::join!(dst.tree.stat(dst.base.clone()), dst.tree.list(dst.base.clone()));
        (root.map(|(stat, _)| stat), Some(list))
    } else {
        let (root, list) = tokio::join!(dst.tree.ensure_dir(dst.base.clone(), 0o700), dst.tree.list(dst.base.clone()));
        (root, Some(list))
    };
    let mut dst_root = dst_root.map_err(SyncError::Destination)?;
    if single && dst_root.as_ref().is_some_and(|d| d.kind == Kind::Dir) {
        // A file synced into an existing directory keeps its name.
        let name = src.base.split_last().map(|(_, n)| n).ok_or(SyncError::DestinationNotDirectory)?;
        dst.base = dst.base.join(&name).map_err(|e| SyncError::Options(e.to_string()))?;
        dst_root = dst.tree.stat(dst.base.clone()).await.map_err(SyncError::Destination)?.0;
    }
    if !single && dst_root.as_ref().is_some_and(|d| d.kind != Kind::Dir) {
        return Err(SyncError::DestinationNotDirectory);
    }

    let hashed_before = src.tree.bytes_hashed() + dst.tree.bytes_hashed();
    let recovered_before = [src.tree.recoveries(), dst.tree.recoveries()];
    let ctx = Arc::new(Ctx::new(src, dst, opts, stats.clone(), reporter));
    // Of a destination that was not there, nothing needs listing. One that
    // was may have been made meanwhile by another shard, after it was
    // listed: a listing that failed is made again (and fails there if it
    // has to).
    let listed = match (src_list, dst_list) {
        (Ok(src), _) if dst_root.is_none() => Some(walk::Listed { src, dst: None }),
        (Ok(src), Some(Ok(dst))) => Some(walk::Listed { src, dst: Some(dst) }),
        _ => None,
    };
    let walked = walk::run(ctx.clone(), src_root, src_now, dst_root, single, listed.filter(|_| !single)).await;

    let mut summary = stats.snapshot();
    summary.walk_s = walked.duration_since(started).as_secs_f64();
    summary.bytes_hashed = (ctx.src.tree.bytes_hashed() + ctx.dst.tree.bytes_hashed()).saturating_sub(hashed_before);
    for (tree, before) in [&ctx.src.tree, &ctx.dst.tree].into_iter().zip(recovered_before) {
        let (reconnects, retried) = tree.recoveries();
        summary.reconnects += reconnects - before.0;
        summary.requests_retried += retried - before.1;
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.gave_up = ctx.gave_up.get().cloned();
    summary.connections = ctx.src.tree.peak_connections().max(ctx.dst.tree.peak_connections());
    for tree in [&ctx.src.tree, &ctx.dst.tree] {
        let (sent, received) = tree.wire_bytes();
        summary.wire_bytes_sent += sent;
        summary.wire_bytes_received += received;
    }
    Ok(summary)
}

fn check_options(opts: &SyncOptions) -> Result<(), SyncError> {
    use pareco_proto::limits::{MAX_CHUNK, MIN_BLOCK};
    if !(MIN_BLOCK..=MAX_CHUNK).contains(&opts.chunk_size) {
        return Err(SyncError::Options(format!("chunk size must be between {MIN_BLOCK} and {MAX_CHUNK} bytes")));
    }
    if opts.block_size < MIN_BLOCK || opts.block_size > opts.chunk_size {
        return Err(SyncError::Options(format!("block size must be between {MIN_BLOCK} bytes and the chunk size")));
    }
    if opts.chunk_size / opts.block_size > pareco_proto::limits::MAX_DIGESTS as u32 {
        return Err(SyncError::Options("too many blocks per chunk; use a larger block size".into()));
    }
    Ok(())
}

/// Metadata of a source entry, for attribute comparisons.
fn attrs_differ(src: &Stat, dst: &Stat) -> bool {
    src.mode != dst.mode || src.mtime != dst.mtime
}
