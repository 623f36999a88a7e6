//! Rebuilding a file whose content moved: bytes inserted or removed before
//! a change shift everything after it, so that no fixed-offset chunk
//! matches any more, while the destination still holds almost all of it.
//!
//! The decision ([`worth_it`]) looks at the first chunks that differ: at
//! the first whose blocks do not match where they are, cut at
//! content-defined boundaries, is its content in the old version nearby at
//! another offset? Then, per `pareco_plan::delta`: chunks that matched stay
//! copies at their offset; every region that differs is cut on both sides
//! (each side cuts its own copy; only the old version's piece list crosses
//! when it is remote, about 11 bytes per piece), matched, and its gaps cut
//! again finer, many regions and gaps at once. The new version is assembled
//! under the file's partial name: copies from the old file are made on the
//! destination's side (`CopyRanges`, no byte on the wire), the rest travels
//! compressed like any data, each as soon as the plan knows where it comes
//! from. Before it replaces the old version, the result is checked against
//! the source's chunk digests: by the finish itself (one digest of them
//! all), or, for a file too big to hash within one request, chunk by chunk
//! first. If it differs (a short digest that lied, a side that changed
//! meanwhile), the chunks that differ are found and sent whole. A failure
//! leaves the old version as it was.

use std::ops::Range;
use std::sync::Arc;

use pareco_plan::delta::{Gap, Op, finer, first_avg, locate, match_pieces, moved_bytes, regions, shifted};
use pareco_plan::file::{ChunkPlan, Layout};
use pareco_proto::limits::{MAX_COPY_RANGES, MAX_DIGESTS, MIN_PIECE_AVG};
use pareco_proto::{CopyRange, Digest, FileCheck, Piece, RelPath, Stat};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Ctx;
use super::big::{Compared, Fault, FileJob, GROUP_CHUNKS, check, each_group, hash_both, spawn_pieces};
use crate::report::Stats;
use crate::tree::{Tree, TreeError};

/// Differing chunks whose blocks are compared before the file counts as
/// changed in place (a shift may begin late in the first one).
const PROBED_CHUNKS: usize = 4;

/// Whether `src` is better rebuilt from `old` than patched in place, from
/// the first differing chunks: not while most of their blocks match where
/// they are (pages changed in place, the block patch's case); at the first
/// one whose blocks mostly do not, if, cut into small pieces, it is mostly
/// found at other offsets in the old version around it (content that
/// moved); not otherwise (content rewritten where it was: a rebuild would
/// gain nothing and copy the whole file).
pub(super) async fn worth_it(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    layout: Layout,
    old_size: u64,
    compared: &mut Compared,
) -> Result<bool, Fault> {
    // Content inserted or removed makes every chunk after it differ. When
    // all do, from the first that differs on, the next one lies wholly
    // beyond the change: its blocks cannot match where they are, and only
    // whether its content moved is worth a look.
    let first = compared.differences().next();
    if let Some(first) = first
        && compared.plans.len() as u64 >= first + PROBED_CHUNKS as u64
        && compared.plans[first as usize..].iter().all(|p| *p != ChunkPlan::Same)
        && layout.chunk_range(first + 1).end <= old_size
        && layout.chunk as u64 >= 16 * MIN_PIECE_AVG as u64
    {
        return moved(ctx, src, old, layout, old_size, first + 1).await;
    }
    let differing: Vec<u64> = compared.differences().take(PROBED_CHUNKS).collect();
    for i in differing {
        let chunk = layout.chunk_range(i);
        let len = chunk.end - chunk.start;
        if len < 16 * MIN_PIECE_AVG as u64 || chunk.start >= old_size {
            return Ok(false);
        }
        let (mostly_same, old_blocks) = in_place(ctx, src, old, chunk.clone(), old_size).await?;
        if !mostly_same {
            return moved(ctx, src, old, layout, old_size, i).await;
        }
        // The patch of this chunk needs them again.
        if chunk.end <= old_size {
            compared.dst_blocks.insert(i, old_blocks);
        }
    }
    Ok(false)
}

/// Whether most blocks of `chunk` match at their offsets in `old` (which
/// may end inside it: a file that grew), and the old version's block digests.
async fn in_place(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    chunk: Range<u64>,
    old_size: u64,
) -> Result<(bool, Vec<Digest>), Fault> {
    let (len, old_len) = (chunk.end - chunk.start, chunk.end.min(old_size) - chunk.start);
    let block = ctx.opts.block_size;
    let (s, d) = tokio::try_join!(
        async { ctx.src.tree.hash_blocks(src.clone(), chunk.start, len as u32, block).await.map_err(Fault::Source) },
        async {
            ctx.dst.tree.hash_blocks(old.clone(), chunk.start, old_len as u32, block).await.map_err(Fault::Destination)
        },
    )?;
    let mostly_same = s.iter().zip(&d).filter(|(a, b)| a == b).count() * 2 >= s.len();
    Ok((mostly_same, d))
}

/// Whether chunk `i` of `src`, cut into small pieces, is mostly found at
/// other offsets in `old` around it.
async fn moved(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    layout: Layout,
    old_size: u64,
    i: u64,
) -> Result<bool, Fault> {
    let chunk = layout.chunk_range(i);
    let len = chunk.end - chunk.start;
    // Small pieces, so that changes a few KiB apart (rewritten records)
    // still leave most pieces whole.
    let avg = (len / 512).next_power_of_two().clamp(MIN_PIECE_AVG as u64, 16 << 10) as u32;
    let around = chunk.start.saturating_sub(layout.chunk as u64)..(chunk.end + layout.chunk as u64).min(old_size);
    let (s, d) = tokio::try_join!(
        async { pieces(&ctx.src.tree, src, chunk.clone(), avg).await.map_err(Fault::Source) },
        async { pieces(&ctx.dst.tree, old, around.clone(), avg).await.map_err(Fault::Destination) },
    )?;
    let verdict = shifted(&locate(chunk.start, &s), &locate(around.start, &d));
    tracing::debug!("{src}: chunk {i} holds content of the old version at other offsets: {verdict}");
    Ok(verdict)
}

/// Rebuilds `job.dst` (made by `prepared`) from `old` (of `old_size`
/// bytes) and the source. Ranges are copied or sent as soon as the plan
/// finds where they come from, while it looks for the rest. Returns what
/// the file must hold, for the finish to check (then [`verify`] if it does
/// not); a file too big for that is checked here.
pub(super) async fn rebuild(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    old: &RelPath,
    old_size: u64,
    compared: &Compared,
    prepared: impl Future<Output = Result<Stat, TreeError>>,
) -> Result<Option<FileCheck>, Fault> {
    let same = compared.plans.iter().filter(|p| **p == ChunkPlan::Same).count() as u64;
    Stats::add(&ctx.stats.chunks_matched, same);
    Stats::add(&ctx.stats.chunks_sent, job.layout.chunks() - same);
    let (found, ops) = mpsc::unbounded_channel();
    let planned = plan(ctx, &job.src, old, job.layout, old_size, compared, found);
    let assembled = async {
        prepared.await.map_err(Fault::Destination)?;
        assemble(ctx, job, old, ops).await
    };
    let ((), (), check) = tokio::try_join!(planned, assembled, expected(ctx, job, compared))?;
    if check.is_none() {
        verify(ctx, job, compared).await?;
    }
    Ok(check)
}

/// Files up to this size are checked as they are finished, in one request:
/// hashing one takes the destination seconds at most, well within the time
/// a connection may stay silent; the round trips saved matter less the
/// longer a file takes to hash.
const CHECKED_AT_FINISH: u64 = 1 << 30;

/// What the rebuilt file must hold: the source's chunk digests, those the
/// comparison did not hash (beyond the old version's end) hashed now; `None`
/// for a file checked chunk by chunk instead.
async fn expected(ctx: &Arc<Ctx>, job: &Arc<FileJob>, compared: &Compared) -> Result<Option<FileCheck>, Fault> {
    let (layout, known) = (job.layout, compared.src.len() as u64);
    // (Digests that end inside a group: the source shrank meanwhile.)
    if layout.size > CHECKED_AT_FINISH || (!known.is_multiple_of(GROUP_CHUNKS) && known < layout.chunks()) {
        return Ok(None);
    }
    let rest = each_group(ctx, layout.groups(GROUP_CHUNKS).filter(|g| g.start >= known), |group| {
        let (ctx, job) = (ctx.clone(), job.clone());
        async move {
            let span = job.layout.span(&group);
            let digests =
                ctx.src.tree.hash_chunks(job.src.clone(), span.start, span.end - span.start, job.layout.chunk);
            digests.await.map_err(Fault::Source)
        }
    });
    let rest = rest.await?;
    let digests = compared.src.iter().chain(rest.iter().flatten());
    Ok(Some(FileCheck::of(layout.chunk, digests)))
}

/// Finds where each range of the new version `src` (laid out as `layout`)
/// comes from, `old` (of `old_size` bytes) or the source, and sends the
/// ops to `found` as they are known.
async fn plan(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    layout: Layout,
    old_size: u64,
    compared: &Compared,
    found: mpsc::UnboundedSender<Vec<Op>>,
) -> Result<(), Fault> {
    let (ops, gaps) = regions(&compared.plans, layout.chunk, layout.size, old_size);
    let _ = found.send(ops);
    match_gaps(ctx, src, old, gaps, &found).await
}

/// Copy requests in flight at once, each with all the copies found while
/// none could go: enough that finding more costs no round trip at the end,
/// few since the writes into one file take turns on it anyway.
const COPIES_IN_FLIGHT: usize = 4;

/// Carries out ops as they come until the plan is complete: copies on the
/// destination's side, new bytes in pieces, or together when scattered.
async fn assemble(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    old: &RelPath,
    mut ops: mpsc::UnboundedReceiver<Vec<Op>>,
) -> Result<(), Fault> {
    let (mut tasks, mut copying) = (JoinSet::new(), JoinSet::new());
    let (mut copies, mut scattered, mut scattered_len) = (Vec::new(), Vec::new(), 0);
    let mut planning = true;
    while planning || !copies.is_empty() || !copying.is_empty() {
        tokio::select! {
            next = ops.recv(), if planning => {
                let Some(next) = next else {
                    planning = false;
                    if !scattered.is_empty() {
                        send_scattered(ctx, job, std::mem::take(&mut scattered), &mut tasks).await;
                    }
                    continue;
                };
                Stats::add(&ctx.stats.bytes_matched_shifted, moved_bytes(&next));
                for op in next {
                    match op {
                        Op::Reuse { at, from, len } => copies.push(CopyRange { to: at, from, len }),
                        Op::Literal(range) if range.end - range.start >= LITERAL_BATCH / 2 => {
                            spawn_pieces(ctx, job, range, &mut tasks).await?
                        }
                        Op::Literal(range) => {
                            let len = range.end - range.start;
                            if scattered_len + len > LITERAL_BATCH || scattered.len() >= MAX_COPY_RANGES {
                                send_scattered(ctx, job, std::mem::take(&mut scattered), &mut tasks).await;
                                scattered_len = 0;
                            }
                            scattered.push(range);
                            scattered_len += len;
                        }
                    }
                }
            }
            Some(done) = copying.join_next(), if !copying.is_empty() => done.expect("copy task panicked")?,
            else => {}
        }
        while copying.len() < COPIES_IN_FLIGHT && !copies.is_empty() {
            let batch: Vec<CopyRange> = copies.drain(..copies.len().min(MAX_COPY_RANGES)).collect();
            let (ctx, job, old) = (ctx.clone(), job.clone(), old.clone());
            copying.spawn(async move {
                let reused = batch.iter().map(|c| c.len).sum();
                ctx.dst.tree.copy_ranges(job.dst.clone(), old, batch).await.map_err(Fault::Destination)?;
                job.progress(&ctx, reused);
                Ok::<_, Fault>(())
            });
        }
        check(&mut tasks)?;
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("rebuild task panicked")?;
    }
    Ok(())
}

/// Scattered new bytes travel together, up to this many per request (one
/// frame, compressed as one).
const LITERAL_BATCH: u64 = 128 << 10;

/// Sends scattered ranges of new bytes in one request.
async fn send_scattered(
    ctx: &Arc<Ctx>,
    job: &Arc<FileJob>,
    mut batch: Vec<Range<u64>>,
    tasks: &mut JoinSet<Result<(), Fault>>,
) {
    batch.sort_by_key(|r| r.start);
    let len = batch.iter().map(|r| r.end - r.start).sum();
    let share = ctx.data.take(len).await;
    let (ctx, job) = (ctx.clone(), job.clone());
    tasks.spawn(async move {
        let (checksum, data) = ctx.src.tree.read_ranges(job.src.clone(), batch.clone()).await.map_err(Fault::Source)?;
        ctx.dst.tree.write_ranges(job.dst.clone(), batch, checksum, data).await.map_err(Fault::Destination)?;
        job.sent(&ctx, len);
        ctx.data.done(share);
        Ok(())
    });
}

/// Matches every gap piece by piece, finer and finer, many at once; what
/// is found nowhere becomes literal data. Ops go to `found` as each cut
/// is matched.
async fn match_gaps(
    ctx: &Arc<Ctx>,
    src: &RelPath,
    old: &RelPath,
    gaps: Vec<Gap>,
    found: &mpsc::UnboundedSender<Vec<Op>>,
) -> Result<(), Fault> {
    // Gaps are many and their requests small: keep plenty in flight, so
    // that round trips overlap.
    let limit = (ctx.opts.parallelism * 16).max(256);
    let mut work: Vec<(Gap, u32)> = gaps.into_iter().map(|g| (g.clone(), first_avg(g.src.end - g.src.start))).collect();
    let mut tasks = JoinSet::new();
    loop {
        let mut ops = Vec::new();
        while tasks.len() < limit
            && let Some((gap, avg)) = work.pop()
        {
            if gap.dst.is_empty() || gap.src.is_empty() {
                ops.extend((!gap.src.is_empty()).then_some(Op::Literal(gap.src)));
                continue;
            }
            let (ctx, src, old) = (ctx.clone(), src.clone(), old.clone());
            tasks.spawn(async move {
                let (s, d) = tokio::try_join!(
                    async { pieces(&ctx.src.tree, &src, gap.src.clone(), avg).await.map_err(Fault::Source) },
                    async { pieces(&ctx.dst.tree, &old, gap.dst.clone(), avg).await.map_err(Fault::Destination) },
                )?;
                let located = locate(gap.src.start, &s);
                let (mut found, gaps) = match_pieces(&located, &locate(gap.dst.start, &d), gap.dst.clone());
                // A source that became shorter meanwhile: the rest is checked later.
                let covered = gap.src.start + s.iter().map(|p| p.len as u64).sum::<u64>();
                found.extend((covered < gap.src.end).then_some(Op::Literal(covered..gap.src.end)));
                Ok::<_, Fault>((found, gaps, avg))
            });
        }
        let done = tasks.join_next().await;
        if let Some(done) = done {
            let (matched, gaps, avg) = done.expect("match task panicked")?;
            ops.extend(matched);
            for gap in gaps {
                match finer(avg, gap.src.end - gap.src.start) {
                    Some(next) => work.push((gap, next)),
                    None => ops.push(Op::Literal(gap.src)),
                }
            }
        } else if ops.is_empty() {
            return Ok(());
        }
        // Not received only once assembling failed, which ends the rebuild.
        let _ = found.send(ops);
    }
}

/// Bytes cut per request at most: a big region is cut by many requests at
/// once (on as many cores as the side has).
const SEGMENT: u64 = 16 << 20;

/// The pieces of `range` on one side, asked in segments small enough for
/// one answer each, all at once (the cut restarts at each segment, which
/// costs a piece or two of matching, recovered by the finer cut of gaps).
async fn pieces(tree: &Tree, path: &RelPath, range: Range<u64>, avg: u32) -> Result<Vec<Piece>, TreeError> {
    let segment = ((MAX_DIGESTS as u64 / 2) * (avg as u64 / 4)).min(SEGMENT);
    let mut tasks = JoinSet::new();
    let mut at = range.start;
    while at < range.end {
        let len = segment.min(range.end - at);
        let (tree, path) = (tree.clone(), path.clone());
        tasks.spawn(async move { (at, tree.pieces(path, at, len, avg).await) });
        at += len;
    }
    let mut segments = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (at, pieces) = done.expect("cut task panicked");
        segments.push((at, pieces?));
    }
    segments.sort_by_key(|s| s.0);
    Ok(segments.into_iter().flat_map(|s| s.1).collect())
}

/// Checks the rebuilt file against the source, chunk by chunk (many groups
/// at once), and sends whole the chunks that differ.
pub(super) async fn verify(ctx: &Arc<Ctx>, job: &Arc<FileJob>, compared: &Compared) -> Result<(), Fault> {
    let wrong = each_group(ctx, job.layout.groups(GROUP_CHUNKS), |group| {
        let known = compared.src.get(group.start as usize..group.end as usize).map(<[_]>::to_vec);
        let (ctx, job) = (ctx.clone(), job.clone());
        async move {
            let span = job.layout.span(&group);
            let (want, have) = match known {
                Some(want) => {
                    let have =
                        ctx.dst.tree.hash_chunks(job.dst.clone(), span.start, span.end - span.start, job.layout.chunk);
                    (want, have.await.map_err(Fault::Destination)?)
                }
                None => hash_both(&ctx, &job.src, &job.dst, span).await?,
            };
            let first = group.start;
            let wrong = group.filter(|i| {
                let k = (i - first) as usize;
                want.get(k).is_none_or(|w| have.get(k) != Some(w))
            });
            Ok(wrong.collect::<Vec<u64>>())
        }
    });
    let mut resend = JoinSet::new();
    for i in wrong.await?.into_iter().flatten() {
        spawn_pieces(ctx, job, job.layout.chunk_range(i), &mut resend).await?;
    }
    while let Some(result) = resend.join_next().await {
        result.expect("resend task panicked")?;
    }
    Ok(())
}
