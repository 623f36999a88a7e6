//! Copies between files of the same tree, in the kernel where it can
//! (`copy_file_range`, a reflink on filesystems that have them), holes kept:
//! what makes a file's own copy when its hard links are split, what rebuilds
//! a file from pieces of another, and what makes a renamed or moved file
//! from where it was, without a byte on the wire.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use pareco_proto::{CloneFile, CopyRange, Digest, Failure, Kind, Name, RelPath};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::FsError;
use crate::read::{extents_of, open_file, read_range, read_upto};
use crate::{meta, temp};

/// Copies the ranges of `from` into the existing file `path`. When `from`
/// has holes, a range that lands where `path` holds no data (beyond its
/// end, or in a hole: the writes of a rebuilt file come in any order) keeps
/// them; one over existing bytes is copied whole (its holes read as zeros,
/// so the result is exact). A file without holes is copied whole, with no
/// look for them (finding where a file's data ends walks all of it).
pub(crate) fn copy_ranges(
    root: BorrowedFd<'_>,
    path: &RelPath,
    from: &RelPath,
    ranges: &[CopyRange],
) -> Result<(), FsError> {
    let source = open_file(root, from, OFlags::RDONLY, "open the file to copy from")?;
    let target = open_file(root, path, OFlags::WRONLY, "open for writing")?;
    let end = target.metadata().map_err(|e| FsError::std("stat", e))?.len();
    let stat = source.metadata().map_err(|e| FsError::std("stat", e))?;
    let holes = stat.blocks().saturating_mul(512) < stat.len();
    for r in ranges {
        if holes && (r.to >= end || !has_data(&target, r.to, r.len)?) {
            sparse(&source, &target, r.from, r.to, r.len)?;
        } else {
            whole(&source, &target, r.from, r.to, r.len)?;
        }
    }
    Ok(())
}

/// Whether `file` holds data within `[at, at + len)`: one `SEEK_DATA`, not
/// the extents.
fn has_data(file: &File, at: u64, len: u64) -> Result<bool, FsError> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
        Ok(data) => Ok(data < at.saturating_add(len)),
        Err(Errno::NXIO) => Ok(false),
        Err(e) => Err(FsError::io("find data", e)),
    }
}

/// Copies `len` bytes at `from_at` to `to_at`, only where `from` holds data.
pub(crate) fn sparse(from: &File, to: &File, from_at: u64, to_at: u64, len: u64) -> Result<(), FsError> {
    for extent in extents_of(from, from_at, len, usize::MAX)? {
        whole(from, to, extent.start, to_at + (extent.start - from_at), extent.end - extent.start)?;
    }
    Ok(())
}

/// Copies `len` bytes at `from_at` to `to_at`; the source must hold them.
fn whole(from: &File, to: &File, from_at: u64, to_at: u64, len: u64) -> Result<(), FsError> {
    let (mut src, mut dst, end) = (from_at, to_at, from_at + len);
    while src < end {
        let want = (end - src).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want) {
            Ok(0) => return Err(FsError::changed("copy", "the file copied from became shorter")),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                let data = read_upto(from, src, want.min(4 << 20))?;
                if data.is_empty() {
                    return Err(FsError::changed("copy", "the file copied from became shorter"));
                }
                to.write_all_at(&data, dst).map_err(|e| FsError::std("write", e))?;
                src += data.len() as u64;
                dst += data.len() as u64;
            }
            Err(e) => return Err(FsError::io("copy", e)),
        }
    }
    Ok(())
}

/// Makes files as copies of others of the tree, in two phases: every copy
/// is made under a temporary name from the files as they are, then all are
/// renamed into place, so that contents that swap or rotate between names
/// in one batch are each copied from the old version.
pub(crate) fn clone_files(root: BorrowedFd<'_>, files: &[CloneFile]) -> Vec<Result<(), Failure>> {
    let made: Vec<_> = files.iter().map(|f| make_copy(root, f)).collect();
    made.into_iter()
        .map(|made| {
            let (dir, temp, name) = made?;
            rustix::fs::renameat(&dir, temp.as_str(), &dir, name.as_bytes()).map_err(|e| {
                let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
                Failure::from(FsError::io("rename into place", e))
            })
        })
        .collect()
}

/// The copy of one file under a temporary name in its final directory.
fn make_copy(root: BorrowedFd<'_>, f: &CloneFile) -> Result<(OwnedFd, String, Name), Failure> {
    let from = f
        .from
        .iter()
        .find_map(|candidate| holding(root, candidate, f))
        .ok_or_else(|| FsError::mismatch("copy", "none of the files to copy from holds the content wanted"))?;
    let (dir, name) = crate::write::parent_made(root, &f.path, "create file")?;
    let temp = temp::new_name(dir.as_fd());
    let made = (|| {
        let fd = rustix::fs::openat(
            &dir,
            temp.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| FsError::io("create temporary file", e))?;
        let to = File::from(fd);
        sparse(&from, &to, 0, 0, f.size)?;
        rustix::fs::ftruncate(&to, f.size).map_err(|e| FsError::io("set size", e))?;
        // Only what holds the wanted content is made.
        if !holds(&to, f)? {
            return Err(FsError::mismatch("copy", "the file copied from changed meanwhile"));
        }
        rustix::fs::fchmod(&to, Mode::from_raw_mode(f.mode)).map_err(|e| FsError::io("set permissions", e))?;
        if let Some(mtime) = f.mtime {
            meta::set_mtime_fd(to.as_fd(), mtime)?;
        }
        Ok::<_, FsError>(())
    })();
    match made {
        Ok(()) => Ok((dir, temp, name)),
        Err(e) => {
            let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
            Err(e.into())
        }
    }
}

/// `candidate`, opened, if it is a regular file of the wanted size whose
/// first chunk is the wanted one (a cheap test before copying it).
fn holding(root: BorrowedFd<'_>, candidate: &RelPath, f: &CloneFile) -> Option<File> {
    let file = open_file(root, candidate, OFlags::RDONLY, "open the file to copy from").ok()?;
    let st = meta::stat_fd(file.as_fd()).ok()?;
    let first = read_range(&file, 0, f.size.min(f.chunk_size as u64) as usize).ok()?;
    (st.kind == Kind::File && st.size == f.size && f.digests.first() == Some(&Digest::of(&first))).then_some(file)
}

/// Whether `file` holds the content wanted, chunk by chunk.
fn holds(file: &File, f: &CloneFile) -> Result<bool, FsError> {
    for (i, want) in f.digests.iter().enumerate() {
        let at = i as u64 * f.chunk_size as u64;
        let chunk = read_range(file, at, (f.size - at).min(f.chunk_size as u64) as usize)?;
        if Digest::of(&chunk) != *want {
            return Ok(false);
        }
    }
    Ok(true)
}
