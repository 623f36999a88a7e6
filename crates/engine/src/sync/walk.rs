//! Walking both trees in step, one directory at a time, and turning the
//! planner's decisions into tasks.
//!
//! Each directory is a [`DirNode`] counting, through [`Ticket`]s, the entries
//! directly inside it whose name is not final yet (being created, replaced
//! or removed). When the last ticket is dropped, the directory gets its
//! final permissions and mtime: a directory's mtime moves only when entries
//! are added, renamed or removed in it, so this is the earliest moment it can
//! be set, and it does not wait for the subtree below it (nor for the data of
//! a large file that already exists). Everything in flight holds an [`Alive`]
//! handle, directly or through a node; the run is over when none is left.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pareco_plan::dir::{Action, DirOptions, Planned, SkipReason, plan_dir};
use pareco_proto::path::partial_name;
use pareco_proto::{DirAttrs, Kind, Name, RelPath, Stat, Timestamp};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::small::{self, SmallFile};
use super::{Ctx, Outcome, SMALL_FILE_MAX, attrs_differ, big, destination_failure, source_failure};
use super::{links, meta, reuse};
use crate::report::{Attrs, Change, Problem, Stats};
use crate::tree::{Listing, TreeError};

/// Keeps the run going while the work holding it is in flight.
#[derive(Clone)]
pub(crate) struct Alive(#[allow(dead_code)] mpsc::Sender<()>);

/// A directory being synced.
pub(crate) struct DirNode {
    rel: RelPath,
    /// Source and destination metadata (`None` for the virtual root of a
    /// single-file sync, whose attributes are not ours to set).
    attrs: Option<(Stat, Option<Stat>)>,
    pending: AtomicUsize,
    /// Whether an entry was created, renamed or removed in it by a write
    /// that did not set the directory's attributes after.
    dirty: AtomicBool,
    /// Whether a write into it set its attributes after (see
    /// [`DirNode::attrs_after_write`]).
    carried: AtomicBool,
    /// Whether this shard owns any of its entries.
    owns_entries: AtomicBool,
    /// The source's entries with their owner and group (with `owner`,
    /// `group` or `xattrs`).
    entries: Mutex<Vec<meta::EntryMeta>>,
    alive: Alive,
}

impl DirNode {
    fn new(rel: RelPath, attrs: Option<(Stat, Option<Stat>)>, alive: Alive) -> DirNode {
        DirNode {
            rel,
            attrs,
            pending: AtomicUsize::new(0),
            dirty: AtomicBool::new(false),
            carried: AtomicBool::new(false),
            owns_entries: AtomicBool::new(false),
            entries: Mutex::default(),
            alive,
        }
    }

    /// An entry was created, renamed or removed in it: its attributes are
    /// set once its names are final.
    pub(crate) fn touch(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The attributes a write into this directory sets after it (a batch of
    /// small files, a large file put in place). When every write into it
    /// does, whichever ends last leaves them right, and no round trip at the
    /// end is needed. `None` for the virtual root of a single file, and for a
    /// mode without the owner's write and search bits, which would stop the
    /// writes after it.
    pub(crate) fn attrs_after_write(&self, ctx: &Ctx) -> Option<DirAttrs> {
        let (src, _) = self.attrs.as_ref()?;
        let path = ctx.dst.path(&self.rel);
        (src.mode & 0o300 == 0o300).then_some(DirAttrs { path, mode: src.mode, mtime: src.mtime })
    }

    /// A write changed an entry in it, then set its attributes or not
    /// (then they are set at the end).
    pub(crate) fn after_write(&self, attrs_set: bool) {
        if attrs_set { self.carried.store(true, Ordering::Relaxed) } else { self.touch() }
    }
}

/// An entry of a directory whose name is not final yet. Dropping it tells
/// the directory; the last one sets the directory's attributes.
pub(crate) struct Ticket {
    node: Arc<DirNode>,
    ctx: Arc<Ctx>,
}

impl Ticket {
    fn new(node: &Arc<DirNode>, ctx: &Arc<Ctx>) -> Ticket {
        node.pending.fetch_add(1, Ordering::AcqRel);
        Ticket { node: node.clone(), ctx: ctx.clone() }
    }

    /// The directory this ticket belongs to.
    pub(crate) fn dir(&self) -> &DirNode {
        &self.node
    }

    /// The entry's name is final (its remaining work, such as a large file's
    /// data, does not touch the directory): release the directory, keep the
    /// run alive.
    pub(crate) fn release(self) -> Alive {
        self.alive()
    }

    /// A handle that keeps the run alive after this ticket is gone (until
    /// the entry's outcome is counted).
    pub(crate) fn alive(&self) -> Alive {
        self.node.alive.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let (node, ctx) = (self.node.clone(), self.ctx.clone());
        tokio::spawn(async move { finish_dir(&ctx, &node).await });
    }
}

async fn finish_dir(ctx: &Arc<Ctx>, node: &DirNode) {
    // (A dry run has nothing to compare in a directory it would create.)
    let exists = node.attrs.as_ref().is_none_or(|(_, dst)| dst.is_some());
    if (ctx.opts.owner || ctx.opts.group || ctx.opts.xattrs) && (exists || !ctx.opts.dry_run) {
        let mut entries = std::mem::take(&mut *node.entries.lock().expect("entries lock"));
        let owners = (ctx.opts.owner || ctx.opts.group) && !entries.is_empty();
        let have = match owners || (ctx.opts.xattrs && !entries.is_empty() && !ctx.opts.dry_run) {
            true => meta::look_again(ctx, &node.rel, &mut entries).await,
            false => Some(meta::Owners::new()),
        };
        if let Some(have) = have {
            if ctx.opts.owner || ctx.opts.group {
                meta::set_owners(ctx, &node.rel, node.attrs.as_ref(), &entries, &have).await;
            }
            if ctx.opts.xattrs && !entries.is_empty() {
                meta::copy_xattrs(ctx, &node.rel, &entries).await;
            }
        }
    }
    let Some((src, dst)) = &node.attrs else { return };
    // The directory's own shard reports and sets what differs; so does a
    // shard with entries in it (a stopped run of it may have written in it
    // after the others had set it); and any shard that wrote in it sets it
    // again after its writes (so the last one leaves it right).
    let owned = ctx.opts.shard.owns_path(&node.rel);
    let concerned = owned || node.owns_entries.load(Ordering::Relaxed);
    let differ = concerned && dst.as_ref().is_none_or(|d| attrs_differ(src, d));
    if let Some(d) = dst
        && owned
        && attrs_differ(src, d)
    {
        ctx.reporter.change(&node.rel, Change::Attributes(Attrs::between(src, d)));
    }
    let dirty = node.dirty.load(Ordering::Relaxed);
    // Set by the last write into it, and changed by nothing else.
    let settled = node.carried.load(Ordering::Relaxed) && !dirty;
    if ctx.opts.dry_run || !(differ || dirty) || settled {
        return;
    }
    let path = ctx.dst.path(&node.rel);
    if let Err(e) = ctx.dst.tree.set_attrs(path, Some(src.mode), Some(src.mtime)).await {
        ctx.finish(&node.rel, 0, destination_failure(e));
    }
}

/// A directory to list and plan.
struct DirJob {
    node: Arc<DirNode>,
    /// Keeps the directory open until its entries are dispatched.
    ticket: Ticket,
    /// The directory's own entry in its parent, released once it exists.
    parent: Option<Ticket>,
    /// The destination entry must be removed first (it is not a directory).
    remove_first: bool,
    /// The destination directory must be created.
    create: bool,
    /// The destination directory exists and must be listed.
    list_dst: bool,
    /// Its listings, if already made.
    listed: Option<Listed>,
}

/// Directories waiting to be listed, processed depth first.
#[derive(Default)]
struct Queue {
    state: Mutex<(Vec<DirJob>, usize)>,
    changed: Notify,
}

impl Queue {
    fn push(&self, job: DirJob) {
        self.state.lock().expect("queue lock").0.push(job);
        self.changed.notify_waiters();
    }

    /// The next job; `None` once no job is queued and none is being processed
    /// (only processing pushes jobs).
    async fn next(&self) -> Option<DirJob> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            {
                let mut state = self.state.lock().expect("queue lock");
                if let Some(job) = state.0.pop() {
                    state.1 += 1;
                    return Some(job);
                }
                if state.1 == 0 {
                    return None;
                }
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    fn done(&self) {
        self.state.lock().expect("queue lock").1 -= 1;
        self.changed.notify_waiters();
    }
}

/// A directory's listings, made before its job was (the root's, while it
/// was looked at): `dst` is `None` if the destination has no directory to
/// list.
pub(crate) struct Listed {
    pub(crate) src: Listing,
    pub(crate) dst: Option<Listing>,
}

/// Runs the whole walk and waits until every entry is finished; returns
/// when the last directory was listed. A tree's root is listed unless
/// `listed` already.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    src_root: Stat,
    src_now: Timestamp,
    dst_root: Option<Stat>,
    single: bool,
    listed: Option<Listed>,
) -> std::time::Instant {
    let (alive, mut finished) = mpsc::channel(1);
    let root =
        Arc::new(DirNode::new(RelPath::root(), (!single).then(|| (src_root.clone(), dst_root.clone())), Alive(alive)));
    let (small_tx, small_rx) = mpsc::channel(1024);
    let batcher = tokio::spawn(small::batcher(ctx.clone(), small_rx));
    if single {
        // One entry, planned as the only entry of a virtual directory.
        let src = vec![pareco_proto::Entry { name: placeholder_name(), stat: src_root }];
        let dst = dst_root.map(|stat| vec![pareco_proto::Entry { name: placeholder_name(), stat }]);
        let options = DirOptions { checksum: ctx.opts.checksum, delete: false, specials: ctx.opts.specials };
        for planned in plan_dir(src, src_now, dst, options) {
            let mut places = Places::new(&ctx, 1);
            dispatch(&ctx, &small_tx, &Queue::default(), &root, RelPath::root(), planned, None, &mut places).await;
        }
    } else {
        Stats::add(&ctx.stats.dirs_total, 1);
        // Content may have moved only in a destination that holds something.
        let empty = listed.as_ref().and_then(|l| l.dst.as_ref()).is_some_and(|d| d.entries.is_empty());
        if dst_root.is_some() && !empty {
            ctx.later.open();
        }
        let queue = Arc::new(Queue::default());
        let ticket = Ticket::new(&root, &ctx);
        let list_dst = dst_root.is_some();
        let (node, parent) = (root.clone(), None);
        queue.push(DirJob { node, ticket, parent, remove_first: false, create: false, list_dst, listed });
        let workers = (2 * ctx.opts.parallelism).clamp(4, 64);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (ctx, queue, small_tx) = (ctx.clone(), queue.clone(), small_tx.clone());
            tasks.spawn(async move {
                while let Some(job) = queue.next().await {
                    process(&ctx, &small_tx, &queue, job).await;
                    queue.done();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        dispatch_held(&ctx, &small_tx).await;
    }
    ctx.stats.listed.store(true, Ordering::Relaxed);
    let listed = std::time::Instant::now();
    drop((small_tx, root));
    // Every node, ticket and task holds a sender: None means all are done.
    let _ = finished.recv().await;
    let _ = batcher.await;
    ctx.links.finish(&ctx).await;
    ctx.deletions.run(&ctx).await;
    listed
}

fn placeholder_name() -> pareco_proto::Name {
    pareco_proto::Name::new(b"entry").expect("valid name")
}

async fn process(ctx: &Arc<Ctx>, small: &mpsc::Sender<SmallFile>, queue: &Queue, job: DirJob) {
    let node = job.node.clone();
    let dst_path = ctx.dst.path(&node.rel);
    if !ctx.opts.dry_run && job.remove_first {
        // Only what is not a directory gives way (another shard may have
        // made the directory meanwhile); nothing is sent into the directory
        // before it is there.
        let prepared = async {
            ctx.dst.tree.unlink(dst_path.clone()).await?;
            ctx.dst.tree.make_dir(dst_path.clone(), 0o700).await
        };
        let made = prepared.await;
        if let Some(parent) = &job.parent {
            parent.dir().touch();
        }
        if let Err(e) = made {
            // Without its directory, nothing below can be synced.
            ctx.finish(&node.rel, 0, destination_failure(e));
            return;
        }
        node.touch();
    }
    if ctx.opts.dry_run || !job.create || job.remove_first {
        drop(job.parent);
        return plan_and_dispatch(ctx, small, queue, &node, job.list_dst, job.listed, job.ticket).await;
    }
    // A new directory: its entries go out while it is being made (the
    // destination makes the missing parent of a new entry first), which
    // saves a round trip per level of new directories. It is finished only
    // once made; its entry in its parent is final then.
    let (making, parent) = (Ticket::new(&node, ctx), job.parent);
    let made = async {
        let made = ctx.dst.tree.make_dir(dst_path, 0o700).await;
        if let Some(parent) = &parent {
            parent.dir().touch();
        }
        if let Err(e) = made {
            ctx.finish(&node.rel, 0, destination_failure(e));
        }
        drop((making, parent));
    };
    tokio::join!(made, plan_and_dispatch(ctx, small, queue, &node, false, None, job.ticket));
}

/// Lists a directory (both sides if `list_dst`) unless it was `listed`,
/// plans it and dispatches its entries; `ticket` keeps it open until they
/// are dispatched.
async fn plan_and_dispatch(
    ctx: &Arc<Ctx>,
    small: &mpsc::Sender<SmallFile>,
    queue: &Queue,
    node: &Arc<DirNode>,
    list_dst: bool,
    listed: Option<Listed>,
    ticket: Ticket,
) {
    let (src_list, dst_list) = match listed {
        Some(Listed { src, dst }) => (Ok(src), dst.map(Ok)),
        None => {
            let (src_path, dst_path) = (ctx.src.path(&node.rel), ctx.dst.path(&node.rel));
            tokio::join!(ctx.src.tree.list(src_path), async {
                if list_dst { Some(ctx.dst.tree.list(dst_path).await) } else { None }
            })
        }
    };
    let (src_entries, src_now) = match src_list {
        Ok(listing) => (listing.entries, listing.now),
        Err(e) => return ctx.finish(&node.rel, 0, source_failure(e)),
    };
    let (dst_entries, partials) = match dst_list.transpose() {
        Ok(listing) => listing.map_or((None, Vec::new()), |l| (Some(l.entries), l.partials)),
        Err(e) => return ctx.finish(&node.rel, 0, destination_failure(e)),
    };
    if ctx.opts.owner || ctx.opts.group || ctx.opts.xattrs {
        let entries = meta::EntryMeta::of(&node.rel, &src_entries, dst_entries.as_deref(), ctx.opts.shard);
        *node.entries.lock().expect("entries lock") = entries;
    }
    let options = DirOptions { checksum: ctx.opts.checksum, delete: ctx.opts.delete, specials: ctx.opts.specials };
    let planned = plan_dir(src_entries, src_now, dst_entries, options);
    let reuse::Left { now: planned, mut later } =
        reuse::copy_what_is_there(ctx, &node.rel, src_now, planned, || node.touch()).await;
    let planned = if ctx.later.is_open() {
        let (linked, now): (Vec<_>, Vec<_>) = planned.into_iter().partition(links::waits);
        later.extend(linked);
        now
    } else {
        planned
    };
    let mut leftovers = Leftovers::new(partials, planned.iter().chain(&later));
    if !later.is_empty() {
        let partials = later.iter().filter_map(|p| Some((p.name.clone(), leftovers.of(&p.name)?))).collect();
        ctx.later.hold(Held { node: node.clone(), ticket: Ticket::new(node, ctx), files: later, partials });
    }
    let wanted =
        planned.iter().filter(|p| !matches!(p.action, Action::Descend { .. } | Action::Nothing | Action::Skip(_)));
    let mut places = Places::new(ctx, wanted.count());
    for planned in planned {
        let rel = match node.rel.join(&planned.name) {
            Ok(rel) => rel,
            Err(e) => {
                ctx.fail(&node.rel, format!("{}: {e}", planned.name));
                continue;
            }
        };
        let partial = leftovers.of(&planned.name);
        dispatch(ctx, small, queue, node, rel, planned, partial, &mut places).await;
    }
    // Of names the source no longer has: extraneous, as the rest.
    if ctx.opts.delete {
        for orphan in leftovers.orphans {
            if node.rel.join(&orphan).is_ok_and(|rel| ctx.opts.shard.owns_path(&rel)) {
                remove_leftover(ctx, node, orphan);
            }
        }
    }
    drop(ticket);
}

/// New large files of one directory held until the walk is over (see
/// `reuse`), with what keeps the directory open meanwhile and the partial
/// files earlier runs left of them.
pub(crate) struct Held {
    node: Arc<DirNode>,
    ticket: Ticket,
    files: Vec<Planned>,
    partials: HashMap<Name, Name>,
}

/// Once the walk is over: copies the held files from what the destination
/// has where it can, and dispatches the others.
async fn dispatch_held(ctx: &Arc<Ctx>, small: &mpsc::Sender<SmallFile>) {
    let mut tasks = tokio::task::JoinSet::new();
    for Held { node, ticket, files, mut partials } in ctx.later.take() {
        while tasks.len() >= ctx.opts.parallelism.max(1) {
            tasks.join_next().await;
        }
        let (ctx, small) = (ctx.clone(), small.clone());
        tasks.spawn(async move {
            let rest = reuse::copy_held(&ctx, &node.rel, files).await;
            let mut places = Places::new(&ctx, rest.len());
            for p in rest {
                let Ok(rel) = node.rel.join(&p.name) else { continue };
                let partial = partials.remove(&p.name);
                dispatch(&ctx, &small, &Queue::default(), &node, rel, p, partial, &mut places).await;
            }
            drop(ticket);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The partial files an earlier run left in a directory (new files it was
/// writing when it stopped), by the name of the entry each was for. A new
/// large file resumes from its own; any other use of the name leaves it
/// litter, removed by the shard that does the entry (see [`dispatch`]).
#[derive(Default)]
struct Leftovers {
    by_entry: HashMap<Name, Name>,
    /// Those of names the source no longer has.
    orphans: Vec<Name>,
}

impl Leftovers {
    fn new<'a>(partials: Vec<pareco_proto::Entry>, planned: impl Iterator<Item = &'a Planned>) -> Leftovers {
        if partials.is_empty() {
            return Leftovers::default();
        }
        let mut left: HashSet<Name> = partials.into_iter().map(|e| e.name).collect();
        let mut by_entry = HashMap::new();
        for p in planned.filter(|p| p.src.is_some()) {
            let partial = partial_name(&p.name);
            if left.remove(&partial) {
                by_entry.insert(p.name.clone(), partial);
            }
        }
        Leftovers { by_entry, orphans: left.into_iter().collect() }
    }

    /// The partial file left for the entry `name`, if any.
    fn of(&mut self, name: &Name) -> Option<Name> {
        if self.by_entry.is_empty() { None } else { self.by_entry.remove(name) }
    }
}

/// Removes a partial file that nothing will resume, before the directory
/// gets its attributes (nothing in a dry run).
fn remove_leftover(ctx: &Arc<Ctx>, node: &Arc<DirNode>, name: Name) {
    let Ok(rel) = node.rel.join(&name) else { return };
    if ctx.opts.dry_run {
        return;
    }
    let (ctx, ticket) = (ctx.clone(), Ticket::new(node, ctx));
    tokio::spawn(async move {
        match ctx.dst.tree.remove(ctx.dst.path(&rel)).await {
            Ok(()) => ticket.dir().touch(),
            Err(e) if e.kind() == Some(pareco_proto::FailureKind::NotFound) => {}
            Err(e) => ctx.finish(&rel, 0, destination_failure(e)),
        }
        drop(ticket);
    });
}

/// Places among the entries in flight for the entries of one directory,
/// taken a run at a time. The walk dispatches many directories at once:
/// taken one by one, places would go to each directory in turn, and every
/// batch of small files would span dozens of directories (each a set of
/// attributes to send and set after the batch's files). Every entry of the
/// directory takes its place here, so that no walker waits for a place
/// while holding unused ones.
struct Places {
    files: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    /// Entries of the directory that may still want a place (an estimate:
    /// it only bounds the run).
    left: usize,
}

impl Places {
    /// Places taken at once, at most.
    const RUN: usize = 32;

    fn new(ctx: &Ctx, files: usize) -> Places {
        Places { files: ctx.files.clone(), held: None, left: files }
    }

    async fn take(&mut self) -> OwnedSemaphorePermit {
        let held = match &mut self.held {
            Some(held) => held,
            None => {
                let run = self.left.clamp(1, Self::RUN) as u32;
                self.held.insert(self.files.clone().acquire_many_owned(run).await.expect("never closed"))
            }
        };
        self.left = self.left.saturating_sub(1);
        if held.num_permits() > 1 {
            held.split(1).expect("more than one held")
        } else {
            self.held.take().expect("held")
        }
    }
}

/// Starts the work one planned entry needs; `partial` is what an earlier
/// run left of it.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    ctx: &Arc<Ctx>,
    small: &mpsc::Sender<SmallFile>,
    queue: &Queue,
    node: &Arc<DirNode>,
    rel: RelPath,
    p: Planned,
    partial: Option<Name>,
    places: &mut Places,
) {
    let owned = ctx.owns(&rel, &p);
    if owned {
        node.owns_entries.store(true, Ordering::Relaxed);
    } else if !matches!(p.action, Action::Descend { .. }) {
        // Another shard's: every shard walks every directory, but does
        // only its own entries.
        return;
    }
    if let Some(src) = p.src.as_ref().filter(|_| owned) {
        match src.kind {
            Kind::File => {
                Stats::add(&ctx.stats.files_total, 1);
                Stats::add(&ctx.stats.bytes_total, src.size);
            }
            Kind::Dir => Stats::add(&ctx.stats.dirs_total, 1),
            Kind::Symlink => Stats::add(&ctx.stats.symlinks_total, 1),
            _ => {}
        }
    }
    // Another path of a file already seen: linked once everything else is done.
    let deferred = p.src.as_ref().filter(|s| s.kind == Kind::File && s.nlink > 1).is_some_and(|src| {
        node.attrs.as_ref().is_some_and(|(dir, _)| ctx.links.defer(&rel, src, &p, (&node.rel, dir)))
    });
    // Only a new large file's copy resumes from its partial file.
    let resumes = !deferred
        && matches!(p.action, Action::CopyFile { .. })
        && p.src.as_ref().is_some_and(|s| s.size > SMALL_FILE_MAX as u64);
    if let Some(partial) = partial.filter(|_| owned && !resumes) {
        remove_leftover(ctx, node, partial);
    }
    if deferred {
        return;
    }
    let way = in_the_way(&p);
    match p.action {
        // Put off to the end of the run: it may hold content that moved.
        Action::Delete if !ctx.opts.dry_run => {
            if let Some((dir_src, _)) = &node.attrs {
                ctx.deletions.defer(rel, &node.rel, dir_src);
            }
        }
        Action::Nothing => {
            if let Some(src) = p.src.as_ref().filter(|s| s.kind == Kind::File) {
                Stats::add(&ctx.stats.bytes_processed, src.size);
                Stats::add(&ctx.stats.files_done, 1);
            }
        }
        Action::Skip(reason) => {
            let why = match reason {
                SkipReason::Special(Kind::Socket) => {
                    "socket skipped (a socket has no content to copy: the program that serves it makes it anew)"
                        .to_string()
                }
                SkipReason::Special(kind) => format!("{} skipped (--specials or -a recreates it)", kind.name()),
                SkipReason::DirInTheWay => {
                    return ctx.fail(&rel, "a directory is in the way at the destination; --delete replaces it".into());
                }
            };
            Stats::add(&ctx.stats.warnings, 1);
            ctx.reporter.problem(&rel, &Problem::Skipped(why));
        }
        Action::Descend { create } => {
            let (src, dst) = (p.src.expect("descend has a source"), if create { None } else { p.dst });
            if create && owned {
                ctx.reporter.change(&rel, Change::NewDir);
            }
            let child = Arc::new(DirNode::new(rel, Some((src, dst)), node.alive.clone()));
            let (ticket, parent) = (Ticket::new(&child, ctx), Some(Ticket::new(node, ctx)));
            let (remove_first, list_dst) = (p.remove_first, !create);
            queue.push(DirJob { node: child, ticket, parent, remove_first, create, list_dst, listed: None });
        }
        Action::CopyFile { basis } => {
            let permit = places.take().await;
            let ticket = Ticket::new(node, ctx);
            let src = p.src.expect("copy has a source");
            let batched = src.size <= SMALL_FILE_MAX as u64 && way.is_none() && !ctx.opts.checksum;
            if batched && !ctx.opts.dry_run {
                let file = SmallFile { rel, src, basis, ticket, _permit: permit, attempt: 0 };
                if let Err(mpsc::error::SendError(file)) = small.send(file).await {
                    ctx.fail(&file.rel, "internal error: the batcher stopped".into());
                }
                return;
            }
            let (ctx, alive) = (ctx.clone(), ticket.alive());
            tokio::spawn(async move {
                let size = src.size;
                let outcome = copy_file(&ctx, &rel, src, basis, way, ticket, permit).await;
                ctx.finish_file(&rel, size, outcome);
                drop(alive);
            });
        }
        _ => {
            let permit = places.take().await;
            let ticket = Ticket::new(node, ctx);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let file = p.src.as_ref().filter(|s| s.kind == Kind::File).map(|s| s.size);
                let outcome = entry(&ctx, &rel, p, &ticket).await;
                match file {
                    Some(size) => ctx.finish_file(&rel, size, outcome),
                    None => ctx.finish(&rel, 0, outcome),
                }
                drop(permit);
            });
        }
    }
}

/// A file copied outside the batches: large, replacing another kind of
/// entry, or compared by digest first.
async fn copy_file(
    ctx: &Arc<Ctx>,
    rel: &RelPath,
    src: Stat,
    basis: Option<Stat>,
    in_the_way: Option<Kind>,
    ticket: Ticket,
    permit: OwnedSemaphorePermit,
) -> Outcome {
    let change = if basis.is_some() { Change::UpdateFile } else { Change::NewFile };
    if let Some(b) = &basis
        && ctx.opts.checksum
        && b.size == src.size
    {
        // Linked at the destination only: the same content, but its own copy.
        let split = b.nlink > 1 && src.nlink == 1;
        match big::same_content(ctx, rel, src.size).await {
            Ok(true) if !split && b.mode == src.mode && b.mtime == src.mtime => {
                return Outcome::Synced { transferred: false, change: None };
            }
            Ok(true) => {
                let change = Some(if split { Change::Split } else { Change::Attributes(Attrs::between(&src, b)) });
                if ctx.opts.dry_run {
                    return Outcome::Synced { transferred: false, change };
                }
                let (path, mode, mtime) = (ctx.dst.path(rel), Some(src.mode), Some(src.mtime));
                let result = if split {
                    ticket.dir().touch();
                    ctx.dst.tree.unshare(path, mode, mtime).await.map(drop)
                } else {
                    ctx.dst.tree.set_attrs(path, mode, mtime).await
                };
                return match result {
                    Ok(()) => Outcome::Synced { transferred: false, change },
                    Err(e) => destination_failure(e),
                };
            }
            Ok(false) => {}
            Err(outcome) => return outcome,
        }
    }
    if let Some(kind) = in_the_way {
        if let Err(e) = make_way(ctx, rel, kind).await {
            return destination_failure(e);
        }
        ticket.dir().touch();
    }
    if ctx.opts.dry_run {
        return Outcome::Synced { transferred: true, change: Some(change) };
    }
    if src.size <= SMALL_FILE_MAX as u64 {
        return small::transfer_one(ctx, rel, src, basis, ticket, permit).await;
    }
    drop(permit);
    big::transfer(ctx, rel, src.size, basis.as_ref(), change, ticket).await
}

/// The kind of destination entry the plan removes before making the new one.
fn in_the_way(p: &Planned) -> Option<Kind> {
    p.dst.as_ref().filter(|_| p.remove_first).map(|d| d.kind)
}

/// Removes the destination entry in the way of another kind (nothing in a
/// dry run). A directory goes with all it holds, so it is said and counted
/// as a deletion, as `--delete` would.
async fn make_way(ctx: &Ctx, rel: &RelPath, kind: Kind) -> Result<(), TreeError> {
    if !ctx.opts.dry_run {
        ctx.dst.tree.remove(ctx.dst.path(rel)).await?;
    }
    if kind == Kind::Dir {
        Stats::add(&ctx.stats.entries_deleted, 1);
        ctx.reporter.change(rel, Change::Delete);
    }
    Ok(())
}

/// Creates an entry with `make` (nothing in a dry run), first removing the
/// destination entry if the plan says it must go.
async fn replace(
    ctx: &Ctx,
    rel: &RelPath,
    in_the_way: Option<Kind>,
    make: impl std::future::Future<Output = Result<(), TreeError>>,
) -> Result<(), TreeError> {
    if let Some(kind) = in_the_way {
        make_way(ctx, rel, kind).await?;
    }
    if ctx.opts.dry_run {
        return Ok(());
    }
    make.await
}

/// Sets permissions and/or mtime of a destination entry (nothing in a dry run).
async fn set_attrs(ctx: &Ctx, path: RelPath, mode: Option<u32>, mtime: Option<Timestamp>) -> Result<(), TreeError> {
    if ctx.opts.dry_run { Ok(()) } else { ctx.dst.tree.set_attrs(path, mode, mtime).await }
}

/// Everything that is not a file's content: links, permissions, deletions.
async fn entry(ctx: &Ctx, rel: &RelPath, p: Planned, ticket: &Ticket) -> Outcome {
    let (path, in_the_way) = (ctx.dst.path(rel), in_the_way(&p));
    let (change, result) = match p.action {
        Action::Delete if ctx.opts.dry_run => {
            Stats::add(&ctx.stats.entries_deleted, 1);
            (Change::Delete, Ok(()))
        }
        Action::SetMode(mode) => {
            let change = Change::Attributes(Attrs { mode: true, ..Attrs::default() });
            (change, set_attrs(ctx, path, Some(mode), None).await)
        }
        Action::Unshare => {
            let src = p.src.as_ref().expect("a file to unshare has a source");
            ticket.dir().touch();
            let result = if ctx.opts.dry_run {
                Ok(())
            } else {
                ctx.dst.tree.unshare(path, Some(src.mode), Some(src.mtime)).await.map(drop)
            };
            (Change::Split, result)
        }
        Action::SymlinkMtime => {
            let mtime = p.src.as_ref().map(|s| s.mtime);
            (Change::Attributes(Attrs { mtime: true, ..Attrs::default() }), set_attrs(ctx, path, None, mtime).await)
        }
        Action::Symlink => {
            let src = p.src.expect("symlink has a source");
            let target = bytes::Bytes::copy_from_slice(src.target.as_deref().unwrap_or_default());
            ticket.dir().touch();
            let make = ctx.dst.tree.make_symlink(path.clone(), target, Some(src.mtime));
            (Change::Symlink, replace(ctx, rel, in_the_way, make).await)
        }
        Action::Special => {
            let src = p.src.expect("a special file has a source");
            ticket.dir().touch();
            let result = replace(ctx, rel, in_the_way, ctx.dst.tree.make_special(path.clone(), &src)).await;
            if let Err(e) = &result
                && e.kind() == Some(pareco_proto::FailureKind::PermissionDenied)
            {
                Stats::add(&ctx.stats.warnings, 1);
                let why = format!("{} skipped: {e} (device files need root at the receiving side)", src.kind.name());
                ctx.reporter.problem(rel, &Problem::Skipped(why));
                return Outcome::Synced { transferred: false, change: None };
            }
            (Change::Special, result)
        }
        Action::SpecialAttrs => {
            let src = p.src.as_ref().expect("a special file has a source");
            let change = Change::Attributes(p.dst.as_ref().map(|d| Attrs::between(src, d)).unwrap_or_default());
            (change, set_attrs(ctx, path, Some(src.mode), Some(src.mtime)).await)
        }
        Action::Nothing | Action::Skip(_) | Action::CopyFile { .. } | Action::Descend { .. } | Action::Delete => {
            unreachable!("handled by dispatch")
        }
    };
    match result {
        Ok(()) => Outcome::Synced { transferred: false, change: Some(change) },
        Err(e) => destination_failure(e),
    }
}
