//! Operations that only read the tree: listing, hashing, reading data.
//! Both sides hash their own files; only digests cross the wire.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use pareco_proto::path::is_partial;
use pareco_proto::{Block, Checksum, Digest, Entry, FileCheck, FileChecker, FileRead, Kind, Name, RelPath};
use rustix::fs::{Dir, Mode, OFlags};
use rustix::io::Errno;

use std::sync::atomic::Ordering;

use crate::beneath;
use crate::cache::{DigestCache, Key};
use crate::error::FsError;
use crate::meta;
use crate::temp;

/// Opens a regular file for reading (never through a symlink).
pub(crate) fn open_read(root: BorrowedFd<'_>, path: &RelPath) -> Result<File, FsError> {
    open_file(root, path, OFlags::RDONLY, "open for reading")
}

/// Opens the regular file at `path` with `flags` (never through a
/// symlink). Anything else there now (it was a file when listed) is a
/// change: a fifo is not waited on for a peer (`O_NONBLOCK`, which regular
/// files ignore), a device not opened.
pub(crate) fn open_file(
    root: BorrowedFd<'_>,
    path: &RelPath,
    flags: OFlags,
    op: &'static str,
) -> Result<File, FsError> {
    let not_a_file = |kind: &str| FsError::changed(op, format!("no longer a regular file but a {kind}"));
    let fd = match beneath::open(root, path, flags | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => fd,
        // (A fifo with no reader, opened to write.)
        Err(Errno::NXIO) => return Err(not_a_file("special file")),
        Err(e) => return Err(FsError::io(op, e)),
    };
    let kind = meta::stat_fd(fd.as_fd()).map_err(|e| FsError::io("stat", e))?.kind;
    if kind != Kind::File {
        return Err(not_a_file(kind.name()));
    }
    Ok(File::from(fd))
}

/// Reads exactly `[offset, offset + len)`; a file that is now shorter has
/// changed since it was looked at.
pub(crate) fn read_range(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
    let buf = read_upto(file, offset, len)?;
    if buf.len() < len {
        return Err(FsError::changed("read", "the file became shorter while it was read"));
    }
    Ok(buf)
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file),
/// straight into fresh memory: no zero-filling of buffers about to be
/// overwritten.
pub(crate) fn read_upto(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
    let mut buf = pareco_proto::recycle::take(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(FsError::io("read", e)),
        }
    }
    Ok(buf)
}

/// Lists a directory, `lstat`-ing every entry: its entries, then its
/// partial files apart. Entries that vanish between the directory read and
/// their stat are left out, and so are pareco's other temporaries (see
/// [`crate::temp`]).
pub(crate) fn list_dir(root: BorrowedFd<'_>, path: &RelPath) -> Result<(Vec<Entry>, Vec<Entry>), FsError> {
    let fd = beneath::open(root, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| FsError::io("open directory", e))?;
    let dir = Dir::read_from(&fd).map_err(|e| FsError::io("read directory", e))?;
    let (mut entries, mut partials) = (Vec::new(), Vec::new());
    for item in dir {
        let item = item.map_err(|e| FsError::io("read directory", e))?;
        let raw = item.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let list = match (temp::is_temp(raw), is_partial(raw)) {
            (false, _) => &mut entries,
            (true, true) => &mut partials,
            (true, false) => continue,
        };
        let Ok(name) = Name::new(raw) else { continue };
        match meta::stat_at(fd.as_fd(), raw) {
            Ok(stat) => list.push(Entry { name, stat }),
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(FsError::io("stat directory entry", e)),
        }
    }
    Ok((entries, partials))
}

/// Digests of consecutive `piece`-byte pieces of `[offset, offset + len)`,
/// for the pieces that lie entirely inside the file; from `cache` when it
/// knows them for this version of the file (and the pieces are whole
/// chunks), else read, and kept there if the file did not change meanwhile.
pub(crate) fn hash_pieces(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u64,
    piece: u32,
    cache: Option<&DigestCache>,
) -> Result<Vec<Digest>, FsError> {
    let file = open_read(root, path)?;
    let before = meta::stat_fd(file.as_fd()).map_err(|e| FsError::io("stat", e))?;
    let size = before.size;
    let end = offset.saturating_add(len);
    let piece64 = piece.max(1) as u64;
    let whole_chunks = offset.is_multiple_of(piece64) && (end.is_multiple_of(piece64) || end >= size);
    let cache = cache.filter(|_| whole_chunks);
    let (key, first) = (Key::new(&before, piece), offset / piece64);
    // As many as `read_pieces` gives: a short last piece only at the file's end.
    let count =
        if end <= size { (end - offset.min(end)).div_ceil(piece64) } else { size.saturating_sub(offset) / piece64 };
    if let Some(hit) = cache.and_then(|c| c.get(&key, first, count)) {
        return Ok(hit);
    }
    let digests = read_pieces(&file, size, offset, end, piece)?;
    if let Some(cache) = cache {
        let read = (digests.len() as u64 * piece64).min(size.saturating_sub(offset));
        cache.hashed.fetch_add(read, Ordering::Relaxed);
        let after = meta::stat_fd(file.as_fd()).map_err(|e| FsError::io("stat", e))?;
        if before.same_version(&after) {
            cache.put(key, first, &digests, meta::now());
        }
    }
    Ok(digests)
}

/// Bytes each thread hashes per turn in [`holds`]: the digests waiting to
/// be added stay few whatever the chunk size.
const CHECK_TURN: u64 = 64 << 20;

/// Whether the first `size` bytes of `file` are what `check` says, hashed
/// on as many threads as there are cores (at most 8).
pub(crate) fn holds(file: &File, size: u64, check: &FileCheck) -> Result<bool, FsError> {
    let chunk = check.chunk_size as u64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u64;
    let per_thread = (CHECK_TURN / chunk).max(1) * chunk;
    let mut checker = FileChecker::new(check.chunk_size);
    let mut at = 0;
    // An empty file has no chunk.
    while at < size {
        let parts = std::thread::scope(|scope| {
            let hashing: Vec<_> = (0..threads)
                .map(|i| at + i * per_thread)
                .take_while(|start| *start < size)
                .map(|start| {
                    scope
                        .spawn(move || read_pieces(file, size, start, (start + per_thread).min(size), check.chunk_size))
                })
                .collect();
            hashing.into_iter().map(|h| h.join().expect("hashing thread panicked")).collect::<Vec<_>>()
        });
        for part in parts {
            part?.iter().for_each(|d| checker.add(d));
        }
        at += threads * per_thread;
    }
    Ok(checker.finish() == *check)
}

fn read_pieces(file: &File, size: u64, offset: u64, end: u64, piece: u32) -> Result<Vec<Digest>, FsError> {
    let len = end - offset;
    let mut digests = Vec::new();
    let mut buf = vec![0u8; piece.min(len.min(u32::MAX as u64) as u32) as usize];
    let mut at = offset;
    while at < end {
        let n = (end - at).min(piece as u64);
        if at + n > size {
            break;
        }
        let chunk = &mut buf[..n as usize];
        match file.read_exact_at(chunk, at) {
            Ok(()) => digests.push(Digest::of(chunk)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(FsError::std("read", e)),
        }
        at += n;
    }
    Ok(digests)
}

/// The checksum data read for sending goes with: none when nobody checks it
/// (see `FsTree::trust_transit`).
fn transit_checksum(data: &[u8], checksums: bool) -> Option<Checksum> {
    checksums.then(|| Checksum::of(data))
}

/// Reads a range for sending, with its checksum if `checksums`.
pub(crate) fn read_data(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u32,
    checksums: bool,
) -> Result<(Option<Checksum>, Bytes), FsError> {
    let file = open_read(root, path)?;
    let data = pareco_proto::recycle::bytes(read_range(&file, offset, len as usize)?);
    Ok((transit_checksum(&data, checksums), data))
}

/// Reads several ranges, one after the other, with the checksum of it all if
/// `checksums`.
pub(crate) fn read_ranges(
    root: BorrowedFd<'_>,
    path: &RelPath,
    ranges: &[std::ops::Range<u64>],
    checksums: bool,
) -> Result<(Option<Checksum>, Bytes), FsError> {
    let file = open_read(root, path)?;
    let mut data = Vec::with_capacity(ranges.iter().map(|r| (r.end - r.start) as usize).sum());
    for r in ranges {
        data.extend_from_slice(&read_range(&file, r.start, (r.end - r.start) as usize)?);
    }
    Ok((transit_checksum(&data, checksums), Bytes::from(data)))
}

/// Where the file holds data within `[offset, offset + len)`: at most
/// `limit` extents, from `SEEK_DATA`/`SEEK_HOLE`. A filesystem that does not
/// track holes reports the whole file as data.
pub(crate) fn data_extents(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u64,
    limit: usize,
) -> Result<Vec<std::ops::Range<u64>>, FsError> {
    extents_of(&open_read(root, path)?, offset, len, limit)
}

/// [`data_extents`] of an open file.
pub(crate) fn extents_of(
    file: &File,
    offset: u64,
    len: u64,
    limit: usize,
) -> Result<Vec<std::ops::Range<u64>>, FsError> {
    use rustix::fs::{SeekFrom, seek};
    let end = offset.saturating_add(len);
    let mut extents = Vec::new();
    let mut at = offset;
    while at < end && extents.len() < limit {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data from here to the end of the file.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(FsError::io("find data", e)),
        };
        if data >= end {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data)).map_err(|e| FsError::io("find hole", e))?;
        extents.push(data..hole.min(end));
        at = hole;
    }
    Ok(extents)
}

/// The source half of a block delta: the blocks of the chunk that differ from
/// `dest_blocks`, and the digest of the whole chunk, all from one read.
pub(crate) fn read_patch(
    root: BorrowedFd<'_>,
    path: &RelPath,
    offset: u64,
    len: u32,
    block: u32,
    dest_blocks: &[Digest],
) -> Result<(Digest, Vec<Block>), FsError> {
    let file = open_read(root, path)?;
    let data = Bytes::from(read_range(&file, offset, len as usize)?);
    let blocks = data
        .chunks(block as usize)
        .enumerate()
        .filter(|(i, b)| dest_blocks.get(*i) != Some(&Digest::of(b)))
        .map(|(i, b)| {
            let start = i * block as usize;
            Block { index: i as u32, data: data.slice(start..start + b.len()) }
        })
        .collect();
    Ok((Digest::of(&data), blocks))
}

/// Reads whole small files, each with its stat before and a stability check
/// after, so the caller can tell a consistent version from a torn one; each
/// with its checksum if `checksums`.
pub(crate) fn read_files(root: BorrowedFd<'_>, paths: &[RelPath], max_size: u32, checksums: bool) -> Vec<FileRead> {
    let read = |p| read_file(root, p, max_size, checksums).unwrap_or_else(|e| FileRead::Failed(e.into()));
    paths.iter().map(read).collect()
}

fn read_file(root: BorrowedFd<'_>, path: &RelPath, max_size: u32, checksums: bool) -> Result<FileRead, FsError> {
    let fd = match beneath::open(root, path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => fd,
        // A symlink (or something else) where a file was listed: report what it is now.
        Err(Errno::LOOP) => {
            let (dir, name) = beneath::parent(root, path, "stat")?;
            let stat = meta::stat_at(dir.as_fd(), name.as_bytes()).map_err(|e| FsError::io("stat", e))?;
            return Ok(FileRead::NotSmall(stat));
        }
        Err(e) => return Err(FsError::io("open for reading", e)),
    };
    let stat = meta::stat_fd(fd.as_fd()).map_err(|e| FsError::io("stat", e))?;
    let now = meta::now();
    if stat.kind != Kind::File || stat.size > max_size as u64 {
        return Ok(FileRead::NotSmall(stat));
    }
    let file = File::from(fd);
    // Read one byte more than the stat said, to notice growth.
    let mut buf = read_upto(&file, 0, stat.size as usize + 1)?;
    let got = buf.len();
    let after = meta::stat_fd(file.as_fd()).map_err(|e| FsError::io("stat", e))?;
    let stable = got as u64 == stat.size && stat.same_version(&after);
    buf.truncate(got.min(stat.size as usize));
    let data = Bytes::from(buf);
    Ok(FileRead::Content { stat, now, stable, checksum: transit_checksum(&data, checksums), data })
}
