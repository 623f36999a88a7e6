//! Resolving a [`RelPath`] under a root directory without ever leaving it.
//!
//! Every open goes through `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel itself refuses a
//! `..`, an absolute path or a symlink anywhere in the path, including the last
//! component, atomically with the lookup. A symlink planted inside the tree, or
//! swapped in while a transfer runs, therefore cannot redirect a read or a
//! write outside the root; the operation fails with [`FailureKind::SymlinkInPath`].
//!
//! Operations on a directory entry itself (create, rename, remove, set times)
//! open its parent this way and then use the `*at` system calls with the
//! entry's single name, which cannot contain `/`.
//!
//! [`FailureKind::SymlinkInPath`]: pareco_proto::FailureKind::SymlinkInPath

use std::os::fd::{BorrowedFd, OwnedFd};

use pareco_proto::{Name, RelPath};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::FsError;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` under `root` with `flags` (plus `O_CLOEXEC`). A symlink as
/// the last component is refused like any other (`ELOOP`).
pub fn open(root: BorrowedFd<'_>, path: &RelPath, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    // Not O_NOFOLLOW: with O_PATH it would open a trailing symlink itself
    // instead of refusing it; RESOLVE_NO_SYMLINKS already refuses every link.
    let flags = flags | OFlags::CLOEXEC;
    let bytes = if path.is_root() { &b"."[..] } else { path.as_bytes() };
    loop {
        match rustix::fs::openat2(root, bytes, flags, mode, RESOLVE) {
            // The kernel asks to retry when a rename raced with the lookup.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// The parent directory of a non-root `path` (opened `O_PATH`) and the
/// entry's name within it.
pub fn parent(root: BorrowedFd<'_>, path: &RelPath, op: &'static str) -> Result<(OwnedFd, Name), FsError> {
    let (parent, name) = path.split_last().ok_or_else(|| FsError::bad_request(op, "not allowed on the root"))?;
    let fd = open(root, &parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| FsError::io(op, e).parent())?;
    Ok((fd, name))
}
