//! The digest cache: chunk digests of files already hashed, keyed by what
//! proves a file unchanged — device, inode, size, and mtime and ctime to the
//! nanosecond — so that a file whose stat has not moved is never read again
//! to be hashed (a later round, `--checksum`, a verify). Any write, rename
//! over, truncation or metadata change moves ctime or the inode, and the old
//! digests are simply never found again.
//!
//! Digests of a file whose ctime is less than a second old are not kept: a
//! change within the same clock tick would not move it (the racy timestamp
//! problem, as for the quick check).
//!
//! The cache lives in memory and, with a state directory, in a file there
//! (outside the synced tree), loaded when the tree is opened and saved when
//! asked. Each entry there carries a BLAKE3 of itself: a damaged entry
//! (a flipped bit, a torn write) is never trusted; it and what follows it
//! are dropped, and hashed again when needed.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pareco_proto::{Digest, Stat, Timestamp};

/// Most digests kept (about 64 bytes each with their key).
const MAX_DIGESTS: usize = 8 << 20;

const MAGIC: &[u8; 16] = b"PARECO-DIGESTS2\n";

/// Bytes of an entry's own BLAKE3 that follow it.
const SEAL: usize = 16;

/// What identifies one version of a file's content, and the chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
    chunk: u32,
}

impl Key {
    pub(crate) fn new(stat: &Stat, chunk: u32) -> Key {
        Key { dev: stat.dev, ino: stat.ino, size: stat.size, mtime: stat.mtime, ctime: stat.ctime, chunk }
    }
}

/// Chunk digests of file versions.
#[derive(Debug, Default)]
pub struct DigestCache {
    map: Mutex<HashMap<Key, Vec<Option<Digest>>>>,
    len: AtomicU64,
    /// Where it is saved, if anywhere.
    file: Mutex<Option<PathBuf>>,
    /// Bytes read to compute digests (cache misses).
    pub hashed: AtomicU64,
}

impl DigestCache {
    /// Keeps the cache in `state_dir` under `name` from now on, adding
    /// what is saved there (an unreadable file is ignored: the cache only
    /// saves work).
    pub fn attach(&self, state_dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let file = state_dir.join(name);
        // It must be possible to save there, as the run's end would find out.
        let probe = file.with_extension(format!("probe.{}", std::process::id()));
        std::fs::File::create(&probe).and_then(|_| std::fs::remove_file(&probe))?;
        match std::fs::File::open(&file) {
            Ok(f) => {
                if let Err(e) = self.load(BufReader::new(f)) {
                    tracing::warn!("ignoring the rest of the digest cache {}: {e}", file.display());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *self.file.lock().expect("cache lock") = Some(file);
        Ok(())
    }

    /// The digests of chunks `first..first + count` of this version, if all
    /// are known.
    pub(crate) fn get(&self, key: &Key, first: u64, count: u64) -> Option<Vec<Digest>> {
        let map = self.map.lock().expect("cache lock");
        let digests = map.get(key)?;
        let range = usize::try_from(first).ok()?..usize::try_from(first + count).ok()?;
        digests.get(range)?.iter().copied().collect()
    }

    /// Remembers digests of chunks from `first` on, for a version hashed at
    /// `now` (the caller checked the file did not change while hashed).
    pub(crate) fn put(&self, key: Key, first: u64, digests: &[Digest], now: Timestamp) {
        if now.nanos_since(key.ctime) < 1_000_000_000 || self.len.load(Ordering::Relaxed) as usize >= MAX_DIGESTS {
            return;
        }
        let chunks = key.size.div_ceil(key.chunk as u64);
        let Ok(first) = usize::try_from(first) else { return };
        if first as u64 + digests.len() as u64 > chunks {
            return;
        }
        let mut map = self.map.lock().expect("cache lock");
        let entry = map.entry(key).or_insert_with(|| {
            self.len.fetch_add(chunks, Ordering::Relaxed);
            vec![None; chunks as usize]
        });
        for (slot, d) in entry[first..].iter_mut().zip(digests) {
            *slot = Some(*d);
        }
    }

    /// Writes the complete entries to the state directory (atomically); an
    /// error names the file.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = self.file.lock().expect("cache lock").clone() else { return Ok(()) };
        self.save_to(&file).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))
    }

    fn save_to(&self, file: &Path) -> std::io::Result<()> {
        let temp = file.with_extension(format!("tmp.{}", std::process::id()));
        let mut out = BufWriter::new(std::fs::File::create(&temp)?);
        out.write_all(MAGIC)?;
        let map = self.map.lock().expect("cache lock");
        let mut entry = Vec::new();
        for (key, digests) in map.iter() {
            let Some(digests) = digests.iter().copied().collect::<Option<Vec<Digest>>>() else { continue };
            entry.clear();
            for v in [key.dev, key.ino, key.size, key.mtime.secs as u64, key.ctime.secs as u64] {
                entry.extend_from_slice(&v.to_le_bytes());
            }
            for v in [key.mtime.nanos, key.ctime.nanos, key.chunk] {
                entry.extend_from_slice(&v.to_le_bytes());
            }
            digests.iter().for_each(|d| entry.extend_from_slice(&d.0));
            out.write_all(&entry)?;
            out.write_all(&blake3::hash(&entry).as_bytes()[..SEAL])?;
        }
        drop(map);
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temp, file)
    }

    fn load(&self, mut input: impl Read) -> std::io::Result<()> {
        let mut magic = [0u8; 16];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(std::io::Error::other("not a pareco digest cache"));
        }
        let mut map = self.map.lock().expect("cache lock");
        loop {
            let mut head = [0u8; 52];
            match input.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
            let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
            let key = Key {
                dev: u64_at(0),
                ino: u64_at(8),
                size: u64_at(16),
                mtime: Timestamp { secs: u64_at(24) as i64, nanos: u32_at(40) },
                ctime: Timestamp { secs: u64_at(32) as i64, nanos: u32_at(44) },
                chunk: u32_at(48),
            };
            if key.chunk == 0 || key.mtime.nanos >= 1_000_000_000 || key.ctime.nanos >= 1_000_000_000 {
                return Err(std::io::Error::other("malformed entry"));
            }
            let n = key.size.div_ceil(key.chunk as u64);
            if self.len.load(Ordering::Relaxed) + n > MAX_DIGESTS as u64 {
                return Err(std::io::Error::other("too many entries"));
            }
            let mut entry = vec![0u8; 52 + 32 * n as usize + SEAL];
            entry[..52].copy_from_slice(&head);
            input.read_exact(&mut entry[52..])?;
            let (body, seal) = entry.split_at(entry.len() - SEAL);
            if blake3::hash(body).as_bytes()[..SEAL] != *seal {
                return Err(std::io::Error::other("a damaged entry"));
            }
            let digests = body[52..].chunks_exact(32).map(|d| Some(Digest(d.try_into().expect("32 bytes"))));
            self.len.fetch_add(n, Ordering::Relaxed);
            map.insert(key, digests.collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: u64, ctime: i64) -> Stat {
        Stat {
            mtime: Timestamp { secs: 10, nanos: 5 },
            ctime: Timestamp { secs: ctime, nanos: 7 },
            ino: 3,
            dev: 4,
            ..Stat::new(pareco_proto::Kind::File, size)
        }
    }

    const NOW: Timestamp = Timestamp { secs: 1000, nanos: 0 };

    #[test]
    fn digests_are_found_only_for_the_same_version() {
        let cache = DigestCache::default();
        let key = Key::new(&stat(3000, 100), 1024);
        cache.put(key, 0, &[Digest([1; 32]), Digest([2; 32])], NOW);
        assert_eq!(cache.get(&key, 0, 2), Some(vec![Digest([1; 32]), Digest([2; 32])]));
        assert_eq!(cache.get(&key, 1, 2), None, "chunk 2 is not known yet");
        cache.put(key, 2, &[Digest([3; 32])], NOW);
        assert_eq!(cache.get(&key, 1, 2), Some(vec![Digest([2; 32]), Digest([3; 32])]));
        assert_eq!(cache.get(&Key::new(&stat(3000, 101), 1024), 0, 1), None, "ctime moved");
        assert_eq!(cache.get(&Key::new(&stat(3001, 100), 1024), 0, 1), None, "size moved");
        assert_eq!(cache.get(&Key::new(&stat(3000, 100), 512), 0, 1), None, "other chunk size");
        // Past the end: refused.
        cache.put(key, 3, &[Digest([4; 32])], NOW);
        assert_eq!(cache.get(&key, 3, 1), None);
    }

    #[test]
    fn a_version_changed_less_than_a_second_ago_is_not_kept() {
        let cache = DigestCache::default();
        let key = Key::new(&stat(10, NOW.secs), 1024);
        cache.put(key, 0, &[Digest([1; 32])], NOW);
        assert_eq!(cache.get(&key, 0, 1), None);
    }

    #[test]
    fn complete_entries_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::default();
        cache.attach(dir.path(), "t").unwrap();
        let (full, partial) = (Key::new(&stat(2048, 100), 1024), Key::new(&stat(4096, 100), 1024));
        cache.put(full, 0, &[Digest([1; 32]), Digest([2; 32])], NOW);
        cache.put(partial, 0, &[Digest([3; 32])], NOW);
        cache.save().unwrap();
        let again = DigestCache::default();
        again.attach(dir.path(), "t").unwrap();
        assert_eq!(again.get(&full, 0, 2), Some(vec![Digest([1; 32]), Digest([2; 32])]));
        assert_eq!(again.get(&partial, 0, 1), None, "only complete files are saved");
        // A damaged file costs the cache, not the run.
        let saved = std::fs::read(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t"), [MAGIC.as_slice(), b"garbage"].concat()).unwrap();
        let damaged = DigestCache::default();
        damaged.attach(dir.path(), "t").unwrap();
        assert_eq!(damaged.get(&full, 0, 1), None);
        // A flipped bit anywhere in an entry: not trusted.
        for at in [16, 16 + 20, 16 + 52 + 40, saved.len() - 1] {
            let mut bad = saved.clone();
            bad[at] ^= 1;
            std::fs::write(dir.path().join("t"), &bad).unwrap();
            let flipped = DigestCache::default();
            flipped.attach(dir.path(), "t").unwrap();
            assert!(flipped.map.lock().unwrap().is_empty(), "byte {at}");
            assert_eq!(flipped.len.load(Ordering::Relaxed), 0, "byte {at}");
        }
    }
}
