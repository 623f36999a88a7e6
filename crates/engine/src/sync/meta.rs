//! Owners, groups and extended attributes: set per directory once the names
//! in it are final (so whatever wrote an entry, batch, stream or link, it
//! exists), by comparing the source's listing with a second look at the
//! destination directory, and changing only what differs. Changes to
//! entries that existed before the run are itemized (`attrs NAME (owner)`),
//! in a dry run too, where nothing is changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pareco_plan::shard::Shard;
use pareco_proto::{Entry, FailureKind, Name, RelPath, Stat};

use super::{Ctx, destination_failure, source_failure};
use crate::report::{Attrs, Change, Problem, Stats};

/// A source entry's owner and group, and whether the destination had the
/// name before the run (only those changes are itemized: a new entry is
/// already reported as new).
pub(crate) struct EntryMeta {
    name: Name,
    uid: u32,
    gid: u32,
    existed: bool,
}

impl EntryMeta {
    /// The source entries of directory `dir` that are `shard`'s, given the
    /// destination's listing.
    pub(crate) fn of(dir: &RelPath, src: &[Entry], dst: Option<&[Entry]>, shard: Shard) -> Vec<EntryMeta> {
        let there: HashSet<&Name> = dst.unwrap_or_default().iter().map(|e| &e.name).collect();
        src.iter()
            .filter(|e| dir.join(&e.name).is_ok_and(|rel| shard.owns(&rel, &e.stat)))
            .map(|e| EntryMeta {
                name: e.name.clone(),
                uid: e.stat.uid,
                gid: e.stat.gid,
                existed: there.contains(&e.name),
            })
            .collect()
    }
}

/// Gives the entries of a directory (and the top directory itself) the
/// source's owner and group where the destination's differ.
pub(crate) async fn set_owners(
    ctx: &Arc<Ctx>,
    dir: &RelPath,
    attrs: Option<&(Stat, Option<Stat>)>,
    wanted: &[EntryMeta],
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
    if !wanted.is_empty() {
        let have: HashMap<Name, (u32, u32)> = match ctx.dst.tree.list(ctx.dst.path(dir)).await {
            Ok(listing) => listing.entries.into_iter().map(|e| (e.name, (e.stat.uid, e.stat.gid))).collect(),
            Err(e) => return ctx.finish(dir, 0, destination_failure(e)),
        };
        for e in wanted {
            // Entries not there (failed, or hard links made later) are skipped.
            if let Some(dst) = have.get(&e.name)
                && let Some((uid, gid)) = differ((e.uid, e.gid), Some(*dst))
                && let Ok(rel) = dir.join(&e.name)
            {
                changes.push((rel, uid, gid, e.existed));
            }
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
            if e.existed {
                ctx.reporter.change(&rel, change);
            }
            continue;
        }
        let (ctx, want, existed) = (ctx.clone(), want.clone(), e.existed);
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
