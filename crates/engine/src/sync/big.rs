//! Files larger than a batch: written at offsets (in place, or under their
//! partial name while new), content spread over every connection.
//!
//! Where the destination has data, chunks are compared a group at a time:
//! both sides hash their own copy of the group in parallel, and only the
//! digests cross. A chunk that differs is refined: the destination's block
//! digests go to the source, which answers with just the differing blocks
//! and the digest of the whole chunk; the destination applies them only if
//! the patched chunk has that digest, else the chunk is sent whole. Beyond
//! the destination's data, content streams in pieces.
//!
//! The source is stat-ed before (once its mtime has settled) and after; the
//! destination gets the source's mtime only if nothing moved in between.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pareco_plan::file::{ChunkPlan, Layout, diff_chunks, pieces};
use pareco_plan::freshness::settle_delay;
use pareco_proto::path::partial_of;
use pareco_proto::{Digest, FailureKind, Kind, RelPath, Stat};
use tokio::task::JoinSet;

use super::walk::Ticket;
use super::{Ctx, Outcome, destination_failure, source_failure};
use crate::report::{Attrs, Change, Stats};
use crate::tree::TreeError;

/// Content is streamed in pieces of this size: small enough to spread a
/// file over many connections and keep the tail short, large enough that
/// per-message costs vanish.
const PIECE: u32 = 128 << 10;

/// Chunks compared per digest request.
const GROUP_CHUNKS: u64 = 16;

/// Which side an operation failed on.
enum Fault {
    Source(TreeError),
    Destination(TreeError),
}

impl From<Fault> for Outcome {
    fn from(f: Fault) -> Outcome {
        match f {
            Fault::Source(e) => source_failure(e),
            Fault::Destination(e) => destination_failure(e),
        }
    }
}

struct FileJob {
    src: RelPath,
    dst: RelPath,
    layout: Layout,
    /// Content bytes sent for this file.
    sent: AtomicU64,
    /// Bytes of this file already sent or found identical (for progress).
    done: AtomicU64,
    /// The source allocates less than its size: ask where its data is.
    sparse: bool,
    /// The destination's size before: beyond it, nothing needs overwriting.
    basis: u64,
}

impl FileJob {
    fn progress(&self, ctx: &Ctx, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        Stats::add(&ctx.stats.bytes_in_progress, bytes);
    }
}

/// Copies one file; `delta` if the destination's current content may serve
/// as a basis (it is then updated in place; a file with other hard links
/// first gets a copy of its own). A new file is written under its partial
/// name, which an interrupted earlier attempt may have left (it then serves
/// as the basis), and renamed into place once complete: it never appears
/// half-made under its real name. The file's `ticket` is released as soon
/// as its name is final.
pub(crate) async fn transfer(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    basis: Option<&Stat>,
    change: Change,
    ticket: Ticket,
) -> Outcome {
    let dst = ctx.dst.path(rel);
    let partial = if basis.is_none() { partial_of(&dst) } else { None };
    let outcome = match try_transfer(ctx, rel, basis, partial.as_ref(), change, ticket).await {
        Ok(outcome) | Err(outcome) => outcome,
    };
    // Kept for the next attempt to resume from, unless there is nothing left
    // to resume.
    if let (Some(partial), Outcome::Vanished) = (partial, &outcome) {
        let _ = ctx.dst.tree.remove(partial).await;
    }
    outcome
}

async fn try_transfer(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    basis: Option<&Stat>,
    partial: Option<&RelPath>,
    change: Change,
    ticket: Ticket,
) -> Result<Outcome, Outcome> {
    let (src, dst) = (ctx.src.path(rel), ctx.dst.path(rel));
    let (before, settled) = settled_stat(ctx, &src).await?;
    if basis.is_some_and(|b| b.nlink > 1) {
        ticket.dir().touch();
        ctx.dst.tree.unshare(dst.clone(), None, None).await.map_err(destination_failure)?;
    }
    let target = partial.unwrap_or(&dst).clone();
    let existing = ctx.dst.tree.prepare_file(target.clone()).await.map_err(destination_failure)?;
    // Updated in place, the name is final already; a partial file is not.
    let (_alive, ticket) = if partial.is_some() { (None, Some(ticket)) } else { (Some(ticket.release()), None) };
    let job = Arc::new(FileJob {
        src: src.clone(),
        dst: target.clone(),
        layout: Layout { size: before.size, chunk: ctx.opts.chunk_size },
        sent: AtomicU64::new(0),
        done: AtomicU64::new(0),
        sparse: before.blocks.saturating_mul(512) < before.size,
        basis: existing.size,
    });
    let copied = copy_content(ctx, &job).await;
    // The whole file is counted as processed when its outcome is.
    ctx.stats.bytes_in_progress.fetch_sub(job.done.load(Ordering::Relaxed), Ordering::Relaxed);
    if let Err(fault) = copied {
        if let (Some(partial), Fault::Destination(e)) = (partial, &fault)
            && e.kind() == Some(FailureKind::NoSpace)
        {
            // It is what filled the disk: give the space back.
            let _ = ctx.dst.tree.remove(partial.clone()).await;
        }
        return Err(fault.into());
    }

    let (after, _) = ctx.src.tree.stat(src).await.map_err(source_failure)?;
    let stable = after.is_some_and(|after| before.same_version(&after));
    let mtime = (stable && settled).then_some(before.mtime);
    let place_at = partial.map(|_| dst);
    ctx.dst.tree.finish_file(target, before.size, before.mode, mtime, place_at).await.map_err(destination_failure)?;
    if let Some(ticket) = ticket {
        ticket.dir().touch();
    }
    if mtime.is_none() {
        return Ok(Outcome::Changed);
    }
    let sent = job.sent.load(Ordering::Relaxed);
    let change = match change {
        // Same size, same content: what made it differ was its mtime.
        Change::UpdateFile if sent == 0 && existing.size == before.size => {
            Change::Attributes(Attrs { mtime: true, mode: existing.mode != before.mode, ..Attrs::default() })
        }
        other => other,
    };
    Ok(Outcome::Synced { transferred: sent > 0 || change == Change::NewFile, change: Some(change) })
}

/// The source's stat, taken once its mtime is clearly in the past (waiting
/// if needed); `settled` is false if it moved again meanwhile.
async fn settled_stat(ctx: &Ctx, path: &RelPath) -> Result<(Stat, bool), Outcome> {
    let mut waited = false;
    loop {
        let (stat, now) = ctx.src.tree.stat(path.clone()).await.map_err(source_failure)?;
        let stat = stat.ok_or(Outcome::Vanished)?;
        if stat.kind != Kind::File {
            return Err(Outcome::Changed);
        }
        match settle_delay(&stat, now) {
            None => return Ok((stat, true)),
            Some(_) if waited => return Ok((stat, false)),
            Some(wait) => {
                tokio::time::sleep(wait).await;
                waited = true;
            }
        }
    }
}

/// Compares what the destination has, then streams the rest.
async fn copy_content(ctx: &Arc<Ctx>, job: &Arc<FileJob>) -> Result<(), Fault> {
    let mut tasks = JoinSet::new();
    let mut stream_from = 0;
    for group in job.layout.groups(GROUP_CHUNKS) {
        let span = job.layout.span(&group);
        if span.start >= job.basis {
            break;
        }
        stream_from = span.end;
        let permit = ctx.groups.clone().acquire_owned().await.expect("never closed");
        let (ctx, job) = (ctx.clone(), job.clone());
        tasks.spawn(async move {
            let result = compare_group(&ctx, &job, group).await;
            drop(permit);
            result
        });
        check(&mut tasks)?;
    }
    let streamed_chunks = job.layout.chunks() - stream_from.div_ceil(job.layout.chunk as u64);
    Stats::add(&ctx.stats.chunks_sent, streamed_chunks);
    // Beyond the destination's old end the file is new: holes of a sparse
    // source are neither read nor sent, and stay holes (the final size is
    // set at the end).
    let rest = stream_from..job.layout.size;
    let extents = if job.sparse && !rest.is_empty() {
        ctx.src.tree.data_extents(job.src.clone(), rest.clone()).await.map_err(Fault::Source)?
    } else {
        vec![rest.clone()]
    };
    let holes = (rest.end - rest.start) - extents.iter().map(|e| e.end - e.start).sum::<u64>();
    Stats::add(&ctx.stats.bytes_sparse, holes);
    job.progress(ctx, holes);
    for extent in extents {
        spawn_pieces(ctx, job, extent, &mut tasks).await?;
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("chunk task panicked")?;
    }
    Ok(())
}

/// Fails fast if a finished task failed.
fn check(tasks: &mut JoinSet<Result<(), Fault>>) -> Result<(), Fault> {
    while let Some(result) = tasks.try_join_next() {
        result.expect("chunk task panicked")?;
    }
    Ok(())
}

/// Starts sending `range` piece by piece, each piece waiting for its share
/// of the data budget.
async fn spawn_pieces(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    range: Range<u64>,
    tasks: &mut JoinSet<Result<(), Fault>>,
) -> Result<(), Fault> {
    for piece in pieces(range, PIECE) {
        let budget =
            ctx.data.clone().acquire_many_owned(Ctx::kib(piece.end - piece.start)).await.expect("never closed");
        let (ctx, job) = (ctx.clone(), job.clone());
        tasks.spawn(async move {
            let result = send_piece(&ctx, &job, piece).await;
            drop(budget);
            result
        });
        check(tasks)?;
    }
    Ok(())
}

/// Sends one piece of content.
async fn send_piece(ctx: &Ctx, job: &FileJob, piece: Range<u64>) -> Result<(), Fault> {
    let len = (piece.end - piece.start) as u32;
    let (digest, data) = ctx.src.tree.read_data(job.src.clone(), piece.start, len).await.map_err(Fault::Source)?;
    if ctx.opts.sparse && piece.start >= job.basis && data.iter().all(|&b| b == 0) {
        // Not written: the region stays a hole.
        Stats::add(&ctx.stats.bytes_sparse, len as u64);
        job.progress(ctx, len as u64);
        return Ok(());
    }
    ctx.dst.tree.write_data(job.dst.clone(), piece.start, digest, data).await.map_err(Fault::Destination)?;
    Stats::add(&ctx.stats.bytes_transferred, len as u64);
    job.sent.fetch_add(len as u64, Ordering::Relaxed);
    job.progress(ctx, len as u64);
    Ok(())
}

async fn compare_group(ctx: &Arc<Ctx>, job: &Arc<FileJob>, group: Range<u64>) -> Result<(), Fault> {
    let (src, dst) = hash_both(ctx, &job.src, &job.dst, job.layout.span(&group)).await?;
    let mut tasks = JoinSet::new();
    for (i, plan) in group.clone().zip(diff_chunks(&job.layout, &group, &src, &dst, ctx.opts.block_size)) {
        match plan {
            ChunkPlan::Same => {
                Stats::add(&ctx.stats.chunks_matched, 1);
                let range = job.layout.chunk_range(i);
                job.progress(ctx, range.end - range.start);
            }
            ChunkPlan::Refine => {
                let (ctx, job) = (ctx.clone(), job.clone());
                tasks.spawn(async move { refine(&ctx, &job, i).await });
            }
            ChunkPlan::Send => {
                Stats::add(&ctx.stats.chunks_sent, 1);
                spawn_pieces(ctx, job, job.layout.chunk_range(i), &mut tasks).await?;
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("chunk task panicked")?;
    }
    Ok(())
}

/// Sends only the blocks of chunk `i` that differ.
async fn refine(ctx: &Arc<Ctx>, job: &Arc<FileJob>, i: u64) -> Result<(), Fault> {
    let range = job.layout.chunk_range(i);
    let len = (range.end - range.start) as u32;
    let block = ctx.opts.block_size;
    let budget = ctx.data.acquire_many(Ctx::kib(len as u64)).await.expect("never closed");
    let dst_blocks =
        ctx.dst.tree.hash_blocks(job.dst.clone(), range.start, len, block).await.map_err(Fault::Destination)?;
    let total = dst_blocks.len() as u64;
    let (chunk_digest, blocks) =
        ctx.src.tree.read_patch(job.src.clone(), range.start, len, block, dst_blocks).await.map_err(Fault::Source)?;
    let (count, bytes) = (blocks.len() as u64, blocks.iter().map(|b| b.data.len() as u64).sum::<u64>());
    match ctx.dst.tree.apply_patch(job.dst.clone(), range.start, len, block, chunk_digest, blocks).await {
        Ok(()) if count == 0 => {
            Stats::add(&ctx.stats.chunks_matched, 1);
            job.progress(ctx, len as u64);
        }
        Ok(()) => {
            job.progress(ctx, len as u64);
            Stats::add(&ctx.stats.chunks_sent, 1);
            Stats::add(&ctx.stats.blocks_sent, count);
            Stats::add(&ctx.stats.blocks_matched, total - count);
            Stats::add(&ctx.stats.bytes_transferred, bytes);
            job.sent.fetch_add(bytes, Ordering::Relaxed);
        }
        Err(e) if e.kind() == Some(FailureKind::Mismatch) => {
            // One side moved between hashing and patching: send it whole.
            drop(budget);
            Stats::add(&ctx.stats.chunks_sent, 1);
            let mut tasks = JoinSet::new();
            spawn_pieces(ctx, job, range, &mut tasks).await?;
            while let Some(result) = tasks.join_next().await {
                result.expect("chunk task panicked")?;
            }
        }
        Err(e) => return Err(Fault::Destination(e)),
    }
    Ok(())
}

/// Whether both sides hold the same content for a file of `size` bytes on
/// both sides (`--checksum`), compared chunk group by chunk group.
pub(crate) async fn same_content(ctx: &Ctx, rel: &RelPath, size: u64) -> Result<bool, Outcome> {
    let layout = Layout { size, chunk: ctx.opts.chunk_size };
    let (src, dst) = (ctx.src.path(rel), ctx.dst.path(rel));
    for group in layout.groups(GROUP_CHUNKS) {
        let (s, d) = hash_both(ctx, &src, &dst, layout.span(&group)).await?;
        if s.len() as u64 != group.end - group.start || s != d {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Chunk digests of the same range on both sides, computed at once.
async fn hash_both(
    ctx: &Ctx,
    src: &RelPath,
    dst: &RelPath,
    span: Range<u64>,
) -> Result<(Vec<Digest>, Vec<Digest>), Fault> {
    let (len, chunk) = (span.end - span.start, ctx.opts.chunk_size);
    tokio::try_join!(
        async { ctx.src.tree.hash_chunks(src.clone(), span.start, len, chunk).await.map_err(Fault::Source) },
        async { ctx.dst.tree.hash_chunks(dst.clone(), span.start, len, chunk).await.map_err(Fault::Destination) },
    )
}
