//! `verify`: two trees compared entry by entry — type, size, mode, mtime,
//! symlink target, hard links and full content, and on request owners,
//! groups and extended attributes — with each side hashing its own files on
//! its own machine, many files and chunk groups at once.
//!
//! Directories are listed on both sides at once; files of the same size are
//! compared chunk group by chunk group (BLAKE3 per chunk, computed where the
//! file is), the groups of all files sharing one pool of tasks, so a single
//! huge file is hashed as much in parallel as many small ones.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pareco_plan::file::Layout;
use pareco_plan::shard::Shard;
use pareco_plan::verify::{
    Checks, Difference, LinkedFiles, Side, Usage, compare, compare_xattrs, first_mismatch, link_differences,
};
use pareco_proto::limits::MIN_BLOCK;
use pareco_proto::{Entry, Kind, Name, RelPath, Stat, Xattrs};
use tokio::task::JoinSet;

use crate::endpoint::Endpoint;
use crate::tree::TreeError;

/// Chunks hashed per request.
const GROUP_CHUNKS: u64 = 16;

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Unit of content comparison.
    pub chunk_size: u32,
    /// Requests in flight at once.
    pub parallelism: usize,
    /// Owners and groups too.
    pub checks: Checks,
    /// Extended attributes too (`system.*` ones, which hold ACLs, aside).
    pub xattrs: bool,
    /// Fifos and device files too (sockets never: sync skips them).
    pub specials: bool,
    /// Which part of the trees to compare (`--shard I/N`, as sync divides them).
    pub shard: Shard,
    /// Live counters, for the caller to poll.
    pub progress: Arc<VerifyProgress>,
}

/// Counters of a running verify (progress and metrics).
#[derive(Debug, Default)]
pub struct VerifyProgress {
    /// Entries compared.
    pub entries: AtomicU64,
    /// Bytes of files whose content is to be compared on each side, as found so far.
    pub bytes_total: AtomicU64,
    /// Of those, bytes hashed on each side (or given up on).
    pub bytes_done: AtomicU64,
    /// Differences found.
    pub differences: AtomicU64,
    /// Directories found and not listed yet (the totals still grow while
    /// there are any).
    pub dirs_pending: AtomicU64,
}

/// Receives each difference as it is found.
pub trait Findings: Send + Sync + 'static {
    /// `path` differs in this way.
    fn difference(&self, path: &RelPath, difference: &Difference);
    /// `path` could not be compared.
    fn error(&self, path: &RelPath, side: Side, error: &TreeError);
}

/// What a verification found, in numbers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Entries compared (present on both sides).
    pub entries: u64,
    /// Bytes hashed on each side.
    pub bytes_hashed: u64,
    /// Differences found.
    pub differences: u64,
    /// Paths that could not be compared.
    pub errors: u64,
    /// Entries left out, on either side, as sync leaves them out: sockets,
    /// and fifos and devices unless `specials`.
    pub skipped: u64,
    /// Space taken by A's files.
    #[serde(skip)]
    pub usage_a: Usage,
    /// Space taken by B's files.
    #[serde(skip)]
    pub usage_b: Usage,
    /// Wall-clock seconds.
    pub duration_s: f64,
}

/// Why a verification could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A side's top entry could not be examined.
    #[error("{side:?}: {error}")]
    Root {
        /// Which.
        side: Side,
        /// Why.
        error: TreeError,
    },
    /// A side's top entry does not exist.
    #[error("{0:?} does not exist")]
    Missing(Side),
}

struct Ctx {
    a: Endpoint,
    b: Endpoint,
    opts: VerifyOptions,
    findings: Arc<dyn Findings>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    report: VerifyReport,
    /// Each file whose content differs: its size and the start of the first
    /// chunk that differs.
    content: BTreeMap<RelPath, (u64, u64)>,
    a: SideState,
    b: SideState,
    /// The linked paths (on either side) whose link differences this shard
    /// reports. Every shard collects the links of every file it lists, its
    /// own or not: a group of links at B may span the entries of several
    /// shards.
    own_links: HashSet<RelPath>,
}

/// What one side's files add up to.
#[derive(Default)]
struct SideState {
    usage: Usage,
    /// Linked files' inodes already counted.
    seen: HashSet<(u64, u64)>,
    links: LinkedFiles,
}

impl SideState {
    /// Counts a regular file's space once per inode.
    fn count(&mut self, stat: &Stat) {
        if stat.nlink <= 1 || self.seen.insert((stat.dev, stat.ino)) {
            self.usage.add(stat);
        }
    }

    /// Remembers a regular file's links.
    fn link(&mut self, path: &RelPath, stat: Option<&Stat>) {
        if let Some(stat) = stat.filter(|s| linked(s)) {
            self.links.push((path.clone(), (stat.dev, stat.ino)));
        }
    }
}

/// Whether an entry is a regular file with other links.
fn linked(stat: &Stat) -> bool {
    stat.kind == Kind::File && stat.nlink > 1
}

enum Work {
    /// A directory present on both sides.
    Dir(RelPath),
    /// A byte range of a file of the same size (the last field) on both sides.
    Group(RelPath, Range<u64>, u64),
}

/// Compares tree `a` with tree `b`, reporting every difference to
/// `findings` as it is found (content differences at the end, in path order).
pub async fn verify(
    a: Endpoint,
    b: Endpoint,
    opts: VerifyOptions,
    findings: Arc<dyn Findings>,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let (ra, rb) = tokio::join!(a.tree.stat(a.base.clone()), b.tree.stat(b.base.clone()));
    let ra = ra.map_err(|error| VerifyError::Root { side: Side::A, error })?.0.ok_or(VerifyError::Missing(Side::A))?;
    let rb = rb.map_err(|error| VerifyError::Root { side: Side::B, error })?.0.ok_or(VerifyError::Missing(Side::B))?;
    let limit = opts.parallelism.max(1) * 2;
    let ctx = Arc::new(Ctx { a, b, opts, findings, state: Mutex::new(State::default()) });

    // Depth first (last in, first out), so that the queue stays small.
    let mut queue: VecDeque<Work> = ctx.root(&ra, &rb).into();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < limit
            && let Some(work) = queue.pop_back()
        {
            let ctx = ctx.clone();
            tasks.spawn(async move { ctx.run(work).await });
        }
        match tasks.join_next().await {
            Some(Ok(more)) => queue.extend(more),
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => break,
        }
    }

    let mut state = std::mem::take(&mut *ctx.state.lock().expect("verify state"));
    for (path, at) in ctx.narrow_all(std::mem::take(&mut state.content), limit).await {
        ctx.differ(&mut state.report, &path, &Difference::Content(at));
    }
    for (path, difference) in link_differences(&state.a.links, &state.b.links) {
        if state.own_links.contains(&path) {
            ctx.differ(&mut state.report, &path, &difference);
        }
    }
    (state.report.usage_a, state.report.usage_b) = (state.a.usage, state.b.usage);
    state.report.duration_s = started.elapsed().as_secs_f64();
    Ok(state.report)
}

impl Ctx {
    fn differ(&self, report: &mut VerifyReport, path: &RelPath, difference: &Difference) {
        report.differences += 1;
        self.opts.progress.differences.fetch_add(1, Relaxed);
        self.findings.difference(path, difference);
    }

    fn failed(&self, path: &RelPath, side: Side, error: &TreeError) {
        self.state.lock().expect("verify state").report.errors += 1;
        self.findings.error(path, side, error);
    }

    async fn run(&self, work: Work) -> Vec<Work> {
        match work {
            Work::Dir(rel) => {
                let more = self.dir(rel).await;
                self.opts.progress.dirs_pending.fetch_sub(1, Relaxed);
                more
            }
            Work::Group(rel, span, size) => {
                self.group(rel, span, size).await;
                Vec::new()
            }
        }
    }

    /// Lists a directory on both sides and compares its entries.
    async fn dir(&self, rel: RelPath) -> Vec<Work> {
        let (la, lb, xa, xb) = tokio::join!(
            self.a.tree.list(self.a.path(&rel)),
            self.b.tree.list(self.b.path(&rel)),
            self.xattrs(&self.a, &rel),
            self.xattrs(&self.b, &rel)
        );
        let (la, lb, xa, xb) = match (la, lb, xa, xb) {
            (Ok(la), Ok(lb), Ok(xa), Ok(xb)) => (la.entries, lb.entries, xa, xb),
            (Err(e), ..) | (_, _, Err(e), _) => {
                self.failed(&rel, Side::A, &e);
                return Vec::new();
            }
            (_, Err(e), ..) | (.., Err(e)) => {
                self.failed(&rel, Side::B, &e);
                return Vec::new();
            }
        };
        let ((la, skipped_a), (lb, skipped_b)) = (self.compared(la), self.compared(lb));
        self.skipped(&rel, skipped_a, skipped_b);
        let mut b: BTreeMap<_, Stat> = lb.into_iter().map(|Entry { name, stat }| (name, stat)).collect();
        let mut work = Vec::new();
        let none = Xattrs::new();
        let mut links = Vec::new();
        for Entry { name, stat: sa } in la {
            let Ok(path) = rel.join(&name) else { continue };
            let sb = b.get(&name);
            if linked(&sa) || sb.is_some_and(linked) {
                links.push((path.clone(), Some(sa.clone()), sb.cloned()));
            }
            match b.remove(&name) {
                // Another shard's: only its directories are walked.
                Some(sb) if !self.opts.shard.owns(&path, &sa) => work.extend(self.walk_only(path, &sa, &sb)),
                None if !self.opts.shard.owns(&path, &sa) => {}
                Some(sb) => {
                    let (x, y) = (xa.get(&name).unwrap_or(&none), xb.get(&name).unwrap_or(&none));
                    if let Some(difference) = compare_xattrs(x, y) {
                        let mut state = self.state.lock().expect("verify state");
                        self.differ(&mut state.report, &path, &difference);
                    }
                    work.extend(self.pair(path, &sa, &sb))
                }
                None => self.only_in(&path, Side::A, &sa),
            }
        }
        for (name, sb) in b {
            let Ok(path) = rel.join(&name) else { continue };
            if linked(&sb) {
                links.push((path.clone(), None, Some(sb.clone())));
            }
            if self.opts.shard.owns(&path, &sb) {
                self.only_in(&path, Side::B, &sb);
            }
        }
        let mut state = self.state.lock().expect("verify state");
        for (path, sa, sb) in links {
            state.a.link(&path, sa.as_ref());
            state.b.link(&path, sb.as_ref());
            let stat = sa.as_ref().or(sb.as_ref()).expect("an entry on one side at least");
            if self.opts.shard.owns(&path, stat) {
                state.own_links.insert(path);
            }
        }
        work
    }

    /// The extended attributes of a directory's entries on one side, if
    /// they are compared (none otherwise).
    async fn xattrs(&self, side: &Endpoint, rel: &RelPath) -> Result<HashMap<Name, Xattrs>, TreeError> {
        if !self.opts.xattrs {
            return Ok(HashMap::new());
        }
        Ok(side.tree.dir_xattrs(side.path(rel)).await?.into_iter().collect())
    }

    /// The entries of a directory's listing that sync would copy, and those
    /// it would skip.
    fn compared(&self, entries: Vec<Entry>) -> (Vec<Entry>, Vec<Entry>) {
        let (mut kept, mut skipped) = (Vec::with_capacity(entries.len()), Vec::new());
        for e in entries {
            let copied = match e.stat.kind {
                Kind::Socket => false,
                Kind::Fifo | Kind::CharDevice | Kind::BlockDevice => self.opts.specials,
                _ => true,
            };
            if copied {
                kept.push(e);
            } else {
                skipped.push(e);
            }
        }
        (kept, skipped)
    }

    /// Counts the entries of directory `rel` left out: each name once,
    /// whether on one side or both (owned by A's stat, as compared ones
    /// are), this shard's only.
    fn skipped(&self, rel: &RelPath, a: Vec<Entry>, b: Vec<Entry>) {
        let mut names: HashMap<Name, Stat> = b.into_iter().map(|e| (e.name, e.stat)).collect();
        names.extend(a.into_iter().map(|e| (e.name, e.stat)));
        let owned = names.iter().filter(|(name, stat)| rel.join(name).is_ok_and(|p| self.opts.shard.owns(&p, stat)));
        let n = owned.count() as u64;
        if n > 0 {
            self.state.lock().expect("verify state").report.skipped += n;
        }
    }

    /// An entry on one side only: a difference, and a file's space counted
    /// on its side (a directory's content is not walked).
    fn only_in(&self, path: &RelPath, side: Side, stat: &Stat) {
        let mut state = self.state.lock().expect("verify state");
        self.differ(&mut state.report, path, &Difference::OnlyIn(side));
        if stat.kind == Kind::File {
            match side {
                Side::A => state.a.count(stat),
                Side::B => state.b.count(stat),
            }
        }
    }

    /// The roots: compared by the shard that owns `.`, walked by every one.
    fn root(&self, a: &Stat, b: &Stat) -> Vec<Work> {
        let root = RelPath::root();
        match self.opts.shard.owns(&root, a) {
            true => self.pair(root, a, b),
            false => self.walk_only(root, a, b).into_iter().collect(),
        }
    }

    /// Another shard's entry: not compared, but walked if a directory on
    /// both sides (this shard's entries may be inside).
    fn walk_only(&self, path: RelPath, a: &Stat, b: &Stat) -> Option<Work> {
        ((a.kind, b.kind) == (Kind::Dir, Kind::Dir)).then(|| {
            self.opts.progress.dirs_pending.fetch_add(1, Relaxed);
            Work::Dir(path)
        })
    }

    /// Compares an entry present on both sides; returns the work it needs.
    fn pair(&self, path: RelPath, a: &Stat, b: &Stat) -> Vec<Work> {
        let mut state = self.state.lock().expect("verify state");
        state.report.entries += 1;
        self.opts.progress.entries.fetch_add(1, Relaxed);
        for difference in compare(a, b, self.opts.checks) {
            self.differ(&mut state.report, &path, &difference);
        }
        if a.kind == Kind::File {
            state.a.count(a);
        }
        if b.kind == Kind::File {
            state.b.count(b);
        }
        match (a.kind, b.kind) {
            (Kind::Dir, Kind::Dir) => {
                self.opts.progress.dirs_pending.fetch_add(1, Relaxed);
                vec![Work::Dir(path)]
            }
            (Kind::File, Kind::File) if a.size == b.size && a.size > 0 => {
                self.opts.progress.bytes_total.fetch_add(a.size, Relaxed);
                let layout = Layout { size: a.size, chunk: self.opts.chunk_size };
                layout.groups(GROUP_CHUNKS).map(|g| Work::Group(path.clone(), layout.span(&g), a.size)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Hashes a range of a file on both sides and compares the digests.
    async fn group(&self, rel: RelPath, span: Range<u64>, size: u64) {
        let (chunk, len) = (self.opts.chunk_size, span.end - span.start);
        let (da, db) = tokio::join!(
            self.a.tree.hash_chunks(self.a.path(&rel), span.start, len, chunk),
            self.b.tree.hash_chunks(self.b.path(&rel), span.start, len, chunk)
        );
        self.opts.progress.bytes_done.fetch_add(len, Relaxed);
        let (da, db) = match (da, db) {
            (Ok(da), Ok(db)) => (da, db),
            (Err(e), _) => return self.failed(&rel, Side::A, &e),
            (_, Err(e)) => return self.failed(&rel, Side::B, &e),
        };
        // A file shorter than announced (changed meanwhile) differs where it ends.
        let first = first_mismatch(&da, &db);
        let mut state = self.state.lock().expect("verify state");
        state.report.bytes_hashed += len;
        if let Some(i) = first {
            let at = span.start + i as u64 * chunk as u64;
            let known = state.content.entry(rel).or_insert((size, at));
            known.1 = known.1.min(at);
        }
    }

    /// The first differing byte of every file whose content differs (in
    /// path order), `limit` files at a time.
    async fn narrow_all(
        self: &Arc<Self>,
        content: BTreeMap<RelPath, (u64, u64)>,
        limit: usize,
    ) -> Vec<(RelPath, Range<u64>)> {
        let mut found = Vec::with_capacity(content.len());
        let mut tasks = JoinSet::new();
        for (path, (size, chunk_at)) in content {
            while tasks.len() >= limit {
                found.extend(tasks.join_next().await.map(|r| r.expect("narrowing panicked")));
            }
            let ctx = self.clone();
            tasks.spawn(async move {
                let at = ctx.first_byte(&path, size, chunk_at).await;
                (path, at)
            });
        }
        while let Some(r) = tasks.join_next().await {
            found.push(r.expect("narrowing panicked"));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Narrows a differing chunk down to its first differing byte: block
    /// digests on both sides find the block, the block's bytes the byte.
    /// Where a side cannot be read (a server that does not send content, a
    /// file that changed meanwhile), the narrowest range known.
    async fn first_byte(&self, rel: &RelPath, size: u64, chunk_at: u64) -> Range<u64> {
        let len = (self.opts.chunk_size as u64).min(size - chunk_at) as u32;
        let mut range = chunk_at..chunk_at + len as u64;
        if len > MIN_BLOCK {
            let (da, db) = tokio::join!(
                self.a.tree.hash_blocks(self.a.path(rel), chunk_at, len, MIN_BLOCK),
                self.b.tree.hash_blocks(self.b.path(rel), chunk_at, len, MIN_BLOCK)
            );
            let (Ok(da), Ok(db)) = (da, db) else { return range };
            let Some(i) = first_mismatch(&da, &db) else { return range };
            range.start = chunk_at + i as u64 * MIN_BLOCK as u64;
            range.end = range.end.min(range.start + MIN_BLOCK as u64);
        }
        let n = (range.end - range.start) as u32;
        let (ba, bb) = tokio::join!(
            self.a.tree.read_data(self.a.path(rel), range.start, n),
            self.b.tree.read_data(self.b.path(rel), range.start, n)
        );
        match (ba, bb) {
            (Ok((_, ba)), Ok((_, bb))) => match first_mismatch(&ba, &bb) {
                Some(i) => range.start + i as u64..range.start + i as u64 + 1,
                None => range,
            },
            _ => range,
        }
    }
}
