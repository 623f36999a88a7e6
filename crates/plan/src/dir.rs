//! One directory at a time: compare the source's and the destination's
//! listings of the same directory and decide what each name needs.
//!
//! Working per directory keeps memory bounded by the largest directory, not
//! by the tree, and lets the walk stream into the transfer.

use pareco_proto::{Entry, Kind, Name, Stat, Timestamp};

use crate::freshness::quick_check_equal;

/// Options that change what the plan contains.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirOptions {
    /// Compare content digests instead of trusting size and mtime.
    pub checksum: bool,
    /// Remove destination entries that the source does not have.
    pub delete: bool,
    /// Recreate fifos and device files (else they are skipped).
    pub specials: bool,
}

/// What one name needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Already identical.
    Nothing,
    /// Copy a regular file's content. `basis` is the existing destination
    /// file that can serve as a delta basis (`None`: write it whole).
    CopyFile {
        /// The destination's current version, if it is a regular file.
        basis: Option<Stat>,
    },
    /// The file's content is up to date; only its permissions differ.
    SetMode(u32),
    /// The file's content is up to date, but at the destination it shares
    /// its inode with other names while the source's does not: give it a
    /// copy of its own (with the source's mode and mtime), so that writing
    /// to one name never changes another.
    Unshare,
    /// Descend into a directory, creating it first if `create`.
    Descend {
        /// Whether the directory must be created.
        create: bool,
    },
    /// Create the symlink, or replace it if its target differs.
    Symlink,
    /// The symlink is right but its own mtime differs.
    SymlinkMtime,
    /// Create the fifo or device file, or replace what is there.
    Special,
    /// The fifo or device file is right but its mode or mtime differs.
    SpecialAttrs,
    /// Remove the destination entry (only with `delete`).
    Delete,
    /// Leave it and warn.
    Skip(SkipReason),
}

/// Why an entry is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The source entry is a special file (fifo, socket, device).
    Special(Kind),
    /// A directory at the destination would have to be removed to make way
    /// for a non-directory, and `delete` is off.
    DirInTheWay,
}

/// The plan for one name of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The name within the directory.
    pub name: Name,
    /// Source metadata (absent for deletions).
    pub src: Option<Stat>,
    /// Destination metadata before the sync (absent if missing).
    pub dst: Option<Stat>,
    /// The destination entry is of another kind and must be removed before
    /// the action (recursively, for a directory).
    pub remove_first: bool,
    /// What to do.
    pub action: Action,
}

/// Plans one directory. `src_now` is the source's clock when it listed;
/// `dst` is `None` when the destination directory does not exist yet.
pub fn plan_dir(mut src: Vec<Entry>, src_now: Timestamp, dst: Option<Vec<Entry>>, opts: DirOptions) -> Vec<Planned> {
    let mut dst = dst.unwrap_or_default();
    for list in [&mut src, &mut dst] {
        list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        // A well-behaved peer never lists a name twice; a broken one must not
        // confuse the merge below.
        list.dedup_by(|a, b| a.name == b.name);
    }
    let mut plan = Vec::with_capacity(src.len().max(dst.len()));
    let (mut s, mut d) = (src.into_iter().peekable(), dst.into_iter().peekable());
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.name.cmp(&b.name),
        };
        let (src, dst) = match order {
            std::cmp::Ordering::Less => (s.next(), None),
            std::cmp::Ordering::Greater => (None, d.next()),
            std::cmp::Ordering::Equal => (s.next(), d.next()),
        };
        if let Some(p) = plan_entry(src, dst, src_now, opts) {
            plan.push(p);
        }
    }
    plan
}

fn plan_entry(src: Option<Entry>, dst: Option<Entry>, src_now: Timestamp, opts: DirOptions) -> Option<Planned> {
    // The name moves out of whichever entry has it (no copy per entry).
    let (name, src, dst) = match (src, dst) {
        (Some(s), d) => (s.name, Some(s.stat), d.map(|d| d.stat)),
        (None, Some(d)) => (d.name, None, Some(d.stat)),
        (None, None) => return None,
    };
    let Some(s) = &src else {
        let action = if opts.delete { Action::Delete } else { Action::Nothing };
        return Some(Planned { name, src, dst, remove_first: false, action });
    };
    let same_kind = dst.as_ref().is_some_and(|d| d.kind == s.kind);
    let mut remove_first = dst.is_some() && !same_kind;
    let action = match s.kind {
        Kind::File => match &dst {
            Some(d) if same_kind => {
                if !opts.checksum && quick_check_equal(s, src_now, d) {
                    if d.nlink > 1 && s.nlink == 1 {
                        Action::Unshare
                    } else if d.mode == s.mode {
                        Action::Nothing
                    } else {
                        Action::SetMode(s.mode)
                    }
                } else {
                    Action::CopyFile { basis: Some(d.clone()) }
                }
            }
            _ => Action::CopyFile { basis: None },
        },
        Kind::Dir => Action::Descend { create: !same_kind },
        Kind::Symlink => match &dst {
            Some(d) if same_kind && d.target == s.target => {
                if d.mtime == s.mtime {
                    Action::Nothing
                } else {
                    Action::SymlinkMtime
                }
            }
            // Replacing a link or file by a link is one atomic rename.
            Some(d) if d.kind != Kind::Dir => {
                remove_first = false;
                Action::Symlink
            }
            _ => Action::Symlink,
        },
        Kind::Fifo | Kind::CharDevice | Kind::BlockDevice if opts.specials => match &dst {
            Some(d) if same_kind && d.rdev == s.rdev => {
                if d.mode == s.mode && d.mtime == s.mtime {
                    Action::Nothing
                } else {
                    Action::SpecialAttrs
                }
            }
            // Replacing a non-directory is one atomic rename.
            Some(d) if d.kind != Kind::Dir => {
                remove_first = false;
                Action::Special
            }
            _ => Action::Special,
        },
        special => {
            remove_first = false;
            Action::Skip(SkipReason::Special(special))
        }
    };
    let dir_in_the_way = remove_first && dst.as_ref().is_some_and(|d| d.kind == Kind::Dir);
    if dir_in_the_way && !opts.delete {
        return Some(Planned { name, src, dst, remove_first: false, action: Action::Skip(SkipReason::DirInTheWay) });
    }
    Some(Planned { name, src, dst, remove_first, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp { secs: 10_000, nanos: 0 };

    fn stat(kind: Kind, size: u64, mtime: i64) -> Stat {
        Stat {
            mtime: Timestamp { secs: mtime, nanos: 5 },
            ino: 7,
            dev: 1,
            target: (kind == Kind::Symlink).then(|| Box::from(&b"t"[..])),
            ..Stat::new(kind, size)
        }
    }

    fn entry(name: &str, stat: Stat) -> Entry {
        Entry { name: Name::new(name.as_bytes()).unwrap(), stat }
    }

    fn actions(src: Vec<Entry>, dst: Option<Vec<Entry>>, opts: DirOptions) -> Vec<(String, Action, bool)> {
        plan_dir(src, NOW, dst, opts).into_iter().map(|p| (p.name.to_string(), p.action, p.remove_first)).collect()
    }

    #[test]
    fn a_new_directory_gets_everything() {
        let src = vec![
            entry("b", stat(Kind::Dir, 0, 1)),
            entry("a", stat(Kind::File, 3, 1)),
            entry("l", stat(Kind::Symlink, 1, 1)),
        ];
        assert_eq!(
            actions(src, None, DirOptions::default()),
            vec![
                ("a".into(), Action::CopyFile { basis: None }, false),
                ("b".into(), Action::Descend { create: true }, false),
                ("l".into(), Action::Symlink, false),
            ]
        );
    }

    #[test]
    fn quick_check_skips_equal_files_and_fixes_modes() {
        let f = stat(Kind::File, 3, 1);
        let mut chmodded = f.clone();
        chmodded.mode = 0o600;
        let newer = stat(Kind::File, 3, 2);
        let src = vec![entry("same", f.clone()), entry("mode", f.clone()), entry("newer", newer)];
        let dst = vec![entry("same", f.clone()), entry("mode", chmodded), entry("newer", f.clone())];
        assert_eq!(
            actions(src, Some(dst), DirOptions::default()),
            vec![
                ("mode".into(), Action::SetMode(0o644), false),
                ("newer".into(), Action::CopyFile { basis: Some(f.clone()) }, false),
                ("same".into(), Action::Nothing, false),
            ]
        );
    }

    #[test]
    fn a_destination_file_linked_where_the_source_is_not_gets_its_own_copy() {
        let f = stat(Kind::File, 3, 1);
        let linked = Stat { nlink: 2, ..f.clone() };
        let both = Stat { nlink: 3, ..f.clone() };
        let src = vec![entry("split", f.clone()), entry("still", both.clone())];
        let dst = vec![entry("split", linked.clone()), entry("still", linked)];
        let plan = actions(src, Some(dst), DirOptions::default());
        // A source file that is itself linked is the hard-link pass's business.
        assert_eq!(plan.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), vec![Action::Unshare, Action::Nothing]);
    }

    #[test]
    fn checksum_never_trusts_metadata() {
        let f = stat(Kind::File, 3, 1);
        let plan = actions(
            vec![entry("f", f.clone())],
            Some(vec![entry("f", f.clone())]),
            DirOptions { checksum: true, ..Default::default() },
        );
        assert_eq!(plan, vec![("f".into(), Action::CopyFile { basis: Some(f) }, false)]);
    }

    #[test]
    fn a_recently_modified_source_is_not_trusted_even_with_equal_metadata() {
        let mut f = stat(Kind::File, 3, 0);
        f.mtime = Timestamp { secs: NOW.secs, nanos: 0 };
        let plan = actions(vec![entry("f", f.clone())], Some(vec![entry("f", f.clone())]), DirOptions::default());
        assert_eq!(plan[0].1, Action::CopyFile { basis: Some(f) });
    }

    #[test]
    fn extraneous_entries_are_deleted_only_with_delete() {
        let dst = vec![entry("old", stat(Kind::File, 1, 1)), entry("olddir", stat(Kind::Dir, 0, 1))];
        let keep = actions(vec![], Some(dst.clone()), DirOptions::default());
        assert!(keep.iter().all(|(_, a, _)| *a == Action::Nothing));
        let del = actions(vec![], Some(dst), DirOptions { delete: true, ..Default::default() });
        assert!(del.iter().all(|(_, a, _)| *a == Action::Delete));
    }

    #[test]
    fn kind_changes_replace_the_destination_entry() {
        let src = vec![
            entry("dir_was_file", stat(Kind::Dir, 0, 1)),
            entry("file_was_link", stat(Kind::File, 1, 1)),
            entry("link_was_file", stat(Kind::Symlink, 1, 1)),
            entry("file_was_dir", stat(Kind::File, 1, 1)),
        ];
        let dst = vec![
            entry("dir_was_file", stat(Kind::File, 1, 1)),
            entry("file_was_link", stat(Kind::Symlink, 1, 1)),
            entry("link_was_file", stat(Kind::File, 1, 1)),
            entry("file_was_dir", stat(Kind::Dir, 0, 1)),
        ];
        assert_eq!(
            actions(src.clone(), Some(dst.clone()), DirOptions::default()),
            vec![
                ("dir_was_file".into(), Action::Descend { create: true }, true),
                ("file_was_dir".into(), Action::Skip(SkipReason::DirInTheWay), false),
                ("file_was_link".into(), Action::CopyFile { basis: None }, true),
                ("link_was_file".into(), Action::Symlink, false),
            ]
        );
        let forced = actions(src, Some(dst), DirOptions { delete: true, ..Default::default() });
        assert_eq!(forced[1], ("file_was_dir".into(), Action::CopyFile { basis: None }, true));
    }

    #[test]
    fn symlinks_compare_targets_and_mtimes() {
        let l = stat(Kind::Symlink, 1, 1);
        let mut other = l.clone();
        other.target = Some(Box::from(&b"elsewhere"[..]));
        let mut touched = l.clone();
        touched.mtime.secs = 99;
        let src = vec![entry("a", l.clone()), entry("b", l.clone()), entry("c", l.clone())];
        let dst = vec![entry("a", l.clone()), entry("b", other), entry("c", touched)];
        let got: Vec<Action> = actions(src, Some(dst), DirOptions::default()).into_iter().map(|x| x.1).collect();
        assert_eq!(got, vec![Action::Nothing, Action::Symlink, Action::SymlinkMtime]);
    }

    #[test]
    fn special_files_are_skipped_and_duplicates_ignored() {
        let src = vec![entry("p", stat(Kind::Fifo, 0, 1)), entry("p", stat(Kind::File, 0, 1))];
        let plan = actions(src, None, DirOptions::default());
        assert_eq!(plan.len(), 1);
    }

    #[test]
    fn fifos_and_devices_are_recreated_with_specials_sockets_never() {
        let fifo = stat(Kind::Fifo, 0, 1);
        let mut dev = stat(Kind::CharDevice, 0, 1);
        dev.rdev = 0x103;
        let mut other_dev = dev.clone();
        other_dev.rdev = 0x105;
        let mut chmodded = fifo.clone();
        chmodded.mode = 0o600;
        let on = DirOptions { specials: true, ..Default::default() };
        let src =
            vec![entry("a", fifo.clone()), entry("b", fifo.clone()), entry("c", dev.clone()), entry("d", dev.clone())];
        let src = [src, vec![entry("e", stat(Kind::Socket, 0, 1))]].concat();
        let dst = vec![
            entry("a", fifo.clone()),
            entry("b", chmodded),
            entry("c", other_dev),
            entry("d", stat(Kind::File, 3, 1)),
        ];
        let got: Vec<_> = actions(src.clone(), Some(dst.clone()), on).into_iter().map(|x| (x.1, x.2)).collect();
        assert_eq!(
            got,
            vec![
                (Action::Nothing, false),
                (Action::SpecialAttrs, false),
                (Action::Special, false),
                (Action::Special, false),
                (Action::Skip(SkipReason::Special(Kind::Socket)), false),
            ]
        );
        let off: Vec<_> = actions(src, Some(dst), DirOptions::default()).into_iter().map(|x| x.1).collect();
        assert!(off.iter().all(|a| matches!(a, Action::Skip(SkipReason::Special(_)))), "{off:?}");
    }
}
