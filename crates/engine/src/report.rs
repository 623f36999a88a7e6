//! What a sync tells its caller while it runs: counters to poll (progress)
//! and events to display (itemized changes, problems with paths).

use std::sync::atomic::{AtomicU64, Ordering};

use pareco_proto::{RelPath, Stat};
use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of a running sync, updated from many tasks.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Whether the walk has listed every directory: from then on,
            /// `files_total` and `bytes_total` grow no more (but for files
            /// that grow while read).
            pub listed: std::sync::atomic::AtomicBool,
        }

        /// The counters at one moment, plus what only the end knows.
        #[derive(Debug, Clone, Default, Serialize, PartialEq)]
        pub struct Summary {
            $($(#[$doc])* pub $name: u64,)*
            /// Wall-clock duration of the sync, in seconds.
            pub duration_s: f64,
            /// Seconds until the walk had listed every directory.
            pub walk_s: f64,
            /// Bytes this side wrote to its connections (all protocol overhead included).
            pub wire_bytes_sent: u64,
            /// Bytes this side read from its connections.
            pub wire_bytes_received: u64,
            /// Connections to a server re-opened after they died or stalled.
            pub reconnects: u64,
            /// Requests sent again because their connection died.
            pub requests_retried: u64,
            /// The most connections open at once to the server (0 when
            /// both trees are local).
            pub connections: u64,
            /// Why the run gave up on the server, if it did (the entries
            /// not synced for that reason are `entries_abandoned`).
            pub gave_up: Option<String>,
        }

        impl Stats {
            /// Reads every counter.
            pub fn snapshot(&self) -> Summary {
                Summary { $($name: self.$name.load(Ordering::Relaxed),)* ..Summary::default() }
            }
        }
    };
}

counters! {
    /// Regular files in the source.
    files_total,
    /// Files whose content was (at least partly) sent, those that changed
    /// while copied included.
    files_transferred,
    /// Regular files whose outcome is known, whatever it is (progress: it
    /// reaches `files_total` at the end).
    files_done,
    /// Directories in the source.
    dirs_total,
    /// Symlinks in the source.
    symlinks_total,
    /// Apparent size of all source files: their sizes when listed, plus
    /// what files grew by before their content was read (so that content
    /// sent never exceeds it).
    bytes_total,
    /// File content sent (whole files, pieces and patch blocks).
    bytes_transferred,
    /// Source bytes of files finished, whatever the outcome (progress).
    bytes_processed,
    /// Bytes of large files still being copied that are already sent or
    /// found identical (progress; zero once the run is over).
    bytes_in_progress,
    /// Bytes of holes in sparse source files, neither read nor sent (with
    /// `--sparse`, also all-zero pieces left as holes).
    bytes_sparse,
    /// Bytes read on this machine to compute digests (local trees only;
    /// digests already in the cache cost nothing).
    bytes_hashed,
    /// Chunks found identical on both sides.
    chunks_matched,
    /// Chunks sent whole or patched.
    chunks_sent,
    /// Bytes of rebuilt files copied from their old version at another
    /// offset (content that moved: inserted or removed bytes before it).
    bytes_matched_shifted,
    /// Bytes of files copied from other files the destination already had
    /// (renamed, moved or copied content), instead of sent.
    bytes_reused_local,
    /// Blocks of differing chunks found identical.
    blocks_matched,
    /// Blocks of differing chunks sent.
    blocks_sent,
    /// Destination entries removed.
    entries_deleted,
    /// Files that changed while they were copied (left for the next run).
    files_changed,
    /// Source files that vanished during the run.
    files_vanished,
    /// Paths that failed (including those abandoned).
    errors,
    /// Entries not synced because the run gave up on the server.
    entries_abandoned,
    /// Entries skipped with a warning.
    warnings,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Which metadata of an entry changes, when nothing else does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits.
    pub mode: bool,
    /// Modification time.
    pub mtime: bool,
    /// Owner.
    pub owner: bool,
    /// Group.
    pub group: bool,
    /// Extended attributes.
    pub xattrs: bool,
}

impl Attrs {
    /// What differs between a source entry and its destination counterpart
    /// among permissions and mtime.
    pub fn between(src: &Stat, dst: &Stat) -> Attrs {
        Attrs { mode: src.mode != dst.mode, mtime: src.mtime != dst.mtime, ..Attrs::default() }
    }

    /// `mode, owner`-style list of what changes.
    pub fn names(&self) -> String {
        let all = [
            (self.mode, "mode"),
            (self.mtime, "mtime"),
            (self.owner, "owner"),
            (self.group, "group"),
            (self.xattrs, "xattrs"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect::<Vec<_>>().join(", ")
    }
}

/// A change to the destination, for itemized output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A file is created.
    NewFile,
    /// A file's content is updated.
    UpdateFile,
    /// Only metadata changes: which.
    Attributes(Attrs),
    /// A directory is created.
    NewDir,
    /// A symlink is created or re-pointed.
    Symlink,
    /// An entry is removed.
    Delete,
    /// A hard link to another file of the tree is made.
    HardLink,
    /// A file linked to others at the destination (but not in the source)
    /// gets a copy of its own.
    Split,
    /// A file is made as a copy of one the destination has under another
    /// name (renamed, moved, rotated): nothing is sent.
    Copied,
    /// A fifo or device file is created.
    Special,
}

impl Change {
    /// A fixed-width word for itemized lines.
    pub fn word(self) -> &'static str {
        match self {
            Change::NewFile => "new",
            Change::UpdateFile => "update",
            Change::Attributes(_) => "attrs",
            Change::NewDir => "mkdir",
            Change::Symlink => "link",
            Change::Delete => "delete",
            Change::HardLink => "hardlink",
            Change::Split => "split",
            Change::Copied => "copy",
            Change::Special => "special",
        }
    }

    /// What an itemized line adds after the path (`" (mode, owner)"`).
    pub fn detail(self) -> String {
        match self {
            Change::Attributes(attrs) if attrs != Attrs::default() => format!(" ({})", attrs.names()),
            _ => String::new(),
        }
    }
}

/// Something that went wrong with one path; the run goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The path could not be synced.
    Failed(String),
    /// The source changed while it was copied; the next run re-checks it.
    Changed,
    /// The source vanished during the run.
    Vanished,
    /// The entry was left alone on purpose.
    Skipped(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Failed(why) => f.write_str(why),
            Problem::Changed => f.write_str("changed while being copied; left for the next run to re-check"),
            Problem::Vanished => f.write_str("vanished from the source during the run"),
            Problem::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// Receives a sync's events (called from many tasks at once).
pub trait Reporter: Send + Sync + 'static {
    /// The destination entry `path` changes (or would, in a dry run).
    fn change(&self, path: &RelPath, change: Change);
    /// Something went wrong with `path`.
    fn problem(&self, path: &RelPath, problem: &Problem);
}

/// A reporter that ignores everything.
pub struct Silent;

impl Reporter for Silent {
    fn change(&self, _: &RelPath, _: Change) {}
    fn problem(&self, _: &RelPath, _: &Problem) {}
}
