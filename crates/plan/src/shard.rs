//! One tree split across N processes (`--shard I/N`), on one host or many,
//! run by the user's own orchestrator: each walks the whole tree but does
//! only its part, decided by a stable hash, so that the N parts cover the
//! tree exactly once without the processes ever talking to each other.
//!
//! - A file belongs to the shard of its path; a file with several hard
//!   links, to the shard of its inode number (the same for every name of
//!   it, and on every NFS client), so that one shard copies its content once
//!   and links all its names.
//! - A directory's own work (its attributes, its removal with `--delete`)
//!   belongs to the shard of its path; every shard creates the directories
//!   it needs (creating one is idempotent) and sets the attributes of those
//!   it wrote into, after its writes, so whichever writes last leaves them
//!   right.
//! - An extraneous entry is removed by the shard of its path, only.
//!
//! Never here: walking, or anything that needs the other shards.

use pareco_proto::{Kind, RelPath, Stat};

/// Which part of the tree this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This part, from 0.
    pub index: u32,
    /// How many parts.
    pub count: u32,
}

impl Shard {
    /// The whole tree (no sharding).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` (I from 0 to N−1).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("expected I/N (such as 0/4), not {s:?}"))?;
        let index = i.trim().parse::<u32>().map_err(|_| format!("not a shard number: {i:?}"))?;
        let count = n.trim().parse::<u32>().map_err(|_| format!("not a shard count: {n:?}"))?;
        if count == 0 {
            return Err("the shard count N must be at least 1".to_string());
        }
        if index >= count {
            return Err(format!("the shard index must be from 0 to {} (N−1), not {index}", count.saturating_sub(1)));
        }
        Ok(Shard { index, count })
    }

    /// Whether there is only one part.
    pub fn is_all(&self) -> bool {
        self.count <= 1
    }

    /// Whether the entry at `path` (a directory, a symlink, a special
    /// file, an extraneous entry, a file with one link) is this shard's.
    pub fn owns_path(&self, path: &RelPath) -> bool {
        self.is_all() || self.pick(blake3::hash(path.as_bytes()).as_bytes())
    }

    /// Whether the source entry `stat` at `path` is this shard's: a file
    /// with several links by its inode, anything else by its path.
    pub fn owns(&self, path: &RelPath, stat: &Stat) -> bool {
        if self.is_all() {
            return true;
        }
        if stat.kind == Kind::File && stat.nlink > 1 {
            return self.pick(blake3::hash(&stat.ino.to_le_bytes()).as_bytes());
        }
        self.owns_path(path)
    }

    fn pick(&self, digest: &[u8; 32]) -> bool {
        let h = u64::from_le_bytes(digest[..8].try_into().expect("eight bytes"));
        h % self.count as u64 == self.index as u64
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn shards_parse_as_index_over_count() {
        assert_eq!(Shard::parse("0/4"), Ok(Shard { index: 0, count: 4 }));
        assert_eq!(Shard::parse("3/4"), Ok(Shard { index: 3, count: 4 }));
        for bad in ["4/4", "1/0", "x/2", "1", "-1/3", "1/2/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert!(Shard::parse("4/4").unwrap_err().contains("from 0 to 3"));
        assert_eq!(Shard::parse("0/0").unwrap_err(), "the shard count N must be at least 1");
    }

    #[test]
    fn the_names_of_a_linked_file_go_to_one_shard() {
        let linked = Stat { nlink: 3, ino: 12345, ..Stat::new(Kind::File, 10) };
        for n in 2..9 {
            let owners: Vec<u32> = (0..n)
                .filter(|&i| {
                    let shard = Shard { index: i, count: n };
                    ["a", "dir/b", "other/deep/c"].iter().all(|p| shard.owns(&path(p), &linked))
                })
                .collect();
            assert_eq!(owners.len(), 1, "{n} shards");
        }
    }

    proptest! {
        #[test]
        fn every_path_has_exactly_one_shard_and_they_share_the_work(
            names in proptest::collection::vec("[a-z0-9_-][a-z0-9._-]{0,11}", 200..300),
            count in 1u32..9,
        ) {
            let mut per_shard = vec![0usize; count as usize];
            for name in &names {
                let p = path(name);
                let owners: Vec<u32> = (0..count).filter(|&i| Shard { index: i, count }.owns_path(&p)).collect();
                prop_assert_eq!(owners.len(), 1);
                per_shard[owners[0] as usize] += 1;
            }
            // A stable hash spreads a few hundred names without any shard
            // getting nothing.
            prop_assert!(per_shard.iter().all(|&n| n > 0) || names.len() < 4 * count as usize);
        }
    }
}
