//! Owners, groups and extended attributes: set per directory once the names
//! in it are final (so whatever wrote an entry, batch, stream or link, it
//! exists), by comparing the source's listing with a second look at the
//! destination directory, and changing only what differs. Changes to
//! entries that existed before the run, and that the run did not replace,
//! are itemized (`attrs NAME (owner)`), in a dry run too, where nothing is
//! changed: a file the run rewrote is already itemized as updated, and the
//! owner it then gets is part of that.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pareco_plan::shard::Shard;
use pareco_proto::{Entry, FailureKind, Name, RelPath, Stat};

use super::{Ctx, destination_failure, source_failure};
use crate::report::{Attrs, Change, Problem, Stats};

/// A source entry's owner and group, and the inode the destination had
/// under its name before the run (only changes to those are itemized: a new
/// entry is already reported as new).
pub(crate) struct EntryMeta {
    name: Name,
    uid: u32,
    gid: u32,
    before: Option<u64>,
}

impl EntryMeta {
    /// The source entries of directory `dir` that are `shard`'s, given the
    /// destination's listing.
    pub(crate) fn of(dir: &RelPath, src: &[Entry], dst: Option<&[Entry]>, shard: Shard) -> Vec<EntryMeta> {
        let there: HashMap<&Name, u64> = dst.unwrap_or_default().iter().map(|e| (&e.name, e.stat.ino)).collect();
        src.iter()
            .filter(|e| dir.join(&e.name).is_ok_and(|rel| shard.owns(&rel, &e.stat)))
            .map(|e| EntryMeta {
                name: e.name.clone(),
                uid: e.stat.uid,
                gid: e.stat.gid,
                before: there.get(&e.name).copied(),
            })
            .collect()
    }

    /// Whether the entry was there before the run and is still the same one.
    fn existed(&self) -> bool {
        self.before.is_some()
    }
}

/// The owner and group of each entry of a destination directory, by name.
pub(crate) type Owners = HashMap<Name, (u32, u32)>;

/// A second look at destination directory `dir` once the names in it are
/// final: the owners of its entries, and `entries` marked as new where the
/// run replaced the one there before (a file rewritten by rename). `None`
/// once the failure is counted.
pub(crate) async fn look_again(ctx: &Arc<Ctx>, dir: &RelPath, entries: &mut [EntryMeta]) -> Option<Owners> {
    let listing = match ctx.dst.tree.list(ctx.dst.path(dir)).await {
        Ok(listing) => listing,
        Err(e) => {
            ctx.finish(dir, 0, destination_failure(e));
            return None;
        }
    };
    let now: HashMap<&Name, &Stat> = listing.entries.iter().map(|e| (&e.name, &e.stat)).collect();
    for e in entries.iter_mut() {
        if e.before.is_some_and(|ino| now.get(&e.name).is_some_and(|st| st.ino != ino)) {
            e.before = None;
        }
    }
    Some(listing.entries.into_iter().map(|e| (e.name, (e.stat.uid, e.stat.gid))).collect())
}

/// Gives the entries of a directory (and the top directory itself) the
/// source's owner and group where the destination's (`have`) differ.
pub(crate) async fn set_owners(
    ctx: &Arc<Ctx>,
    dir: &RelPath,
    attrs: Option<&(Stat, Option<Stat>)>,
    wanted: &[EntryMeta],
    have: &Owners,
) {
    let mut changes: Vec<(RelPath, Option<u32>, Option<u32>, bool)> = Vec::new();
    let differ = |src: (u32, u32), dst: Option<(u32, u32)>| {
        let uid = (ctx.opts.owner && dst.is_none_or(|d| d.0 != src.0)).then_some(src.0);
        let gid = (ctx.opts.group && dst.is_none_or(|d| d.1 != src.1)).then_some(src.1);
        (uid.is_some() || gid.is_some()).then_some((uid, gid))
    };
    if dir.is_root()
        && ctx.opts.shard.owns_path(dir)
        && let Some((src, dst)) = attrs
        && let Some((uid, gid)) = differ((src.uid, src.gid), dst.as_ref().map(|d| (d.uid, d.gid)))
    {
        changes.push((dir.clone(), uid, gid, dst.is_some()));
    }
    for e in wanted {
        // Entries not there (failed, or hard links made later) are skipped.
        if let Some(dst) = have.get(&e.name)
            && let Some((uid, gid)) = differ((e.uid, e.gid), Some(*dst))
            && let Ok(rel) = dir.join(&e.name)
        {
            changes.push((rel, uid, gid, e.existed()));
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (rel, uid, gid, existed) in changes {
        let ctx = ctx.clone();
        let change = Change::Attributes(Attrs { owner: uid.is_some(), group: gid.is_some(), ..Attrs::default() });
        tasks.spawn(async move {
            if ctx.opts.dry_run {
                return ctx.reporter.change(&rel, change);
            }
            match ctx.dst.tree.set_owner(ctx.dst.path(&rel), uid, gid).await {
                Ok(()) if existed => ctx.reporter.change(&rel, change),
                Ok(()) => {}
                Err(e) if e.kind() == Some(FailureKind::PermissionDenied) => {
                    if !ctx.owner_refused.swap(true, Ordering::Relaxed) {
                        Stats::add(&ctx.stats.warnings, 1);
                        let why = format!("owners and groups are not kept: {e} (the receiving side must run as root)");
                        ctx.reporter.problem(&rel, &Problem::Skipped(why));
                    }
                }
                Err(e) => ctx.finish(&rel, 0, destination_failure(e)),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Gives the entries of a directory the source's extended attributes where
/// the destination's differ (one request per side for the directory).
pub(crate) async fn copy_xattrs(ctx: &Arc<Ctx>, dir: &RelPath, entries: &[EntryMeta]) {
    let (src, dst) =
        tokio::join!(ctx.src.tree.dir_xattrs(ctx.src.path(dir)), ctx.dst.tree.dir_xattrs(ctx.dst.path(dir)));
    let (src, dst): (HashMap<_, _>, HashMap<_, _>) = match (src, dst) {
        (Ok(src), Ok(dst)) => (src.into_iter().collect(), dst.into_iter().collect()),
        (Err(e), _) => return ctx.finish(dir, 0, source_failure(e)),
        (_, Err(e)) => return ctx.finish(dir, 0, destination_failure(e)),
    };
    let none = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let change = Change::Attributes(Attrs { xattrs: true, ..Attrs::default() });
    for e in entries {
        let (want, have) = (src.get(&e.name).unwrap_or(&none), dst.get(&e.name).unwrap_or(&none));
        let Ok(rel) = dir.join(&e.name) else { continue };
        if want == have {
            continue;
        }
        if ctx.opts.dry_run {
            if e.existed() {
                ctx.reporter.change(&rel, change);
            }
            continue;
        }
        let (ctx, want, existed) = (ctx.clone(), want.clone(), e.existed());
        tasks.spawn(async move {
            match ctx.dst.tree.set_xattrs(ctx.dst.path(&rel), want).await {
                Ok(()) if existed => ctx.reporter.change(&rel, change),
                Ok(()) => {}
                // Not there (skipped, failed, or a hard link made later).
                Err(e) if e.kind() == Some(FailureKind::NotFound) => {}
                Err(e) if e.kind() == Some(FailureKind::PermissionDenied) => {
                    Stats::add(&ctx.stats.warnings, 1);
                    ctx.reporter.problem(&rel, &Problem::Skipped(format!("extended attributes not kept: {e}")));
                }
                Err(e) => ctx.finish(&rel, 0, destination_failure(e)),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
