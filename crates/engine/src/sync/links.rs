//! Hard links inside the tree. The first path seen of a linked inode is
//! synced like any file; every other path of it is set aside and, once all
//! the rest of the run is done (so the file they share is complete), made a
//! hard link to the first at the destination. The directories that gained a
//! link get their mtimes back.

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
    /// Its destination entry, if the plan left it as it was.
    kept: Option<Stat>,
}

/// Another path of an inode, to link at the end.
struct Follower {
    rel: RelPath,
    inode: Inode,
    size: u64,
    /// What the destination has at that path now.
    dst: Option<Stat>,
    /// The source directory holding it: its attributes are set again once
    /// the link is made.
    dir: (RelPath, Stat),
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
                dir: (dir.0.clone(), dir.1.clone()),
            };
            self.followers.lock().expect("links lock").push(follower);
            return true;
        }
        let kept = matches!(p.action, Action::Nothing).then(|| p.dst.clone()).flatten();
        leaders.insert(inode, Leader { rel: rel.clone(), kept });
        false
    }

    /// Makes every set-aside path a link to its inode's first path (where it
    /// is not one already), then restores the mtimes of the directories.
    pub(crate) async fn finish(&self, ctx: &std::sync::Arc<Ctx>) {
        let followers = std::mem::take(&mut *self.followers.lock().expect("links lock"));
        let leaders = std::mem::take(&mut *self.leaders.lock().expect("links lock"));
        let mut touched: BTreeMap<RelPath, Stat> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        for f in followers {
            let Some(leader) = leaders.get(&f.inode) else { continue };
            let linked = match (&leader.kept, &f.dst) {
                (Some(kept), Some(dst)) => (kept.dev, kept.ino) == (dst.dev, dst.ino),
                _ => false,
            };
            if linked {
                ctx.finish(&f.rel, f.size, Outcome::Synced { transferred: false, change: None });
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
                    match ctx.dst.tree.make_link(ctx.dst.path(&f.rel), existing).await {
                        Ok(()) => Outcome::Synced { transferred: false, change: Some(Change::HardLink) },
                        Err(e) => destination_failure(e),
                    }
                };
                ctx.finish(&f.rel, f.size, outcome);
            });
        }
        while tasks.join_next().await.is_some() {}
        for (dir, src) in touched {
            if let Err(e) = ctx.dst.tree.set_attrs(ctx.dst.path(&dir), Some(src.mode), Some(src.mtime)).await {
                ctx.fail(&dir, format!("destination: {e}"));
            }
        }
    }
}
