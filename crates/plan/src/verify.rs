//! Verification: how two entries of the same path differ, how the hardlink
//! structure of two trees differs, and why two trees of the same content may
//! take different space on disk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use pareco_proto::{Kind, RelPath, Stat, Timestamp, Xattrs};

use crate::human_size;

/// Which tree of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first tree given.
    A,
    /// The second tree given.
    B,
}

/// One way an entry differs between the trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The entry exists in one tree only.
    OnlyIn(Side),
    /// Not the same type of entry.
    Kind(Kind, Kind),
    /// Regular files of different sizes.
    Size(u64, u64),
    /// Same size, different bytes: the first differing byte lies in this
    /// range (one byte long when it is known exactly).
    Content(std::ops::Range<u64>),
    /// Permission bits.
    Mode(u32, u32),
    /// Modification time.
    Mtime(Timestamp, Timestamp),
    /// Symlink target.
    Target(Box<[u8]>, Box<[u8]>),
    /// The entry's hard links within the tree (the other paths sharing its
    /// inode, `-` for none) differ.
    Links(String, String),
    /// Owner (user id).
    Owner(u32, u32),
    /// Group id.
    Group(u32, u32),
    /// Extended attributes with these names are missing on one side or
    /// have other values.
    Xattrs(String),
}

/// The index of the first item that differs between two digest (or byte)
/// lists of the same range; a list that ends early differs where it ends.
pub fn first_mismatch<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Which metadata beyond type, size, mode, mtime and target to compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Owner user ids.
    pub owner: bool,
    /// Group ids.
    pub group: bool,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &Timestamp| format!("{}.{:09}", t.secs, t.nanos);
        match self {
            Difference::OnlyIn(Side::A) => write!(f, "only in A"),
            Difference::OnlyIn(Side::B) => write!(f, "only in B"),
            Difference::Kind(a, b) => write!(f, "type: {} vs {}", a.name(), b.name()),
            Difference::Size(a, b) => write!(f, "size: {a} vs {b}"),
            Difference::Content(at) if at.end <= at.start + 1 => write!(f, "content: differs from byte {}", at.start),
            Difference::Content(at) => write!(
                f,
                "content: differs from a byte in {}..{} (a side does not send content, e.g. a --write-only server)",
                at.start, at.end
            ),
            Difference::Mode(a, b) => write!(f, "mode: {a:04o} vs {b:04o}"),
            Difference::Mtime(a, b) => write!(f, "mtime: {} vs {}", time(a), time(b)),
            Difference::Target(a, b) => {
                write!(f, "target: {} vs {}", String::from_utf8_lossy(a), String::from_utf8_lossy(b))
            }
            Difference::Links(a, b) => write!(f, "hard links: {a} vs {b}"),
            Difference::Owner(a, b) => write!(f, "owner: {a} vs {b}"),
            Difference::Group(a, b) => write!(f, "group: {a} vs {b}"),
            Difference::Xattrs(names) => write!(f, "extended attributes: {names}"),
        }
    }
}

/// How the metadata of two entries of the same path differs (content is
/// compared separately, for regular files of the same size).
pub fn compare(a: &Stat, b: &Stat, checks: Checks) -> Vec<Difference> {
    if a.kind != b.kind {
        return vec![Difference::Kind(a.kind, b.kind)];
    }
    let mut out = Vec::new();
    if a.kind == Kind::File && a.size != b.size {
        out.push(Difference::Size(a.size, b.size));
    }
    if a.kind == Kind::Symlink && a.target != b.target {
        let (ta, tb) = (a.target.clone().unwrap_or_default(), b.target.clone().unwrap_or_default());
        out.push(Difference::Target(ta, tb));
    }
    // A symlink's own permission bits mean nothing on Linux.
    if a.kind != Kind::Symlink && a.mode != b.mode {
        out.push(Difference::Mode(a.mode, b.mode));
    }
    if a.mtime != b.mtime {
        out.push(Difference::Mtime(a.mtime, b.mtime));
    }
    if checks.owner && a.uid != b.uid {
        out.push(Difference::Owner(a.uid, b.uid));
    }
    if checks.group && a.gid != b.gid {
        out.push(Difference::Group(a.gid, b.gid));
    }
    out
}

/// How the extended attributes of one entry differ: the names missing on a
/// side or holding another value, if any (both lists sorted by name).
pub fn compare_xattrs(a: &Xattrs, b: &Xattrs) -> Option<Difference> {
    let mut names: Vec<&[u8]> = a
        .iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|x| !a.contains(x)))
        .map(|(name, _)| &name[..])
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<_> = names.iter().map(|n| String::from_utf8_lossy(n)).collect();
    (!names.is_empty()).then(|| Difference::Xattrs(names.join(", ")))
}

/// Regular files with more than one link, by path, with their inode
/// (device, inode number) in one tree.
pub type LinkedFiles = Vec<(RelPath, (u64, u64))>;

/// Paths whose hard links within the tree differ: for every path linked on
/// either side, the other paths of the tree sharing its inode must be the
/// same on both sides.
pub fn link_differences(a: &LinkedFiles, b: &LinkedFiles) -> Vec<(RelPath, Difference)> {
    let (peers_a, peers_b) = (peers(a), peers(b));
    let mut paths: Vec<&RelPath> = peers_a.keys().chain(peers_b.keys()).copied().collect();
    paths.sort();
    paths.dedup();
    let none = Vec::new();
    let show = |v: &Vec<&RelPath>| {
        if v.is_empty() { "-".to_string() } else { v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ") }
    };
    paths
        .into_iter()
        .filter_map(|path| {
            let (pa, pb) = (peers_a.get(path).unwrap_or(&none), peers_b.get(path).unwrap_or(&none));
            (pa != pb).then(|| (path.clone(), Difference::Links(show(pa), show(pb))))
        })
        .collect()
}

/// Every path's fellow links, sorted.
fn peers(files: &LinkedFiles) -> HashMap<&RelPath, Vec<&RelPath>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<&RelPath>> = BTreeMap::new();
    for (path, inode) in files {
        by_inode.entry(*inode).or_default().push(path);
    }
    let mut out = HashMap::new();
    for group in by_inode.values() {
        for path in group {
            let mut others: Vec<&RelPath> = group.iter().filter(|p| *p != path).copied().collect();
            others.sort();
            out.insert(*path, others);
        }
    }
    out
}

/// Space taken by one tree: what `ls` adds up and what `du` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Regular files (each inode once).
    pub files: u64,
    /// Their apparent size.
    pub apparent: u64,
    /// Bytes allocated on disk for them.
    pub allocated: u64,
    /// Files with fewer bytes allocated than their size (holes, or
    /// compression by the filesystem).
    pub sparse_files: u64,
    /// By how much those files fall short of their size.
    pub sparse_bytes: u64,
}

impl Usage {
    /// Counts a regular file (once per inode: the caller skips further links).
    pub fn add(&mut self, stat: &Stat) {
        let allocated = stat.blocks.saturating_mul(512);
        self.files += 1;
        self.apparent += stat.size;
        self.allocated += allocated;
        if allocated < stat.size {
            self.sparse_files += 1;
            self.sparse_bytes += stat.size - allocated;
        }
    }

    /// Why this tree's allocated size differs from its apparent size.
    pub fn explain(&self) -> String {
        if self.allocated == self.apparent {
            return "allocated equals apparent".into();
        }
        let mut reasons = Vec::new();
        if self.sparse_files > 0 {
            reasons.push(format!(
                "{} file(s) allocate {} less than their size (holes, or compression by the filesystem)",
                self.sparse_files,
                human_size(self.sparse_bytes)
            ));
        }
        if self.allocated + self.sparse_bytes > self.apparent {
            reasons.push(format!(
                "files occupy whole blocks (and may be preallocated): {} of rounding",
                human_size(self.allocated + self.sparse_bytes - self.apparent)
            ));
        }
        reasons.join("; ")
    }
}

/// Why two trees with the same content take different space, if they do.
pub fn explain_usage(a: &Usage, b: &Usage) -> Option<String> {
    if a.allocated == b.allocated {
        return None;
    }
    let (more, less, (big, small)) = if a.allocated > b.allocated { ("A", "B", (a, b)) } else { ("B", "A", (b, a)) };
    let mut why = format!("{more} allocates {} more than {less}", human_size(big.allocated - small.allocated));
    if a.apparent != b.apparent {
        let (x, y) = two_sizes(a.apparent, b.apparent);
        why.push_str(&format!(" (the apparent sizes differ too: {x} vs {y})"));
    } else if small.sparse_bytes > big.sparse_bytes {
        why.push_str(&format!(
            ": {less} has {} in holes or filesystem compression, {more} {} (a copy that filled holes, or \
             punched them, changes what du shows, not the content)",
            human_size(small.sparse_bytes),
            human_size(big.sparse_bytes)
        ));
    } else {
        why.push_str(
            ": the files' last blocks or preallocated space differ (other filesystems or block sizes, or files \
             written another way), not their content",
        );
    }
    Some(why)
}

/// Two sizes as people read them, in bytes where the rounded forms would
/// look the same.
fn two_sizes(a: u64, b: u64) -> (String, String) {
    let (x, y) = (human_size(a), human_size(b));
    match x == y {
        true => (format!("{a} B"), format!("{b} B")),
        false => (x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(kind: Kind, size: u64, mode: u32, secs: i64) -> Stat {
        Stat {
            mode,
            mtime: Timestamp { secs, nanos: 5 },
            ino: 1,
            dev: 1,
            blocks: size.div_ceil(4096) * 8,
            target: (kind == Kind::Symlink).then(|| Box::from(&b"x"[..])),
            ..Stat::new(kind, size)
        }
    }

    fn path(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn identical_entries_do_not_differ_whatever_their_inode_or_ctime() {
        let a = stat(Kind::File, 10, 0o644, 100);
        let mut b = a.clone();
        b.ino = 99;
        b.ctime = Timestamp { secs: 5, nanos: 0 };
        b.blocks = 0;
        b.uid = 7;
        assert!(compare(&a, &b, Checks { owner: false, group: true }).is_empty());
    }

    #[test]
    fn every_kind_of_metadata_difference_is_named() {
        let a = stat(Kind::File, 10, 0o644, 100);
        let b = stat(Kind::File, 11, 0o600, 101);
        let d = compare(&a, &b, Checks::default());
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].to_string(), "size: 10 vs 11");
        assert_eq!(d[1].to_string(), "mode: 0644 vs 0600");
        assert_eq!(d[2].to_string(), "mtime: 100.000000005 vs 101.000000005");
        assert_eq!(
            compare(&a, &stat(Kind::Dir, 0, 0o755, 100), Checks::default()),
            vec![Difference::Kind(Kind::File, Kind::Dir)]
        );
        let (l1, mut l2) = (stat(Kind::Symlink, 1, 0o777, 1), stat(Kind::Symlink, 1, 0o700, 1));
        l2.target = Some(Box::from(&b"y"[..]));
        assert_eq!(
            compare(&l1, &l2, Checks::default()),
            vec![Difference::Target(Box::from(&b"x"[..]), Box::from(&b"y"[..]))]
        );
        let mut c = a.clone();
        (c.uid, c.gid) = (1000, 1001);
        let all = Checks { owner: true, group: true };
        assert_eq!(compare(&a, &c, all), vec![Difference::Owner(0, 1000), Difference::Group(0, 1001)]);
        assert_eq!(compare(&a, &c, all)[1].to_string(), "group: 0 vs 1001");
    }

    #[test]
    fn extended_attributes_differ_by_missing_names_and_other_values() {
        let x = |pairs: &[(&str, &str)]| -> Xattrs {
            pairs.iter().map(|(n, v)| (n.as_bytes().to_vec().into(), v.as_bytes().to_vec().into())).collect()
        };
        let a = x(&[("user.a", "1"), ("user.b", "2"), ("user.c", "3")]);
        assert_eq!(compare_xattrs(&a, &a.clone()), None);
        assert_eq!(compare_xattrs(&x(&[]), &x(&[])), None);
        let b = x(&[("user.a", "1"), ("user.b", "two"), ("user.d", "4")]);
        let d = compare_xattrs(&a, &b).unwrap();
        assert_eq!(d.to_string(), "extended attributes: user.b, user.c, user.d");
    }

    #[test]
    fn the_first_mismatch_is_found_or_where_one_side_ends() {
        assert_eq!(first_mismatch(b"abcd", b"abcd"), None);
        assert_eq!(first_mismatch(b"abcd", b"abXd"), Some(2));
        assert_eq!(first_mismatch(b"abcd", b"ab"), Some(2));
        assert_eq!(first_mismatch::<u8>(b"", b""), None);
        assert_eq!(Difference::Content(7..8).to_string(), "content: differs from byte 7");
        assert!(Difference::Content(512..1024).to_string().contains("512..1024"));
    }

    #[test]
    fn hard_link_structure_is_compared_path_by_path() {
        let a = vec![(path("x"), (1, 10)), (path("y"), (1, 10)), (path("z"), (1, 11))];
        // Same structure, other inode numbers: no difference.
        let same = vec![(path("x"), (2, 7)), (path("y"), (2, 7)), (path("z"), (2, 8))];
        assert!(link_differences(&a, &same).is_empty());
        // y is a separate copy in B.
        let b = vec![(path("x"), (2, 7)), (path("z"), (2, 8))];
        let d = link_differences(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], (path("x"), Difference::Links("y".into(), "-".into())));
        assert_eq!(d[1], (path("y"), Difference::Links("x".into(), "-".into())));
    }

    #[test]
    fn usage_explains_holes_and_rounding() {
        let mut sparse = stat(Kind::File, 1 << 30, 0o644, 1);
        sparse.blocks = (3 << 20) / 512;
        let mut a = Usage::default();
        a.add(&sparse);
        assert!(a.explain().contains("1 file(s) allocate 1021.0 MiB less"), "{}", a.explain());
        let mut b = Usage::default();
        b.add(&stat(Kind::File, 1 << 30, 0o644, 1));
        b.add(&stat(Kind::File, 0, 0o644, 1));
        let mut b2 = Usage::default();
        b2.add(&stat(Kind::File, 1 << 30, 0o644, 1));
        let why = explain_usage(&a, &b2).unwrap();
        assert!(why.starts_with("B allocates 1021.0 MiB more than A: A has 1021.0 MiB in holes"), "{why}");
        assert_eq!(explain_usage(&b, &b2), None);
        let mut small = Usage::default();
        small.add(&stat(Kind::File, 100, 0o644, 1));
        assert!(small.explain().contains("whole blocks"), "{}", small.explain());

        // Sizes that round alike are told apart in bytes.
        let (mut c, mut d) = (Usage::default(), Usage::default());
        c.add(&stat(Kind::File, 5_000_000, 0o644, 1));
        d.add(&Stat { blocks: 0, ..stat(Kind::File, 5_000_001, 0o644, 1) });
        let why = explain_usage(&c, &d).unwrap();
        assert!(why.ends_with("(the apparent sizes differ too: 5000000 B vs 5000001 B)"), "{why}");
        // Same sizes, no holes, other allocation: not a content difference.
        let mut e = Usage::default();
        e.add(&Stat { blocks: 5_000_000 / 512 + 100, ..stat(Kind::File, 5_000_000, 0o644, 1) });
        let why = explain_usage(&c, &e).unwrap();
        assert!(why.contains("preallocated space differ") && why.ends_with("not their content"), "{why}");
    }
}
