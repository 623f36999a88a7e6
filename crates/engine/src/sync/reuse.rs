//! Content the destination already holds under another name, copied there
//! instead of sent: a renamed or moved directory, rotated logs, a file
//! copied to a new name (see `pareco_plan::reuse` for which file qualifies).
//!
//! Where candidates come from:
//! - the same directory's destination listing (every file in it: a log
//!   rotated by renames finds its old content under the previous name);
//! - an index, built as the walk goes, of destination files the source
//!   does not have: extraneous files, and the files inside extraneous
//!   directories of a directory where something is created (a directory
//!   renamed within its parent is listed once, then copied from).
//!
//! The walk lists directories in parallel, so a file moved to another
//! directory may be planned before the directory it left is listed. A new
//! large file that finds no candidate is therefore [held](Later) until the
//! walk has listed everything, then looked for again in the index; only
//! then is it sent. Nothing is held when the destination was empty at the
//! start (a first copy), and nothing small: such a file costs less to send
//! than to wait for.
//!
//! Copies of one directory go in one `CloneFiles` request, made before the
//! directory's other entries are dispatched, so that a file that serves as
//! a candidate is read before it is itself updated; the server makes all
//! copies before renaming any, so contents that swap or rotate between
//! names come out right. Deletions (`--delete`) wait for the end of the run
//! ([`Deletions`]), so that nothing is removed before it has served. A file
//! whose candidate turns out to have changed is transferred as usual.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pareco_plan::dir::{Action, Planned};
use pareco_plan::freshness::settle_delay;
use pareco_plan::reuse::{ranked, ranked_far, wants_content};
use pareco_proto::limits::{MAX_BATCH_FILES, MAX_CLONE_CANDIDATES, MAX_DIGESTS};
use pareco_proto::{CloneFile, Kind, Name, RelPath, Stat, Timestamp};

use super::{Ctx, Outcome, SMALL_FILE_MAX, destination_failure};
use crate::report::{Change, Stats};

/// Most destination files remembered as candidates (about 100 bytes each).
const MAX_INDEXED: usize = 1 << 18;

/// Destination files the source does not have, by size (what a candidate
/// must share with the file it stands for), by size and mtime (a moved file
/// keeps both) and by size and name.
#[derive(Default)]
pub(crate) struct Index {
    by_size: Remembered<u64>,
    by_mtime: Remembered<(u64, Timestamp)>,
    by_name: Remembered<(u64, Name)>,
    len: AtomicUsize,
}

/// Destination files by one key.
type Remembered<K> = Mutex<HashMap<K, Vec<(RelPath, Stat)>>>;

/// Most files remembered for one size, one size and mtime, one size and
/// name: many directories of files alike (snapshots `day01/disk.img`, …)
/// must not crowd out the one a moved file comes from.
const MAX_ALIKE: usize = 16;
const MAX_SAME_MTIME: usize = 64;
const MAX_SAME_NAME: usize = 64;

/// Adds a candidate to a list of at most `max`.
fn remember<K: std::hash::Hash + Eq>(map: &Remembered<K>, key: K, file: (&RelPath, &Stat), max: usize) {
    let mut map = map.lock().expect("index lock");
    let alike = map.entry(key).or_default();
    if alike.len() < max {
        alike.push((file.0.clone(), file.1.clone()));
    }
}

impl Index {
    /// Remembers a destination file (`rel` relative to the synced root).
    fn add(&self, rel: RelPath, stat: Stat) {
        if stat.kind != Kind::File || stat.size == 0 || self.len.fetch_add(1, Ordering::Relaxed) >= MAX_INDEXED {
            return;
        }
        let Some((_, name)) = rel.split_last() else { return };
        remember(&self.by_size, stat.size, (&rel, &stat), MAX_ALIKE);
        remember(&self.by_mtime, (stat.size, stat.mtime), (&rel, &stat), MAX_SAME_MTIME);
        remember(&self.by_name, (stat.size, name), (&rel, &stat), MAX_SAME_NAME);
    }

    fn full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= MAX_INDEXED
    }

    /// The remembered files that may hold the content of `src`, to be at
    /// `path`, most likely first (see [`ranked_far`]), at most `max`.
    fn like(&self, path: &RelPath, src: &Stat, max: usize) -> Vec<RelPath> {
        let name = path.split_last().map(|(_, name)| name);
        let (by_mtime, by_name, by_size) = (
            self.by_mtime.lock().expect("index lock"),
            self.by_name.lock().expect("index lock"),
            self.by_size.lock().expect("index lock"),
        );
        let none = Vec::new();
        let all: Vec<&(RelPath, Stat)> = (by_mtime.get(&(src.size, src.mtime)).unwrap_or(&none).iter())
            .chain(name.and_then(|name| by_name.get(&(src.size, name))).unwrap_or(&none))
            .chain(by_size.get(&src.size).unwrap_or(&none))
            .collect();
        let mut found: Vec<RelPath> = Vec::new();
        for i in ranked_far(path, src, all.iter().map(|(rel, stat)| (rel, stat))) {
            if found.len() == max {
                break;
            }
            if !found.contains(&all[i].0) {
                found.push(all[i].0.clone());
            }
        }
        found
    }
}

/// New large files that found no candidate while the walk was going, held
/// (each group with what keeps its directory open) until it is over.
pub(crate) struct Later<Group> {
    open: AtomicBool,
    held: Mutex<Vec<Group>>,
}

impl<Group> Default for Later<Group> {
    fn default() -> Self {
        Later { open: AtomicBool::new(false), held: Mutex::default() }
    }
}

impl<Group> Later<Group> {
    /// Files are held from now on (the destination holds something that
    /// content may have moved from).
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn hold(&self, group: Group) {
        self.held.lock().expect("later lock").push(group);
    }

    /// Everything held; nothing is held after this.
    pub(crate) fn take(&self) -> Vec<Group> {
        self.open.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.held.lock().expect("later lock"))
    }
}

/// Deletions put off to the end of the run, with the directory holding
/// each (its source attributes, to be set again afterwards).
#[derive(Default)]
pub(crate) struct Deletions(Mutex<Vec<(RelPath, RelPath, Stat)>>);

impl Deletions {
    /// Puts off removing `rel`, an entry of the directory `dir`.
    pub(crate) fn defer(&self, rel: RelPath, dir: &RelPath, dir_src: &Stat) {
        self.0.lock().expect("deletions lock").push((rel, dir.clone(), dir_src.clone()));
    }

    /// Removes everything put off, then gives the directories their
    /// attributes back.
    pub(crate) async fn run(&self, ctx: &std::sync::Arc<Ctx>) {
        let all = std::mem::take(&mut *self.0.lock().expect("deletions lock"));
        let mut dirs: std::collections::BTreeMap<RelPath, Stat> = Default::default();
        let mut tasks = tokio::task::JoinSet::new();
        for (rel, dir, dir_src) in all {
            dirs.insert(dir, dir_src);
            while tasks.len() >= ctx.opts.parallelism.max(1) {
                tasks.join_next().await;
            }
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let outcome = match ctx.dst.tree.remove(ctx.dst.path(&rel)).await {
                    Ok(()) => {
                        Stats::add(&ctx.stats.entries_deleted, 1);
                        Outcome::Synced { transferred: false, change: Some(Change::Delete) }
                    }
                    Err(e) => destination_failure(e),
                };
                ctx.finish(&rel, 0, outcome);
            });
        }
        while tasks.join_next().await.is_some() {}
        for (dir, src) in dirs {
            if let Err(e) = ctx.dst.tree.set_attrs(ctx.dst.path(&dir), Some(src.mode), Some(src.mtime)).await {
                ctx.finish(&dir, 0, destination_failure(e));
            }
        }
    }
}

/// What [`copy_what_is_there`] leaves: the entries to dispatch, and the
/// new large files to look for again once the walk is over (see [`Later`]).
pub(crate) struct Left {
    pub(crate) now: Vec<Planned>,
    pub(crate) later: Vec<Planned>,
}

/// Before a directory's entries are dispatched: remembers its extraneous
/// files (and, if it creates anything, lists its extraneous directories to
/// remember theirs), then copies from what the destination has every file
/// that can be.
pub(crate) async fn copy_what_is_there(
    ctx: &std::sync::Arc<Ctx>,
    dir: &RelPath,
    src_now: Timestamp,
    planned: Vec<Planned>,
    touched: impl FnMut(),
) -> Left {
    if ctx.opts.checksum {
        return Left { now: planned, later: Vec::new() };
    }
    let creates =
        planned.iter().any(|p| matches!(p.action, Action::CopyFile { basis: None } | Action::Descend { create: true }));
    let mut extraneous_dirs = Vec::new();
    for p in planned.iter().filter(|p| p.src.is_none()) {
        let (Some(dst), Ok(rel)) = (&p.dst, dir.join(&p.name)) else { continue };
        match dst.kind {
            Kind::File => ctx.index.add(rel, dst.clone()),
            Kind::Dir if creates => extraneous_dirs.push(rel),
            _ => {}
        }
    }
    if !extraneous_dirs.is_empty() {
        remember_below(ctx, extraneous_dirs).await;
    }
    // (Whether a candidate holds the content is only known by trying: a dry
    // run lists such files as new or updated.)
    if ctx.opts.dry_run || !planned.iter().any(wants_content) {
        return Left { now: planned, later: Vec::new() };
    }

    // Candidates: this directory's destination files, then the index.
    let mut here: HashMap<u64, Vec<(Name, Stat)>> = HashMap::new();
    for p in &planned {
        if let Some(d) = p.dst.as_ref().filter(|d| d.kind == Kind::File) {
            here.entry(d.size).or_default().push((p.name.clone(), d.clone()));
        }
    }
    let (mut wanted, mut rest, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for p in planned {
        let found = match (&p.src, dir.join(&p.name)) {
            (Some(src), Ok(rel))
                if wants_content(&p) && settle_delay(src, src_now).is_none() && ctx.opts.shard.owns(&rel, src) =>
            {
                Some((rel, candidates(ctx, dir, &here, &p.name, src)))
            }
            _ => None,
        };
        match found {
            Some((rel, from)) if !from.is_empty() => wanted.push((rel, from, p)),
            Some(_) if ctx.later.is_open() && is_new_and_large(&p) => held.push(p),
            _ => rest.push(p),
        }
    }
    rest.extend(copy_found(ctx, dir, wanted, touched).await);
    Left { now: rest, later: held }
}

/// Whether a planned file is new at the destination and not small.
fn is_new_and_large(p: &Planned) -> bool {
    matches!(p.action, Action::CopyFile { basis: None })
        && p.src.as_ref().is_some_and(|s| s.size > SMALL_FILE_MAX as u64)
}

/// Once the walk is over: copies from what the index holds every file of
/// `held` (new large files of `dir`, and new files with other names, see
/// `links`) that can be. Returns the entries
/// still to be sent.
pub(crate) async fn copy_held(ctx: &std::sync::Arc<Ctx>, dir: &RelPath, held: Vec<Planned>) -> Vec<Planned> {
    let (mut wanted, mut rest) = (Vec::new(), Vec::new());
    for p in held {
        let from = match (&p.src, dir.join(&p.name)) {
            (Some(src), Ok(rel)) if wants_content(&p) => {
                Some((rel, candidates(ctx, dir, &HashMap::new(), &p.name, src)))
            }
            _ => None,
        };
        match from {
            Some((rel, from)) if !from.is_empty() => wanted.push((rel, from, p)),
            _ => rest.push(p),
        }
    }
    rest.extend(copy_found(ctx, dir, wanted, || {}).await);
    rest
}

/// Asks for the copies of `wanted`; returns the entries that could not be
/// made so.
async fn copy_found(
    ctx: &std::sync::Arc<Ctx>,
    dir: &RelPath,
    wanted: Vec<Wanted>,
    mut touched: impl FnMut(),
) -> Vec<Planned> {
    tracing::debug!("{dir}: {} file(s) may be copied from what the destination has", wanted.len());
    let mut rest = Vec::new();
    if wanted.is_empty() {
        return rest;
    }
    touched();
    for batch in batches(wanted) {
        rest.extend(clone_batch(ctx, batch).await);
    }
    rest
}

fn count_total(ctx: &Ctx, size: u64) {
    Stats::add(&ctx.stats.files_total, 1);
    Stats::add(&ctx.stats.bytes_total, size);
}

type Wanted = (RelPath, Vec<RelPath>, Planned);

/// Groups of files for one request each (bounded in files and digests).
fn batches(wanted: Vec<Wanted>) -> Vec<Vec<Wanted>> {
    let mut out: Vec<Vec<Wanted>> = vec![Vec::new()];
    let mut digests = 0u64;
    for w in wanted {
        let chunks = w.2.src.as_ref().map_or(0, |s| s.size.div_ceil(1 << 20));
        let last = out.last_mut().expect("a batch");
        if !last.is_empty() && (last.len() >= MAX_BATCH_FILES || digests + chunks > MAX_DIGESTS as u64) {
            out.push(Vec::new());
            digests = 0;
        }
        digests += chunks;
        out.last_mut().expect("a batch").push(w);
    }
    out
}

/// Hashes the source files, asks for the copies; returns the entries that
/// could not be made so (to be sent as usual).
async fn clone_batch(ctx: &std::sync::Arc<Ctx>, batch: Vec<Wanted>) -> Vec<Planned> {
    let chunk = ctx.opts.chunk_size;
    let mut hashes = tokio::task::JoinSet::new();
    for (i, (rel, _, p)) in batch.iter().enumerate() {
        let size = p.src.as_ref().map_or(0, |s| s.size);
        let (ctx, path) = (ctx.clone(), ctx.src.path(rel));
        let permit = ctx.groups.clone().acquire_owned().await.expect("never closed");
        hashes.spawn(async move {
            let digests = ctx.src.tree.hash_chunks(path, 0, size, chunk).await;
            drop(permit);
            (i, digests.ok().filter(|d| d.len() as u64 == size.div_ceil(chunk as u64)))
        });
    }
    let mut digests: Vec<Option<Vec<pareco_proto::Digest>>> = vec![None; batch.len()];
    while let Some(done) = hashes.join_next().await {
        let (i, d) = done.expect("hash task panicked");
        digests[i] = d;
    }
    let (mut files, mut asked, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for ((rel, from, p), digests) in batch.into_iter().zip(digests) {
        let (Some(src), Some(digests)) = (p.src.clone(), digests) else {
            rest.push(p);
            continue;
        };
        files.push(CloneFile {
            from: from.iter().map(|f| ctx.dst.path(f)).collect(),
            path: ctx.dst.path(&rel),
            size: src.size,
            chunk_size: chunk,
            digests,
            mode: src.mode,
            mtime: Some(src.mtime),
        });
        asked.push((rel, p));
    }
    let outcomes = if files.is_empty() { Ok(Vec::new()) } else { ctx.dst.tree.clone_files(files).await };
    for (i, (rel, p)) in asked.into_iter().enumerate() {
        let size = p.src.as_ref().map_or(0, |s| s.size);
        match outcomes.as_ref().map(|o| o.get(i)) {
            Ok(Some(Ok(()))) => {
                count_total(ctx, size);
                Stats::add(&ctx.stats.bytes_reused_local, size);
                ctx.finish_file(&rel, size, Outcome::Synced { transferred: false, change: Some(Change::Copied) });
            }
            // Other content there after all, or gone: sent as usual.
            other => {
                tracing::debug!("{rel}: not copied from what the destination has: {other:?}");
                rest.push(p)
            }
        }
    }
    rest
}

/// The destination files that may hold `src`'s content, most likely first:
/// the directory's own files (`here`, by size), then files remembered
/// elsewhere; which one does is checked where the copy is made.
fn candidates(
    ctx: &Ctx,
    dir: &RelPath,
    here: &HashMap<u64, Vec<(Name, Stat)>>,
    name: &Name,
    src: &Stat,
) -> Vec<RelPath> {
    let same_dir: Vec<&(Name, Stat)> =
        here.get(&src.size).map(|v| v.iter().filter(|(n, _)| n != name).collect()).unwrap_or_default();
    let near = ranked(name, src, same_dir.iter().map(|(n, s)| (n, s)))
        .into_iter()
        .filter_map(|i| dir.join(&same_dir[i].0).ok());
    let far = dir.join(name).map(|path| ctx.index.like(&path, src, MAX_CLONE_CANDIDATES)).unwrap_or_default();
    let mut all: Vec<RelPath> = Vec::new();
    for rel in near.chain(far) {
        if all.len() == MAX_CLONE_CANDIDATES {
            break;
        }
        if !all.contains(&rel) {
            all.push(rel);
        }
    }
    all
}

/// Lists extraneous destination directories (breadth first) into the
/// index, until it is full.
async fn remember_below(ctx: &std::sync::Arc<Ctx>, dirs: Vec<RelPath>) {
    let mut queue: VecDeque<RelPath> = dirs.into();
    while let Some(dir) = queue.pop_front() {
        if ctx.index.full() {
            return;
        }
        let Ok(listing) = ctx.dst.tree.list(ctx.dst.path(&dir)).await else { continue };
        for e in listing.entries {
            let Ok(rel) = dir.join(&e.name) else { continue };
            match e.stat.kind {
                Kind::File => ctx.index.add(rel, e.stat),
                Kind::Dir => queue.push_back(rel),
                _ => {}
            }
        }
    }
}
