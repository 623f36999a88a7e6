//! Content the destination already holds under another name: a directory
//! renamed, files moved, logs rotated (`a.log` → `a.log.1` → …), a file
//! copied to a new name. Such a file is made at the destination as a copy
//! of the one it already has, instead of being sent.
//!
//! Which destination file may hold a source file's content is guessed from
//! metadata: the same size, and among those the same name (a renamed
//! directory), then the same mtime (a rename keeps it), then any (and
//! elsewhere in the tree the path that ends the same way longest); the guess
//! is checked against the source's chunk digests where the copy is made,
//! and a wrong one only costs the attempt. `--checksum` runs do not reuse.
//! Never here: looking the candidates up, or trusting a guess.

use std::cmp::Reverse;

use pareco_proto::{Kind, Name, RelPath, Stat};

use crate::dir::{Action, Planned};

/// Whether a planned entry is worth looking for elsewhere: a regular file
/// whose content must be written (new, or changed) and that is not hard
/// linked in the source (links are made by the hard-link pass).
pub fn wants_content(p: &Planned) -> bool {
    matches!(p.action, Action::CopyFile { .. })
        && p.src.as_ref().is_some_and(|s| s.kind == Kind::File && s.nlink <= 1 && s.size > 0)
}

/// The candidates (by index) that may hold `src`'s content, most likely
/// first: regular files of the same size; the same name first, then the
/// same mtime, then the others in their order.
pub fn ranked<'a>(name: &Name, src: &Stat, candidates: impl IntoIterator<Item = (&'a Name, &'a Stat)>) -> Vec<usize> {
    let mut found: Vec<(u8, usize)> = candidates
        .into_iter()
        .enumerate()
        .filter(|(_, (_, stat))| stat.kind == Kind::File && stat.size == src.size)
        .map(|(i, (candidate, stat))| {
            let rank = if candidate == name {
                0
            } else if stat.mtime == src.mtime {
                1
            } else {
                2
            };
            (rank, i)
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, i)| i).collect()
}

/// The candidates found elsewhere in the tree for the file at `path`, most
/// likely first: regular files of the same size; those with the same name
/// and mtime first (the file moved), and within each rank the paths that
/// end the same way longest (a directory renamed above them:
/// `snapshots/day05/disk.img` for `snaps/day05/disk.img`, not
/// `snapshots/day06/disk.img`), then the same name, then the same mtime.
pub fn ranked_far<'a>(
    path: &RelPath,
    src: &Stat,
    candidates: impl IntoIterator<Item = (&'a RelPath, &'a Stat)>,
) -> Vec<usize> {
    let name = path.split_last().map(|(_, n)| n);
    let mut found: Vec<_> = candidates
        .into_iter()
        .enumerate()
        .filter(|(_, (_, stat))| stat.kind == Kind::File && stat.size == src.size)
        .map(|(i, (candidate, stat))| {
            let same_name = candidate.split_last().map(|(_, n)| n) == name;
            let same_mtime = stat.mtime == src.mtime;
            let common = components_from_the_end(path)
                .zip(components_from_the_end(candidate))
                .take_while(|(a, b)| a == b)
                .count();
            ((!(same_name && same_mtime), Reverse(common), !same_name, !same_mtime), i)
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, i)| i).collect()
}

fn components_from_the_end(path: &RelPath) -> impl Iterator<Item = &[u8]> {
    path.as_bytes().rsplit(|&b| b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    use pareco_proto::Timestamp;

    fn file(size: u64, secs: i64) -> Stat {
        Stat { mtime: Timestamp { secs, nanos: 9 }, ..Stat::new(Kind::File, size) }
    }

    fn name(s: &str) -> Name {
        Name::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn candidates_have_the_same_size_and_their_name_or_mtime_ranks_first() {
        let src = file(100, 50);
        let (x, y, z) = (name("x"), name("y"), name("z"));
        let (other_size, other_time, same) = (file(101, 50), file(100, 51), file(100, 50));
        assert_eq!(ranked(&name("new"), &src, [(&x, &other_size), (&y, &other_time), (&z, &same)]), vec![2, 1]);
        assert_eq!(ranked(&y, &src, [(&z, &same), (&y, &other_time)]), vec![1, 0], "the same name first");
        assert!(ranked(&name("q"), &src, [(&x, &other_size)]).is_empty());
        let dir = Stat { mtime: src.mtime, ..Stat::new(Kind::Dir, 100) };
        assert!(ranked(&name("q"), &src, [(&x, &dir)]).is_empty());
    }

    #[test]
    fn elsewhere_a_moved_file_ranks_first_and_the_path_that_ends_alike_first_among_them() {
        let path = |s: &str| RelPath::new(s.as_bytes()).unwrap();
        let src = file(100, 50);
        let candidates = [
            (path("old/day06/disk.img"), file(100, 50)),
            (path("old/day05/other.img"), file(100, 50)),
            (path("old/day05/disk.img"), file(100, 51)),
            (path("old/day05/disk.img"), file(100, 50)),
            (path("old/day05/disk.img"), file(99, 50)),
        ];
        let ranked = ranked_far(&path("new/day05/disk.img"), &src, candidates.iter().map(|(p, s)| (p, s)));
        assert_eq!(ranked, vec![3, 0, 2, 1], "moved (the same name, mtime and end), moved, renamed, then the rest");
    }

    #[test]
    fn only_files_to_write_and_not_linked_are_looked_up() {
        let p = |action, src: Stat| Planned { name: name("f"), src: Some(src), dst: None, remove_first: false, action };
        assert!(wants_content(&p(Action::CopyFile { basis: None }, file(5, 1))));
        assert!(!wants_content(&p(Action::CopyFile { basis: None }, file(0, 1))), "empty: nothing to gain");
        assert!(!wants_content(&p(Action::CopyFile { basis: None }, Stat { nlink: 2, ..file(5, 1) })));
        assert!(!wants_content(&p(Action::Nothing, file(5, 1))));
    }
}
