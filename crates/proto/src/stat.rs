//! What one side knows about an entry of its tree: the metadata that decides
//! whether a file must be copied, and the content digests that prove it.

use std::fmt;

use crate::path::Name;

/// A point in time as the filesystem records it, to the nanosecond.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before 1970).
    pub secs: i64,
    /// Nanoseconds within the second, `< 1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// `self - earlier` in nanoseconds, saturating.
    pub fn nanos_since(self, earlier: Timestamp) -> i128 {
        let a = self.secs as i128 * 1_000_000_000 + self.nanos as i128;
        let b = earlier.secs as i128 * 1_000_000_000 + earlier.nanos as i128;
        a - b
    }
}

/// The type of a directory entry. Links are never followed, so a symlink is
/// always reported as a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is in [`Stat::target`]).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl Kind {
    /// A short lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }
}

/// Metadata of one entry, as `lstat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Entry type.
    pub kind: Kind,
    /// Size in bytes (apparent size; for symlinks the target length).
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Last content modification.
    pub mtime: Timestamp,
    /// Last status change; any write or metadata change moves it.
    pub ctime: Timestamp,
    /// Inode number, to notice a file replaced by another.
    pub ino: u64,
    /// Device number of the filesystem holding the entry.
    pub dev: u64,
    /// Hard links to the inode (files with more than one share content).
    pub nlink: u64,
    /// Space allocated on disk, in 512-byte units (what `du` counts).
    pub blocks: u64,
    /// Owner (numeric).
    pub uid: u32,
    /// Group (numeric).
    pub gid: u32,
    /// Device number, for character and block devices.
    pub rdev: u64,
    /// Symlink target, for symlinks only.
    pub target: Option<Box<[u8]>>,
}

impl Stat {
    /// An entry of `kind` and `size` with mode 0o644, one link and every
    /// other field zero: a start to complete with `..Stat::new(…)` (tests,
    /// benchmarks, tools). Real entries come from `lstat`.
    pub fn new(kind: Kind, size: u64) -> Stat {
        Stat {
            kind,
            size,
            mode: 0o644,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            ino: 0,
            dev: 0,
            nlink: 1,
            blocks: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: None,
        }
    }

    /// Whether the entry is unchanged between two observations: same inode,
    /// size, mtime and ctime. A write in between moves mtime and ctime, a
    /// replacement changes the inode.
    pub fn same_version(&self, later: &Stat) -> bool {
        self.kind == later.kind
            && self.ino == later.ino
            && self.dev == later.dev
            && self.size == later.size
            && self.mtime == later.mtime
            && self.ctime == later.ctime
    }
}

/// A named entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name within its directory.
    pub name: Name,
    /// Its metadata.
    pub stat: Stat,
}

/// The checksum that data crossing a plaintext channel carries: XXH3-128
/// of it, computed by the side that read it, checked before it is written.
/// It catches what TCP's 16-bit checksum lets through (a flipped bit in a
/// router, a NIC, memory) at a fraction of a cryptographic hash's cost; it
/// is no defence against tampering, which a plaintext channel cannot stop
/// anyway. Over an encrypted channel data carries none: AES-GCM
/// authenticates every byte. twox-hash picks AVX2 or SSE2 when it runs,
/// not when it is built: 1.6x the speed of a baseline x86-64 build here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Checksum(pub u128);

impl Checksum {
    /// Checksum of `data`.
    pub fn of(data: &[u8]) -> Checksum {
        Checksum(twox_hash::XxHash3_128::oneshot(data))
    }
}

/// A BLAKE3 digest of a file, chunk or block.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }
}

/// What a whole file holds, in one digest: the BLAKE3 of its chunks'
/// digests one after the other (chunks of `chunk_size` bytes from its
/// start, the last one shorter), the digests a sync compares anyway.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileCheck {
    /// Chunk size the digests are of.
    pub chunk_size: u32,
    /// Digest of the chunk digests.
    pub digest: Digest,
}

impl FileCheck {
    /// The check of a file whose chunks have `digests`, in order.
    pub fn of<'a>(chunk_size: u32, digests: impl IntoIterator<Item = &'a Digest>) -> FileCheck {
        let mut checker = FileChecker::new(chunk_size);
        digests.into_iter().for_each(|d| checker.add(d));
        checker.finish()
    }
}

/// Makes a [`FileCheck`] from chunk digests given in order, a few at a time.
pub struct FileChecker {
    chunk_size: u32,
    hasher: blake3::Hasher,
}

impl FileChecker {
    /// A check of chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u32) -> FileChecker {
        FileChecker { chunk_size, hasher: blake3::Hasher::new() }
    }

    /// Adds the next chunk's digest.
    pub fn add(&mut self, digest: &Digest) {
        self.hasher.update(&digest.0);
    }

    /// The check of the chunks added.
    pub fn finish(self) -> FileCheck {
        FileCheck { chunk_size: self.chunk_size, digest: Digest(*self.hasher.finalize().as_bytes()) }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transit checksum is part of the wire: peers built with other
    /// XXH3 implementations, or for other CPUs, must agree on it. The
    /// values are the reference XXH3-128 (empty input, a short input, and
    /// one long enough for the vectorised loop).
    #[test]
    fn the_transit_checksum_is_the_reference_xxh3_128() {
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for (len, want) in [
            (0, 0x99aa06d3014798d86001c324468d497f),
            (1000, 0x18bf41bc8229e27733ef703fb2b20ed1),
            (1 << 20, 0x53738d98098cabba6e0d7ac36b8c10ff),
        ] {
            assert_eq!(Checksum::of(&data[..len]), Checksum(want), "{len} bytes");
        }
    }
}
