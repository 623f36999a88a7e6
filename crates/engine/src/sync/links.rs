//! Hard links inside the tree. The first path seen of a linked inode is
//! synced like any file; every other path of it is set aside and, once all
//! the rest of the run is done (so the file they share is complete), made a
//! hard link to the first at the destination. The directories that gained a
//! link get their mtimes back.
//!
//! A path new at the destination waits for the walk to be over ([`waits`],
//! with the new large files `reuse` holds), when the destination is not
//! empty: another path of its inode may be one the destination has as it
//! is (a snapshot made with `cp -al`, a file linked under a new name). That
//! one is then the first path, and the new one only a link to it: nothing
//! is sent.
//!
//! The destination's link structure must end up equal to the source's, not
//! only include it. Names linked at the destination but not in the source
//! are split apart: a name whose source file has one link gets a copy of
//! its own as it is planned (`Action::Unshare`), and a file about to be
//! written in place is unshared first (see `big`); what is left are first
//! paths of *different* source inodes sharing one destination inode, found
//! here, and all but one given copies of their own before the other paths
//! are linked.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use pareco_plan::dir::{Action, Planned};
use pareco_proto::{RelPath, Stat};
use tokio::task::JoinSet;

use super::{Ctx, Outcome, destination_failure};
use crate::report::Change;

/// An inode: (device, inode number).
type Inode = (u64, u64);

/// The first path of an inode.
struct Leader {
    rel: RelPath,
    /// The source file (its mode and mtime, for a copy of its own).
    src: Stat,
    /// Its destination entry, if the plan kept that inode (content as it was).
    kept: Option<Stat>,
    /// The source directory holding it (see [`Follower::dir`]).
    dir: (RelPath, Stat),
}

/// Another path of an inode, to link at the end.
struct Follower {
    rel: RelPath,
    inode: Inode,
    size: u64,
    /// What the destination has at that path now.
    dst: Option<Stat>,
    /// A directory stands there: removed first (with `delete`), else in the way.
    dir_in_the_way: bool,
    /// The source directory holding it: its attributes are set again once
    /// the link is made.
    dir: (RelPath, Stat),
}

/// Whether a planned entry is a path of a linked file that is new at the
/// destination (see the module's documentation).
pub(crate) fn waits(p: &Planned) -> bool {
    matches!(p.action, Action::CopyFile { basis: None })
        && p.src.as_ref().is_some_and(|s| s.kind == pareco_proto::Kind::File && s.nlink > 1)
}

/// The linked inodes of one run.
#[derive(Default)]
pub(crate) struct Links {
    leaders: Mutex<HashMap<Inode, Leader>>,
    followers: Mutex<Vec<Follower>>,
}

impl Links {
    /// Sets `rel` aside if it is another path of an inode already seen (it is
    /// then not to be dispatched); otherwise remembers it as the inode's
    /// first path.
    pub(crate) fn defer(&self, rel: &RelPath, src: &Stat, p: &Planned, dir: (&RelPath, &Stat)) -> bool {
        let inode = (src.dev, src.ino);
        let mut leaders = self.leaders.lock().expect("links lock");
        if leaders.contains_key(&inode) {
            let follower = Follower {
                rel: rel.clone(),
                inode,
                size: src.size,
                dst: p.dst.clone(),
                dir_in_the_way: p.dst.as_ref().is_some_and(|d| d.kind == pareco_proto::Kind::Dir),
                dir: (dir.0.clone(), dir.1.clone()),
            };
            self.followers.lock().expect("links lock").push(follower);
            return true;
        }
        let kept = matches!(p.action, Action::Nothing | Action::SetMode(_)).then(|| p.dst.clone()).flatten();
        let dir = (dir.0.clone(), dir.1.clone());
        leaders.insert(inode, Leader { rel: rel.clone(), src: src.clone(), kept, dir });
        false
    }

    /// First paths of different source inodes that share one destination
    /// inode: all but one (in path order) get a copy of their own.
    /// The directories touched get their attributes back later (`touched`).
    async fn split_merged(
        ctx: &std::sync::Arc<Ctx>,
        leaders: &mut HashMap<Inode, Leader>,
        touched: &mut BTreeMap<RelPath, Stat>,
    ) {
        let mut by_dst: BTreeMap<Inode, Vec<(RelPath, Inode)>> = BTreeMap::new();
        for (inode, leader) in leaders.iter() {
            if let Some(kept) = leader.kept.as_ref().filter(|k| k.nlink > 1) {
                by_dst.entry((kept.dev, kept.ino)).or_default().push((leader.rel.clone(), *inode));
            }
        }
        for mut sharing in by_dst.into_values().filter(|s| s.len() > 1) {
            sharing.sort();
            for (rel, inode) in sharing.into_iter().skip(1) {
                let leader = leaders.get_mut(&inode).expect("leader of a listed inode");
                ctx.reporter.change(&rel, Change::Split);
                if ctx.opts.dry_run {
                    continue;
                }
                touched.insert(leader.dir.0.clone(), leader.dir.1.clone());
                let (mode, mtime) = (Some(leader.src.mode), Some(leader.src.mtime));
                match ctx.dst.tree.unshare(ctx.dst.path(&rel), mode, mtime).await {
                    Ok(own) => leader.kept = Some(own),
                    Err(e) => {
                        leader.kept = None;
                        ctx.finish(&rel, 0, destination_failure(e));
                    }
                }
            }
        }
    }

    /// Makes every set-aside path a link to its inode's first path (where it
    /// is not one already), then restores the mtimes of the directories.
    pub(crate) async fn finish(&self, ctx: &std::sync::Arc<Ctx>) {
        let followers = std::mem::take(&mut *self.followers.lock().expect("links lock"));
        let mut leaders = std::mem::take(&mut *self.leaders.lock().expect("links lock"));
        let mut touched: BTreeMap<RelPath, Stat> = BTreeMap::new();
        Self::split_merged(ctx, &mut leaders, &mut touched).await;
        let mut tasks = JoinSet::new();
        for f in followers {
            let Some(leader) = leaders.get(&f.inode) else { continue };
            let linked = match (&leader.kept, &f.dst) {
                (Some(kept), Some(dst)) => (kept.dev, kept.ino) == (dst.dev, dst.ino),
                _ => false,
            };
            if linked {
                ctx.finish_file(&f.rel, f.size, Outcome::Synced { transferred: false, change: None });
                continue;
            }
            if f.dir_in_the_way && !ctx.opts.delete {
                let why = "a directory is in the way at the destination; --delete replaces it".to_string();
                ctx.finish_file(&f.rel, f.size, Outcome::Failed(why));
                continue;
            }
            if !ctx.opts.dry_run {
                touched.insert(f.dir.0.clone(), f.dir.1.clone());
            }
            while tasks.len() >= ctx.opts.parallelism.max(1) {
                tasks.join_next().await;
            }
            let (ctx, existing) = (ctx.clone(), ctx.dst.path(&leader.rel));
            tasks.spawn(async move {
                let outcome = if ctx.opts.dry_run {
                    Outcome::Synced { transferred: false, change: Some(Change::HardLink) }
                } else {
                    let path = ctx.dst.path(&f.rel);
                    let cleared = if f.dir_in_the_way { ctx.dst.tree.remove(path.clone()).await } else { Ok(()) };
                    match cleared {
                        Ok(()) => match ctx.dst.tree.make_link(path, existing).await {
                            Ok(()) => Outcome::Synced { transferred: false, change: Some(Change::HardLink) },
                            Err(e) => destination_failure(e),
                        },
                        Err(e) => destination_failure(e),
                    }
                };
                ctx.finish_file(&f.rel, f.size, outcome);
            });
        }
        while tasks.join_next().await.is_some() {}
        for (dir, src) in touched {
            if let Err(e) = ctx.dst.tree.set_attrs(ctx.dst.path(&dir), Some(src.mode), Some(src.mtime)).await {
                ctx.finish(&dir, 0, destination_failure(e));
            }
        }
    }
}
