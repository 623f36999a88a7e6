//! Small files travel whole and in batches: one request reads many of them
//! from the source, one request writes them to the destination (each
//! atomically). Batching takes whatever is queued when a batch is sent, so
//! a burst of small files fills batches while a trickle is not delayed.
//!
//! Each file is read with a stat before and after; the planner's freshness
//! rules decide whether the copy may carry the source's mtime, must be read
//! again once its mtime has settled, or is reported as changing.

use std::sync::Arc;
use std::time::Duration;

use pareco_plan::freshness::{ReadVerdict, judge_read};
use pareco_proto::{DirAttrs, Failure, FailureKind, FileContent, FileRead, Kind, RelPath, Stat};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::walk::{DirNode, Ticket};
use super::{Ctx, Outcome, SMALL_FILE_MAX, TRANSIT_ATTEMPTS, big, destination_failure, source_failure};
use crate::report::{Change, Stats};
use crate::tree::TreeError;

/// A batch is sent once it holds this many bytes...
const BATCH_BYTES: u64 = 128 << 10;
/// ...or this many files.
const BATCH_FILES: usize = 256;

/// A small file waiting for its batch.
pub(crate) struct SmallFile {
    pub rel: RelPath,
    /// Its stat from the listing (for sizes).
    pub src: Stat,
    /// The destination's file before the run (`None`: a new file).
    pub basis: Option<Stat>,
    pub ticket: Ticket,
    /// Holds the file's place among the entries in flight.
    pub _permit: OwnedSemaphorePermit,
    /// Reads of this file so far.
    pub attempt: u32,
}

/// What to do with one file after reading it.
enum Judged {
    Write(FileContent, bool),
    Retry(Duration),
    NotSmall,
    Done(Outcome),
}

fn judge(ctx: &Ctx, file: &SmallFile, read: FileRead) -> Judged {
    match read {
        FileRead::Content { stat, now, stable, checksum, data } => {
            let mtime = match judge_read(&stat, now, stable, file.attempt + 1) {
                ReadVerdict::Stamp => Some(stat.mtime),
                ReadVerdict::Unstamped => None,
                ReadVerdict::Retry(wait) => return Judged::Retry(wait),
            };
            let content = FileContent { path: ctx.dst.path(&file.rel), mode: stat.mode, mtime, checksum, data };
            Judged::Write(content, mtime.is_some())
        }
        FileRead::NotSmall(stat) if stat.kind == Kind::File => Judged::NotSmall,
        FileRead::NotSmall(_) => Judged::Done(Outcome::Changed),
        FileRead::Failed(f) => Judged::Done(source_failure(f.into())),
    }
}

fn written(ctx: &Ctx, file: &SmallFile, size: usize, stamped: bool, result: Result<(), String>) -> Outcome {
    if let Err(why) = result {
        return Outcome::Failed(format!("destination: {why}"));
    }
    ctx.grown(file.src.size, size as u64);
    Stats::add(&ctx.stats.bytes_transferred, size as u64);
    Stats::add(&ctx.stats.chunks_sent, 1);
    if !stamped {
        // Its content went over all the same (and counts in what was sent).
        Stats::add(&ctx.stats.files_transferred, 1);
        return Outcome::Changed;
    }
    let change = if file.basis.is_none() { Change::NewFile } else { Change::UpdateFile };
    Outcome::Synced { transferred: true, change: Some(change) }
}

/// Takes queued small files in batches until the walk is over.
pub(crate) async fn batcher(ctx: Arc<Ctx>, mut queue: mpsc::Receiver<SmallFile>) {
    let mut batches = tokio::task::JoinSet::new();
    while let Some(first) = queue.recv().await {
        let mut bytes = first.src.size;
        let mut batch = vec![first];
        while batch.len() < BATCH_FILES && bytes < BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += next.src.size;
            batch.push(next);
        }
        let permit = ctx.batches.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        batches.spawn(async move {
            transfer_batch(&ctx, batch).await;
            drop(permit);
        });
        while batches.try_join_next().is_some() {}
    }
    while batches.join_next().await.is_some() {}
}

async fn transfer_batch(ctx: &Arc<Ctx>, batch: Vec<SmallFile>) {
    let bytes = batch.iter().map(|f| f.src.size).sum();
    let share = ctx.data.take(bytes).await;
    let paths = batch.iter().map(|f| ctx.src.path(&f.rel)).collect();
    let reads = match ctx.src.tree.read_files(paths, SMALL_FILE_MAX).await {
        Ok(reads) => reads,
        Err(e) => {
            for file in batch {
                ctx.finish_file(&file.rel, file.src.size, source_failure(e.clone()));
            }
            return;
        }
    };
    let mut writes = Vec::new();
    let mut pending = Vec::new();
    for (file, read) in batch.into_iter().zip(reads) {
        match judge(ctx, &file, read) {
            Judged::Write(content, stamped) => {
                pending.push((file, content.data.len(), stamped));
                writes.push(content);
            }
            Judged::Retry(wait) => alone(ctx, file, move |ctx, mut file| async move {
                tokio::time::sleep(wait).await;
                file.attempt += 1;
                transfer_file(&ctx, file).await
            }),
            Judged::NotSmall => alone(ctx, file, |ctx, file| async move { as_big(&ctx, file).await }),
            Judged::Done(outcome) => ctx.finish_file(&file.rel, file.src.size, outcome),
        }
    }
    if writes.is_empty() {
        return;
    }
    let files: Vec<&SmallFile> = pending.iter().map(|(file, ..)| file).collect();
    match write(ctx, writes, &files).await {
        Ok(results) => {
            ctx.data.done(share);
            for ((file, size, stamped), result) in pending.into_iter().zip(results) {
                if result.as_ref().is_err_and(|f| f.kind == FailureKind::Mismatch) {
                    // Corrupted on its way: sent again on its own.
                    tracing::warn!("{}: failed its checksum in transit; sending it again", file.rel);
                    alone(ctx, file, |ctx, file| async move { transfer_file(&ctx, file).await });
                    continue;
                }
                let outcome = written(ctx, &file, size, stamped, result.map_err(|f| f.to_string()));
                ctx.finish_file(&file.rel, file.src.size, outcome);
            }
        }
        Err(e) => {
            for (file, ..) in pending {
                ctx.finish_file(&file.rel, file.src.size, destination_failure(e.clone()));
            }
        }
    }
}

/// Writes `contents` (those of `files`), then sets the attributes of their
/// directories, and tells each directory whether they were set.
async fn write(
    ctx: &Ctx,
    contents: Vec<FileContent>,
    files: &[&SmallFile],
) -> Result<Vec<Result<(), Failure>>, TreeError> {
    let mut dirs: Vec<&DirNode> = Vec::new();
    for file in files {
        let dir = file.ticket.dir();
        if !dirs.iter().any(|d| std::ptr::eq(*d, dir)) {
            dirs.push(dir);
        }
    }
    let attrs: Vec<Option<DirAttrs>> = dirs.iter().map(|d| d.attrs_after_write(ctx)).collect();
    let sent = attrs.iter().flatten().cloned().collect();
    let written = ctx.dst.tree.write_files(contents, sent).await;
    let mut set = written.as_ref().map_or(&[][..], |w| &w.dirs).iter();
    for (dir, attrs) in dirs.iter().zip(&attrs) {
        dir.after_write(attrs.is_some() && set.next().is_some_and(Result::is_ok));
    }
    written.map(|w| w.files)
}

/// Finishes a file of a batch in a task of its own, with `work` (the batch
/// does not wait for it).
fn alone<F, Fut>(ctx: &Arc<Ctx>, file: SmallFile, work: F)
where
    F: FnOnce(Arc<Ctx>, SmallFile) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let (ctx, alive) = (ctx.clone(), file.ticket.alive());
    let (rel, size) = (file.rel.clone(), file.src.size);
    tokio::spawn(async move {
        let outcome = work(ctx.clone(), file).await;
        ctx.finish_file(&rel, size, outcome);
        drop(alive);
    });
}

/// Copies one small file on its own (retries, replacements, `--checksum`).
pub(crate) async fn transfer_one(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    src: Stat,
    basis: Option<Stat>,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
) -> Outcome {
    let file = SmallFile { rel: rel.clone(), src, basis, ticket, _permit: permit, attempt: 0 };
    transfer_file(ctx, file).await
}

async fn transfer_file(ctx: &Arc<Ctx>, mut file: SmallFile) -> Outcome {
    let mut sent = 0;
    loop {
        let read = match ctx.src.tree.read_files(vec![ctx.src.path(&file.rel)], SMALL_FILE_MAX).await {
            Ok(mut reads) => reads.pop().expect("one read per path"),
            Err(e) => return source_failure(e),
        };
        match judge(ctx, &file, read) {
            Judged::Write(content, stamped) => {
                let size = content.data.len();
                sent += 1;
                let result = match write(ctx, vec![content], &[&file]).await {
                    Ok(mut results) => results.pop().expect("one outcome per file"),
                    Err(e) => return written(ctx, &file, size, stamped, Err(e.to_string())),
                };
                if result.as_ref().is_err_and(|f| f.kind == FailureKind::Mismatch) && sent < TRANSIT_ATTEMPTS {
                    tracing::warn!("{}: failed its checksum in transit; sending it again", file.rel);
                    continue;
                }
                return written(ctx, &file, size, stamped, result.map_err(|f| f.to_string()));
            }
            Judged::Retry(wait) => {
                tokio::time::sleep(wait).await;
                file.attempt += 1;
            }
            Judged::NotSmall => return as_big(ctx, file).await,
            Judged::Done(outcome) => return outcome,
        }
    }
}

/// A file listed as small that grew: copy it the way large files go.
async fn as_big(ctx: &Arc<Ctx>, file: SmallFile) -> Outcome {
    let change = if file.basis.is_none() { Change::NewFile } else { Change::UpdateFile };
    big::transfer(ctx, &file.rel, file.src.size, file.basis.as_ref(), change, file.ticket).await
}
