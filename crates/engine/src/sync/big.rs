//! Files larger than a batch: written at offsets (in place, or under their
//! partial name while new), content spread over every connection.
//!
//! Where the destination has data, chunks are first compared (both sides
//! hash their own copy of each group of chunks in parallel; only digests
//! cross). Then one of two ways, decided per file from the first chunk that
//! differs:
//! - *in place* (content changed where it was, as database pages are): a
//!   chunk that differs is refined: the destination's block digests go to
//!   the source, which answers with just the differing blocks and the digest
//!   of the whole chunk; the destination applies them only if the patched
//!   chunk has that digest, else the chunk is sent whole;
//! - *rebuilt* (content moved: bytes inserted or removed before it): see
//!   [`super::rebuild`].
//!
//! Beyond the destination's data, content streams in pieces.
//!
//! The source is stat-ed before (once its mtime has settled) and after; the
//! destination gets the source's mtime only if nothing moved in between.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pareco_plan::file::{ChunkPlan, Layout, diff_chunks};
use pareco_plan::freshness::settle_delay;
use pareco_proto::path::partial_of;
use pareco_proto::{Digest, FailureKind, Kind, RelPath, Stat};
use tokio::task::JoinSet;

use super::walk::Ticket;
use super::{Ctx, Outcome, TRANSIT_ATTEMPTS, destination_failure, rebuild, source_failure};
use crate::report::{Attrs, Change, Stats};
use crate::tree::{Finish, TreeError};

/// Content is streamed in pieces of at least this size (larger on fast
/// links, see [`piece_size`]): small enough to spread a file over many
/// connections and keep the tail short, large enough that per-message
/// costs vanish.
const PIECE: u32 = 128 << 10;

/// Chunks compared per digest request.
pub(super) const GROUP_CHUNKS: u64 = 16;

/// Which side an operation failed on.
pub(super) enum Fault {
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

/// One file being copied.
pub(super) struct FileJob {
    pub(super) src: RelPath,
    /// What is written: the file itself, or its partial name.
    pub(super) dst: RelPath,
    pub(super) layout: Layout,
    /// Content bytes sent for this file.
    sent: AtomicU64,
    /// Bytes of this file already sent or found identical (for progress).
    done: AtomicU64,
    /// The source allocates less than its size: ask where its data is.
    sparse: bool,
    /// The size of what `dst` held before: beyond it, nothing needs
    /// overwriting.
    basis: u64,
}

impl FileJob {
    /// Counts `bytes` of content sent for this file.
    pub(super) fn sent(&self, ctx: &Ctx, bytes: u64) {
        Stats::add(&ctx.stats.bytes_transferred, bytes);
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        self.progress(ctx, bytes);
    }

    pub(super) fn progress(&self, ctx: &Ctx, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        Stats::add(&ctx.stats.bytes_in_progress, bytes);
    }
}

/// Copies one file; `basis` is the destination's file, if it has one at
/// that name. A file with other hard links is unshared before it is
/// patched in place; a rebuilt one is assembled under its partial name. A
/// new file is written under its partial name, which an interrupted earlier
/// attempt may have left (it then serves as the basis), and renamed into
/// place once complete: it never appears half-made under its real name.
/// The file's `ticket` is released as soon as its name is final.
pub(crate) async fn transfer(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    listed: u64,
    basis: Option<&Stat>,
    change: Change,
    ticket: Ticket,
) -> Outcome {
    let dst = ctx.dst.path(rel);
    let (partial, mut ticket, mut job) = (partial_of(&dst), Some(ticket), None);
    let outcome = match try_transfer(ctx, rel, listed, basis, partial.as_ref(), change, &mut ticket, &mut job).await {
        Ok(outcome) | Err(outcome) => outcome,
    };
    // Kept for the next attempt to resume from: another run may take it on
    // at once. (Removed, or gone with the server, it is released already.)
    if let (Some(partial), Outcome::Changed | Outcome::Failed(_)) = (&partial, &outcome) {
        let _ = ctx.dst.tree.release(partial.clone()).await;
    }
    // Unless there is nothing left to resume (removed while the directory
    // still waits for this entry).
    if let (Some(partial), Outcome::Vanished, None) = (partial, &outcome, basis)
        && ctx.dst.tree.remove(partial).await.is_ok()
        && let Some(ticket) = &ticket
    {
        ticket.dir().touch();
    }
    // Failed before its finish set the directory's attributes: its partial
    // file may have changed the directory since the last write that did.
    if let (Outcome::Failed(_), Some(ticket)) = (&outcome, &ticket) {
        ticket.dir().touch();
    }
    // The whole file is counted as processed with its outcome, right after:
    // taken out of what is in progress only now, progress never goes back.
    if let Some(job) = job {
        finished_with(ctx, &job);
    }
    outcome
}

/// Takes a job's bytes out of what is in progress.
fn finished_with(ctx: &Ctx, job: &FileJob) {
    ctx.stats.bytes_in_progress.fetch_sub(job.done.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// How a file's content gets to the destination.
enum Way {
    /// Patched where it is (or written under its partial name, if new).
    InPlace(Option<Compared>),
    /// Rebuilt under its partial name from pieces of the old version.
    Rebuilt(Compared),
}

#[allow(clippy::too_many_arguments)]
async fn try_transfer(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    listed: u64,
    basis: Option<&Stat>,
    partial: Option<&RelPath>,
    change: Change,
    ticket: &mut Option<Ticket>,
    last_job: &mut Option<Arc<FileJob>>,
) -> Result<Outcome, Outcome> {
    let (src, dst) = (ctx.src.path(rel), ctx.dst.path(rel));
    let (before, settled) = settled_stat(ctx, &src).await?;
    ctx.grown(listed, before.size);
    let layout = Layout { size: before.size, chunk: ctx.opts.chunk_size };
    let way = match basis.filter(|b| b.size > 0) {
        Some(old) => {
            let mut compared = compare(ctx, &src, &dst, layout, old.size).await?;
            if partial.is_some() && rebuild::worth_it(ctx, &src, &dst, layout, old.size, &mut compared).await? {
                Way::Rebuilt(compared)
            } else {
                Way::InPlace(Some(compared))
            }
        }
        None => Way::InPlace(None),
    };
    let (mut way, mut _alive) = (way, None);
    let (job, target, placed, check) = loop {
        let in_place = basis.is_some() && matches!(way, Way::InPlace(_));
        if in_place && basis.is_some_and(|b| b.nlink > 1) {
            ticket.as_ref().expect("ticket held until the name is final").dir().touch();
            ctx.dst.tree.unshare(dst.clone(), None, None).await.map_err(destination_failure)?;
        }
        let target = if in_place { dst.clone() } else { partial.unwrap_or(&dst).clone() };
        // (Its claim is kept once it is this run's.)
        let claimed = tokio::sync::Notify::new();
        let prepared = async {
            let prepared = ctx.dst.tree.prepare_file(target.clone()).await;
            if prepared.is_ok() {
                claimed.notify_one();
            }
            prepared
        };
        let placed = target != dst;
        let new_job = |basis| {
            Arc::new(FileJob {
                src: src.clone(),
                dst: target.clone(),
                layout,
                sent: AtomicU64::new(0),
                done: AtomicU64::new(0),
                sparse: before.blocks.saturating_mul(512) < before.size,
                basis,
            })
        };
        let copy = async {
            match &way {
                Way::Rebuilt(compared) => {
                    // Nothing of the old version is overwritten: its partial
                    // file is made while the plan is worked out.
                    let job = new_job(0);
                    let old_size = basis.map_or(0, |b| b.size);
                    let copied = rebuild::rebuild(ctx, &job, &dst, old_size, compared, prepared).await;
                    Ok::<_, Outcome>((job, copied))
                }
                Way::InPlace(compared) => {
                    let existing = prepared.await.map_err(destination_failure)?;
                    // Updated in place, the name is final already; a partial file is not.
                    if !placed {
                        _alive = ticket.take().map(Ticket::release);
                    }
                    let job = new_job(existing.size);
                    let copied = patch(ctx, &job, compared.as_ref()).await.map(|()| None);
                    Ok((job, copied))
                }
            }
        };
        let (job, copied) = match placed {
            true => tokio::select! {
                copied = copy => copied?,
                lost = async {
                    claimed.notified().await;
                    keep_claim(ctx, &target).await
                } => return Err(lost),
            },
            false => copy.await?,
        };
        if let Some(given_up) = last_job.replace(job.clone()) {
            finished_with(ctx, &given_up);
        }
        match copied {
            Ok(check) => break (job, target, placed, check),
            Err(Fault::Destination(e)) if placed && e.kind() == Some(FailureKind::NoSpace) => {
                // It is what filled the disk: give the space back, and
                // update the old version in place if there is one.
                let _ = ctx.dst.tree.remove(target.clone()).await;
                match way {
                    Way::Rebuilt(compared) => way = Way::InPlace(Some(compared)),
                    Way::InPlace(_) => return Err(destination_failure(e)),
                }
            }
            Err(fault) => return Err(fault.into()),
        }
    };

    let (after, _) = ctx.src.tree.stat(src).await.map_err(source_failure)?;
    let stable = after.is_some_and(|after| before.same_version(&after));
    if placed && !stable {
        // Written or replaced at the source meanwhile, its copy may mix two
        // versions: it is not put in place. The old version, if any, stays
        // as it was; a new file's partial stays, the basis of the next try.
        if basis.is_some() {
            let _ = ctx.dst.tree.remove(target).await;
        }
        if let Some(ticket) = ticket.take() {
            ticket.dir().touch();
        }
        if job.sent.load(Ordering::Relaxed) > 0 {
            Stats::add(&ctx.stats.files_transferred, 1);
        }
        return Ok(Outcome::Changed);
    }
    let mtime = (stable && settled).then_some(before.mtime);
    let place_at = placed.then_some(dst);
    // Put in place, it also sets its directory's attributes (the last write
    // into the directory then leaves them right).
    let dir = ticket.as_ref().and_then(|t| t.dir().attrs_after_write(ctx));
    let sets_dir = dir.is_some();
    let finish = Finish { size: before.size, mode: before.mode, mtime, place_at, dir, check };
    let finished = match (ctx.dst.tree.finish_file(target.clone(), finish.clone()).await, &way) {
        // A rebuilt file checked as it is finished: some chunk differs from
        // the source's (a short digest that lied, a side that changed
        // meanwhile); found, sent again, and the file finished as it is.
        (Err(e), Way::Rebuilt(compared)) if e.kind() == Some(FailureKind::Mismatch) => {
            tracing::debug!("{rel}: the rebuilt file is not what the source's digests say; checking every chunk");
            rebuild::verify(ctx, &job, compared).await?;
            ctx.dst.tree.finish_file(target, Finish { check: None, ..finish }).await
        }
        (finished, _) => finished,
    };
    finished.map_err(destination_failure)?;
    if let Some(ticket) = ticket.take() {
        ticket.dir().after_write(sets_dir);
    }
    let sent = job.sent.load(Ordering::Relaxed);
    if mtime.is_none() {
        // Its content went over all the same (and counts in what was sent).
        if sent > 0 {
            Stats::add(&ctx.stats.files_transferred, 1);
        }
        return Ok(Outcome::Changed);
    }
    let change = match (change, basis) {
        // Same size, same content: what made it differ was its mtime.
        (Change::UpdateFile, Some(b)) if sent == 0 && b.size == before.size => {
            Change::Attributes(Attrs { mtime: true, mode: b.mode != before.mode, ..Attrs::default() })
        }
        (other, _) => other,
    };
    Ok(Outcome::Synced { transferred: sent > 0 || change == Change::NewFile, change: Some(change) })
}

/// Renews this run's claim on the partial file `path` while it is written
/// (every third of the lease: on a slow link shared by many files, writes
/// into one may be further apart than that). Ends only if another run took
/// the file over, which this one then leaves to it.
async fn keep_claim(ctx: &Ctx, path: &RelPath) -> Outcome {
    loop {
        tokio::time::sleep(pareco_fs::CLAIM_LEASE / 3).await;
        match ctx.dst.tree.renew(path.clone()).await {
            Err(e) if e.kind() == Some(FailureKind::Busy) => return destination_failure(e),
            // (Not made yet, or a fault the writes meet too.)
            _ => {}
        }
    }
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

/// What the first pass found, chunk by chunk, over the span both files
/// have: one plan and the source's digest per chunk.
pub(super) struct Compared {
    pub(super) plans: Vec<ChunkPlan>,
    pub(super) src: Vec<Digest>,
    /// Block digests of the destination's differing chunks, where the
    /// decision to patch in place asked for them already.
    pub(super) dst_blocks: HashMap<u64, Vec<Digest>>,
}

impl Compared {
    /// The chunks that differ, in order.
    pub(super) fn differences(&self) -> impl Iterator<Item = u64> + '_ {
        self.plans.iter().enumerate().filter(|(_, p)| **p != ChunkPlan::Same).map(|(i, _)| i as u64)
    }
}

/// Compares the chunks of `src` with those of `old` (of `old_size` bytes)
/// over the span both have, many groups at once. Nothing is written.
async fn compare(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    layout: Layout,
    old_size: u64,
) -> Result<Compared, Fault> {
    let groups = layout.groups(GROUP_CHUNKS).take_while(|g| layout.span(g).start < old_size);
    let compared = each_group(ctx, groups, |group| {
        let (ctx, src, old) = (ctx.clone(), src.clone(), old.clone());
        async move {
            let (s, d) = hash_both(&ctx, &src, &old, layout.span(&group)).await?;
            Ok((diff_chunks(&layout, &group, &s, &d, ctx.opts.block_size), s))
        }
    });
    let (mut plans, mut digests) = (Vec::new(), Vec::new());
    for (p, d) in compared.await? {
        plans.extend(p);
        digests.extend(d);
    }
    Ok(Compared { plans, src: digests, dst_blocks: HashMap::new() })
}

/// Patches what differs in place (per `compared`), then streams the rest.
async fn patch(ctx: &Arc<Ctx>, job: &Arc<FileJob>, compared: Option<&Compared>) -> Result<(), Fault> {
    let mut tasks = JoinSet::new();
    let resumed;
    let compared = match compared {
        Some(c) => c,
        None => {
            // A new file: what an interrupted attempt left under its partial name.
            resumed = match job.basis {
                0 => Compared { plans: Vec::new(), src: Vec::new(), dst_blocks: HashMap::new() },
                basis => compare(ctx, &job.src, &job.dst, job.layout, basis).await?,
            };
            &resumed
        }
    };
    for (i, plan) in compared.plans.iter().enumerate() {
        let i = i as u64;
        match plan {
            ChunkPlan::Same => {
                Stats::add(&ctx.stats.chunks_matched, 1);
                let range = job.layout.chunk_range(i);
                job.progress(ctx, range.end - range.start);
            }
            ChunkPlan::Refine => {
                let permit = ctx.groups.clone().acquire_owned().await.expect("never closed");
                let (ctx, job) = (ctx.clone(), job.clone());
                let known = compared.dst_blocks.get(&i).cloned();
                tasks.spawn(async move {
                    let result = refine(&ctx, &job, i, known).await;
                    drop(permit);
                    result
                });
            }
            ChunkPlan::Send => {
                Stats::add(&ctx.stats.chunks_sent, 1);
                spawn_pieces(ctx, job, job.layout.chunk_range(i), &mut tasks).await?;
            }
        }
        check(&mut tasks)?;
    }
    let stream_from = job.layout.chunk_range(compared.plans.len() as u64).start.min(job.layout.size);
    stream(ctx, job, stream_from..job.layout.size, &mut tasks).await?;
    while let Some(result) = tasks.join_next().await {
        result.expect("chunk task panicked")?;
    }
    Ok(())
}

/// Streams `rest` of the file, which the destination does not have: holes
/// of a sparse source are neither read nor sent, and stay holes (the final
/// size is set at the end).
pub(super) async fn stream(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    rest: Range<u64>,
    tasks: &mut JoinSet<Result<(), Fault>>,
) -> Result<(), Fault> {
    if rest.is_empty() {
        return Ok(());
    }
    Stats::add(&ctx.stats.chunks_sent, job.layout.chunks() - rest.start.div_ceil(job.layout.chunk as u64));
    let extents = if job.sparse {
        ctx.src.tree.data_extents(job.src.clone(), rest.clone()).await.map_err(Fault::Source)?
    } else {
        vec![rest.clone()]
    };
    let holes = (rest.end - rest.start) - extents.iter().map(|e| e.end - e.start).sum::<u64>();
    Stats::add(&ctx.stats.bytes_sparse, holes);
    job.progress(ctx, holes);
    for extent in extents {
        spawn_pieces(ctx, job, extent, tasks).await?;
    }
    Ok(())
}

/// Runs `work` on each group of chunks, as many at once as `ctx.groups`
/// allows, failing fast; returns every result, in the groups' order.
pub(super) async fn each_group<T, F>(
    ctx: &Ctx,
    groups: impl Iterator<Item = Range<u64>>,
    work: impl Fn(Range<u64>) -> F,
) -> Result<Vec<T>, Fault>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Fault>> + Send + 'static,
{
    let (mut tasks, mut done) = (JoinSet::new(), Vec::new());
    for group in groups {
        let permit = ctx.groups.clone().acquire_owned().await.expect("never closed");
        let (first, work) = (group.start, work(group));
        tasks.spawn(async move {
            let result = work.await;
            drop(permit);
            result.map(|t| (first, t))
        });
        while let Some(finished) = tasks.try_join_next() {
            done.push(finished.expect("group task panicked")?);
        }
    }
    while let Some(finished) = tasks.join_next().await {
        done.push(finished.expect("group task panicked")?);
    }
    done.sort_by_key(|d| d.0);
    Ok(done.into_iter().map(|d| d.1).collect())
}

/// Fails fast if a finished task failed.
pub(super) fn check(tasks: &mut JoinSet<Result<(), Fault>>) -> Result<(), Fault> {
    while let Some(result) = tasks.try_join_next() {
        result.expect("chunk task panicked")?;
    }
    Ok(())
}

/// Pieces grow to this size on fast links.
const MAX_PIECE: u32 = 1 << 20;

/// The size of the next piece: about 2 ms of the run's rate so far (128 KiB
/// up to 64 MiB/s, 1 MiB from 512 MiB/s). Each piece costs a request, an
/// open, a system call and a wake-up per side, which on a fast link is CPU
/// (1 MiB pieces took a fifth off the sender's CPU over loopback); on a slow
/// one a big piece is a long tail, a piece being one connection's at a time.
fn piece_size(ctx: &Ctx) -> u32 {
    let sent = ctx.stats.bytes_transferred.load(std::sync::atomic::Ordering::Relaxed);
    piece_for(sent, ctx.started.elapsed().as_secs_f64())
}

/// The piece size after `sent` bytes were written in `elapsed` seconds.
/// The rate is counted from the run's start and in bytes the other side
/// has written, so it never runs ahead of the link: the first pieces are
/// small until answers come back, and a fast link grows them within its
/// first tens of milliseconds (waiting a quarter of a second sent the
/// first third of a 1 GiB push over loopback in 128 KiB pieces).
fn piece_for(sent: u64, elapsed: f64) -> u32 {
    let want = (sent as f64 / elapsed.max(1e-3) * 0.002) as u64;
    if want <= PIECE as u64 {
        return PIECE;
    }
    // A power of two: chunks (powers of two too) are cut without remainders.
    (1u64 << want.ilog2()).min(MAX_PIECE as u64) as u32
}

/// Starts sending `range` piece by piece, each piece waiting for its share
/// of the data budget.
pub(super) async fn spawn_pieces(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    range: Range<u64>,
    tasks: &mut JoinSet<Result<(), Fault>>,
) -> Result<(), Fault> {
    let mut at = range.start;
    while at < range.end {
        // Each piece ends at a multiple of its size: pieces of any of the
        // sizes a run goes through tile an aligned region (a run of zeros
        // left as a hole by --sparse) the same way.
        let size = piece_size(ctx) as u64;
        let piece = at..((at / size + 1) * size).min(range.end);
        at = piece.end;
        let share = ctx.data.take(piece.end - piece.start).await;
        let (ctx, job) = (ctx.clone(), job.clone());
        tasks.spawn(async move {
            send_piece(&ctx, &job, piece).await?;
            ctx.data.done(share);
            Ok(())
        });
        check(tasks)?;
    }
    Ok(())
}

/// Sends one piece of content.
async fn send_piece(ctx: &Ctx, job: &FileJob, piece: Range<u64>) -> Result<(), Fault> {
    let len = (piece.end - piece.start) as u32;
    for attempt in 1.. {
        let (checksum, data) =
            ctx.src.tree.read_data(job.src.clone(), piece.start, len).await.map_err(Fault::Source)?;
        if ctx.opts.sparse && piece.start >= job.basis && data.iter().all(|&b| b == 0) {
            // Not written: the region stays a hole.
            Stats::add(&ctx.stats.bytes_sparse, len as u64);
            job.progress(ctx, len as u64);
            return Ok(());
        }
        match ctx.dst.tree.write_data(job.dst.clone(), piece.start, checksum, data).await {
            Ok(()) => break,
            Err(e) if e.kind() == Some(FailureKind::Mismatch) && attempt < TRANSIT_ATTEMPTS => {
                tracing::warn!(
                    "{}: bytes {}..{} failed their checksum in transit; sending them again",
                    job.src,
                    piece.start,
                    piece.end
                );
            }
            Err(e) => return Err(Fault::Destination(e)),
        }
    }
    job.sent(ctx, len as u64);
    Ok(())
}

/// Sends only the blocks of chunk `i` that differ (given the destination's
/// block digests if they are `known` already).
async fn refine(ctx: &Arc<Ctx>, job: &Arc<FileJob>, i: u64, known: Option<Vec<Digest>>) -> Result<(), Fault> {
    let range = job.layout.chunk_range(i);
    let len = (range.end - range.start) as u32;
    let block = ctx.opts.block_size;
    let share = ctx.data.take(len as u64).await;
    let dst_blocks = match known {
        Some(blocks) => blocks,
        None => ctx.dst.tree.hash_blocks(job.dst.clone(), range.start, len, block).await.map_err(Fault::Destination)?,
    };
    let total = dst_blocks.len() as u64;
    let (chunk_digest, blocks) =
        ctx.src.tree.read_patch(job.src.clone(), range.start, len, block, dst_blocks).await.map_err(Fault::Source)?;
    let (count, bytes) = (blocks.len() as u64, blocks.iter().map(|b| b.data.len() as u64).sum::<u64>());
    match ctx.dst.tree.apply_patch(job.dst.clone(), range.start, len, block, chunk_digest, blocks).await {
        Ok(()) if count == 0 => {
            ctx.data.done(share);
            Stats::add(&ctx.stats.chunks_matched, 1);
            job.progress(ctx, len as u64);
        }
        Ok(()) => {
            ctx.data.done(share);
            job.progress(ctx, len as u64);
            Stats::add(&ctx.stats.chunks_sent, 1);
            Stats::add(&ctx.stats.blocks_sent, count);
            Stats::add(&ctx.stats.blocks_matched, total - count);
            Stats::add(&ctx.stats.bytes_transferred, bytes);
            job.sent.fetch_add(bytes, Ordering::Relaxed);
        }
        Err(e) if e.kind() == Some(FailureKind::Mismatch) => {
            // One side moved between hashing and patching: send it whole.
            drop(share);
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
pub(super) async fn hash_both(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_rate_and_start_small() {
        assert_eq!(piece_for(0, 0.0), PIECE);
        assert_eq!(piece_for(0, 0.01), PIECE);
        // 64 MiB/s and less: the smallest piece.
        assert_eq!(piece_for(64 << 20, 1.0), PIECE);
        assert_eq!(piece_for(1 << 20, 1.0), PIECE);
        // 200 MiB/s: 400 KiB wanted, 256 KiB given (a power of two).
        assert_eq!(piece_for(200 << 20, 1.0), 256 << 10);
        // 20 MiB written in 20 ms over loopback: the largest.
        assert_eq!(piece_for(20 << 20, 0.02), MAX_PIECE);
        assert_eq!(piece_for(u64::MAX, 1e-9), MAX_PIECE);
    }
}
