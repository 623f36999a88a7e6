//! Copies between files of the same tree, in the kernel where it can
//! (`copy_file_range`, a reflink on filesystems that have them), holes kept:
//! what makes a file's own copy when its hard links are split, and what
//! rebuilds a file from pieces of another without a byte on the wire.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

use pareco_proto::{CopyRange, RelPath};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::beneath;
use crate::error::FsError;
use crate::read::{extents_of, read_upto};

/// Copies the ranges of `from` into the existing file `path`. A range that
/// lands beyond `path`'s end keeps `from`'s holes; one over existing bytes
/// is copied whole (its holes read as zeros, so the result is exact).
pub(crate) fn copy_ranges(root: BorrowedFd<'_>, path: &RelPath, from: &RelPath, ranges: &[CopyRange]) -> Result<(), FsError> {
    let open = |p: &RelPath, flags| beneath::open(root, p, flags, Mode::empty()).map(File::from);
    let source = open(from, OFlags::RDONLY).map_err(|e| FsError::io("open the file to copy from", e))?;
    let target = open(path, OFlags::WRONLY).map_err(|e| FsError::io("open for writing", e))?;
    let end = target.metadata().map_err(|e| FsError::std("stat", e))?.len();
    for r in ranges {
        if r.to >= end {
            sparse(&source, &target, r.from, r.to, r.len)?;
        } else {
            whole(&source, &target, r.from, r.to, r.len)?;
        }
    }
    Ok(())
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
